//! The audit log: records and their hash chain.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ids::{ApiKeyId, AuditId};
use crate::Timestamp;

/// How a recorded action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// It was done.
    Success,
    /// It was refused (authentication, authorisation, rate limit).
    Denied,
    /// It was attempted and failed.
    Failure,
    /// The client hung up before an answer was sent (logged with status 499, as nginx does).
    ClientClosed,
}

impl AuditOutcome {
    /// Every outcome.
    pub const ALL: [AuditOutcome; 4] = [Self::Success, Self::Denied, Self::Failure, Self::ClientClosed];

    /// Name on the wire and in stores.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failure => "failure",
            Self::ClientClosed => "client_closed",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
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
    /// How many occurrences this record stands for: 1, except for aggregated records (failed
    /// authentications of one address, reason and window), so a flood adds a handful of
    /// records, not one per request. Summing `count` gives the number of occurrences.
    pub count: u32,
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
    /// Left out when 1, so records written before `count` existed keep their hashes; any
    /// other value is hashed, so editing a count breaks the chain.
    #[serde(skip_serializing_if = "is_one")]
    count: u32,
}

fn is_one(n: &u32) -> bool {
    *n == 1
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
        count: e.count,
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

/// Whether verification could prove that no record is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Completeness {
    /// Checked against signed checkpoints: nothing up to the last checkpoint was removed or
    /// rewritten.
    Proven,
    /// Without the checkpoint key only the chain's internal consistency was checked: a deleted
    /// tail or a chain recomputed from scratch would still look intact.
    Unproven,
}

/// The result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Whether every record (and every checkpoint, when a key was given) checked out.
    pub ok: bool,
    /// Records checked.
    pub checked: u64,
    /// The first record whose hash or link is wrong.
    pub first_bad_id: Option<AuditId>,
    /// `proven` when checked against signed checkpoints, `unproven` without a key.
    pub completeness: Completeness,
    /// Checkpoints whose signature and record were checked.
    pub checkpoints_checked: u64,
    /// Records up to this sequence number are covered by a valid checkpoint.
    pub proven_through_seq: Option<i64>,
    /// Why a checkpoint did not match (signature, missing record, rewritten hash, count).
    pub checkpoint_error: Option<String>,
}

/// A signed statement that the chain held `count` records and ended in `hash` at `seq`: the
/// anchor outside the database (CloudTrail's digest files are the model). Without the key,
/// which the database never holds, nobody can forge one for a rewritten chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    /// Sequence number of the last record covered.
    pub seq: i64,
    /// That record's hash.
    pub hash: [u8; 32],
    /// Records in the chain up to and including `seq`.
    pub count: i64,
    /// When it was made.
    pub at: Timestamp,
    /// `HMAC-SHA256(key, "rdev-audit-checkpoint-v1" || seq || hash || count)`.
    pub mac: [u8; 32],
}

/// The secret that signs checkpoints (`AUDIT_CHECKPOINT_KEY_FILE`); never stored in the database.
#[derive(Clone)]
pub struct CheckpointKey(Vec<u8>);

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointKey([redacted])")
    }
}

/// Why a checkpoint key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the audit checkpoint key must hold at least {min} bytes, found {found}")]
pub struct WeakCheckpointKey {
    /// Least accepted length.
    pub min: usize,
    /// Length given.
    pub found: usize,
}

impl CheckpointKey {
    /// Fewest bytes accepted: a short key could be guessed offline from stored checkpoints.
    pub const MIN_BYTES: usize = 32;

    /// A key from the file's contents (surrounding whitespace trimmed, so a trailing newline
    /// does not change the key).
    pub fn new(bytes: &[u8]) -> Result<Self, WeakCheckpointKey> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < Self::MIN_BYTES {
            return Err(WeakCheckpointKey { min: Self::MIN_BYTES, found: trimmed.len() });
        }
        Ok(Self(trimmed.to_vec()))
    }

    fn mac(&self, seq: i64, hash: &[u8; 32], count: i64) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("any key length"));
        mac.update(b"rdev-audit-checkpoint-v1");
        mac.update(&seq.to_be_bytes());
        mac.update(hash);
        mac.update(&count.to_be_bytes());
        mac
    }

    /// Signs the chain's state at `seq`.
    pub fn sign(&self, seq: i64, hash: [u8; 32], count: i64, at: Timestamp) -> AuditCheckpoint {
        let mac = self.mac(seq, &hash, count).finalize().into_bytes().into();
        AuditCheckpoint { seq, hash, count, at, mac }
    }

    /// Whether `cp` was signed with this key (constant-time comparison).
    pub fn verifies(&self, cp: &AuditCheckpoint) -> bool {
        self.mac(cp.seq, &cp.hash, cp.count).verify_slice(&cp.mac).is_ok()
    }
}

/// Checks records against signed checkpoints; feed it the same records as the `ChainVerifier`,
/// in order, then `finish`.
#[derive(Debug)]
pub struct CheckpointVerifier {
    key: CheckpointKey,
    /// Checkpoints not yet reached, in ascending `seq`.
    pending: std::collections::VecDeque<AuditCheckpoint>,
    seen: i64,
    checked: u64,
    proven_through: Option<i64>,
    error: Option<String>,
}

impl CheckpointVerifier {
    /// A verifier of `checkpoints` (any order) under `key`.
    pub fn new(key: CheckpointKey, mut checkpoints: Vec<AuditCheckpoint>) -> Self {
        checkpoints.sort_by_key(|c| c.seq);
        let mut v = Self { key, pending: checkpoints.into(), seen: 0, checked: 0, proven_through: None, error: None };
        if let Some(bad) = v.pending.iter().find(|c| !v.key.verifies(c)) {
            v.error = Some(format!("checkpoint at seq {} has a bad signature", bad.seq));
        }
        v
    }

