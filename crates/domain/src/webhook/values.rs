//! Validated webhook values: target URLs, event types and filters, signing secrets, payloads.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{DomainError, DomainResult, Timestamp};

/// A webhook target: an absolute `http` or `https` URL with a host and no credentials.
/// Whether the host may be reached (SSRF rules) is the sender's call, at creation and at send.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// Longest accepted URL.
    pub const MAX_LEN: usize = 2048;

    /// Parses and normalises a URL (`HTTP://Example.COM` becomes `http://example.com/`).
    pub fn parse(s: &str) -> DomainResult<Self> {
        let bad = |m: &str| DomainError::invalid("url", m);
        if s.len() > Self::MAX_LEN {
            return Err(bad("must be at most 2048 characters"));
        }
        // Only what RFC 3986 allows unescaped: the URL parser would quietly percent-encode the rest
        // (spaces, quotes, non-ASCII), so the stored URL would not be the one given.
        if let Some(c) = s.chars().find(|c| !Self::is_url_char(*c)) {
            return Err(bad(&format!("{c:?} must be percent-encoded")));
        }
        let url = url::Url::parse(s).map_err(|e| bad(&format!("must be an absolute http or https URL ({e})")))?;
        if let Some(url::Host::Domain(name)) = url.host() {
            let last_starts_with_letter =
                name.rsplit('.').next().is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()));
            if !name.split('.').all(Self::is_label) || !last_starts_with_letter {
                return Err(bad(
                    "the host must be an IP address or a DNS name of labels of letters, digits and '-', the last starting with a letter",
                ));
            }
        }
        if url.port() == Some(0) {
            return Err(bad("port 0 cannot be connected to"));
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("only http and https URLs are allowed"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("must name a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not contain credentials; authenticate receivers with the signature"));
        }
        if url.fragment().is_some() {
            return Err(bad("must not contain a fragment"));
        }
        Ok(Self(url.into()))
    }

    fn is_url_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || "-._~:/?[]@!$&'()*+,;=%".contains(c)
    }

    fn is_label(label: &str) -> bool {
        !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }

    /// The normalised URL text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parsed URL (parsing a normalised URL again cannot fail).
    pub fn to_url(&self) -> url::Url {
        url::Url::parse(&self.0).unwrap_or_else(|_| unreachable!("a WebhookUrl always parses"))
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for WebhookUrl {
    type Error = DomainError;
    fn try_from(s: String) -> DomainResult<Self> {
        Self::parse(&s)
    }
}

impl From<WebhookUrl> for String {
    fn from(u: WebhookUrl) -> Self {
        u.0
    }
}

/// What happened; the `type` of a payload and what subscriptions filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    /// A command was queued.
    #[serde(rename = "command.queued")]
    CommandQueued,
    /// A worker started a command.
    #[serde(rename = "command.started")]
    CommandStarted,
    /// A command exited 0.
    #[serde(rename = "command.succeeded")]
    CommandSucceeded,
    /// A command ended any other way of its own doing.
    #[serde(rename = "command.failed")]
    CommandFailed,
    /// A command was killed at its timeout.
    #[serde(rename = "command.timed_out")]
    CommandTimedOut,
    /// A command was cancelled.
    #[serde(rename = "command.cancelled")]
    CommandCancelled,
    /// A command's worker died and its lease ran out.
    #[serde(rename = "command.lost")]
    CommandLost,
    /// A project's pod became ready.
    #[serde(rename = "pod.ready")]
    PodReady,
    /// A project's pod failed.
    #[serde(rename = "pod.failed")]
    PodFailed,
    /// A project's pod stopped.
    #[serde(rename = "pod.stopped")]
    PodStopped,
    /// A test event sent to one subscription on request.
    #[serde(rename = "ping")]
    Ping,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 11] = [
        Self::CommandQueued,
        Self::CommandStarted,
        Self::CommandSucceeded,
        Self::CommandFailed,
        Self::CommandTimedOut,
        Self::CommandCancelled,
        Self::CommandLost,
        Self::PodReady,
        Self::PodFailed,
        Self::PodStopped,
        Self::Ping,
    ];

    /// Name on the wire and in stores.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CommandQueued => "command.queued",
            Self::CommandStarted => "command.started",
            Self::CommandSucceeded => "command.succeeded",
            Self::CommandFailed => "command.failed",
            Self::CommandTimedOut => "command.timed_out",
            Self::CommandCancelled => "command.cancelled",
            Self::CommandLost => "command.lost",
            Self::PodReady => "pod.ready",
            Self::PodFailed => "pod.failed",
            Self::PodStopped => "pod.stopped",
            Self::Ping => "ping",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = DomainError;
    fn from_str(s: &str) -> DomainResult<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
            DomainError::invalid("events", format!("unknown event type {s:?}; expected one of {}", names.join(", ")))
        })
    }
}

