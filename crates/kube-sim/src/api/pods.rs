//! Pods: create, get, list (and watch), delete.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::{table, watch};
use crate::kubelet::{self, DeleteOptions};
use crate::pod;
use crate::query::Query;
use crate::selector::{FieldSelector, LabelSelector, POD_FIELDS};
use crate::state::Sim;
use crate::status::{json_response, ApiError};

/// The label and field selectors of a list or watch.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selection {
    /// Reads `labelSelector` and `fieldSelector`; a bad one is a 400.
    pub(crate) fn from_query(query: &Query) -> Result<Self, ApiError> {
        let labels =
            LabelSelector::parse(query.get("labelSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), POD_FIELDS)
            .map_err(ApiError::bad_request)?;
        Ok(Self { labels, fields })
    }

    /// Whether the pod is selected.
    pub(crate) fn matches(&self, pod: &Value) -> bool {
        self.labels.matches(pod.pointer("/metadata/labels")) && self.fields.matches(pod)
    }
}

/// List items carry no `kind`/`apiVersion`, as the apiserver writes them.
pub(crate) fn strip_type_meta(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    object
}

fn known_namespace(sim: &Sim, namespace: &str) -> Result<(), ApiError> {
    sim.namespace(namespace).map(|_| ()).ok_or_else(|| ApiError::not_found("namespaces", namespace))
}

/// `POST /api/v1/namespaces/{ns}/pods`: 201 with the stored Pod, which then starts on its own.
pub(crate) async fn create(
    State(sim): State<Arc<Sim>>,
    Path(ns): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let query = Query::parse(raw.as_deref());
    if let Err(e) = known_namespace(&sim, &ns) {
        return e.into_response();
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")).into_response()
        }
    };
    let uid = uuid::Uuid::new_v4().to_string();
    let object = match pod::admit(body, &ns, &uid, Utc::now()) {
        Ok(object) => object,
        Err(e) => return e.into_response(),
    };
    if query.has("dryRun") {
        return json_response(StatusCode::CREATED, &object);
    }
    let name = pod::meta_str(&object, "name").unwrap_or_default().to_owned();
    if sim.pod(&ns, &name).is_some() {
        return ApiError::already_exists("pods", &name).into_response();
    }
    if let Err(e) = kubelet::prepare_dirs(&sim, &ns, &name).await {
        tracing::warn!(pod = %name, error = %e, "cannot create the pod's directory");
        return ApiError::injected(500).into_response();
    }
    match sim.insert_pod(object) {
        Ok(created) => {
            kubelet::run_pod(Arc::clone(&sim), (ns, name), uid);
            json_response(StatusCode::CREATED, &created)
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}` (and `/status`); a Table when kubectl asks.
pub(crate) async fn get(
    State(sim): State<Arc<Sim>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    sim.count_pod_read();
    if let Err(e) = known_namespace(&sim, &ns) {
        return e.into_response();
    }
    match sim.pod(&ns, &name) {
        Some(pod) if table::wanted(&headers) => {
            let rv = pod::meta_str(&pod, "resourceVersion").unwrap_or_default().to_owned();
            json_response(StatusCode::OK, &table::pods(&rv, &[pod], Utc::now()))
        }
        Some(pod) => json_response(StatusCode::OK, &pod),
        None => ApiError::not_found("pods", &name).into_response(),
    }
}

/// `GET /api/v1/namespaces/{ns}/pods`: list, or watch with `watch=true`.
pub(crate) async fn list(
    State(sim): State<Arc<Sim>>,
    Path(ns): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = known_namespace(&sim, &ns) {
        return e.into_response();
    }
    list_or_watch(sim, Some(ns), raw, &headers)
}

/// `GET /api/v1/pods`: every namespace.
pub(crate) async fn list_all(State(sim): State<Arc<Sim>>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    list_or_watch(sim, None, raw, &headers)
}

fn list_or_watch(sim: Arc<Sim>, ns: Option<String>, raw: Option<String>, headers: &HeaderMap) -> Response {
    let query = Query::parse(raw.as_deref());
    let selection = match Selection::from_query(&query) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if query.flag("watch") {
        return watch::respond(sim, ns, selection, &query);
    }
    let (rv, pods) = sim.pods(ns.as_deref());
    let pods: Vec<Value> = pods.into_iter().filter(|p| selection.matches(p)).collect();
    if table::wanted(headers) {
        return json_response(StatusCode::OK, &table::pods(&rv.to_string(), &pods, Utc::now()));
    }
    let items: Vec<Value> = pods.into_iter().map(strip_type_meta).collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}

/// Reads DeleteOptions from the query and the optional JSON body.
pub(crate) fn delete_options(query: &Query, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions { dry_run: query.has("dryRun"), ..DeleteOptions::default() };
    if let Some(grace) = query.get("gracePeriodSeconds").filter(|g| !g.is_empty()) {
        let grace =
            grace.parse().map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {grace:?}")))?;
        opts.grace_seconds = Some(grace);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(opts);
    }
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))?;
    if let Some(grace) = body.get("gracePeriodSeconds").and_then(Value::as_i64) {
        opts.grace_seconds = Some(grace);
    }
    opts.uid = body.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_owned);
    opts.resource_version = body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_owned);
    opts.dry_run |= body.get("dryRun").and_then(Value::as_array).is_some_and(|d| !d.is_empty());
    Ok(opts)
}

/// `DELETE /api/v1/namespaces/{ns}/pods/{name}`: 200 with the Pod (terminating, or gone).
pub(crate) async fn delete(
    State(sim): State<Arc<Sim>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    if let Err(e) = known_namespace(&sim, &ns) {
        return e.into_response();
    }
    let opts = match delete_options(&Query::parse(raw.as_deref()), &body) {
        Ok(opts) => opts,
        Err(e) => return e.into_response(),
    };
    match kubelet::delete_pod(&sim, &ns, &name, &opts).await {
        Ok(pod) => json_response(StatusCode::OK, &pod),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /api/v1/namespaces/{ns}/pods`: deletes every selected pod; answers the PodList.
pub(crate) async fn delete_collection(
    State(sim): State<Arc<Sim>>,
    Path(ns): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    if let Err(e) = known_namespace(&sim, &ns) {
        return e.into_response();
    }
    let query = Query::parse(raw.as_deref());
    let (selection, opts) = match Selection::from_query(&query).and_then(|s| Ok((s, delete_options(&query, &body)?))) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    let (_, pods) = sim.pods(Some(&ns));
    let mut items = Vec::new();
    for pod in pods.iter().filter(|p| selection.matches(p)) {
        let name = pod::meta_str(pod, "name").unwrap_or_default();
        // A pod removed meanwhile is simply not in the answer.
        if let Ok(deleted) = kubelet::delete_pod(&sim, &ns, name, &DeleteOptions { uid: None, ..opts.clone() }).await {
            items.push(strip_type_meta(deleted));
        }
    }
    let rv = sim.current_rv().to_string();
    json_response(
        StatusCode::OK,
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}),
    )
}

