//! The HTTP routes: the Kubernetes API subset and the `/_sim/` control endpoint.

mod control;
mod discovery;
mod exec;
mod leases;
mod logs;
mod namespaces;
mod pods;
mod table;
mod watch;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::state::Sim;
use crate::status::ApiError;

/// Every route of the simulator.
pub(crate) fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::api))
        .route("/apis", get(discovery::apis))
        .route("/api/v1", get(discovery::api_v1))
        .route("/apis/coordination.k8s.io", get(discovery::coordination_group))
        .route("/apis/coordination.k8s.io/v1", get(discovery::coordination_v1))
        .route("/healthz", get(discovery::ok))
        .route("/livez", get(discovery::ok))
        .route("/readyz", get(discovery::ok))
        .route("/api/v1/namespaces", get(namespaces::list))
        .route("/api/v1/namespaces/{ns}", get(namespaces::get))
        .route("/api/v1/pods", get(pods::list_all))
        .route("/api/v1/namespaces/{ns}/pods", get(pods::list).post(pods::create).delete(pods::delete_collection))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(pods::get).delete(pods::delete))
        .route("/api/v1/namespaces/{ns}/pods/{name}/status", get(pods::get))
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(logs::logs))
        .route("/api/v1/namespaces/{ns}/pods/{name}/exec", get(exec::exec).post(exec::exec))
        .route("/api/v1/namespaces/{ns}/pods/{name}/eviction", post(pods::evict))
        .route("/apis/coordination.k8s.io/v1/leases", get(leases::list_all))
        .route("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", get(leases::list).post(leases::create))
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
            get(leases::get).put(leases::replace).delete(leases::delete),
        )
        .route("/_sim/faults", get(control::get_faults).post(control::set_faults).delete(control::clear_faults))
        .route("/_sim/compact", post(control::compact))
        .route("/_sim/stats", get(control::stats))
        .route("/_sim/pods/{ns}/{name}/oom", post(control::oom))
        .route("/_sim/pods/{ns}/{name}/evict", post(control::evict))
        .route("/_sim/pods/{ns}/{name}/processes", get(control::processes))
        .route("/_sim/pods/{ns}/{name}/log", post(control::append_log))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(sim)
}

async fn no_route() -> Response {
    ApiError::no_route().into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::method_not_allowed().into_response()
}

/// The container a log or exec request means: the named one, or the only one.
fn resolve_container(pod: &serde_json::Value, pod_name: &str, requested: Option<&str>) -> Result<String, ApiError> {
    let names = crate::pod::container_names(pod);
    match requested.filter(|c| !c.is_empty()) {
        Some(c) if names.iter().any(|n| n == c) => Ok(c.to_owned()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {pod_name}"))),
        None if names.len() == 1 => Ok(names.into_iter().next().unwrap_or_default()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            names.join(" ")
        ))),
    }
}