/// The event types a subscription wants: a non-empty set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<EventType>", into = "Vec<EventType>")]
pub struct EventSet(BTreeSet<EventType>);

impl EventSet {
    /// At least one type is required.
    pub fn new(types: impl IntoIterator<Item = EventType>) -> DomainResult<Self> {
        let set: BTreeSet<_> = types.into_iter().collect();
        if set.is_empty() {
            Err(DomainError::invalid("events", "at least one event type is required"))
        } else {
            Ok(Self(set))
        }
    }

    /// Every event type.
    pub fn all() -> Self {
        Self(EventType::ALL.into_iter().collect())
    }

    /// Whether the set holds `t`.
    pub fn contains(&self, t: EventType) -> bool {
        self.0.contains(&t)
    }

    /// The types in wire-name order.
    pub fn iter(&self) -> impl Iterator<Item = EventType> + '_ {
        self.0.iter().copied()
    }
}

impl TryFrom<Vec<EventType>> for EventSet {
    type Error = DomainError;
    fn try_from(v: Vec<EventType>) -> DomainResult<Self> {
        Self::new(v)
    }
}

impl From<EventSet> for Vec<EventType> {
    fn from(s: EventSet) -> Self {
        s.0.into_iter().collect()
    }
}

const SECRET_PREFIX: &str = "whsec_";

