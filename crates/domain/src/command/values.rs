//! Validated values of a command: timeout, environment, priority and the dequeue order, and
//! the idempotency of an enqueue.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DomainError, DomainResult, FieldError};

/// A command timeout in seconds, 1..=86400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct TimeoutSeconds(u32);

impl TimeoutSeconds {
    /// Longest allowed timeout: one day.
    pub const MAX: u32 = 86_400;

    /// Checks the range.
    pub fn new(seconds: u32) -> DomainResult<Self> {
        if (1..=Self::MAX).contains(&seconds) {
            Ok(Self(seconds))
        } else {
            Err(DomainError::invalid("timeout_seconds", "must be between 1 and 86400"))
        }
    }

    /// The timeout in seconds.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The timeout as a duration.
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.0))
    }
}

impl TryFrom<u32> for TimeoutSeconds {
    type Error = DomainError;
    fn try_from(v: u32) -> DomainResult<Self> {
        Self::new(v)
    }
}

impl From<TimeoutSeconds> for u32 {
    fn from(t: TimeoutSeconds) -> u32 {
        t.0
    }
}

/// Environment variables: POSIX names, values without NUL, bounded in count and size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct EnvMap(BTreeMap<String, String>);

impl EnvMap {
    /// Most variables one map may hold.
    pub const MAX_VARS: usize = 256;
    /// Longest value, in characters (as JSON Schema's `maxLength` counts).
    pub const MAX_VALUE_CHARS: usize = 32 * 1024;
    /// Longest variable name.
    pub const MAX_NAME_LEN: usize = 256;
    /// The grammar of a variable name, as an ECMA-262 regular expression.
    pub const NAME_PATTERN: &'static str = "^[A-Za-z_][A-Za-z0-9_]*$";

    /// Validates every name and value; errors name the offending variable.
    pub fn parse(vars: BTreeMap<String, String>) -> DomainResult<Self> {
        let mut errors = Vec::new();
        if vars.len() > Self::MAX_VARS {
            errors.push(FieldError::new("env", format!("at most {} variables", Self::MAX_VARS)));
        }
        for (name, value) in &vars {
            if !is_env_name(name) {
                errors.push(FieldError::new(
                    format!("env.{name}"),
                    "name must match ^[A-Za-z_][A-Za-z0-9_]*$ (at most 256 characters)",
                ));
            }
            if value.contains('\0') || value.chars().count() > Self::MAX_VALUE_CHARS {
                errors.push(FieldError::new(
                    format!("env.{name}"),
                    "value must not contain NUL and be at most 32768 characters",
                ));
            }
        }
        if errors.is_empty() {
            Ok(Self(vars))
        } else {
            Err(DomainError::Invalid(errors))
        }
    }

    /// Variables of `self` overridden by those of `other`.
    pub fn merged_with(&self, other: &EnvMap) -> EnvMap {
        let mut vars = self.0.clone();
        vars.extend(other.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        EnvMap(vars)
    }

    /// Iterates name/value pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Whether a variable is set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= EnvMap::MAX_NAME_LEN
}

impl TryFrom<BTreeMap<String, String>> for EnvMap {
    type Error = DomainError;
    fn try_from(v: BTreeMap<String, String>) -> DomainResult<Self> {
        Self::parse(v)
    }
}

impl From<EnvMap> for BTreeMap<String, String> {
    fn from(e: EnvMap) -> Self {
        e.0
    }
}

/// How urgently a command should run; higher runs first, then older first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Ahead of normal work.
    High,
    /// Ahead of everything.
    Critical,
}

impl Priority {
    /// All priorities, highest first (the dequeue order).
    pub const ALL: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Normal, Priority::Low];

    /// Numeric rank stored by adapters: a higher rank is dequeued first.
    pub const fn rank(self) -> i16 {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
            Priority::Critical => 3,
        }
    }

    /// The priority of a stored rank.
    pub fn from_rank(rank: i16) -> DomainResult<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.rank() == rank)
            .ok_or_else(|| DomainError::Internal(format!("unknown priority rank {rank}")))
    }

    /// Name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The dequeue order: higher priority first, then the earlier enqueue sequence.
/// Returns `Less` when `a` must run before `b`.
pub fn dequeue_order(a: (Priority, i64), b: (Priority, i64)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Idempotency of an enqueue: the client's key and a fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The `Idempotency-Key` header (1..=255 printable ASCII).
    pub key: String,
    /// SHA-256 (hex) of the canonical request; a replay with another body is a conflict.
    pub fingerprint: String,
}

impl Idempotency {
    /// How long a key replays its first result.
    pub const RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(24);

    /// Validates the header value.
    pub fn new(key: &str, fingerprint: String) -> DomainResult<Self> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(DomainError::invalid("Idempotency-Key", "must be 1 to 255 printable ASCII characters"));
        }
        Ok(Self { key: key.to_owned(), fingerprint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn env_names_are_posix() {
        let ok: BTreeMap<_, _> = [("A_1".to_string(), "x".to_string()), ("_b".into(), "".into())].into();
        assert!(EnvMap::parse(ok).is_ok());
        for bad in ["1A", "A-B", "", "A B"] {
            let m: BTreeMap<_, _> = [(bad.to_string(), "x".to_string())].into();
            assert!(EnvMap::parse(m).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timeouts_are_bounded() {
        assert!(TimeoutSeconds::new(0).is_err());
        assert!(TimeoutSeconds::new(86_401).is_err());
        assert_eq!(TimeoutSeconds::new(86_400).map(u32::from), Ok(86_400));
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop::sample::select(Priority::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn dequeue_order_is_priority_then_age(mut items in prop::collection::vec((priority(), 0i64..1000), 0..50)) {
            items.sort_by(|a, b| dequeue_order(*a, *b));
            for pair in items.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                prop_assert!(a.0 > b.0 || (a.0 == b.0 && a.1 <= b.1));
            }
        }
    }
}
