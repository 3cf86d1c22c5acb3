//! `coordination.k8s.io/v1` leases: create, get, list, replace (optimistic concurrency on
//! `metadata.resourceVersion`), delete.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::StatusCode;
use serde_json::{json, Value};

use super::pods::{delete_options, strip_type_meta};
use crate::lease::{self, API_VERSION, GROUP, RESOURCE};
use crate::query::Query;
use crate::selector::{FieldSelector, LabelSelector, LEASE_FIELDS};
use crate::state::Sim;
use crate::status::{json_response, ApiError};

fn known_namespace(sim: &Sim, namespace: &str) -> Result<(), ApiError> {
    sim.namespace(namespace).map(|_| ()).ok_or_else(|| ApiError::not_found("namespaces", namespace))
}

/// `POST /apis/coordination.k8s.io/v1/namespaces/{ns}/leases`: 201 with the stored Lease.
pub(crate) async fn create(
    State(sim): State<Arc<Sim>>,
    Path(ns): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let created = known_namespace(&sim, &ns).and_then(|()| lease::decode(&body, &ns, None)).and_then(|decoded| {
        let mut object = decoded.object;
        lease::stamp_created(&mut object, &uuid::Uuid::new_v4().to_string(), Utc::now());
        if Query::parse(raw.as_deref()).has("dryRun") {
            return Ok(object);
        }
        sim.insert_lease(object)
    });
    match created {
        Ok(object) => json_response(StatusCode::CREATED, &object),
        Err(e) => e.into_response(),
    }
}

/// `GET …/leases/{name}`.
pub(crate) async fn get(State(sim): State<Arc<Sim>>, Path((ns, name)): Path<(String, String)>) -> Response {
    if let Err(e) = known_namespace(&sim, &ns) {
        return e.into_response();
    }
    match sim.lease(&ns, &name) {
        Some(object) => json_response(StatusCode::OK, &object),
        None => ApiError::not_found_in(GROUP, RESOURCE, &name).into_response(),
    }
}

/// `PUT …/leases/{name}`: 200 with the replaced Lease, 201 when it was created.
pub(crate) async fn replace(
    State(sim): State<Arc<Sim>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let replaced = known_namespace(&sim, &ns)
        .and_then(|()| lease::decode(&body, &ns, Some(&name)))
        .and_then(|decoded| sim.replace_lease(decoded));
    match replaced {
        Ok((object, true)) => json_response(StatusCode::CREATED, &object),
        Ok((object, false)) => json_response(StatusCode::OK, &object),
        Err(e) => e.into_response(),
    }
}

/// `DELETE …/leases/{name}`: 200 with a Success Status (leases do not return the object),
/// honouring the `uid` and `resourceVersion` preconditions.
pub(crate) async fn delete(
    State(sim): State<Arc<Sim>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let removed = known_namespace(&sim, &ns)
        .and_then(|()| delete_options(&Query::parse(raw.as_deref()), &body))
        .and_then(|opts| {
            if opts.dry_run {
                return sim.lease(&ns, &name).ok_or_else(|| ApiError::not_found_in(GROUP, RESOURCE, &name));
            }
            sim.remove_lease(&ns, &name, opts.uid.as_deref(), opts.resource_version.as_deref())
        });
    match removed {
        Ok(object) => {
            let uid = object.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
            json_response(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "group": GROUP, "kind": RESOURCE, "uid": uid}}),
            )
        }
        Err(e) => e.into_response(),
    }
}

/// `GET …/namespaces/{ns}/leases`.
pub(crate) async fn list(State(sim): State<Arc<Sim>>, Path(ns): Path<String>, RawQuery(raw): RawQuery) -> Response {
    if let Err(e) = known_namespace(&sim, &ns) {
        return e.into_response();
    }
    list_in(&sim, Some(&ns), raw.as_deref())
}

/// `GET /apis/coordination.k8s.io/v1/leases`: every namespace.
pub(crate) async fn list_all(State(sim): State<Arc<Sim>>, RawQuery(raw): RawQuery) -> Response {
    list_in(&sim, None, raw.as_deref())
}

fn list_in(sim: &Sim, ns: Option<&str>, raw: Option<&str>) -> Response {
    let query = Query::parse(raw);
    if query.flag("watch") {
        return ApiError::bad_request("kube-sim does not support watching leases").into_response();
    }
    let labels = match LabelSelector::parse(query.get("labelSelector").unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    let fields = match FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), LEASE_FIELDS) {
        Ok(s) => s,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    let (rv, leases) = sim.leases(ns);
    let items: Vec<Value> = leases
        .into_iter()
        .filter(|l| labels.matches(l.pointer("/metadata/labels")) && fields.matches(l))
        .map(strip_type_meta)
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "LeaseList", "apiVersion": API_VERSION, "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}