/// A signing secret, `whsec_<base64 of 24 to 64 random bytes>` (Standard Webhooks). Stores keep
/// it as is (signing needs the key itself); `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// Fewest key bytes (192 bits).
    pub const MIN_BYTES: usize = 24;
    /// Most key bytes.
    pub const MAX_BYTES: usize = 64;

    /// Builds a secret from random key bytes (the caller owns the randomness).
    pub fn from_key(key: &[u8]) -> DomainResult<Self> {
        if !(Self::MIN_BYTES..=Self::MAX_BYTES).contains(&key.len()) {
            return Err(DomainError::invalid("secret", "the key must be 24 to 64 bytes"));
        }
        Ok(Self(format!("{SECRET_PREFIX}{}", STANDARD.encode(key))))
    }

    /// Parses the `whsec_…` form.
    pub fn parse(s: &str) -> DomainResult<Self> {
        let bad = || DomainError::invalid("secret", "must be whsec_ followed by the base64 of 24 to 64 bytes");
        let encoded = s.strip_prefix(SECRET_PREFIX).ok_or_else(bad)?;
        let key = STANDARD.decode(encoded).map_err(|_| bad())?;
        Self::from_key(&key).map_err(|_| bad())
    }

    /// The `whsec_…` text, to show the client once and to hand to the signer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The raw key bytes (the HMAC key).
    pub fn key(&self) -> Vec<u8> {
        // Every constructor checked the encoding.
        STANDARD.decode(&self.0[SECRET_PREFIX.len()..]).unwrap_or_default()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// The JSON body of an event, `{"type","timestamp","data"}`, at most 256 KiB. Kept as the exact
/// text sent, so every retry carries the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPayload(String);

impl EventPayload {
    /// Largest payload.
    pub const MAX_BYTES: usize = 256 * 1024;

    /// Builds the body of an event of `event_type` at `at` carrying `data`.
    pub fn new(event_type: EventType, at: Timestamp, data: serde_json::Value) -> DomainResult<Self> {
        let body = serde_json::json!({
            "type": event_type.as_str(),
            "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "data": data,
        });
        let text =
            serde_json::to_string(&body).map_err(|e| DomainError::Internal(format!("encoding a payload: {e}")))?;
        Self::from_text(text)
    }

    /// Wraps a stored body, checking its size.
    pub fn from_text(text: String) -> DomainResult<Self> {
        if text.len() > Self::MAX_BYTES {
            Err(DomainError::invalid("payload", "event payloads are limited to 256 KiB"))
        } else {
            Ok(Self(text))
        }
    }

    /// The body.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert_eq!(WebhookUrl::parse("HTTPS://Example.COM/hook?x=1").unwrap().as_str(), "https://example.com/hook?x=1");
        for refused in
            ["http://ex*ample.com/", "http://a.1b/", "http://exa mple.com/", "http://example.com/ä", "http://h:0/"]
        {
            assert!(WebhookUrl::parse(refused).is_err(), "{refused}");
        }
        for taken in ["http://10.0.0.1:8080/x", "http://[::1]/", "http://a-1.b2.example/p?q=1&r=%41"] {
            assert!(WebhookUrl::parse(taken).is_ok(), "{taken}");
        }
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://x",
            "example.com/hook",
            "http://",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "",
        ] {
            assert!(matches!(WebhookUrl::parse(bad), Err(DomainError::Invalid(_))), "{bad}");
        }
        assert!(WebhookUrl::parse(&format!("https://example.com/{}", "a".repeat(2100))).is_err());
    }

    #[test]
    fn event_types_round_trip_their_wire_names() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(t.as_str()));
        }
        assert!("command.exploded".parse::<EventType>().is_err());
        assert!(EventSet::new([]).is_err());
        assert!(EventSet::all().contains(EventType::PodStopped));
    }

    #[test]
    fn secrets_hide_in_debug_and_need_enough_key() {
        let s = WebhookSecret::from_key(&[7; 32]).unwrap();
        assert!(s.expose().starts_with("whsec_"));
        assert!(!format!("{s:?}").contains(s.expose()));
        assert_eq!(WebhookSecret::parse(s.expose()), Ok(s.clone()));
        assert_eq!(s.key(), vec![7; 32]);
        assert!(WebhookSecret::from_key(&[1; 23]).is_err());
        assert!(WebhookSecret::from_key(&[1; 65]).is_err());
        assert!(WebhookSecret::parse("whsec_not base64!").is_err());
        assert!(WebhookSecret::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err(), "the prefix is required");
    }

    #[test]
    fn payloads_over_256_kib_are_refused() {
        let at = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let small = EventPayload::new(EventType::Ping, at, serde_json::json!({"a": 1})).unwrap();
        let v: serde_json::Value = serde_json::from_str(small.as_str()).unwrap();
        assert_eq!(v["type"], "ping");
        assert_eq!(v["data"]["a"], 1);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        let big = serde_json::json!({"blob": "x".repeat(EventPayload::MAX_BYTES)});
        assert!(matches!(EventPayload::new(EventType::Ping, at, big), Err(DomainError::Invalid(_))));
    }

    proptest! {
        #[test]
        fn any_key_length_in_range_round_trips(key in prop::collection::vec(any::<u8>(), 24..=64)) {
            let s = WebhookSecret::from_key(&key).unwrap();
            prop_assert_eq!(WebhookSecret::parse(s.expose()).unwrap().key(), key);
        }

        #[test]
        fn arbitrary_text_never_panics_the_url_parser(s in "\\PC{0,80}") {
            let _ = WebhookUrl::parse(&s);
        }
    }
}
