//! Discovery documents kubectl reads before it does anything (legacy, non-aggregated form).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use crate::status::json_response;

/// `GET /version`: every field kube-rs's `apiserver_version()` requires.
pub(crate) async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "kube-sim",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64"}),
    )
}

/// `GET /api`: the core group's versions. Plain JSON makes client-go use legacy discovery.
pub(crate) async fn api() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
    )
}

/// The one named group served: `coordination.k8s.io` (leases).
fn coordination() -> serde_json::Value {
    let version = json!({"groupVersion": "coordination.k8s.io/v1", "version": "v1"});
    json!({"name": "coordination.k8s.io", "versions": [version.clone()], "preferredVersion": version})
}

/// `GET /apis`: the named groups (legacy discovery).
pub(crate) async fn apis() -> Response {
    json_response(StatusCode::OK, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [coordination()]}))
}

/// `GET /apis/coordination.k8s.io`: the group and its versions.
pub(crate) async fn coordination_group() -> Response {
    let mut group = coordination();
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    json_response(StatusCode::OK, &group)
}

/// `GET /apis/coordination.k8s.io/v1`: leases, with the verbs a real server lists (the ones
/// kube-sim lacks answer 405).
pub(crate) async fn coordination_v1() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "coordination.k8s.io/v1", "resources": [
            {"name": "leases", "singularName": "lease", "namespaced": true, "kind": "Lease",
             "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]},
        ]}),
    )
}

/// `GET /api/v1`: the resources the simulator serves, with the verbs a real server lists (the
/// ones kube-sim lacks answer 405).
pub(crate) async fn api_v1() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
             "shortNames": ["po"], "categories": ["all"]},
            {"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1",
             "kind": "Eviction", "verbs": ["create"]},
            {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]},
            {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
            {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get", "patch", "update"]},
        ]}),
    )
}

/// Health endpoints answer `ok` as the apiserver's do.
pub(crate) async fn ok() -> Response {
    (StatusCode::OK, "ok").into_response()
}
