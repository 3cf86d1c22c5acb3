//! The one place errors become HTTP: RFC 9457 problem documents.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use domain::{DomainError, FieldError};
use serde::Serialize;

/// Media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every `code` a problem document can carry.
pub const PROBLEM_CODES: [&str; 13] = [
    "unauthorized",
    "forbidden",
    "not_found",
    "validation_failed",
    "conflict",
    "rate_limited",
    "queue_full",
    "payload_too_large",
    "request_timeout",
    "headers_too_large",
    "unavailable",
    "method_not_allowed",
    "internal",
];

/// `Retry-After` of a `queue_full` answer.
const QUEUE_FULL_RETRY_AFTER_SECONDS: u64 = 5;

/// Every error an HTTP handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A domain or port error.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The body is over `MAX_REQUEST_BYTES`.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// No route has this path.
    #[error("no such route")]
    RouteNotFound,
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// Over the rate limit.
    #[error("rate limit exceeded")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The body did not arrive within `BODY_READ_TIMEOUT_SECONDS`.
    #[error("the request body did not arrive within {0} seconds")]
    RequestTimeout(u64),
    /// The request's header block is over the limit.
    #[error("the request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// The key already holds `MAX_STREAMS_PER_KEY` event streams on this replica.
    #[error("this API key already has {0} open event streams; close one first")]
    TooManyStreams(u32),
}

/// The problem document (RFC 9457) with rdev-api's `code` and field errors.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened, for this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Machine-readable code.
    #[schema(value_type = crate::openapi::schemas::ProblemCode)]
    pub code: &'static str,
    /// Field-level validation failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<FieldErrorSchema>)]
    pub errors: Vec<FieldError>,
}

/// One invalid field.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FieldError)]
pub struct FieldErrorSchema {
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ApiError {
    /// A validation failure on one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Domain(DomainError::invalid(field, message))
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Domain(d) => match d {
                DomainError::NotFound(_) => "not_found",
                DomainError::Conflict(_) => "conflict",
                DomainError::Invalid(_) => "validation_failed",
                DomainError::Forbidden(_) => "forbidden",
                DomainError::Unauthorized(_) => "unauthorized",
                DomainError::Unavailable(_) | DomainError::CircuitOpen { .. } => "unavailable",
                DomainError::QueueFull { .. } => "queue_full",
                DomainError::Internal(_) => "internal",
            },
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RequestTimeout(_) => "request_timeout",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::RateLimited { .. } | Self::TooManyStreams(_) => "rate_limited",
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            // 5xx bodies say nothing internal; the cause is logged once, below.
            Self::Domain(DomainError::Internal(_)) => None,
            // A breaker's refusal names no internals and tells when to retry; other outages
            // (database errors may name hosts) stay generic.
            Self::Domain(open @ DomainError::CircuitOpen { .. }) => Some(open.to_string()),
            Self::Domain(DomainError::Unavailable(_)) => Some("a dependency is unavailable; retry shortly".into()),
            Self::Domain(DomainError::Invalid(errors)) => {
                Some(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
            }
            Self::Domain(DomainError::NotFound(what)) => Some(format!("{what} not found")),
            Self::Domain(DomainError::Conflict(why) | DomainError::Forbidden(why) | DomainError::Unauthorized(why)) => {
                Some(why.clone())
            }
            other => Some(other.to_string()),
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let status = self.status_code();
        let code = self.code();
        Problem {
            kind: format!("https://rdev.dev/problems/{}", code.replace('_', "-")),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.detail(),
            code,
            errors: match self {
                Self::Domain(DomainError::Invalid(errors)) => errors.clone(),
                _ => Vec::new(),
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Domain(d) => match d {
                DomainError::NotFound(_) => StatusCode::NOT_FOUND,
                DomainError::Conflict(_) => StatusCode::CONFLICT,
                DomainError::Invalid(_) => StatusCode::BAD_REQUEST,
                DomainError::Forbidden(_) => StatusCode::FORBIDDEN,
                DomainError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                DomainError::Unavailable(_) | DomainError::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
                DomainError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
                DomainError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } | Self::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = HttpResponse::build(status);
        response.content_type(PROBLEM_JSON);
        match self {
            Self::MethodNotAllowed(allow) => {
                response.insert_header((header::ALLOW, *allow));
            }
            Self::RateLimited { retry_after } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            // A slot frees when any of the key's streams ends; a second is a fair first retry.
            Self::TooManyStreams(_) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            // The queue drains as workers start commands; a few seconds is a fair first retry.
            Self::Domain(DomainError::QueueFull { .. }) => {
                response.insert_header((header::RETRY_AFTER, QUEUE_FULL_RETRY_AFTER_SECONDS.to_string()));
            }
            Self::Domain(DomainError::CircuitOpen { retry_after_seconds, .. }) => {
                response.insert_header((header::RETRY_AFTER, retry_after_seconds.to_string()));
            }
            Self::Domain(DomainError::Unavailable(_)) => {
                response.insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER_SECONDS.to_string()));
            }
            Self::Domain(DomainError::Unauthorized(_)) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.json(self.problem())
    }
}

/// The `Retry-After` of an outage whose end nobody can tell (a database down, say).
const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 5;

/// Result of every handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(error: &ApiError) -> Option<String> {
        let response = error.error_response();
        response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    #[test]
    fn every_error_code_is_a_documented_one() {
        let errors = [
            ApiError::Domain(DomainError::NotFound("x".into())),
            ApiError::Domain(DomainError::Conflict("x".into())),
            ApiError::invalid("x", "y"),
            ApiError::Domain(DomainError::Forbidden("x".into())),
            ApiError::Domain(DomainError::Unauthorized("x".into())),
            ApiError::Domain(DomainError::Unavailable("x".into())),
            ApiError::Domain(DomainError::CircuitOpen { dependency: "kube".into(), retry_after_seconds: 1 }),
            ApiError::Domain(DomainError::QueueFull { limit: 1 }),
            ApiError::Domain(DomainError::Internal("x".into())),
            ApiError::PayloadTooLarge(1),
            ApiError::RequestTimeout(1),
            ApiError::HeadersTooLarge(1),
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed("GET"),
            ApiError::RateLimited { retry_after: 1 },
            ApiError::TooManyStreams(1),
        ];
        let codes: std::collections::BTreeSet<_> = errors.iter().map(ApiError::code).collect();
        let documented: std::collections::BTreeSet<_> = PROBLEM_CODES.into_iter().collect();
        assert_eq!(codes, documented);
    }

    #[test]
    fn an_open_breaker_says_when_to_retry_and_names_itself() {
        let open = ApiError::Domain(DomainError::CircuitOpen { dependency: "kube".into(), retry_after_seconds: 7 });
        assert_eq!(open.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&open).as_deref(), Some("7"));
        let problem = open.problem();
        assert_eq!(problem.code, "unavailable");
        assert_eq!(problem.detail.as_deref(), Some("circuit breaker kube is open; retry in 7 s"));
    }

    #[test]
    fn other_outages_stay_generic_and_suggest_a_short_wait() {
        let down = ApiError::Domain(DomainError::Unavailable("connect to db.internal:5432 refused".into()));
        assert_eq!(down.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&down).as_deref(), Some("5"));
        let detail = down.problem().detail.unwrap_or_default();
        assert!(!detail.contains("db.internal"), "no internals in the body: {detail}");
    }
}
