//! `AuditService`: records what happened, lists records, and verifies the hash chain.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::api_key::{ProjectAccess, Scope};
use domain::audit::{
    AuditEntry, AuditOutcome, AuditRecord, ChainVerifier, CheckpointKey, CheckpointVerifier, VerifyReport,
};
use domain::pagination::{Page, PageRequest};
use domain::ports::{AuditFilter, AuditLog};
use domain::{DomainError, DomainResult};
use tokio_util::sync::CancellationToken;

use crate::access::Principal;

/// How many records `verify` reads per round trip.
const VERIFY_BATCH: u32 = 1000;

/// When and with what key the chain is signed (`AUDIT_CHECKPOINT_*`).
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    /// The signing key (`AUDIT_CHECKPOINT_KEY_FILE`), never stored in the database.
    pub key: CheckpointKey,
    /// Sign after every this many records.
    pub every_records: u32,
    /// And at least this often while records arrive.
    pub every: Duration,
}

/// An action taken through the command line (`rdev-api keys …`), for `AuditService::record_cli`.
#[derive(Debug, Clone)]
pub struct CliAction {
    /// What was run, e.g. `cli keys create`.
    pub action: String,
    /// What it acted on, e.g. `api_key/<id>`.
    pub resource: String,
    /// The operating-system user who ran it (the CLI has no API key to name).
    pub os_user: String,
    /// What was asked, for the detail.
    pub request: String,
    /// Why it failed, or `None` when it succeeded.
    pub error: Option<String>,
}

impl CliAction {
    fn entry(self) -> AuditEntry {
        let outcome = if self.error.is_some() { AuditOutcome::Failure } else { AuditOutcome::Success };
        let why = self.error.map(|e| format!(" error={e}")).unwrap_or_default();
        AuditEntry {
            at: domain::to_micros_precision(chrono::Utc::now()),
            actor: None,
            client_ip: None,
            action: self.action,
            resource: self.resource,
            project: None,
            outcome,
            detail: Some(format!("actor=cli os_user={} {}{why}", self.os_user, self.request).trim_end().to_owned()),
            request_id: None,
            trace_id: None,
            count: 1,
        }
    }
}

/// Appends to and reads the audit log.
#[derive(Clone)]
pub struct AuditService {
    log: Arc<dyn AuditLog>,
    checkpoints: Option<Arc<CheckpointPolicy>>,
    /// The highest `seq` this replica signed, so the timer skips an unchanged chain.
    last_signed: Arc<AtomicI64>,
}

impl std::fmt::Debug for AuditService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditService").finish_non_exhaustive()
    }
}

impl AuditService {
    /// A service over `log`.
    pub fn new(log: Arc<dyn AuditLog>) -> Self {
        Self { log, checkpoints: None, last_signed: Arc::new(AtomicI64::new(0)) }
    }

    /// Signs checkpoints under `policy`, and verifies against them.
    #[must_use]
    pub fn with_checkpoints(mut self, policy: Option<CheckpointPolicy>) -> Self {
        self.checkpoints = policy.map(Arc::new);
        self
    }

    /// Appends a record. A failure is logged and counted here, once, and not passed on: the
    /// action it describes already happened and must not be reported as failed.
    pub async fn record(&self, entry: AuditEntry) {
        let action = entry.action.clone();
        match self.log.append(entry).await {
            Ok(record) => self.sign_if_due(&record).await,
            Err(e) => {
                metrics::counter!(crate::metrics::AUDIT_WRITE_FAILURES_TOTAL).increment(1);
                tracing::error!(%action, error = %e, "could not write audit record");
            }
        }
    }

    /// Does for a record a store appended itself (in the transaction of the change it
    /// describes, `CommandQueue::finish_audited`) what `record` does after an append: signs a
    /// checkpoint when one is due.
    pub async fn appended(&self, record: &AuditRecord) {
        self.sign_if_due(record).await;
    }

    /// Appends the record of a CLI action. Unlike `record`, a failure is returned: a one-shot
    /// command can still say that its change went unaudited, which a server action cannot.
    pub async fn record_cli(&self, action: CliAction) -> DomainResult<()> {
        let record = self.log.append(action.entry()).await?;
        self.sign_if_due(&record).await;
        Ok(())
    }

    /// Signs after every `every_records` records, whoever appended them.
    async fn sign_if_due(&self, record: &AuditRecord) {
        if self.checkpoints.as_ref().is_some_and(|p| record.seq % i64::from(p.every_records.max(1)) == 0) {
            self.sign(record).await;
        }
    }

    /// Signs the chain's state at `record`, stores the checkpoint and logs it: the log line is
    /// the copy outside the database that an attacker with database access cannot rewrite.
    async fn sign(&self, record: &AuditRecord) {
        let Some(policy) = &self.checkpoints else { return };
        // Sequences start at 1 and have no gaps, so the count of records up to `seq` is `seq`;
        // signing it separately catches a chain renumbered after a deletion.
        let cp = policy.key.sign(record.seq, record.hash, record.seq, domain::to_micros_precision(chrono::Utc::now()));
        let (seq, hash, mac) = (cp.seq, hex::encode(cp.hash), hex::encode(cp.mac));
        match self.log.add_checkpoint(cp).await {
            Ok(()) => {
                self.last_signed.fetch_max(seq, Ordering::Relaxed);
                tracing::info!(target: "audit_checkpoint", seq, count = seq, hash = %hash, mac = %mac, "audit checkpoint");
            }
            Err(e) => {
                metrics::counter!(crate::metrics::AUDIT_WRITE_FAILURES_TOTAL).increment(1);
                tracing::error!(seq, error = %e, "could not store audit checkpoint");
            }
        }
    }

