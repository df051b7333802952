//! kube-lite's API behaviours beyond the kubectl flows: persistence, dryRun, pagination,
//! bookmarks and timeouts, streaming lists, server-side apply, Events, CRD removal, bad input.

use std::time::Duration;

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Event as CoreEvent},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use keybrake_crds::VaultKey;
use keybrake_e2e::{Cluster, workspace_root};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use serde_json::json;

fn client(c: &Cluster) -> Result<Client> {
    Ok(Client::try_from(Config::new(c.url().parse()?))?)
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

/// The seeds' per-run Stripe key, moved to the `default` namespace.
fn run_key_in_default() -> Result<String> {
    let path = workspace_root().join("manifests/examples/stripe-run-key.yaml");
    Ok(std::fs::read_to_string(path)?.replace("namespace: billing", "namespace: default"))
}

async fn install_crds(c: &Cluster) -> Result<()> {
    let crds = workspace_root().join("manifests/crds");
    c.kubectl_ok(&["apply", "-f", crds.to_str().unwrap()])
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_survive_a_restart_with_a_state_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state.json");
    let opts = kube_lite::Options {
        state_file: Some(state.clone()),
        ..Default::default()
    };
    let first = Cluster::start_with(opts.clone()).await?;
    install_crds(&first).await?;
    let key = run_key_in_default()?;
    first.apply_ok(&key).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client(&first)?, "default");
    let before = cms.create(&PostParams::default(), &cm("kept")).await?;
    let rv_before: u64 = before.resource_version().unwrap().parse()?;
    first.shutdown().await;

    let second = Cluster::start_with(opts).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client(&second)?, "default");
    let after = cms.get("kept").await?;
    assert_eq!(after.uid(), before.uid());
    let vks: Api<VaultKey> = Api::namespaced(client(&second)?, "default");
    assert_eq!(
        vks.get("billing-agent-run-7f3a")
            .await?
            .spec
            .run_label
            .as_deref(),
        Some("hatchet/billing-agent/7f3a9c2e")
    );
    // resourceVersions keep growing. A watch from the last RV before the restart missed
    // nothing and resumes; one from further back cannot be replayed and must relist.
    let next = cms.create(&PostParams::default(), &cm("new")).await?;
    assert!(next.resource_version().unwrap().parse::<u64>()? > rv_before);
    let resumed = cms
        .watch(&WatchParams::default(), &rv_before.to_string())
        .await?;
    futures::pin_mut!(resumed);
    assert!(
        matches!(resumed.next().await, Some(Ok(WatchEvent::Added(o))) if o.name_any() == "new")
    );
    let stale = cms
        .watch(&WatchParams::default(), &(rv_before - 1).to_string())
        .await?;
    futures::pin_mut!(stale);
    assert!(matches!(stale.next().await, Some(Ok(WatchEvent::Error(e))) if e.code == 410));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_validates_without_storing() -> Result<()> {
    let c = Cluster::start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client(&c)?, "default");
    let created = cms
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &cm("ghost"),
        )
        .await?;
    assert_eq!(created.name_any(), "ghost");
    assert!(cms.get_opt("ghost").await?.is_none());
    let out = c
        .kubectl(
            &[
                "create",
                "configmap",
                "ghost2",
                "--from-literal=a=b",
                "--dry-run=server",
                "-o",
                "name",
            ],
            None,
        )
        .await?;
    assert!(
        out.code == 0 || out.stderr.contains("protobuf") || out.stderr.contains("JSON only"),
        "{out:?}"
    );
    assert!(cms.get_opt("ghost2").await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_with_limit_and_continue() -> Result<()> {
    let c = Cluster::start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client(&c)?, "default");
    for i in 0..7 {
        cms.create(&PostParams::default(), &cm(&format!("cm-{i}")))
            .await?;
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(3);
    let mut pages = 0;
    loop {
        let page = cms.list(&params).await?;
        pages += 1;
        assert!(
            !page
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default()
                .is_empty()
        );
        names.extend(page.items.iter().map(|i| i.name_any()));
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => params = params.continue_token(&t),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("cm-{i}")).collect::<Vec<_>>());
    let bad = cms
        .list(&ListParams::default().continue_token("not-a-token"))
        .await
        .unwrap_err();
    assert!(matches!(bad, kube::Error::Api(s) if s.code == 400));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watches_get_bookmarks_and_end_at_their_timeout() -> Result<()> {
    let opts = kube_lite::Options {
        bookmark_interval: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let c = Cluster::start_with(opts).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client(&c)?, "default");
    let rv = cms
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap();
    let stream = cms.watch(&WatchParams::default().timeout(1), &rv).await?;
    futures::pin_mut!(stream);
    match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await?? {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // The stream ends cleanly at timeoutSeconds.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = stream.try_next().await? {
            assert!(matches!(ev, WatchEvent::Bookmark(_)));
        }
        anyhow::Ok(())
    })
    .await;
    assert!(ended.is_ok(), "the watch did not end at its timeout");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_end_their_initial_events_with_a_bookmark() -> Result<()> {
    let c = Cluster::start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client(&c)?, "default");
    cms.create(&PostParams::default(), &cm("one")).await?;
    let stream = watcher(cms.clone(), watcher::Config::default().streaming_lists());
    futures::pin_mut!(stream);
    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await?? {
        match ev {
            watcher::Event::InitApply(o) => seen.push(o.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["one"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_removes_dropped_fields() -> Result<()> {
    let c = Cluster::start().await?;
    let full = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: default\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    let out = c
        .kubectl(&["apply", "--server-side", "-f", "-"], Some(full))
        .await?
        .ok()?;
    assert!(out.contains("serverside-applied"), "{out}");
    let cms: Api<ConfigMap> = Api::namespaced(client(&c)?, "default");
    // Another manager's field stays; the applier's dropped field goes.
    cms.patch(
        "ssa",
        &PatchParams::apply("other"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"c": "3"}})),
    )
    .await?;
    let fewer = full.replace("  b: \"2\"\n", "");
    c.kubectl(&["apply", "--server-side", "-f", "-"], Some(&fewer))
        .await?
        .ok()?;
    let data = cms.get("ssa").await?.data.unwrap();
    assert_eq!(data.keys().cloned().collect::<Vec<_>>(), ["a", "c"]);
    let missing = cms
        .patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Apply(json!({"data": {}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(missing, kube::Error::Api(s) if s.code == 422),
        "apply without fieldManager"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_events_show_in_kubectl_describe() -> Result<()> {
    let c = Cluster::start().await?;
    install_crds(&c).await?;
    let key = run_key_in_default()?;
    c.apply_ok(&key).await?;
    let client = client(&c)?;
    let vk = Api::<VaultKey>::namespaced(client.clone(), "default")
        .get("billing-agent-run-7f3a")
        .await?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "keybrake-proxy".into(),
            instance: Some("proxy-0".into()),
        },
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "CapReached".into(),
        note: Some("daily cap 500.00 reached".into()),
        action: "Refuse".into(),
        secondary: None,
    };
    recorder.publish(&event, &vk.object_ref(&())).await?;
    recorder.publish(&event, &vk.object_ref(&())).await?;
    let core: Api<CoreEvent> = Api::namespaced(client, "default");
    let events = core
        .list(&ListParams::default().fields(&format!("involvedObject.uid={}", vk.uid().unwrap())))
        .await?;
    assert_eq!(events.items.len(), 1);
    assert_eq!(
        events.items[0].count,
        Some(2),
        "the series count is mirrored"
    );
    let described = c
        .kubectl_ok(&["describe", "vk", "billing-agent-run-7f3a"])
        .await?;
    assert!(
        described.contains("CapReached") && described.contains("daily cap 500.00 reached"),
        "{described}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_crd_removes_its_objects_and_stops_serving_it() -> Result<()> {
    let c = Cluster::start().await?;
    install_crds(&c).await?;
    let key = run_key_in_default()?;
    c.apply_ok(&key).await?;
    let client = client(&c)?;
    let vks: Api<VaultKey> = Api::namespaced(client.clone(), "default");
    let stream = vks.watch(&WatchParams::default(), "0").await?;
    futures::pin_mut!(stream);
    assert!(matches!(
        stream.try_next().await?,
        Some(WatchEvent::Added(_))
    ));
    Api::<CustomResourceDefinition>::all(client)
        .delete("vaultkeys.keybrake.com", &DeleteParams::default())
        .await?;
    assert!(matches!(
        stream.try_next().await?,
        Some(WatchEvent::Deleted(_))
    ));
    let gone = vks.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(gone, kube::Error::Api(s) if s.code == 404));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_status_errors() -> Result<()> {
    let c = Cluster::start().await?;
    let addr = c.server().addr;
    let post = |ct: &'static str, body: Vec<u8>| async move {
        let (code, text) = keybrake_e2e::raw_http(
            addr,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &[("Content-Type", ct)],
            &body,
        )
        .await?;
        anyhow::Ok((
            code.to_string(),
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
        ))
    };
    let (code, status) = post("application/json", b"{not json".to_vec()).await?;
    assert_eq!(
        (code.as_str(), status["kind"].as_str()),
        ("400", Some("Status"))
    );
    let (code, status) = post("application/vnd.kubernetes.protobuf", vec![0x6b, 0x38]).await?;
    assert_eq!(code, "415");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("kubectl apply")
    );
    let huge = format!(
        "{{\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"k\":\"{}\"}}}}",
        "x".repeat(4 * 1024 * 1024)
    );
    let (code, status) = post("application/json", huge.into_bytes()).await?;
    assert_eq!(
        (code.as_str(), status["reason"].as_str()),
        ("413", Some("RequestEntityTooLarge"))
    );
    let (code, _) = post(
        "application/json",
        br#"{"metadata":{"name":"UPPER"}}"#.to_vec(),
    )
    .await?;
    assert_eq!(code, "422");
    let cms: Api<ConfigMap> = Api::namespaced(client(&c)?, "default");
    assert!(
        cms.list(&ListParams::default()).await?.items.is_empty(),
        "nothing half-written"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_versions_guard_updates_patches_and_deletes() -> Result<()> {
    let c = Cluster::start().await?;
    install_crds(&c).await?;
    c.apply_ok(&run_key_in_default()?).await?;
    let vks: Api<VaultKey> = Api::namespaced(client(&c)?, "default");
    let current = vks.get("billing-agent-run-7f3a").await?;
    let code = |e: kube::Error| match e {
        kube::Error::Api(s) => s.code,
        other => panic!("{other}"),
    };

    let mut stale = current.clone();
    stale.spec.revoked = true;
    vks.patch(
        "billing-agent-run-7f3a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runLabel": "moved"}})),
    )
    .await?;
    let conflict = vks
        .replace("billing-agent-run-7f3a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(code(conflict), 409, "a stale resourceVersion");

    stale.metadata.resource_version = None;
    let missing = vks
        .replace("billing-agent-run-7f3a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(
        code(missing),
        422,
        "a custom resource update needs a resourceVersion"
    );

    let old_rv = current.resource_version().unwrap();
    let guarded = json!({"metadata": {"resourceVersion": old_rv}, "spec": {"revoked": true}});
    let refused = vks
        .patch(
            "billing-agent-run-7f3a",
            &PatchParams::default(),
            &Patch::Merge(guarded),
        )
        .await
        .unwrap_err();
    assert_eq!(
        code(refused),
        409,
        "a resourceVersion in a patch is a precondition"
    );

    let precondition = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some(old_rv),
            uid: None,
        }),
        ..Default::default()
    };
    let refused = vks
        .delete("billing-agent-run-7f3a", &precondition)
        .await
        .unwrap_err();
    assert_eq!(code(refused), 409, "a delete precondition");
    assert!(
        !vks.get("billing-agent-run-7f3a").await?.spec.revoked,
        "nothing was written by the refused requests"
    );
    Ok(())
}