    /// Checks the next record against a checkpoint at its position, if any.
    pub fn observe(&mut self, r: &AuditRecord) {
        if self.error.is_some() {
            return;
        }
        self.seen += 1;
        while let Some(cp) = self.pending.front() {
            if cp.seq > r.seq {
                break;
            }
            if cp.seq < r.seq {
                self.error = Some(format!("the record at checkpoint seq {} is missing", cp.seq));
                return;
            }
            if cp.hash != r.hash {
                self.error = Some(format!("the record at checkpoint seq {} was rewritten", cp.seq));
                return;
            }
            if cp.count != self.seen {
                self.error = Some(format!(
                    "checkpoint seq {} counted {} records, the log holds {}",
                    cp.seq, cp.count, self.seen
                ));
                return;
            }
            self.checked += 1;
            self.proven_through = Some(cp.seq);
            self.pending.pop_front();
        }
    }

    /// The verdict, merged with the chain's.
    pub fn finish(mut self, chain: VerifyReport) -> VerifyReport {
        // Only a complete walk may blame the tail: a broken chain stopped the walk early.
        if self.error.is_none() && chain.ok {
            if let Some(cp) = self.pending.front() {
                self.error = Some(format!("records up to checkpoint seq {} are missing (log truncated)", cp.seq));
            }
        }
        VerifyReport {
            ok: chain.ok && self.error.is_none(),
            completeness: Completeness::Proven,
            checkpoints_checked: self.checked,
            proven_through_seq: self.proven_through,
            checkpoint_error: self.error,
            ..chain
        }
    }
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
        VerifyReport {
            ok: self.first_bad.is_none(),
            checked: self.checked,
            first_bad_id: self.first_bad,
            completeness: Completeness::Unproven,
            checkpoints_checked: 0,
            proven_through_seq: None,
            checkpoint_error: None,
        }
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
            count: 1,
        }
    }

    #[test]
    fn a_count_of_one_keeps_the_old_canonical_form_and_any_other_count_is_hashed() {
        let id = AuditId::generate();
        let one = canonical_bytes(id, 1, &entry("a"));
        assert!(!String::from_utf8_lossy(&one).contains("count"), "records from before `count` keep their hash");
        let many = AuditEntry { count: 7, ..entry("a") };
        assert!(String::from_utf8_lossy(&canonical_bytes(id, 1, &many)).ends_with(r#""count":7}"#));
        assert_ne!(chain_hash(&GENESIS_HASH, id, 1, &many), chain_hash(&GENESIS_HASH, id, 1, &entry("a")));
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
        let report = v.report();
        assert_eq!((report.ok, report.checked, report.first_bad_id), (true, 5, None));
        assert_eq!(report.completeness, Completeness::Unproven);
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

    fn verify_with(key: &CheckpointKey, records: &[AuditRecord], checkpoints: Vec<AuditCheckpoint>) -> VerifyReport {
        let mut chain = ChainVerifier::default();
        let mut cps = CheckpointVerifier::new(key.clone(), checkpoints);
        for r in records {
            if !chain.check(r) {
                break;
            }
            cps.observe(r);
        }
        cps.finish(chain.report())
    }

    fn key() -> CheckpointKey {
        CheckpointKey::new(&[7u8; 32]).expect("key")
    }

    fn checkpoint_at(records: &[AuditRecord], seq: i64) -> AuditCheckpoint {
        let r = &records[usize::try_from(seq - 1).expect("seq")];
        key().sign(r.seq, r.hash, seq, r.entry.at)
    }

    #[test]
    fn checkpoints_prove_an_intact_chain() {
        let records = chain(10);
        let report = verify_with(&key(), &records, vec![checkpoint_at(&records, 5), checkpoint_at(&records, 10)]);
        assert!(report.ok, "{report:?}");
        assert_eq!((report.checkpoints_checked, report.proven_through_seq), (2, Some(10)));
        assert_eq!(report.completeness, Completeness::Proven);
    }

    #[test]
    fn a_truncated_tail_is_found() {
        let records = chain(10);
        let cps = vec![checkpoint_at(&records, 10)];
        let report = verify_with(&key(), &records[..7], cps);
        assert!(!report.ok);
        assert!(report.checkpoint_error.is_some_and(|e| e.contains("truncated")));
    }

    #[test]
    fn a_recomputed_chain_is_found() {
        let records = chain(6);
        let cps = vec![checkpoint_at(&records, 6)];
        // Rewrite record 2 and re-seal everything after it: the chain itself is consistent.
        let mut forged = records[..1].to_vec();
        let mut prev = records[0].hash;
        for r in &records[1..] {
            let mut e = r.entry.clone();
            if r.seq == 2 {
                e.action = "nothing".into();
            }
            let s = seal(r.id, r.seq, e, prev);
            prev = s.hash;
            forged.push(s);
        }
        let report = verify_with(&key(), &forged, cps);
        assert!(!report.ok);
        assert_eq!(report.first_bad_id, None, "the chain alone looks fine");
    }

    #[test]
    fn a_checkpoint_signed_with_another_key_is_refused() {
        let records = chain(3);
        let other = CheckpointKey::new(&[8u8; 40]).expect("key");
        let r = &records[2];
        let report = verify_with(&key(), &records, vec![other.sign(r.seq, r.hash, 3, r.entry.at)]);
        assert!(!report.ok);
        assert!(CheckpointKey::new(b"short").is_err());
    }
}
