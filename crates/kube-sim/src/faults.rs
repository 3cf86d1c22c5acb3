//! Injected faults: what the Kubernetes API routes do wrong on demand (the control endpoint is
//! never affected).

use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The faults in force; `POST /_sim/faults` takes exactly this JSON and replaces the whole set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Delay before every API request is handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Answer API requests with this HTTP status (400..=599) and a matching `Status` body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_status: Option<u16>,
    /// Share of requests (0..=1) hit by `error_status` and `drop_connections`; 1 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Close the connection after reading the request, without any response (after the latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_connections: Option<bool>,
    /// Close the connection at once for every API request (no latency, every request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse_connections: Option<bool>,
    /// End exec streams with the Close frame but without the channel-3 status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omit_exec_status: Option<bool>,
}

/// Why a set of faults was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum InvalidFaults {
    /// `error_status` is not an HTTP error status.
    #[error("error_status must be within 400..=599, got {0}")]
    Status(u16),
    /// `error_rate` is not a probability.
    #[error("error_rate must be within 0..=1, got {0}")]
    Rate(f64),
}

impl Faults {
    /// Checks the ranges the control endpoint promises.
    pub(crate) fn validate(&self) -> Result<(), InvalidFaults> {
        if let Some(status) = self.error_status.filter(|s| !(400..=599).contains(s)) {
            return Err(InvalidFaults::Status(status));
        }
        if let Some(rate) = self.error_rate.filter(|r| !(0.0..=1.0).contains(r)) {
            return Err(InvalidFaults::Rate(rate));
        }
        Ok(())
    }

    /// The delay to apply before handling a request.
    pub(crate) fn latency(&self) -> Option<Duration> {
        self.latency_ms.filter(|ms| *ms > 0).map(Duration::from_millis)
    }

    /// Whether this request is one of the `error_rate` share.
    pub(crate) fn roll(&self) -> bool {
        let rate = self.error_rate.unwrap_or(1.0);
        rate >= 1.0 || (rate > 0.0 && rand::thread_rng().gen_bool(rate))
    }
}

/// The current faults, shared by every connection.
#[derive(Debug, Default)]
pub(crate) struct FaultSwitch {
    current: Mutex<Faults>,
}

impl FaultSwitch {
    /// A copy of the faults in force.
    pub(crate) fn get(&self) -> Faults {
        self.current.lock().map(|f| f.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Replaces the faults in force.
    pub(crate) fn set(&self, faults: Faults) {
        match self.current.lock() {
            Ok(mut current) => *current = faults,
            Err(poisoned) => *poisoned.into_inner() = faults,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_are_refused() {
        let status = Faults { error_status: Some(200), ..Faults::default() };
        assert_eq!(status.validate(), Err(InvalidFaults::Status(200)));
        let rate = Faults { error_status: Some(503), error_rate: Some(1.5), ..Faults::default() };
        assert_eq!(rate.validate(), Err(InvalidFaults::Rate(1.5)));
        assert_eq!(Faults { error_status: Some(503), ..Faults::default() }.validate(), Ok(()));
    }

    #[test]
    fn rate_zero_never_hits_and_unset_always_hits() {
        let never = Faults { error_rate: Some(0.0), ..Faults::default() };
        let always = Faults::default();
        assert!((0..100).all(|_| !never.roll()));
        assert!((0..100).all(|_| always.roll()));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<Faults>(r#"{"latency":5}"#).is_err());
        let parsed: Faults = serde_json::from_str(r#"{"error_status":503,"error_rate":0.5}"#).unwrap();
        assert_eq!(parsed.error_status, Some(503));
    }
}
