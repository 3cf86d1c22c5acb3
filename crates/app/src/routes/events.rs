//! `GET /v1/commands/{id}/events`: Server-Sent Events from the stored event log, so any
//! replica can serve them and `Last-Event-ID` resumes exactly after the last event seen.
//!
//! Each stream's events are produced by a task of its own into a small channel whose receiver
//! is the response body. actix polls the body only while the client takes what it sent, so a
//! body that produced its events itself would simply stop with a client that stops reading,
//! keep its key's stream slot forever and miss revocation and draining. The task notices all
//! of that while it waits for room, and cuts off a client that took nothing for
//! `sse_send_timeout` (counted in `sse_slow_consumers_total`). Meanwhile such a client holds
//! one batch read from the store and a few small chunks, never a growing backlog.

use std::collections::VecDeque;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use domain::ids::CommandId;
use domain::output::{CommandEvent, EventKind};
use futures::{stream, StreamExt};
use services::open_requests::{OpenRequest, RequestKind, TooManyStreams};
use services::signalling::SAFETY_POLL;
use services::Principal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::commands::CommandBody;
use crate::http::connection::Connection;
use crate::http::problem::Problem;
use crate::http::{parse_id, ApiError, ApiResult, Caller};
use crate::state::AppState;

/// Events read per store round trip.
const BATCH: u32 = 200;
/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// A chunk ends with the first event that takes it to this size (or with the exit): what a
/// client that stopped reading holds is a few of these, not a few whole batches.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks produced ahead of what actix took: one rendering while one waits keeps a reading
/// client busy, and a client that stops reading holds no more than these.
const QUEUED_CHUNKS: usize = 2;
/// Default of how long a stream waits for a client that stopped reading before it cuts the
/// connection: far longer than any reading client's pause, short enough not to pile them up.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

struct Tail {
    state: web::Data<AppState>,
    principal: Principal,
    id: CommandId,
    after: i64,
    changes: tokio::sync::watch::Receiver<u64>,
    /// The store may hold events not read yet: at the start, after a batch, after a tick.
    dirty: bool,
    done: bool,
    /// Events read but not yet rendered: a batch goes out in chunks of about `CHUNK_BYTES`.
    pending: VecDeque<CommandEvent>,
    /// Ends the stream when the key is revoked or expires; frees the key's stream slot on drop.
    open: OpenRequest,
}

