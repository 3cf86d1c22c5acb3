//! Namespaces: read-only, and every valid name exists.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};

use crate::query::Query;
use crate::selector::{FieldSelector, LabelSelector, NAMESPACE_FIELDS};
use crate::state::Sim;
use crate::status::{json_response, ApiError};

/// `GET /api/v1/namespaces/{ns}`.
pub(crate) async fn get(State(sim): State<Arc<Sim>>, Path(name): Path<String>) -> Response {
    match sim.namespace(&name) {
        Some(namespace) => json_response(StatusCode::OK, &namespace),
        None => ApiError::not_found("namespaces", &name).into_response(),
    }
}

/// `GET /api/v1/namespaces`, with label and field selectors.
pub(crate) async fn list(State(sim): State<Arc<Sim>>, RawQuery(raw): RawQuery) -> Response {
    let query = Query::parse(raw.as_deref());
    if query.flag("watch") {
        return ApiError::bad_request("kube-sim does not support watching namespaces").into_response();
    }
    let labels = match LabelSelector::parse(query.get("labelSelector").unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    let fields = match FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), NAMESPACE_FIELDS) {
        Ok(s) => s,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    let (rv, namespaces) = sim.namespaces();
    let items: Vec<Value> = namespaces
        .into_iter()
        .filter(|ns| labels.matches(ns.pointer("/metadata/labels")) && fields.matches(ns))
        .map(super::pods::strip_type_meta)
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}