    /// Signs the chain every `CheckpointPolicy::every` while it grows, and once more on
    /// shutdown, so a quiet tail is covered within that time. Returns at once without a policy.
    pub async fn run_checkpoints(self, shutdown: CancellationToken) {
        let Some(every) = self.checkpoints.as_ref().map(|p| p.every) else { return };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = shutdown.cancelled() => true,
            };
            self.checkpoint_now().await;
            if stopping {
                return;
            }
        }
    }

    /// Signs the latest record unless this replica already did.
    pub async fn checkpoint_now(&self) {
        match self.log.latest().await {
            Ok(Some(last)) if last.seq > self.last_signed.load(Ordering::Relaxed) => self.sign(&last).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the audit log for a checkpoint"),
        }
    }

    /// Records matching `filter`. Needs `audit:read`. A project-limited key sees only records
    /// of its projects (never records without a project), and naming a project it cannot see
    /// is `NotFound`, as everywhere else.
    pub async fn list(
        &self,
        actor: &Principal,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> DomainResult<Page<AuditRecord>> {
        actor.require(Scope::AuditRead)?;
        let mut filter = filter.clone();
        if let ProjectAccess::Only(visible) = &actor.projects {
            if filter.project.as_ref().is_some_and(|p| !visible.iter().any(|v| v.as_str() == p)) {
                return Err(DomainError::NotFound("project".into()));
            }
            filter.visible_projects = Some(visible.iter().map(|p| p.as_str().to_owned()).collect());
        }
        self.log.list(&filter, page).await
    }

    /// Re-computes the whole chain and names the first record that does not match. With the
    /// checkpoint key it also checks every signed checkpoint, which proves that nothing up to
    /// the last one was deleted, truncated or recomputed; without it completeness is
    /// `unproven`. Needs `audit:read`.
    pub async fn verify(&self, actor: &Principal) -> DomainResult<VerifyReport> {
        actor.require(Scope::AuditRead)?;
        let mut signed = match &self.checkpoints {
            Some(policy) => Some(CheckpointVerifier::new(policy.key.clone(), self.all_checkpoints().await?)),
            None => None,
        };
        let mut verifier = ChainVerifier::default();
        let mut after = 0;
        'scan: loop {
            let batch = self.log.scan(after, VERIFY_BATCH).await?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for r in &batch {
                if !verifier.check(r) {
                    break 'scan;
                }
                if let Some(s) = signed.as_mut() {
                    s.observe(r);
                }
            }
        }
        let report = verifier.report();
        Ok(match signed {
            Some(s) => s.finish(report),
            None => report,
        })
    }

    async fn all_checkpoints(&self) -> DomainResult<Vec<domain::audit::AuditCheckpoint>> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or(0, |c: &domain::audit::AuditCheckpoint| c.seq);
            let batch = self.log.checkpoints(after, VERIFY_BATCH).await?;
            if batch.is_empty() {
                return Ok(all);
            }
            all.extend(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::audit::AuditOutcome;
    use domain::testing::{now_micros, MemoryStore};

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            at: now_micros(),
            actor: None,
            client_ip: None,
            action: format!("action-{i}"),
            resource: "/v1/x".into(),
            project: None,
            outcome: AuditOutcome::Success,
            detail: None,
            request_id: None,
            trace_id: None,
            count: 1,
        }
    }

    #[tokio::test]
    async fn verify_finds_the_first_tampered_record_across_batches() {
        let store = Arc::new(MemoryStore::new());
        let audit = AuditService::new(store.clone());
        for i in 0..1500 {
            audit.record(entry(i)).await;
        }
        let ok = audit.verify(&Principal::system()).await.expect("verify");
        assert!(ok.ok);
        assert_eq!(ok.checked, 1500);
        store.tamper_audit(1200, "forged");
        let bad = audit.verify(&Principal::system()).await.expect("verify");
        assert!(!bad.ok);
        let page = audit
            .list(
                &Principal::system(),
                &AuditFilter { action: Some("forged".into()), ..Default::default() },
                PageRequest::default(),
            )
            .await
            .expect("list");
        assert_eq!(bad.first_bad_id, page.items.first().map(|r| r.id));
    }

    #[tokio::test]
    async fn checkpoints_prove_completeness_and_find_a_truncated_tail() {
        let store = Arc::new(MemoryStore::new());
        let policy = CheckpointPolicy {
            key: CheckpointKey::new(&[3u8; 32]).expect("key"),
            every_records: 10,
            every: Duration::from_secs(60),
        };
        let audit = AuditService::new(store.clone()).with_checkpoints(Some(policy));
        for i in 0..25 {
            audit.record(entry(i)).await;
        }
        audit.checkpoint_now().await;
        let ok = audit.verify(&Principal::system()).await.expect("verify");
        assert!(ok.ok, "{ok:?}");
        assert_eq!((ok.checkpoints_checked, ok.proven_through_seq), (3, Some(25)));
        let unsigned = AuditService::new(store.clone()).verify(&Principal::system()).await.expect("verify");
        assert_eq!(unsigned.completeness, domain::audit::Completeness::Unproven);
        store.tamper_audit(12, "forged");
        assert!(!audit.verify(&Principal::system()).await.expect("verify").ok);
    }
}
