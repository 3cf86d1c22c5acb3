//! `GET /v1/commands/{id}/events`: Server-Sent Events from the stored event log, so any
//! replica can serve them and `Last-Event-ID` resumes exactly after the last event seen.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use domain::ids::CommandId;
use domain::output::{CommandEvent, EventKind};
use futures::stream;
use services::open_requests::{OpenRequest, RequestKind, TooManyStreams};
use services::signalling::SAFETY_POLL;
use services::Principal;

use super::commands::CommandBody;
use crate::http::problem::Problem;
use crate::http::{parse_id, ApiError, ApiResult, Caller};
use crate::state::AppState;

/// Events read per store round trip.
const BATCH: u32 = 200;
/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

struct Tail {
    state: web::Data<AppState>,
    principal: Principal,
    id: CommandId,
    after: i64,
    changes: tokio::sync::watch::Receiver<u64>,
    done: bool,
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
    let tail = Tail { state, principal: caller.principal, id, after, changes, done: false, open };
    let body = stream::unfold(tail, next_chunk);
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

async fn next_chunk(mut tail: Tail) -> Option<(Result<Bytes, actix_web::Error>, Tail)> {
    if tail.done {
        return None;
    }
    let idle_since = tokio::time::Instant::now();
    loop {
        if tail.open.is_ended() {
            tracing::info!(command_id = %tail.id, "event stream closed: its API key was revoked or expired");
            return None;
        }
        // The events are in the store: the client resumes on another replica with
        // `Last-Event-ID`, which SSE clients send by themselves when they reconnect.
        if tail.state.draining.is_cancelled() {
            tracing::info!(command_id = %tail.id, "event stream closed: the replica is draining");
            return None;
        }
        let batch = match tail.state.commands.events_after(&tail.principal, tail.id, tail.after, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(command_id = %tail.id, error = %e, "event stream ended early");
                return None;
            }
        };
        if !batch.is_empty() {
            let text = render(&mut tail, &batch).await;
            return Some((Ok(Bytes::from(text)), tail));
        }
        let keepalive_at = idle_since + KEEPALIVE;
        if tokio::time::Instant::now() >= keepalive_at {
            return Some((Ok(Bytes::from_static(b": keepalive\n\n")), tail));
        }
        // Woken by the command's own changes; the store is re-read otherwise only at the
        // safety poll or when a keepalive is due.
        let wake_at = keepalive_at.min(tokio::time::Instant::now() + SAFETY_POLL);
        tokio::select! {
            _ = tokio::time::timeout_at(wake_at, tail.changes.changed()) => {}
            () = tail.open.ended() => {}
            () = tail.state.draining.cancelled() => {}
        }
    }
}

async fn render(tail: &mut Tail, batch: &[CommandEvent]) -> String {
    let mut out = String::new();
    for event in batch {
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
            break;
        }
    }
    out
}
