//! Watch streams: one compact JSON event per line, flushed at once; selector-driven
//! ADDED/DELETED; bookmarks; `timeoutSeconds`; 410 Expired as an ERROR event.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast::error::RecvError, mpsc, watch};

use crate::{
    error::ApiError,
    request::Query,
    resources::Resource,
    store::{Event, EventType, Filter, Store},
    table::{self, Shape},
};

/// How often an idle watch with `allowWatchBookmarks` gets a bookmark, unless configured.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
/// The watch length when the client names none (the real server picks 30-60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The sending half of a streamed response body.
pub type FrameSender = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

fn line(type_: &str, object: Value) -> Bytes {
    let mut text = json!({"type": type_, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// The event a watcher with `filter` sees for a change, if any: a change that makes an object
/// match is ADDED, one that makes it stop matching is DELETED.
fn translate(ev: &Event, filter: &Filter) -> Option<EventType> {
    let now = filter.matches(&ev.object);
    let before = ev.previous.as_ref().is_some_and(|p| filter.matches(p));
    match ev.type_ {
        EventType::Added => now.then_some(EventType::Added),
        EventType::Deleted => (before || now).then_some(EventType::Deleted),
        EventType::Modified => match (before, now) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
    }
}

fn bookmark(res: &Resource, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta}),
    )
}

/// Starts a watch and streams it into `tx` until the timeout, the client leaves, the client
/// lags behind (410), or the server shuts down. One loop: the initial events, bookmarks and the
/// end conditions share the stream's state.
#[allow(clippy::too_many_arguments)] // the parts of one watch request
pub async fn run(
    store: Arc<Store>,
    res: Arc<Resource>,
    ns: Option<String>,
    query: Query,
    shape: Shape,
    bookmark_every: Duration,
    tx: FrameSender,
    mut shutdown: watch::Receiver<bool>,
) {
    let send = |bytes: Bytes| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(bytes))).await.is_ok() }
    };
    let filter = match Filter::new(&res, ns.as_deref(), &query) {
        Ok(f) => f,
        Err(e) => {
            send(line("ERROR", e.to_status())).await;
            return;
        }
    };
    let mut initial_query = query.clone();
    if query.send_initial_events {
        initial_query.resource_version = None;
    }
    let start = { store.lock().watch(&res, ns.as_deref(), &initial_query) };
    let mut start = match start {
        Ok(s) => s,
        Err(e) => {
            send(line("ERROR", e.to_status())).await;
            return;
        }
    };
    let mut last_rv = start.rv;
    for ev in &start.initial {
        let shown = if ev.previous.is_none() && ev.type_ == EventType::Added {
            Some(EventType::Added)
        } else {
            translate(ev, &filter)
        };
        if let Some(t) = shown
            && !send(line(t.as_str(), table::render(&res, shape, &ev.object))).await
        {
            return;
        }
    }
    if query.send_initial_events && !send(bookmark(&res, last_rv, true)).await {
        return;
    }
    let deadline = tokio::time::sleep(
        query
            .timeout_seconds
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
    );
    tokio::pin!(deadline);
    loop {
        let idle = tokio::time::sleep(bookmark_every);
        tokio::select! {
            _ = &mut deadline => return,
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
            _ = idle, if query.allow_watch_bookmarks => {
                if !send(bookmark(&res, last_rv, false)).await { return; }
            }
            got = start.receiver.recv() => match got {
                // The receiver was subscribed under the same lock as the initial events, so
                // every event here is newer than them.
                Ok(ev) => {
                    last_rv = last_rv.max(ev.rv);
                    if ev.key != res.key() {
                        continue;
                    }
                    if let Some(t) = translate(&ev, &filter)
                        && !send(line(t.as_str(), table::render(&res, shape, &ev.object))).await
                    {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    let e = ApiError::expired(last_rv, store.lock().rv);
                    send(line("ERROR", e.to_status())).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
