//! Pod watches: one compact JSON event per line on a chunked `200`, ended after `timeoutSeconds`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

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
    match sim.watch(from) {
        Err(Expired { requested, oldest }) => {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {requested} ({oldest})"), "reason": "Expired", "code": 410});
            streaming(Body::from(line(&json!({"type": "ERROR", "object": status}))))
        }
        Ok(start) => {
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            tokio::spawn(pump(sim, filter, start, tx, timeout, bookmarks));
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), rx))
            });
            streaming(Body::from_stream(stream))
        }
    }
}

async fn pump(
    sim: Arc<Sim>,
    filter: Filter,
    start: WatchStart,
    tx: mpsc::Sender<Bytes>,
    timeout: Duration,
    bookmarks: bool,
) {
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
    loop {
        let event = tokio::select! {
            () = &mut deadline => break,
            () = sim.shutdown.cancelled() => return,
            () = tx.closed() => return,
            received = feed.recv() => match received {
                Ok(event) => event,
                // A watcher that fell behind is cut off; it re-watches from its last version.
                Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
            },
        };
        last_seen = last_seen.max(event.rv);
        if let Some(chunk) = filter.render(&event) {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    }
    if bookmarks {
        // Deliver what is already queued, so the bookmark skips nothing.
        while let Ok(event) = feed.try_recv() {
            last_seen = last_seen.max(event.rv);
            if let Some(chunk) = filter.render(&event) {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        }
        // The apiserver sends a bookmark before a watch times out, so the client resumes from it.
        let bookmark = json!({"type": "BOOKMARK",
            "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": last_seen.to_string()}}});
        let _ = tx.send(line(&bookmark)).await;
    }
}
