//! Watch semantics under concurrency, resumption and expiry.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use keybrake_e2e::Cluster;
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::json;

const WRITERS: usize = 50;
const WRITES_EACH: usize = 5;
const WATCHERS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_writers_twenty_watchers_every_event_in_order() -> Result<()> {
    let cluster = Cluster::start().await?;
    let client = Client::try_from(Config::new(cluster.url().parse()?))?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let start_rv = cms
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap();

    let total = WRITERS * WRITES_EACH;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let cms = cms.clone();
        let rv = start_rv.clone();
        watchers.push(tokio::spawn(async move {
            let mut seen: Vec<(String, u64)> = Vec::new();
            let stream = cms.watch(&WatchParams::default().timeout(60), &rv).await?;
            futures::pin_mut!(stream);
            while seen.len() < total {
                match tokio::time::timeout(Duration::from_secs(30), stream.try_next()).await?? {
                    Some(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                        seen.push((o.name_any(), o.resource_version().unwrap().parse()?));
                    }
                    Some(WatchEvent::Bookmark(_)) => {}
                    Some(other) => anyhow::bail!("unexpected event {other:?}"),
                    None => anyhow::bail!("stream ended after {} events", seen.len()),
                }
            }
            anyhow::Ok(seen)
        }));
    }

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let cms = cms.clone();
        writers.push(tokio::spawn(async move {
            let name = format!("cm-{w}");
            let mut rvs = Vec::new();
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": name}, "data": {"n": "0"}}))?;
            rvs.push(
                cms.create(&PostParams::default(), &cm)
                    .await?
                    .resource_version()
                    .unwrap()
                    .parse::<u64>()?,
            );
            for i in 1..WRITES_EACH {
                let patched = cms
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"data": {"n": i.to_string()}})),
                    )
                    .await?;
                rvs.push(patched.resource_version().unwrap().parse()?);
            }
            anyhow::Ok((name, rvs))
        }));
    }
    let mut written: BTreeMap<u64, String> = BTreeMap::new();
    for w in writers {
        let (name, rvs) = w.await??;
        for rv in rvs {
            written.insert(rv, name.clone());
        }
    }
    assert_eq!(
        written.len(),
        total,
        "every write has its own resourceVersion"
    );
    let expected: Vec<(String, u64)> = written.iter().map(|(rv, n)| (n.clone(), *rv)).collect();
    for w in watchers {
        let seen = w.await??;
        assert_eq!(
            seen, expected,
            "a watcher missed, duplicated or reordered events"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_resource_version_is_a_410_error_event() -> Result<()> {
    let cluster = Cluster::start_with(kube_lite::Options {
        history: Some(8),
        ..Default::default()
    })
    .await?;
    let client = Client::try_from(Config::new(cluster.url().parse()?))?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let first = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "a"}}))?,
        )
        .await?;
    for i in 0..20 {
        cms.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"i": i.to_string()}})),
        )
        .await?;
    }
    let stream = cms
        .watch(&WatchParams::default(), &first.resource_version().unwrap())
        .await?;
    futures::pin_mut!(stream);
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(
                e.message.starts_with("too old resource version"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // A recent resourceVersion still resumes with the events after it.
    let latest = cms.get("a").await?.resource_version().unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"i": "last"}})),
    )
    .await?;
    let stream = cms.watch(&WatchParams::default(), &latest).await?;
    futures::pin_mut!(stream);
    match stream.next().await {
        Some(Ok(WatchEvent::Modified(o))) => assert_eq!(o.data.unwrap()["i"], "last"),
        other => panic!("expected the replayed change, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_watches_turn_changes_into_added_and_deleted() -> Result<()> {
    let cluster = Cluster::start().await?;
    let client = Client::try_from(Config::new(cluster.url().parse()?))?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    // From the list's resourceVersion: the history replays every change after it, however late
    // the server starts the watch relative to the writes below.
    let from = cms
        .list(&kube::api::ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let stream = cms
        .watch(&WatchParams::default().labels("team=a").timeout(30), &from)
        .await?;
    futures::pin_mut!(stream);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"team": "b"}}}))?,
    )
    .await?;
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await?;
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "c"}}})),
    )
    .await?;
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await?? {
            Some(WatchEvent::Added(_)) => kinds.push("ADDED"),
            Some(WatchEvent::Deleted(_)) => kinds.push("DELETED"),
            Some(WatchEvent::Modified(_)) => kinds.push("MODIFIED"),
            Some(WatchEvent::Error(e)) => {
                panic!("the watch ended with an error: {e:?} after {kinds:?}")
            }
            Some(WatchEvent::Bookmark(_)) => {}
            None => break,
        }
    }
    assert_eq!(kinds, ["ADDED", "DELETED"]);
    Ok(())
}
