//! W3C trace context carried with a command from the request that queued it to the replica that
//! runs it, so both ends belong to one trace. A plain value: no tracing library here.

use serde::{Deserialize, Serialize};

/// Longest `tracestate` kept (W3C: 32 members of at most 256 bytes; implementations may cut at 512).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A well-formed W3C `traceparent`, with the `tracestate` that came with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// The context of a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), or `None` when it
    /// is malformed, all-zero or of the forbidden version `ff`. A `tracestate` that is too long or
    /// not printable ASCII is dropped; the parent alone still joins the trace.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = traceparent.trim();
        let parts: Vec<&str> = traceparent.split('-').collect();
        let hex =
            |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let not_zero = |s: &str| s.bytes().any(|b| b != b'0');
        let ok = parts.len() >= 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            // Version 00 has exactly four fields; later versions may append more.
            && (parts.len() == 4 || parts[0] != "00")
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2)
            && not_zero(parts[1])
            && not_zero(parts[2]);
        if !ok {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .map(str::to_owned);
        Some(Self { traceparent: traceparent.to_owned(), tracestate })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` header value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        // `parse` guarantees the second field is 32 hex digits.
        self.traceparent.get(3..35).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_keeps_its_trace_id_and_state() {
        let t = TraceContext::parse(GOOD, Some("rojo=00f067aa0ba902b7")).expect("valid");
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.traceparent(), GOOD);
        assert_eq!(t.tracestate(), Some("rojo=00f067aa0ba902b7"));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "garbage",
            "00-0000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad}");
        }
    }

    #[test]
    fn an_unusable_tracestate_is_dropped_not_the_parent() {
        let long = "a=".to_owned() + &"b".repeat(MAX_TRACESTATE_LEN);
        for state in [long.as_str(), "caf\u{e9}=1", "  "] {
            let t = TraceContext::parse(GOOD, Some(state)).expect("parent still valid");
            assert_eq!(t.tracestate(), None, "{state}");
        }
    }
}
