//! Pod watches: one compact JSON event per line on a chunked `200`, ended after `timeoutSeconds`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use super::pods::Selection;
use crate::query::Query;
use crate::state::{Event, EventType, Expired, Sim, WatchStart};
use crate::status::ApiError;

/// How long a watch runs when the client names no `timeoutSeconds` (the apiserver picks 30–60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Which pods a watch follows.
#[derive(Debug, Clone)]
struct Filter {
    namespace: Option<String>,
    selection: Selection,
}

impl Filter {
    fn matches(&self, pod: &Value) -> bool {
        let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str);
        self.namespace.as_deref().is_none_or(|n| Some(n) == ns) && self.selection.matches(pod)
    }

    /// The event this watcher sees: a pod entering the selection is ADDED to it, one leaving
    /// it is DELETED, as the apiserver's watch cache reports them.
    fn render(&self, event: &Event) -> Option<Bytes> {
        let now = self.matches(&event.object);
        let kind = match event.kind {
            EventType::Added if now => "ADDED",
            EventType::Deleted if now => "DELETED",
            EventType::Modified => match (event.prev.as_ref().is_some_and(|p| self.matches(p)), now) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                (true, false) => "DELETED",
                (false, false) => return None,
            },
            _ => return None,
        };
        Some(line(&json!({"type": kind, "object": event.object})))
    }
}

fn line(value: &Value) -> Bytes {
    let mut bytes = value.to_string().into_bytes();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn streaming(body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn expired(requested: u64, oldest: u64) -> Bytes {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("too old resource version: {requested} ({oldest})"), "reason": "Expired", "code": 410});
    line(&json!({"type": "ERROR", "object": status}))
}

fn bookmark(rv: u64) -> Bytes {
    line(&json!({"type": "BOOKMARK",
        "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}}))
}

/// Starts a watch for `GET …/pods?watch=true`.
pub(crate) fn respond(sim: Arc<Sim>, namespace: Option<String>, selection: Selection, query: &Query) -> Response {
    if query.has("sendInitialEvents") {
        return ApiError::send_initial_events_forbidden().into_response();
    }
    let from = match query.get("resourceVersion").filter(|rv| !rv.is_empty() && *rv != "0") {
        None => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return ApiError::bad_request(format!("invalid resource version: {rv:?}")).into_response(),
        },
    };
    let timeout = match query.number("timeoutSeconds") {
        Ok(t) => t.map_or(DEFAULT_TIMEOUT, Duration::from_secs),
        Err(bad) => return ApiError::bad_request(format!("invalid timeoutSeconds {bad:?}")).into_response(),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let filter = Filter { namespace, selection };
    // Subscribed before the start is read: a compaction after it ends this watch.
    let compactions = sim.compactions();
    match sim.watch(from) {
        Err(Expired { requested, oldest }) => streaming(Body::from(expired(requested, oldest))),
        Ok(start) => {
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            let options = PumpOptions { timeout, bookmarks, compactions };
            tokio::spawn(pump(sim, filter, start, tx, options));
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), rx))
            });
            streaming(Body::from_stream(stream))
        }
    }
}

/// How one watch runs.
#[derive(Debug)]
struct PumpOptions {
    timeout: Duration,
    bookmarks: bool,
    compactions: watch::Receiver<u64>,
}

/// What the pump is told to do next.
enum Step {
    Event(Arc<Event>),
    Bookmark,
    Compacted,
    End,
}

async fn pump(sim: Arc<Sim>, filter: Filter, start: WatchStart, tx: mpsc::Sender<Bytes>, options: PumpOptions) {
    let PumpOptions { timeout, bookmarks, mut compactions } = options;
    let WatchStart { rv: mut last_seen, initial, mut feed } = start;
    for event in &initial {
        if let Some(chunk) = filter.render(event) {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    // The apiserver sends bookmarks about once a minute; the sim's interval is configurable.
    let mut ticker = tokio::time::interval(sim.config.bookmark_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    loop {
        let step = tokio::select! {
            () = &mut deadline => Step::End,
            () = sim.shutdown.cancelled() => return,
            () = tx.closed() => return,
            changed = compactions.changed() => if changed.is_ok() { Step::Compacted } else { return },
            _ = ticker.tick(), if bookmarks => Step::Bookmark,
            received = feed.recv() => match received {
                Ok(event) => Step::Event(event),
                // A watcher that fell behind is cut off; it re-watches from its last version.
                Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
            },
        };
        match step {
            Step::Event(event) => {
                last_seen = last_seen.max(event.rv);
                if let Some(chunk) = filter.render(&event) {
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
            Step::Bookmark => match caught_up(&sim, &filter, &mut feed, &tx, last_seen).await {
                Some(rv) => {
                    last_seen = rv;
                    if tx.send(bookmark(rv)).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            Step::Compacted => {
                // As etcd's watch does when its revision is compacted away: one ERROR, then the end.
                let _ = tx.send(expired(last_seen, sim.current_rv())).await;
                return;
            }
            Step::End => break,
        }
    }
    if bookmarks {
        // The apiserver sends a bookmark before a watch times out, so the client resumes from it.
        if let Some(rv) = caught_up(&sim, &filter, &mut feed, &tx, last_seen).await {
            let _ = tx.send(bookmark(rv)).await;
        }
    }
}

/// Delivers every change already committed and returns the resourceVersion a bookmark may
/// carry: every pod change up to it has been sent. `None` when the client went away or the
/// watcher fell behind.
async fn caught_up(
    sim: &Sim,
    filter: &Filter,
    feed: &mut broadcast::Receiver<Arc<Event>>,
    tx: &mpsc::Sender<Bytes>,
    mut last_seen: u64,
) -> Option<u64> {
    // Events are broadcast under the store's lock, so every change up to `now` is queued already.
    let now = sim.current_rv();
    loop {
        match feed.try_recv() {
            Ok(event) => {
                last_seen = last_seen.max(event.rv);
                if let Some(chunk) = filter.render(&event) {
                    tx.send(chunk).await.ok()?;
                }
            }
            Err(broadcast::error::TryRecvError::Empty) => return Some(last_seen.max(now)),
            Err(_) => return None,
        }
    }
}