/// `POST /api/v1/namespaces/{ns}/pods/{name}/eviction` with a `policy/v1` (or `v1beta1`)
/// Eviction: the pod is deleted as its `deleteOptions` say (no PodDisruptionBudget stands in
/// the way in the sim); answers `201` with a Success Status.
pub(crate) async fn evict(
    State(sim): State<Arc<Sim>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let evicted = match eviction_options(&body, &name) {
        Ok(opts) => match known_namespace(&sim, &ns) {
            Ok(()) => kubelet::delete_pod(&sim, &ns, &name, &opts).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match evicted {
        Ok(_) => json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ),
        Err(e) => e.into_response(),
    }
}

/// The delete options of an Eviction body, after checking that it is one and names this pod.
fn eviction_options(body: &[u8], pod: &str) -> Result<DeleteOptions, ApiError> {
    let eviction: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))?;
    if !eviction.is_object() {
        return Err(ApiError::bad_request("the body of the request was in an unknown format"));
    }
    if let Some(kind) = eviction.get("kind").and_then(Value::as_str).filter(|k| *k != "Eviction") {
        return Err(ApiError::bad_request(format!("the kind {kind} is not Eviction")));
    }
    let version = eviction.get("apiVersion").and_then(Value::as_str).unwrap_or("policy/v1");
    if !matches!(version, "policy/v1" | "policy/v1beta1") {
        return Err(ApiError::bad_request(format!("unsupported Eviction version {version}: use policy/v1")));
    }
    // The apiserver compares the names as they are: an Eviction without one does not match.
    if eviction.pointer("/metadata/name").and_then(Value::as_str) != Some(pod) {
        return Err(ApiError::bad_request("name in URL does not match name in Eviction object"));
    }
    let options = eviction.get("deleteOptions").filter(|o| !o.is_null()).map(Value::to_string).unwrap_or_default();
    delete_options(&Query::default(), options.as_bytes())
}
