//! Our CRDs in the real kubectl against the real kube-apiserver: apply, printer columns, watch,
//! describe, patch, finalizers, and the server's own refusals of invalid manifests.

use std::time::Duration;

use anyhow::Result;
use keybrake_e2e::{Cluster, example, workspace_root};

/// A cluster with the Keybrake CRDs, the `billing` namespace and the Stripe policy.
async fn billing_cluster() -> Result<Cluster> {
    let mut c = Cluster::start().await?;
    let crds = workspace_root().join("manifests/crds");
    c.kubectl_ok(&["apply", "-f", crds.to_str().unwrap()])
        .await?;
    // Namespace deletion is kube-controller-manager's work.
    c.start_controllers()?;
    c.apply_namespace("billing").await?;
    c.apply_ok(&example("stripe-policy.yaml")).await?;
    Ok(c)
}

/// `kubectl patch --type merge` of the seeds' run key (or its status).
async fn merge_patch_run_key(c: &Cluster, status: bool, patch: &str) -> Result<String> {
    let mut args = vec![
        "patch",
        "vk",
        "-n",
        "billing",
        "billing-agent-run-7f3a",
        "--type",
        "merge",
        "-p",
        patch,
    ];
    if status {
        args.push("--subresource=status");
    }
    c.kubectl_ok(&args).await
}

/// `kubectl get` of the seeds' run key, printed `-o output`.
async fn get_run_key(c: &Cluster, output: &str) -> Result<String> {
    c.kubectl_ok(&[
        "get",
        "vk",
        "-n",
        "billing",
        "billing-agent-run-7f3a",
        "-o",
        output,
    ])
    .await
}

