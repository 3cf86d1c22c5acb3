//! `metav1.Status` failure bodies, shaped exactly as the apiserver writes them.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

/// An API failure: becomes a `Status` body whose `code` is the HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 404 for a named object of `resource` (plural, e.g. `pods`).
    pub(crate) fn not_found(resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
            .with_details(json!({"name": name, "kind": resource}))
    }

    /// 404 for a named object of a resource in a named API group (`leases.coordination.k8s.io`).
    pub(crate) fn not_found_in(group: &str, resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{resource}.{group} \"{name}\" not found"))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    /// 404 for a path no route serves.
    pub(crate) fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({}))
    }

    /// 409 for a create whose name is taken.
    pub(crate) fn already_exists(resource: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{resource} \"{name}\" already exists"))
            .with_details(json!({"name": name, "kind": resource}))
    }

    /// 409 for a create whose name is taken, in a named API group.
    pub(crate) fn already_exists_in(group: &str, resource: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{resource}.{group} \"{name}\" already exists"))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    /// 409 for a stale resourceVersion or a failed precondition, in a named API group.
    pub(crate) fn conflict_in(group: &str, resource: &str, name: &str, message: String) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {resource}.{group} \"{name}\": {message}"))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    /// 409 for a failed delete precondition.
    pub(crate) fn conflict(resource: &str, name: &str, message: String) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {resource} \"{name}\": {message}"))
            .with_details(json!({"name": name, "kind": resource}))
    }

    /// 400 with a free-form message (no details, as `NewBadRequest`).
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 for an invalid object: `<Kind> "<name>" is invalid: <field>: <what>`.
    pub(crate) fn invalid(kind: &str, name: &str, causes: &[(&'static str, String, &str)]) -> Self {
        Self::invalid_in(None, kind, name, causes)
    }

    /// 422 as [`ApiError::invalid`], for a kind of a named API group
    /// (`Lease.coordination.k8s.io "x" is invalid: …`, details with `group`).
    pub(crate) fn invalid_in(
        group: Option<&str>,
        kind: &str,
        name: &str,
        causes: &[(&'static str, String, &str)],
    ) -> Self {
        let summary: Vec<String> = causes.iter().map(|(_, message, field)| format!("{field}: {message}")).collect();
        let summary = if summary.len() == 1 { summary.join("") } else { format!("[{}]", summary.join(", ")) };
        let causes: Vec<Value> = causes
            .iter()
            .map(|(reason, message, field)| json!({"reason": reason, "message": message, "field": field}))
            .collect();
        let mut details = Map::new();
        if !name.is_empty() {
            details.insert("name".into(), json!(name));
        }
        let qualified = match group {
            Some(group) => {
                details.insert("group".into(), json!(group));
                format!("{kind}.{group}")
            }
            None => kind.to_owned(),
        };
        details.insert("kind".into(), json!(kind));
        details.insert("causes".into(), Value::Array(causes));
        Self::new(422, "Invalid", format!("{qualified} \"{name}\" is invalid: {summary}"))
            .with_details(Value::Object(details))
    }

    /// 422 that client-go expects when it tries a streaming list (WatchList) on a server without it.
    pub(crate) fn send_initial_events_forbidden() -> Self {
        let what = "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled";
        Self::new(422, "Invalid", format!("ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: {what}"))
            .with_details(json!({
                "group": "meta.k8s.io",
                "kind": "ListOptions",
                "causes": [{"reason": "FieldValueForbidden", "message": format!("Forbidden: {what}"), "field": "sendInitialEvents"}],
            }))
    }

    /// 405 for a method the route does not serve.
    pub(crate) fn method_not_allowed() -> Self {
        Self::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            .with_details(json!({}))
    }

    /// 401 for a missing or wrong bearer token.
    pub(crate) fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// The body an injected `error_status` fault answers with.
    pub(crate) fn injected(code: u16) -> Self {
        let (reason, message) = match code {
            400 => ("BadRequest", "the server rejected our request for an unknown reason"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "forbidden: injected by kube-sim"),
            404 => ("NotFound", "the server could not find the requested resource"),
            409 => ("Conflict", "the server reported a conflict"),
            429 => ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
            500 => ("InternalError", "Internal error occurred: injected by kube-sim"),
            503 => ("ServiceUnavailable", "the server is currently unable to handle the request"),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted, but may still be processing the request",
            ),
            _ => ("", "an error on the server (\"injected by kube-sim\") has prevented the request from succeeding"),
        };
        let error = Self::new(code, reason, message);
        if code == 429 || code == 503 {
            error.with_details(json!({"retryAfterSeconds": 1}))
        } else {
            error
        }
    }

    /// The HTTP status code.
    #[cfg(test)]
    pub(crate) fn code(&self) -> u16 {
        self.code
    }

    /// The `Status` document (with `kind` and `apiVersion`, as in HTTP bodies and watch events).
    pub(crate) fn to_status(&self) -> Value {
        let mut status = Map::new();
        status.insert("kind".into(), json!("Status"));
        status.insert("apiVersion".into(), json!("v1"));
        status.insert("metadata".into(), json!({}));
        status.insert("status".into(), json!("Failure"));
        status.insert("message".into(), json!(self.message));
        if !self.reason.is_empty() {
            status.insert("reason".into(), json!(self.reason));
        }
        if let Some(details) = &self.details {
            status.insert("details".into(), details.clone());
        }
        status.insert("code".into(), json!(self.code));
        Value::Object(status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.to_status(),
        );
        if self.code == 429 || self.code == 503 {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A compact JSON response with `Content-Type: application/json`.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_the_apiserver() {
        let expected = json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"pods \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"pods"},"code":404});
        assert_eq!(ApiError::not_found("pods", "x").to_status(), expected);
    }

    #[test]
    fn group_resources_are_qualified() {
        let status = ApiError::not_found_in("coordination.k8s.io", "leases", "l").to_status();
        assert_eq!(status["message"], "leases.coordination.k8s.io \"l\" not found");
        assert_eq!(status["details"], json!({"name": "l", "group": "coordination.k8s.io", "kind": "leases"}));
        let invalid = ApiError::invalid_in(
            Some("coordination.k8s.io"),
            "Lease",
            "l",
            &[("FieldValueInvalid", "Invalid value: 0: must be greater than 0".into(), "spec.leaseDurationSeconds")],
        );
        assert_eq!(
            invalid.to_status()["message"],
            "Lease.coordination.k8s.io \"l\" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"
        );
    }

    #[test]
    fn invalid_lists_each_cause() {
        let error =
            ApiError::invalid("Pod", "w1", &[("FieldValueRequired", "Required value".into(), "spec.containers")]);
        let status = error.to_status();
        assert_eq!(status["message"], "Pod \"w1\" is invalid: spec.containers: Required value");
        assert_eq!(status["details"]["causes"][0]["field"], "spec.containers");
        assert_eq!(status["code"], 422);
    }
}
