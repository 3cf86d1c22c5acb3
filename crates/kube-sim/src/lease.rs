//! The `coordination.k8s.io/v1` Lease object: decoding and validation of create and update
//! bodies, as the apiserver's lease strategy does them. Pure functions over the stored JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use crate::pod::{is_dns_subdomain, timestamp};
use crate::status::ApiError;

/// The API group of leases.
pub(crate) const GROUP: &str = "coordination.k8s.io";
/// The group and version in `apiVersion`.
pub(crate) const API_VERSION: &str = "coordination.k8s.io/v1";
/// The resource (plural) as URLs and Status details name it.
pub(crate) const RESOURCE: &str = "leases";
/// What a stale `resourceVersion` on update is told (apiserver `OptimisticLockErrorMsg`).
pub(crate) const OPTIMISTIC_LOCK: &str =
    "the object has been modified; please apply your changes to the latest version and try again";
/// The one coordinated-election strategy Kubernetes defines.
const KNOWN_STRATEGY: &str = "OldestEmulationVersion";
/// Metadata the server owns: whatever a client sends there is replaced.
const SERVER_FIELDS: [&str; 4] = ["uid", "resourceVersion", "creationTimestamp", "generation"];

/// A decoded create or update body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decoded {
    /// The lease as it will be stored, without uid, resourceVersion and creationTimestamp.
    pub object: Value,
    /// `metadata.resourceVersion` from the body (the update precondition), when non-empty.
    pub resource_version: Option<String>,
    /// `metadata.uid` from the body, when non-empty (it must not change on update).
    pub uid: Option<String>,
}

fn undecodable(what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Lease in version \"v1\" cannot be handled as a Lease: {what}"))
}

fn invalid(name: &str, reason: &'static str, message: String, field: &str) -> ApiError {
    ApiError::invalid_in(Some(GROUP), "Lease", name, &[(reason, message, field)])
}

/// Decodes and validates a Lease body for `namespace`; `url_name` is the name in the URL of an
/// update (the body must agree with it). `Err` is the 400/422 to send.
pub(crate) fn decode(body: &[u8], namespace: &str, url_name: Option<&str>) -> Result<Decoded, ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))?;
    let Value::Object(mut object) = body else {
        return Err(ApiError::bad_request(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
        ));
    };
    if let Some(kind) = object.get("kind").and_then(Value::as_str).filter(|k| !k.is_empty() && *k != "Lease") {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({API_VERSION}) does not match the expected API version ({API_VERSION}) or the kind {kind} is not Lease"
        )));
    }
    if let Some(version) =
        object.get("apiVersion").and_then(Value::as_str).filter(|v| !v.is_empty() && *v != API_VERSION)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({version}) does not match the expected API version ({API_VERSION})"
        )));
    }
    let mut metadata = match object.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(undecodable("metadata must be an object")),
    };
    if metadata.get("namespace").and_then(Value::as_str).is_some_and(|ns| !ns.is_empty() && ns != namespace) {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let name = metadata.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    if let Some(url) = url_name.filter(|u| *u != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({url})"
        )));
    }
    if name.is_empty() {
        let message = "Required value: name or generateName is required".to_owned();
        return Err(invalid("", "FieldValueRequired", message, "metadata.name"));
    }
    if !is_dns_subdomain(&name) {
        let message = format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        );
        return Err(invalid(&name, "FieldValueInvalid", message, "metadata.name"));
    }
    let text =
        |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_owned);
    let (resource_version, uid) = (text(&metadata, "resourceVersion"), text(&metadata, "uid"));
    for field in SERVER_FIELDS {
        metadata.remove(field);
    }
    metadata.insert("name".into(), json!(name));
    metadata.insert("namespace".into(), json!(namespace));
    let spec = decode_spec(object.remove("spec"), &name)?;
    let object = json!({"kind": "Lease", "apiVersion": API_VERSION, "metadata": metadata, "spec": spec});
    Ok(Decoded { object, resource_version, uid })
}

/// The spec with known fields type-checked and times normalised; unknown fields are dropped,
/// as the apiserver drops them.
fn decode_spec(spec: Option<Value>, name: &str) -> Result<Value, ApiError> {
    let spec = match spec {
        None | Some(Value::Null) => return Ok(json!({})),
        Some(Value::Object(spec)) => spec,
        Some(_) => return Err(undecodable("spec must be an object")),
    };
    let mut out = Map::new();
    for (key, value) in spec {
        if value.is_null() {
            continue;
        }
        let checked = match key.as_str() {
            "holderIdentity" | "strategy" | "preferredHolder" => value
                .as_str()
                .map(|_| value.clone())
                .ok_or_else(|| undecodable(format!("spec.{key} must be a string")))?,
            "leaseDurationSeconds" | "leaseTransitions" => value
                .as_i64()
                .filter(|n| i32::try_from(*n).is_ok())
                .map(|_| value.clone())
                .ok_or_else(|| undecodable(format!("spec.{key} must be a 32-bit integer")))?,
            "acquireTime" | "renewTime" => json!(micro_time(&value, &key)?),
            _ => continue,
        };
        out.insert(key, checked);
    }
    validate_spec(&out, name)?;
    Ok(Value::Object(out))
}