fn jsonpath(field: &str) -> String {
    format!("jsonpath={field}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_then_configures_then_leaves_unchanged() -> Result<()> {
    let c = billing_cluster().await?;
    let key = example("stripe-run-key.yaml");
    let created = c.apply_ok(&key).await?;
    assert!(
        created.contains("vaultkey.keybrake.com/billing-agent-run-7f3a created"),
        "{created}"
    );
    let unchanged = c.apply_ok(&key).await?;
    assert!(unchanged.contains("unchanged"), "{unchanged}");
    let changed = c
        .apply_ok(&key.replace("dailyUsdCap: 500", "dailyUsdCap: 450"))
        .await?;
    assert!(changed.contains("configured"), "{changed}");
    let got = get_run_key(&c, &jsonpath("{.spec.dailyUsdCap} {.metadata.generation}")).await?;
    assert_eq!(got, "450 2");
    let annotations = get_run_key(&c, "jsonpath={.metadata.annotations}").await?;
    assert!(annotations.contains("kubectl.kubernetes.io/last-applied-configuration"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_the_printer_columns_yaml_and_wide() -> Result<()> {
    let c = billing_cluster().await?;
    c.apply_ok(&example("stripe-run-key.yaml")).await?;
    let status = r#"{"status":{"phase":"Active","vendor":"stripe","cap":"500.00/day","expiresAt":"2030-01-01T00:00:00Z","spend":{"totalUsd":"12.50","todayUsd":"2.50"}}}"#;
    merge_patch_run_key(&c, true, status).await?;
    let table = c.kubectl_ok(&["get", "vk", "-n", "billing"]).await?;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "VENDOR", "CAP", "SPENT", "EXPIRES", "PHASE", "AGE"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..6],
        [
            "billing-agent-run-7f3a",
            "stripe",
            "500.00/day",
            "12.50",
            "2030-01-01T00:00:00Z",
            "Active"
        ]
    );
    let wide = c
        .kubectl_ok(&["get", "vk", "-n", "billing", "-o", "wide"])
        .await?;
    assert!(
        wide.lines().next().unwrap().contains("TODAY")
            && wide.contains("hatchet/billing-agent/7f3a9c2e"),
        "{wide}"
    );
    let all = c.kubectl_ok(&["get", "vk", "-A"]).await?;
    assert!(
        all.starts_with("NAMESPACE") && all.contains("billing "),
        "{all}"
    );
    let by_short = c
        .kubectl_ok(&["get", "sp", "-n", "billing", "-o", "name"])
        .await?;
    assert_eq!(by_short.trim(), "spendpolicy.keybrake.com/stripe");
    let category = c
        .kubectl_ok(&["get", "keybrake", "-n", "billing", "-o", "name"])
        .await?;
    assert!(
        category.contains("vaultkey.keybrake.com/billing-agent-run-7f3a")
            && category.contains("spendpolicy.keybrake.com/stripe"),
        "{category}"
    );
    let yaml = get_run_key(&c, "yaml").await?;
    let parsed: keybrake_crds::VaultKey = serde_yaml_ng::from_str(&yaml)?;
    assert_eq!(
        parsed.status.unwrap().spend.unwrap().total_usd.to_string(),
        "12.50"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_streams_changes() -> Result<()> {
    let c = billing_cluster().await?;
    c.apply_ok(&example("stripe-run-key.yaml")).await?;
    let mut cmd =
        c.kubectl_command(&["get", "vk", "-n", "billing", "-w", "--output-watch-events"])?;
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .unwrap_or_default();
    assert!(first.contains("EVENT"), "{first}");
    let added = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .unwrap_or_default();
    assert!(
        added.starts_with("ADDED") && added.contains("billing-agent-run-7f3a"),
        "{added}"
    );
    merge_patch_run_key(&c, true, r#"{"status":{"phase":"Revoked"}}"#).await?;
    let modified = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .unwrap_or_default();
    assert!(
        modified.starts_with("MODIFIED") && modified.contains("Revoked"),
        "{modified}"
    );
    c.kubectl_ok(&["delete", "vk", "-n", "billing", "billing-agent-run-7f3a"])
        .await?;
    let deleted = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .unwrap_or_default();
    assert!(deleted.starts_with("DELETED"), "{deleted}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_spec_status_and_events() -> Result<()> {
    let c = billing_cluster().await?;
    c.apply_ok(&example("stripe-run-key.yaml")).await?;
    let uid = get_run_key(&c, "jsonpath={.metadata.uid}").await?;
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: billing-agent-run-7f3a.cap\n  namespace: billing\n\
         involvedObject:\n  apiVersion: keybrake.com/v1alpha1\n  kind: VaultKey\n  name: billing-agent-run-7f3a\n  namespace: billing\n  uid: {uid}\n\
         type: Warning\nreason: CapReached\nmessage: daily cap 500.00 reached\nsource:\n  component: keybrake-proxy\n\
         firstTimestamp: \"2026-11-22T10:00:00Z\"\nlastTimestamp: \"2026-11-22T10:00:00Z\"\ncount: 1\n"
    );
    c.apply_ok(&event).await?;
    let described = c
        .kubectl_ok(&["describe", "vk", "-n", "billing", "billing-agent-run-7f3a"])
        .await?;
    assert!(
        described.contains("Run Label:  hatchet/billing-agent/7f3a9c2e"),
        "{described}"
    );
    assert!(
        described.contains("CapReached") && described.contains("daily cap 500.00 reached"),
        "{described}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_merge_and_status_subresource() -> Result<()> {
    let c = billing_cluster().await?;
    c.apply_ok(&example("stripe-run-key.yaml")).await?;
    let get = |field: &'static str| {
        let c = &c;
        async move { get_run_key(c, &jsonpath(field)).await }
    };
    // A main-resource patch cannot write status; a status patch cannot write spec.
    merge_patch_run_key(
        &c,
        false,
        r#"{"spec":{"revoked":true},"status":{"phase":"Active"}}"#,
    )
    .await?;
    assert_eq!(
        get("{.spec.revoked} {.status.phase} {.metadata.generation}").await?,
        "true  2"
    );
    merge_patch_run_key(
        &c,
        true,
        r#"{"spec":{"revoked":false},"status":{"phase":"Revoked"}}"#,
    )
    .await?;
    assert_eq!(
        get("{.spec.revoked} {.status.phase} {.metadata.generation}").await?,
        "true Revoked 2"
    );
    // A patch that changes nothing bumps nothing.
    let rv = get("{.metadata.resourceVersion}").await?;
    let out = merge_patch_run_key(&c, false, r#"{"spec":{"revoked":true}}"#).await?;
    assert!(out.contains("no change"), "{out}");
    assert_eq!(get("{.metadata.resourceVersion}").await?, rv);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_without_and_with_a_pending_finalizer() -> Result<()> {
    let c = billing_cluster().await?;
    c.apply_ok(&example("stripe-run-key.yaml")).await?;
    c.apply_ok(&example("stripe-worker-key.yaml")).await?;
    let out = c
        .kubectl_ok(&["delete", "vk", "-n", "billing", "billing-worker"])
        .await?;
    assert!(out.contains("deleted"), "{out}");
    let gone = c
        .kubectl(&["get", "vk", "-n", "billing", "billing-worker"], None)
        .await?;
    assert!(
        gone.code != 0 && gone.stderr.contains("NotFound"),
        "{gone:?}"
    );

    merge_patch_run_key(
        &c,
        false,
        r#"{"metadata":{"finalizers":["keybrake.com/revoke"]}}"#,
    )
    .await?;
    let deleting = c
        .kubectl_command(&["delete", "vk", "-n", "billing", "billing-agent-run-7f3a"])?
        .output();
    let deleting = tokio::spawn(deleting);
    // kubectl waits while the finalizer holds the object, now marked for deletion.
    let mut marked = String::new();
    for _ in 0..100 {
        marked = get_run_key(&c, "jsonpath={.metadata.deletionTimestamp}").await?;
        if !marked.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!marked.is_empty(), "deletionTimestamp was never set");
    assert!(
        !deleting.is_finished(),
        "kubectl delete returned while a finalizer held the object"
    );
    // No new finalizers while deleting.
    let refused = c
        .kubectl(
            &[
                "patch",
                "vk",
                "-n",
                "billing",
                "billing-agent-run-7f3a",
                "--type",
                "merge",
                "-p",
                r#"{"metadata":{"finalizers":["keybrake.com/revoke","other"]}}"#,
            ],
            None,
        )
        .await?;
    assert!(
        refused.stderr.contains("no new finalizers can be added"),
        "{refused:?}"
    );
    c.kubectl_ok(&[
        "patch",
        "vk",
        "-n",
        "billing",
        "billing-agent-run-7f3a",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers/0"}]"#,
    ])
    .await?;
    let done = tokio::time::timeout(Duration::from_secs(20), deleting).await???;
    assert!(done.status.success(), "{done:?}");
    assert!(String::from_utf8_lossy(&done.stdout).contains("deleted"));
    let gone = c
        .kubectl(
            &["get", "vk", "-n", "billing", "billing-agent-run-7f3a"],
            None,
        )
        .await?;
    assert!(gone.stderr.contains("NotFound"), "{gone:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_refused_naming_the_field() -> Result<()> {
    let c = billing_cluster().await?;
    let bad = "apiVersion: keybrake.com/v1alpha1\nkind: VaultKey\nmetadata:\n  name: bad\n  namespace: billing\n\
               spec:\n  policyRef:\n    name: stripe\n  dailyUsdCap: 12.5\n  ttl: 2d\n";
    let out = c.apply(bad).await?;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("The VaultKey \"bad\" is invalid"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("spec.dailyUsdCap: Invalid value: \"number\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("spec.ttl: Invalid value: \"2d\""),
        "{}",
        out.stderr
    );
    let cel = "apiVersion: keybrake.com/v1alpha1\nkind: VaultKey\nmetadata:\n  name: bad\n  namespace: billing\n\
               spec:\n  policyRef:\n    name: stripe\n  ttl: 2h\n  expiresAt: \"2030-01-01T00:00:00Z\"\n";
    let out = c.apply(cel).await?;
    assert!(
        out.stderr.contains("set dailyUsdCap or totalUsdCap"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("set ttl or expiresAt, not both"),
        "{}",
        out.stderr
    );
    let unknown = "apiVersion: keybrake.com/v1alpha1\nkind: VaultKey\nmetadata:\n  name: bad\n  namespace: billing\n\
                   spec:\n  policyRef:\n    name: stripe\n  dailyUsdCap: 1\n  dailyCap: 5\n";
    let out = c.apply(unknown).await?;
    assert!(
        out.stderr.contains("unknown field \"spec.dailyCap\""),
        "{}",
        out.stderr
    );
    let nothing = c
        .kubectl_ok(&["get", "vk", "-n", "billing", "-o", "name"])
        .await?;
    assert_eq!(nothing, "", "nothing half-written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_apply_with_strategic_merge_and_fold_string_data() -> Result<()> {
    let c = billing_cluster().await?;
    let read = || async {
        let b64 = c
            .kubectl_ok(&[
                "get",
                "secret",
                "-n",
                "billing",
                "stripe-credentials",
                "-o",
                "jsonpath={.data.apiKey}",
            ])
            .await?;
        anyhow::Ok(b64)
    };
    assert_eq!(
        read().await?,
        "c2tfdGVzdF9yZXBsYWNlX21lX3dpdGhfdGhlX3JlYWxfc2VjcmV0X2tleQ=="
    );
    let rotated = example("stripe-policy.yaml").replace(
        "sk_test_replace_me_with_the_real_secret_key",
        "sk_test_rotated",
    );
    let out = c.apply_ok(&rotated).await?;
    assert!(
        out.contains("secret/stripe-credentials configured"),
        "{out}"
    );
    assert_eq!(read().await?, "c2tfdGVzdF9yb3RhdGVk");
    let table = c.kubectl_ok(&["get", "secrets", "-n", "billing"]).await?;
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "TYPE", "DATA", "AGE"]),
        "{table}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_must_exist_and_deleting_one_empties_it() -> Result<()> {
    let c = billing_cluster().await?;
    let elsewhere = example("twilio-policy.yaml");
    let out = c.apply(&elsewhere).await?;
    assert!(
        out.stderr.contains("namespaces \"agents\" not found"),
        "{out:?}"
    );
    c.apply_ok(&example("stripe-run-key.yaml")).await?;
    c.kubectl_ok(&["delete", "namespace", "billing"]).await?;
    let left = c.kubectl_ok(&["get", "vk", "-A", "-o", "name"]).await?;
    assert_eq!(left, "");
    let ns = c.kubectl(&["get", "namespace", "billing"], None).await?;
    assert!(ns.stderr.contains("NotFound"), "{ns:?}");
    Ok(())
}
