//! `/_sim/`: fault injection and test hooks (plain JSON, never faulted, no auth).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use super::resolve_container;
use crate::faults::Faults;
use crate::kubelet;
use crate::pod;
use crate::query::Query;
use crate::state::Sim;
use crate::status::{json_response, ApiError};

fn control_error(status: StatusCode, message: String) -> Response {
    json_response(status, &json!({"error": message}))
}

/// `GET /_sim/faults`.
pub(crate) async fn get_faults(State(sim): State<Arc<Sim>>) -> Response {
    json_response(StatusCode::OK, &json!(sim.faults.get()))
}

/// `POST /_sim/faults`: replaces the faults; answers them.
pub(crate) async fn set_faults(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return control_error(StatusCode::BAD_REQUEST, format!("invalid faults: {e}")),
    };
    if let Err(e) = faults.validate() {
        return control_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    tracing::info!(?faults, "faults injected");
    sim.faults.set(faults.clone());
    json_response(StatusCode::OK, &json!(faults))
}

/// `DELETE /_sim/faults`.
pub(crate) async fn clear_faults(State(sim): State<Arc<Sim>>) -> Response {
    sim.faults.set(Faults::default());
    json_response(StatusCode::OK, &json!({}))
}

/// `POST /_sim/pods/{ns}/{name}/oom[?container=c]`: answers the updated Pod.
pub(crate) async fn oom(
    State(sim): State<Arc<Sim>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = Query::parse(raw.as_deref());
    match kubelet::oom_kill(&sim, &ns, &name, query.get("container").filter(|c| !c.is_empty())) {
        Ok(pod) => json_response(StatusCode::OK, &pod),
        Err(e) => e.into_response(),
    }
}

/// `POST /_sim/pods/{ns}/{name}/evict[?resource=memory|ephemeral-storage|pid]`: the kubelet
/// evicts the pod under node pressure; answers the updated Pod.
pub(crate) async fn evict(
    State(sim): State<Arc<Sim>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = Query::parse(raw.as_deref());
    let resource = query.get("resource").filter(|r| !r.is_empty()).unwrap_or("memory");
    match kubelet::evict(&sim, &ns, &name, resource) {
        Ok(pod) => json_response(StatusCode::OK, &pod),
        Err(e) => e.into_response(),
    }
}

/// `POST /_sim/compact`: compacts the watch history (see `Sim::compact`); answers
/// `{"resourceVersion":"N"}`, the oldest version a watch can resume from afterwards.
pub(crate) async fn compact(State(sim): State<Arc<Sim>>) -> Response {
    let rv = sim.compact();
    tracing::info!(resource_version = rv, "history compacted");
    json_response(StatusCode::OK, &json!({"resourceVersion": rv.to_string()}))
}

/// `GET /_sim/stats`: `{"api_requests":N,"pod_reads":M}`, every Kubernetes API request so far
/// (control requests excluded), refused and faulted ones included, and the single-pod reads
/// among them that got past the faults.
pub(crate) async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    json_response(StatusCode::OK, &json!({"api_requests": sim.api_requests(), "pod_reads": sim.pod_reads()}))
}

/// `GET /_sim/pods/{ns}/{name}/processes`: `{"pids":[…],"processes":[{"pid","container","command"}]}`.
pub(crate) async fn processes(State(sim): State<Arc<Sim>>, Path((ns, name)): Path<(String, String)>) -> Response {
    let Some(current) = sim.pod(&ns, &name) else {
        return ApiError::not_found("pods", &name).into_response();
    };
    let processes = sim.processes.list(pod::meta_str(&current, "uid").unwrap_or_default());
    let pids: Vec<i32> = processes.iter().map(|p| p.pid).collect();
    json_response(StatusCode::OK, &json!({"pids": pids, "processes": processes}))
}

/// `POST /_sim/pods/{ns}/{name}/log[?container=c]`: appends the body to the container log.
pub(crate) async fn append_log(
    State(sim): State<Arc<Sim>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let query = Query::parse(raw.as_deref());
    let Some(current) = sim.pod(&ns, &name) else {
        return ApiError::not_found("pods", &name).into_response();
    };
    let container = match resolve_container(&current, &name, query.get("container")) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mut text = String::from_utf8_lossy(&body).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    kubelet::append_log(&sim, &ns, &name, &container, &text);
    json_response(StatusCode::OK, &json!({}))
}