/// Streams a command's output, status changes and exit.
#[utoipa::path(get, path = "/v1/commands/{id}/events", tag = "commands", operation_id = "stream_command_events", params(("id" = uuid::Uuid, Path, description = "Command id"), ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (a non-negative integer)")), responses(
    (status = 200, description = "text/event-stream of `output`, `status` and `exit` events", content_type = "text/event-stream", body = crate::openapi::schemas::CommandEvent),
    (status = 400, description = "Not a UUID, or a bad Last-Event-ID", body = Problem), (status = 401, description = "Unauthenticated", body = Problem),
    (status = 403, description = "Missing scope", body = Problem), (status = 404, description = "No such command", body = Problem),
    (status = 429, description = "Rate limited, or the key already holds `MAX_STREAMS_PER_KEY` streams", body = Problem)))]
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = parse_id::<CommandId>(&id)?;
    let after = last_event_id(&req)?;
    // Check access (and existence) before the stream starts, so errors are plain problems.
    state.commands.get(&caller.principal, id).await?;
    let open = state
        .open_requests
        .open(&caller.key, RequestKind::Stream)
        .map_err(|TooManyStreams { limit }| ApiError::TooManyStreams(limit))?;
    let changes = state.commands.watch(id);
    let tail = Tail {
        state,
        principal: caller.principal,
        id,
        after,
        changes,
        dirty: true,
        done: false,
        pending: VecDeque::new(),
        open,
    };
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    // Cancelled when actix drops the body: the response ended, or the connection did.
    let body_dropped = CancellationToken::new();
    let guard = body_dropped.clone().drop_guard();
    tokio::spawn(produce(tail, tx, body_dropped, Connection::of(&req)));
    let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) }).map(move |chunk| {
        let _alive = &guard;
        Ok::<_, actix_web::Error>(chunk)
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

fn last_event_id(req: &HttpRequest) -> ApiResult<i64> {
    match req.headers().get("last-event-id") {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be a non-negative integer event id")),
    }
}

/// Why a stream's producer stopped.
#[derive(Debug)]
enum Stop {
    /// Everything due was queued (the exit), or the stream cannot go on (a store error).
    Finished,
    /// The client went away.
    Gone,
    /// The client took nothing for the send timeout.
    SlowConsumer,
    /// The stream must end now: its key was revoked or expired, or the replica is draining.
    Ended(&'static str),
}

const REVOKED: Stop = Stop::Ended("its API key was revoked or expired");
// The events are in the store: the client resumes on another replica with `Last-Event-ID`,
// which SSE clients send by themselves when they reconnect.
const DRAINING: Stop = Stop::Ended("the replica is draining");

/// Longest a stream that must end (revoked, draining) waits for its client to take what is
/// queued before it cuts the connection: revocation ends streams within about a second.
const END_GRACE: Duration = Duration::from_secs(1);

/// Produces the stream's chunks into `tx` until it ends, then makes sure the connection ends
/// too: a client that does not take the rest in time is cut off rather than waited for.
async fn produce(mut tail: Tail, tx: mpsc::Sender<Bytes>, body_dropped: CancellationToken, conn: Option<Connection>) {
    let (id, timeout) = (tail.id, tail.state.http.sse_send_timeout);
    let stop = loop {
        let chunk = match next_chunk(&mut tail, &tx).await {
            Ok(chunk) => chunk,
            Err(stop) => break stop,
        };
        if let Err(stop) = send(&tx, chunk, timeout, &tail.open, &tail.state.draining).await {
            break stop;
        }
        if tail.done {
            break Stop::Finished;
        }
    };
    // The key's stream slot is free from here on, whatever the connection still does.
    drop(tail);
    // Dropping the sender ends the body once actix has taken what is queued; the body is
    // dropped then (or with the connection), which is how the end is known to be taken.
    drop(tx);
    let taken = |within| async move { tokio::time::timeout(within, body_dropped.cancelled()).await.is_ok() };
    let slow = match stop {
        Stop::Finished | Stop::Gone => !taken(timeout).await,
        Stop::SlowConsumer => true,
        Stop::Ended(why) => {
            tracing::info!(command_id = %id, "event stream closed: {why}");
            if !taken(END_GRACE.min(timeout)).await {
                tracing::info!(command_id = %id, "its client was not reading: connection cut");
                cut(conn.as_ref());
            }
            false
        }
    };
    if slow {
        tracing::warn!(command_id = %id, timeout_secs = timeout.as_secs_f64(), "event stream closed: its client stopped reading");
        metrics::counter!(services::metrics::SSE_SLOW_CONSUMERS_TOTAL).increment(1);
        cut(conn.as_ref());
    }
}

/// Ends the connection under actix, which waits on a client that does not read.
fn cut(conn: Option<&Connection>) {
    if let Some(conn) = conn {
        conn.cut();
    }
}

/// Queues `chunk` for the client; waits at most `timeout` for room, and not past the end of
/// the stream's right to exist (`open` ended, or `draining`).
async fn send(
    tx: &mpsc::Sender<Bytes>,
    chunk: Bytes,
    timeout: Duration,
    open: &OpenRequest,
    draining: &CancellationToken,
) -> Result<(), Stop> {
    let chunk = match tx.try_send(chunk) {
        Ok(()) => return Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop::Gone),
        Err(mpsc::error::TrySendError::Full(chunk)) => chunk,
    };
    tokio::select! {
        sent = tx.send(chunk) => sent.map_err(|_| Stop::Gone),
        () = tokio::time::sleep(timeout) => Err(Stop::SlowConsumer),
        () = open.ended() => Err(REVOKED),
        () = draining.cancelled() => Err(DRAINING),
    }
}

/// The next chunk of events (or a keepalive), or why the stream stops.
async fn next_chunk(tail: &mut Tail, tx: &mpsc::Sender<Bytes>) -> Result<Bytes, Stop> {
    let idle_since = tokio::time::Instant::now();
    loop {
        if tail.open.is_ended() {
            return Err(REVOKED);
        }
        if tail.state.draining.is_cancelled() {
            return Err(DRAINING);
        }
        if tx.is_closed() {
            return Err(Stop::Gone);
        }
        if tail.pending.is_empty() && tail.dirty {
            // Seen before the read: a change during the read wakes the next wait.
            tail.changes.borrow_and_update();
            match tail.state.commands.events_after(&tail.principal, tail.id, tail.after, BATCH).await {
                Ok(batch) => {
                    // A batch may not be all there is: read again once it is sent. An empty one
                    // is: nothing to read until the command's channel ticks.
                    tail.dirty = !batch.is_empty();
                    tail.pending.extend(batch);
                }
                Err(e) => {
                    tracing::warn!(command_id = %tail.id, error = %e, "event stream ended early");
                    return Err(Stop::Finished);
                }
            }
        }
        if !tail.pending.is_empty() {
            return Ok(Bytes::from(render(tail).await));
        }
        let keepalive_at = idle_since + KEEPALIVE;
        if tokio::time::Instant::now() >= keepalive_at {
            return Ok(Bytes::from_static(b": keepalive\n\n"));
        }
        // Woken by the command's own changes, pushed here or by another replica, or found by
        // the replica's shared `SafetyPoll`; an idle stream reads nothing, not even for its
        // keepalive.
        tokio::select! {
            changed = tokio::time::timeout_at(keepalive_at, tail.changes.changed()) => match changed {
                Ok(Ok(())) => tail.dirty = true,
                // Keepalive due.
                Err(_) => {}
                // The hub keeps a command's channel while a receiver lives, so this is not
                // expected; poll at the safety interval rather than spin.
                Ok(Err(_)) => {
                    tail.dirty = true;
                    tokio::time::sleep_until(keepalive_at.min(tokio::time::Instant::now() + SAFETY_POLL)).await;
                }
            },
            () = tail.open.ended() => {}
            () = tail.state.draining.cancelled() => {}
            // A client that hung up ends its task at once, not at the next keepalive.
            () = tx.closed() => {}
        }
    }
}

/// Renders pending events into one chunk of about `CHUNK_BYTES` at most; the exit ends it.
async fn render(tail: &mut Tail) -> String {
    let mut out = String::new();
    while out.len() < CHUNK_BYTES {
        let Some(event) = tail.pending.pop_front() else { break };
        tail.after = event.seq;
        let (name, data) = match &event.kind {
            EventKind::Output { stream, data } => {
                ("output", serde_json::json!({"stream": stream.as_str(), "data": data}))
            }
            EventKind::Status(s) => ("status", serde_json::json!({"status": s.as_str()})),
            EventKind::Exit => {
                tail.done = true;
                match tail.state.commands.get(&tail.principal, tail.id).await {
                    Ok(view) => ("exit", serde_json::to_value(CommandBody::from(view)).unwrap_or_default()),
                    Err(e) => ("exit", serde_json::json!({"error": e.to_string()})),
                }
            }
        };
        out.push_str(&format!("id: {}\nevent: {name}\ndata: {data}\n\n", event.seq));
        if tail.done {
            tail.pending.clear();
            break;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::expect_used, reason = "tests: a failed expectation is a failed test")]
mod tests {
    use std::sync::Arc;

    use domain::api_key::{ProjectAccess, Scope};
    use domain::testing::{sample_key, ManualClock, MemoryStore};
    use services::open_requests::OpenRequests;

    use super::*;

    /// A channel whose client takes nothing (it is full), a stream registered for a key, and
    /// the registry to revoke that key in.
    fn blocked() -> (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>, Arc<OpenRequests>, OpenRequest, domain::ids::ApiKeyId)
    {
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(Bytes::from_static(b"queued")).expect("room for one");
        let registry =
            Arc::new(OpenRequests::new(Arc::new(MemoryStore::new()), Arc::new(ManualClock::at_fixed_start()), 4));
        let (key, _) = sample_key("k", &[Scope::Admin], ProjectAccess::All);
        let open = registry.open(&key, RequestKind::Stream).expect("open");
        (tx, rx, registry, open, key.id)
    }

    /// Longer than any of these tests may take.
    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_client_that_takes_nothing_is_given_up_at_the_send_timeout() {
        let (tx, _rx, _registry, open, _) = blocked();
        let idle = CancellationToken::new();
        let stop = send(&tx, Bytes::new(), Duration::from_millis(50), &open, &idle).await;
        assert!(matches!(stop, Err(Stop::SlowConsumer)), "{stop:?}");
    }

    #[tokio::test]
    async fn revocation_and_draining_end_a_send_the_client_does_not_take() {
        let (tx, _rx, registry, open, key) = blocked();
        let idle = CancellationToken::new();
        let revoke = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            registry.end_key(key);
        };
        let (stop, ()) =
            tokio::time::timeout(LONG, async { tokio::join!(send(&tx, Bytes::new(), LONG, &open, &idle), revoke) })
                .await
                .expect("ended by the revocation");
        assert!(matches!(stop, Err(Stop::Ended(_))), "{stop:?}");

        let (tx, _rx, _registry, open, _) = blocked();
        let draining = CancellationToken::new();
        let drain = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            draining.cancel();
        };
        let (stop, ()) = tokio::join!(send(&tx, Bytes::new(), LONG, &open, &draining), drain);
        assert!(matches!(stop, Err(Stop::Ended(_))), "{stop:?}");
    }

    #[tokio::test]
    async fn a_client_that_left_or_takes_its_chunk_ends_the_wait() {
        let (tx, mut rx, _registry, open, _) = blocked();
        let idle = CancellationToken::new();
        let take = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            rx.recv().await
        };
        let (sent, taken) = tokio::join!(send(&tx, Bytes::new(), LONG, &open, &idle), take);
        assert!(sent.is_ok() && taken.is_some());

        let (tx, rx, _registry, open, _) = blocked();
        let leave = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(rx);
        };
        let (stop, ()) = tokio::join!(send(&tx, Bytes::new(), LONG, &open, &idle), leave);
        assert!(matches!(stop, Err(Stop::Gone)), "{stop:?}");
    }
}