#[tokio::test]
async fn token_and_access_reviews_follow_the_token_file_and_rbac() -> Result<()> {
    use k8s_openapi::api::{
        authentication::v1::{TokenReview, TokenReviewSpec},
        authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    };
    use keybrake_e2e::identities;
    let c = Cluster::start().await?;
    let client = client(&c)?;
    c.apply_ok("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: billing\n")
        .await?;
    c.apply_ok(identities::RBAC).await?;
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |token: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: None,
        },
        ..Default::default()
    };
    let ok = reviews
        .create(
            &PostParams::default(),
            &review(identities::BILLING_WORKER_DEFAULT),
        )
        .await?
        .status
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    // Audiences, as the real server: a token is valid only for its own.
    let for_audience = |token: &str, aud: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: Some(vec![aud.into()]),
        },
        ..Default::default()
    };
    for (token, aud, valid) in [
        (identities::BILLING_WORKER, identities::AUDIENCE, true),
        (
            identities::BILLING_WORKER_DEFAULT,
            identities::AUDIENCE,
            false,
        ),
        (identities::BILLING_WORKER, "vault", false),
    ] {
        let s = reviews
            .create(&PostParams::default(), &for_audience(token, aud))
            .await?
            .status
            .unwrap();
        assert_eq!(
            s.authenticated == Some(true),
            valid,
            "{token} for {aud}: {s:?}"
        );
        if valid {
            assert_eq!(s.audiences, Some(vec![aud.to_owned()]));
        }
    }
    let projected_alone = reviews
        .create(&PostParams::default(), &review(identities::BILLING_WORKER))
        .await?
        .status
        .unwrap();
    assert_ne!(
        projected_alone.authenticated,
        Some(true),
        "a keybrake token is not the API server's"
    );
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:billing:hatchet-worker")
    );
    assert!(
        user.groups
            .unwrap()
            .contains(&"system:authenticated".to_owned())
    );
    let bad = reviews
        .create(&PostParams::default(), &review("nope"))
        .await?
        .status
        .unwrap();
    assert_ne!(bad.authenticated, Some(true));
    assert!(bad.error.is_some());

    let access: Api<SubjectAccessReview> = Api::all(client.clone());
    let can = |user: &str, groups: &[&str], verb: &str, ns: &str| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            resource_attributes: Some(ResourceAttributes {
                group: Some("keybrake.com".into()),
                resource: Some("vaultkeys".into()),
                verb: Some(verb.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let worker = "system:serviceaccount:billing:hatchet-worker";
    let reader = "system:serviceaccount:billing:reader";
    for (user, groups, verb, ns, allowed) in [
        (worker, &[][..], "create", "billing", true),
        (worker, &[], "delete", "billing", true),
        (worker, &[], "create", "other", false),
        (worker, &[], "update", "billing", false),
        (reader, &[], "list", "billing", true),
        (reader, &[], "create", "billing", false),
        ("alice", &["system:masters"], "create", "anywhere", true),
        (
            "mallory",
            &["system:authenticated"],
            "get",
            "billing",
            false,
        ),
    ] {
        let answer = access
            .create(&PostParams::default(), &can(user, groups, verb, ns))
            .await?
            .status
            .unwrap();
        assert_eq!(answer.allowed, allowed, "{user} {verb} in {ns}: {answer:?}");
        if allowed {
            assert!(!answer.reason.unwrap_or_default().is_empty());
        }
    }
    // Create-only, never stored, as on a real server.
    let listed = c
        .kubectl(
            &[
                "get",
                "--raw",
                "/apis/authentication.k8s.io/v1/tokenreviews",
            ],
            None,
        )
        .await?;
    assert_ne!(listed.code, 0);
    assert!(
        listed.stderr.contains("MethodNotAllowed")
            || listed.stderr.contains("405")
            || listed.stderr.contains("only supports create"),
        "{}",
        listed.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_a_token_get_what_rbac_grants_and_nothing_more() -> Result<()> {
    use keybrake_e2e::identities;
    let c = Cluster::start().await?;
    install_crds(&c).await?;
    c.apply_ok("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: billing\n")
        .await?;
    c.apply_ok(identities::RBAC).await?;
    c.apply_ok(&run_key_in_default()?.replace("namespace: default", "namespace: billing"))
        .await?;
    // The reader may list and get keys in billing, and nothing else.
    let reader = c.client_as(identities::BILLING_READER_DEFAULT)?;
    let keys: Api<VaultKey> = Api::namespaced(reader.clone(), "billing");
    assert_eq!(keys.list(&ListParams::default()).await?.items.len(), 1);
    keys.get("billing-agent-run-7f3a").await?;
    let refused = keys
        .delete("billing-agent-run-7f3a", &DeleteParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("{refused}")
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "vaultkeys.keybrake.com \"billing-agent-run-7f3a\" is forbidden: User \"system:serviceaccount:billing:reader\" cannot delete resource \"vaultkeys\" in API group \"keybrake.com\" in the namespace \"billing\""
    );
    let status_write = keys
        .patch_status(
            "billing-agent-run-7f3a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Active"}})),
        )
        .await
        .unwrap_err();
    assert!(
        status_write
            .to_string()
            .contains("cannot patch resource \"vaultkeys/status\""),
        "{status_write}"
    );
    let everywhere = Api::<VaultKey>::all(reader)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        everywhere.to_string().contains("at the cluster scope"),
        "{everywhere}"
    );
    // An unknown token is not an anonymous administrator: 401.
    let stranger = Api::<VaultKey>::namespaced(c.client_as("t-nobody")?, "billing")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(status) = stranger else {
        panic!("{stranger}")
    };
    assert_eq!(status.code, 401);
    // Nor is a token minted for another audience (the proxy's): it is no credential here.
    let projected =
        Api::<VaultKey>::namespaced(c.client_as(identities::BILLING_READER)?, "billing")
            .list(&ListParams::default())
            .await
            .unwrap_err();
    assert!(
        projected.to_string().contains("401") || projected.to_string().contains("Unauthorized"),
        "{projected}"
    );
    assert_eq!(c.server().denials().len(), 3);
    Ok(())
}
