//! `pods/exec`: the WebSocket handshake with the channel subprotocols, and the checks the
//! apiserver makes before it (answered as plain HTTP `Status` errors).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::resolve_container;
use crate::exec::{ExecSession, Protocol};
use crate::pod;
use crate::query::Query;
use crate::state::Sim;
use crate::status::ApiError;

/// What the apiserver checks before it upgrades, in its order; `Err` is the HTTP answer.
fn prepare(sim: &Arc<Sim>, ns: &str, name: &str, query: &Query) -> Result<ExecSession, ApiError> {
    let current = sim.namespace(ns).and_then(|_| sim.pod(ns, name)).ok_or_else(|| ApiError::not_found("pods", name))?;
    let container = resolve_container(&current, name, query.get("container"))?;
    if !pod::is_scheduled(&current) {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    let command = query.all("command");
    if command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let (stdin, stdout, stderr) = (query.flag("stdin"), query.flag("stdout"), query.flag("stderr"));
    if !(stdin || stdout || stderr) {
        return Err(ApiError::bad_request("you must specify at least 1 of stdin, stdout, stderr"));
    }
    Ok(ExecSession {
        sim: Arc::clone(sim),
        namespace: ns.to_owned(),
        pod: name.to_owned(),
        uid: pod::meta_str(&current, "uid").unwrap_or_default().to_owned(),
        container,
        command,
        stdin,
        stdout,
        stderr,
        protocol: Protocol::V5,
    })
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Picks the subprotocol: v5 whenever offered (it has the stdin CLOSE signal), else v4.
fn negotiate(headers: &HeaderMap) -> Result<Protocol, ApiError> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.iter().any(|p| p == Protocol::V5.name()) {
        Ok(Protocol::V5)
    } else if offered.iter().any(|p| p == Protocol::V4.name()) {
        Ok(Protocol::V4)
    } else {
        Err(ApiError::bad_request(format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [{} {}]",
            Protocol::V5.name(),
            Protocol::V4.name()
        )))
    }
}

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec`.
pub(crate) async fn exec(
    State(sim): State<Arc<Sim>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    mut request: Request,
) -> Response {
    let query = Query::parse(raw.as_deref());
    let mut session = match prepare(&sim, &ns, &name, &query) {
        Ok(session) => session,
        Err(e) => return e.into_response(),
    };
    let headers = request.headers();
    let upgrade = headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    if upgrade.starts_with("spdy") {
        // kubectl retries over SPDY after a failed WebSocket upgrade; it prints this Status.
        return ApiError::bad_request(
            "kube-sim serves pods/exec over WebSocket only (v5.channel.k8s.io, v4.channel.k8s.io); SPDY is not supported",
        )
        .into_response();
    }
    if upgrade != "websocket"
        || !header_has_token(headers, header::CONNECTION, "upgrade")
        || request.method() != Method::GET
    {
        return ApiError::bad_request("Upgrade request required").into_response();
    }
    let version_ok = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) =
        headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| version_ok).map(|k| derive_accept_key(k.as_bytes()))
    else {
        return ApiError::bad_request(
            "unable to upgrade: missing Sec-WebSocket-Key or unsupported Sec-WebSocket-Version",
        )
        .into_response();
    };
    session.protocol = match negotiate(headers) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let protocol = session.protocol.name();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                session.run(socket).await;
            }
            Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
        }
    });
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, key)
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(Body::empty());
    response.unwrap_or_else(|_| ApiError::injected(500).into_response())
}