/// A `metav1.MicroTime`: RFC 3339, rendered back in UTC with six fractional digits.
fn micro_time(value: &Value, key: &str) -> Result<String, ApiError> {
    let text = value.as_str().ok_or_else(|| undecodable(format!("spec.{key} must be a string")))?;
    let parsed = DateTime::parse_from_rfc3339(text).map_err(|e| {
        undecodable(format!("spec.{key}: parsing time {text:?} as \"2006-01-02T15:04:05.000000Z07:00\": {e}"))
    })?;
    Ok(parsed.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn validate_spec(spec: &Map<String, Value>, name: &str) -> Result<(), ApiError> {
    let number = |k: &str| spec.get(k).and_then(Value::as_i64);
    if let Some(duration) = number("leaseDurationSeconds").filter(|d| *d <= 0) {
        let message = format!("Invalid value: {duration}: must be greater than 0");
        return Err(invalid(name, "FieldValueInvalid", message, "spec.leaseDurationSeconds"));
    }
    if let Some(transitions) = number("leaseTransitions").filter(|t| *t < 0) {
        let message = format!("Invalid value: {transitions}: must be greater than or equal to 0");
        return Err(invalid(name, "FieldValueInvalid", message, "spec.leaseTransitions"));
    }
    let strategy = spec.get("strategy").and_then(Value::as_str).unwrap_or_default();
    if !strategy.is_empty() && strategy != KNOWN_STRATEGY && !strategy.contains('/') {
        let message = format!("Unsupported value: {strategy:?}: supported values: \"{KNOWN_STRATEGY}\"");
        return Err(invalid(name, "FieldValueNotSupported", message, "spec.strategy"));
    }
    let preferred = spec.get("preferredHolder").and_then(Value::as_str).unwrap_or_default();
    if !preferred.is_empty() && strategy.is_empty() {
        let message = "Forbidden: may only be specified if `strategy` is defined".to_owned();
        return Err(invalid(name, "FieldValueForbidden", message, "spec.preferredHolder"));
    }
    Ok(())
}

/// Gives a lease about to be created its server-owned metadata.
pub(crate) fn stamp_created(object: &mut Value, uid: &str, now: DateTime<Utc>) {
    object["metadata"]["uid"] = json!(uid);
    object["metadata"]["creationTimestamp"] = json!(timestamp(now));
}

/// Carries the server-owned metadata of `current` over to its replacement; a body that names
/// another uid is refused (uid is immutable).
pub(crate) fn keep_server_fields(object: &mut Value, body_uid: Option<&str>, current: &Value) -> Result<(), ApiError> {
    let current_uid = current.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
    if let Some(uid) = body_uid.filter(|u| current_uid.as_str() != Some(*u)) {
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let message = format!("Invalid value: {uid:?}: field is immutable");
        return Err(invalid(&name, "FieldValueInvalid", message, "metadata.uid"));
    }
    object["metadata"]["uid"] = current_uid;
    object["metadata"]["creationTimestamp"] =
        current.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_json(body: Value, url_name: Option<&str>) -> Result<Decoded, ApiError> {
        decode(body.to_string().as_bytes(), "ns", url_name)
    }

    #[test]
    fn a_lease_is_normalised() {
        let body = json!({"apiVersion": API_VERSION, "kind": "Lease",
            "metadata": {"name": "l", "resourceVersion": "7", "uid": "u", "labels": {"a": "b"}},
            "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15,
                     "renewTime": "2026-11-25T11:00:00.5+01:00", "bogus": 1}});
        let decoded = decode_json(body, Some("l")).unwrap();
        assert_eq!(decoded.resource_version.as_deref(), Some("7"));
        assert_eq!(decoded.uid.as_deref(), Some("u"));
        let object = decoded.object;
        assert_eq!(object["metadata"], json!({"name": "l", "namespace": "ns", "labels": {"a": "b"}}));
        assert_eq!(object["spec"]["renewTime"], "2026-11-25T10:00:00.500000Z");
        assert!(object["spec"].get("bogus").is_none());
    }

    #[test]
    fn bad_bodies_get_the_apiservers_answers() {
        let code = |body: Value, url: Option<&str>| decode_json(body, url).unwrap_err().to_status()["code"].clone();
        assert_eq!(code(json!([]), None), 400);
        assert_eq!(code(json!({"kind": "Pod", "metadata": {"name": "l"}}), None), 400);
        assert_eq!(code(json!({"metadata": {"name": "l"}}), Some("other")), 400);
        assert_eq!(code(json!({"metadata": {"name": "l", "namespace": "x"}}), None), 400);
        assert_eq!(code(json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": "15"}}), None), 400);
        assert_eq!(code(json!({"metadata": {"name": "l"}, "spec": {"renewTime": "yesterday"}}), None), 400);
        assert_eq!(code(json!({"metadata": {}}), None), 422);
        assert_eq!(code(json!({"metadata": {"name": "Bad_Name"}}), None), 422);
        assert_eq!(code(json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 0}}), None), 422);
        assert_eq!(code(json!({"metadata": {"name": "l"}, "spec": {"leaseTransitions": -1}}), None), 422);
        assert_eq!(code(json!({"metadata": {"name": "l"}, "spec": {"preferredHolder": "x"}}), None), 422);
        assert_eq!(code(json!({"metadata": {"name": "l"}, "spec": {"strategy": "Newest"}}), None), 422);
        let message = decode_json(json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": -5}}), None)
            .unwrap_err()
            .to_status()["message"]
            .clone();
        assert_eq!(
            message,
            "Lease.coordination.k8s.io \"l\" is invalid: spec.leaseDurationSeconds: Invalid value: -5: must be greater than 0"
        );
    }

    #[test]
    fn uid_is_immutable_on_update() {
        let current = json!({"metadata": {"name": "l", "uid": "u1", "creationTimestamp": "t"}});
        let mut object = json!({"metadata": {"name": "l"}});
        assert_eq!(keep_server_fields(&mut object, Some("u2"), &current).unwrap_err().to_status()["code"], 422);
        keep_server_fields(&mut object, Some("u1"), &current).unwrap();
        assert_eq!(object["metadata"]["uid"], "u1");
        assert_eq!(object["metadata"]["creationTimestamp"], "t");
    }
}
