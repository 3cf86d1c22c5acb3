//! The audit log: records and their hash chain.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ids::{ApiKeyId, AuditId};
use crate::Timestamp;

/// How a recorded action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// It was done.
    Success,
    /// It was refused (authentication, authorisation, rate limit).
    Denied,
    /// It was attempted and failed.
    Failure,
}

impl AuditOutcome {
    /// Name on the wire and in stores.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failure => "failure",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Success, Self::Denied, Self::Failure].into_iter().find(|o| o.as_str() == s)
    }
}

/// What to record; the log assigns id, sequence and hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// When it happened.
    pub at: Timestamp,
    /// The key that acted (none for the system or an unknown key).
    pub actor: Option<ApiKeyId>,
    /// Client address.
    pub client_ip: Option<String>,
    /// What was done (`projects.create`, `command.start`, `auth.denied`).
    pub action: String,
    /// What it was done to (a path or `command/<id>`).
    pub resource: String,
    /// Project concerned, if any.
    pub project: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// HTTP status or other detail.
    pub detail: Option<String>,
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
    /// The W3C trace id.
    pub trace_id: Option<String>,
}

/// A stored, chained audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Id.
    pub id: AuditId,
    /// Position in the chain, from 1.
    pub seq: i64,
    /// The entry.
    pub entry: AuditEntry,
    /// Hash of the record before (all zeros for the first).
    pub prev_hash: [u8; 32],
    /// `SHA-256(prev_hash || canonical record)`.
    pub hash: [u8; 32],
}

/// The hash before the first record.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

#[derive(Serialize)]
struct Canonical<'a> {
    id: String,
    seq: i64,
    at: String,
    actor: Option<String>,
    client_ip: &'a Option<String>,
    action: &'a str,
    resource: &'a str,
    project: &'a Option<String>,
    outcome: &'a str,
    detail: &'a Option<String>,
    request_id: &'a Option<String>,
    trace_id: &'a Option<String>,
}

/// The canonical bytes of a record: JSON with a fixed field order and microsecond RFC 3339 time,
/// so every store produces the same bytes for the same record.
pub fn canonical_bytes(id: AuditId, seq: i64, e: &AuditEntry) -> Vec<u8> {
    let c = Canonical {
        id: id.to_string(),
        seq,
        at: e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        actor: e.actor.map(|a| a.to_string()),
        client_ip: &e.client_ip,
        action: &e.action,
        resource: &e.resource,
        project: &e.project,
        outcome: e.outcome.as_str(),
        detail: &e.detail,
        request_id: &e.request_id,
        trace_id: &e.trace_id,
    };
    // Serialising plain strings and options into a Vec cannot fail.
    serde_json::to_vec(&c).unwrap_or_default()
}

/// `SHA-256(prev_hash || canonical record)`.
pub fn chain_hash(prev_hash: &[u8; 32], id: AuditId, seq: i64, entry: &AuditEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(canonical_bytes(id, seq, entry));
    h.finalize().into()
}

/// Seals an entry into the record that follows `prev_hash`.
pub fn seal(id: AuditId, seq: i64, entry: AuditEntry, prev_hash: [u8; 32]) -> AuditRecord {
    let hash = chain_hash(&prev_hash, id, seq, &entry);
    AuditRecord { id, seq, entry, prev_hash, hash }
}

/// The result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Whether every record checked out.
    pub ok: bool,
    /// Records checked.
    pub checked: u64,
    /// The first record whose hash or link is wrong.
    pub first_bad_id: Option<AuditId>,
}

/// Checks records batch by batch; feed them in sequence order.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    expected_prev: [u8; 32],
    checked: u64,
    first_bad: Option<AuditId>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { expected_prev: GENESIS_HASH, checked: 0, first_bad: None }
    }
}

impl ChainVerifier {
    /// Checks the next record; returns false once a bad record was found.
    pub fn check(&mut self, r: &AuditRecord) -> bool {
        if self.first_bad.is_some() {
            return false;
        }
        self.checked += 1;
        let recomputed = chain_hash(&r.prev_hash, r.id, r.seq, &r.entry);
        if r.prev_hash != self.expected_prev || recomputed != r.hash {
            self.first_bad = Some(r.id);
            return false;
        }
        self.expected_prev = r.hash;
        true
    }

    /// The verdict.
    pub fn report(&self) -> VerifyReport {
        VerifyReport { ok: self.first_bad.is_none(), checked: self.checked, first_bad_id: self.first_bad }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            at: chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("valid"),
            actor: None,
            client_ip: Some("127.0.0.1".into()),
            action: action.into(),
            resource: "/v1/projects".into(),
            project: None,
            outcome: AuditOutcome::Success,
            detail: None,
            request_id: None,
            trace_id: None,
        }
    }

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH;
        (0..n)
            .map(|i| {
                let r = seal(AuditId::generate(), i as i64 + 1, entry(&format!("a{i}")), prev);
                prev = r.hash;
                r
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let mut v = ChainVerifier::default();
        assert!(chain(5).iter().all(|r| v.check(r)));
        assert_eq!(v.report(), VerifyReport { ok: true, checked: 5, first_bad_id: None });
    }

    #[test]
    fn a_changed_record_is_the_first_bad_one() {
        let mut records = chain(5);
        records[2].entry.action = "forged".into();
        let mut v = ChainVerifier::default();
        records.iter().for_each(|r| {
            v.check(r);
        });
        assert_eq!(v.report().first_bad_id, Some(records[2].id));
        assert!(!v.report().ok);
    }

    #[test]
    fn a_deleted_record_breaks_the_link() {
        let mut records = chain(4);
        records.remove(1);
        let mut v = ChainVerifier::default();
        records.iter().for_each(|r| {
            v.check(r);
        });
        assert_eq!(v.report().first_bad_id, Some(records[1].id));
    }
}
