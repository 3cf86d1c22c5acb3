use std::fmt;

/// One field-level validation failure, reported back to the client as-is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// The input field, as the client named it (`command`, `env.FOO`, `limit`).
    pub field: String,
    /// What is wrong with it, in words a client developer understands.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What can go wrong in domain words; adapters translate their backend's errors into these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The resource does not exist (or the caller may not know that it does).
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with the current state (name taken, wrong state).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Input failed validation; every failing field is listed.
    #[error("invalid input: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The caller is authenticated but lacks the right.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The caller could not be authenticated.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A dependency (database, executor backend) cannot serve right now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A circuit breaker refuses calls to `dependency` for about `retry_after_seconds` more.
    #[error("circuit breaker {dependency} is open; retry in {retry_after_seconds} s")]
    CircuitOpen {
        /// The breaker's name (`kube`, …).
        dependency: String,
        /// Seconds until the breaker lets a probe through (at least 1).
        retry_after_seconds: u64,
    },
    /// The project already has `limit` queued commands: nothing was stored.
    #[error("the project's queue is full ({limit} queued commands); retry when some have started")]
    QueueFull {
        /// The project's cap on queued commands.
        limit: u32,
    },
    /// A bug or an unexpected backend answer; details are logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl DomainError {
    /// A single-field validation failure.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    /// Prefixes every field name of an `Invalid` error (`env` → `body.env`); other errors pass through.
    pub fn in_field(self, prefix: &str) -> Self {
        match self {
            Self::Invalid(errors) => Self::Invalid(
                errors.into_iter().map(|e| FieldError::new(format!("{prefix}{}", e.field), e.message)).collect(),
            ),
            other => other,
        }
    }
}

/// Result type of every port and domain operation.
pub type DomainResult<T> = Result<T, DomainError>;
