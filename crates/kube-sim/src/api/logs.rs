//! `pods/log`: the container log as raw `text/plain`, optionally tailed and followed.

use std::convert::Infallible;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::resolve_container;
use crate::pod;
use crate::query::Query;
use crate::state::Sim;
use crate::status::ApiError;

/// How often a followed log is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

fn text(body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// The last `n` lines of `bytes` (a final line without newline counts).
fn tail(bytes: &[u8], n: u64) -> &[u8] {
    let mut seen = 0u64;
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &bytes[i + 1..];
            }
        }
    }
    if n == 0 {
        &bytes[bytes.len()..]
    } else {
        bytes
    }
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/log`.
pub(crate) async fn logs(
    State(sim): State<Arc<Sim>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = Query::parse(raw.as_deref());
    let Some(current) = sim.namespace(&ns).and_then(|_| sim.pod(&ns, &name)) else {
        return ApiError::not_found("pods", &name).into_response();
    };
    let container = match resolve_container(&current, &name, query.get("container")) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let (tail_lines, limit) = match (query.number("tailLines"), query.number("limitBytes")) {
        (Ok(t), Ok(l)) => (t, l),
        (Err(bad), _) | (_, Err(bad)) => {
            return ApiError::bad_request(format!("invalid number {bad:?}")).into_response()
        }
    };
    if !pod::is_scheduled(&current) {
        // The apiserver has no node to ask yet and answers an empty log.
        return text(Body::empty());
    }
    let status = pod::container_status(&current, &container).unwrap_or(Value::Null);
    if let Some(reason) = status.pointer("/state/waiting/reason").and_then(Value::as_str) {
        return ApiError::bad_request(format!("container {container:?} in pod {name:?} is waiting to start: {reason}"))
            .into_response();
    }
    let path = sim.log_path(&ns, &name, &container);
    let content = tokio::fs::read(&path).await.unwrap_or_default();
    let mut start = tail_lines.map_or(&content[..], |n| tail(&content, n)).to_vec();
    if let Some(limit) = limit.and_then(|l| usize::try_from(l).ok()) {
        start.truncate(limit);
    }
    if !query.flag("follow") || !pod::container_running(&current, &container) {
        return text(Body::from(start));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let watched = Followed {
        sim,
        ns,
        name,
        container: container.clone(),
        uid: pod::meta_str(&current, "uid").unwrap_or_default().to_owned(),
        restarts: status.get("restartCount").and_then(Value::as_u64).unwrap_or(0),
    };
    let offset = content.len() as u64;
    let budget = limit.map(|l| l.saturating_sub(start.len() as u64));
    tokio::spawn(async move {
        if !start.is_empty() && tx.send(Bytes::from(start)).await.is_err() {
            return;
        }
        watched.follow(path, offset, budget, tx).await;
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (Ok::<_, Infallible>(c), rx)) });
    text(Body::from_stream(stream))
}

/// A container whose log is being followed; the follow ends when that container stops.
#[derive(Debug)]
struct Followed {
    sim: Arc<Sim>,
    ns: String,
    name: String,
    container: String,
    uid: String,
    restarts: u64,
}

impl Followed {
    fn still_running(&self) -> bool {
        self.sim.pod(&self.ns, &self.name).is_some_and(|p| {
            let same_container = pod::container_status(&p, &self.container)
                .and_then(|s| s.get("restartCount").and_then(Value::as_u64))
                .is_some_and(|r| r == self.restarts);
            pod::meta_str(&p, "uid") == Some(self.uid.as_str())
                && same_container
                && pod::container_running(&p, &self.container)
        })
    }

    async fn follow(self, path: std::path::PathBuf, mut offset: u64, mut budget: Option<u64>, tx: mpsc::Sender<Bytes>) {
        loop {
            let running = self.still_running();
            let fresh = read_from(&path, offset).await;
            if !fresh.is_empty() {
                offset += fresh.len() as u64;
                let mut chunk = fresh;
                if let Some(left) = budget.as_mut() {
                    chunk.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= chunk.len() as u64;
                }
                if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
            }
            if !running || budget == Some(0) {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_POLL) => {}
                () = tx.closed() => return,
                () = self.sim.shutdown.cancelled() => return,
            }
        }
    }
}

async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(mut file) = tokio::fs::File::open(path).await {
        if file.seek(SeekFrom::Start(offset)).await.is_ok() {
            // A log that cannot be read now is read again at the next poll.
            let _ = file.read_to_end(&mut buf).await;
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 1), b"c");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }
}
