//! rdev-api's domain: entities, validated values, the ports adapters implement, and
//! pure policies (priority order, rate-limit window arithmetic, audit hash chain, the circuit
//! breaker).
//!
//! Nothing here performs I/O or depends on a runtime; adapters and services do.

pub mod api_key;
pub mod audit;
pub mod breaker;
pub mod command;
mod error;
pub mod ids;
pub mod network;
pub mod output;
pub mod pagination;
pub mod pod;
pub mod ports;
pub mod project;
pub mod rate_limit;
pub mod signal;
#[cfg(feature = "testing")]
#[allow(clippy::expect_used, clippy::unwrap_used, reason = "test support: a failed expectation is a failed test")]
pub mod testing;
pub mod trace;
pub mod webhook;

pub use error::{DomainError, DomainResult, FieldError};

/// Every timestamp in rdev-api: UTC with microsecond precision once stored.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Truncates a timestamp to whole microseconds, the precision every store keeps.
pub fn to_micros_precision(t: Timestamp) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
