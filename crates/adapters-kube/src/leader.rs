//! Leader election over a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection
//! does it: optimistic concurrency on `metadata.resourceVersion`, expiry judged by the local
//! clock from the moment a candidate first saw the current record (never by comparing
//! `renewTime` with a clock of another machine), and a release that empties `holderIdentity`.
//!
//! The lease also carries, in one annotation, what its holder has reported so far, so the next
//! holder continues from there.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio::time::Instant;

use crate::error::{bounded, KubeError};

/// Annotation on the lease holding the holder's reported pod states (JSON).
pub const REPORTED_ANNOTATION: &str = "rdev.dev/reported-pods";

/// A lease this replica holds.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    /// The lease as last written (its resourceVersion is the precondition of the next write).
    pub lease: Lease,
    /// When the last successful write was sent: the lease lasts for the others from then on.
    pub renewed_at: Instant,
    /// The reported states the previous holder left (`None`: the lease never carried them).
    pub inherited: Option<String>,
}

/// What a candidate knows of a lease held by someone else.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    record: Option<(String, Instant)>,
}

/// Campaigns for and keeps one lease.
#[derive(Clone)]
pub(crate) struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub holder: String,
    pub duration: Duration,
    pub api_timeout: Duration,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector").field("name", &self.name).field("holder", &self.holder).finish_non_exhaustive()
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn holder_of(lease: &Lease) -> &str {
    lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).unwrap_or_default()
}

impl Elector {
    fn seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Takes the lease when it is free, expired or already ours; `None` while another replica
    /// holds it (or won the race for it).
    ///
    /// # Errors
    /// `ApiUnavailable` and other API errors; a lost race is not an error.
    pub(crate) async fn try_acquire(&self, observed: &mut Observed) -> Result<Option<Held>, KubeError> {
        let current = bounded("get lease", self.api_timeout, self.api.get_opt(&self.name)).await?;
        let Some(current) = current else {
            return self.create().await;
        };
        let rv = current.metadata.resource_version.clone().unwrap_or_default();
        let holder = holder_of(&current);
        let now = Instant::now();
        let first_seen = match &observed.record {
            Some((seen, at)) if *seen == rv => *at,
            _ => {
                observed.record = Some((rv.clone(), now));
                now
            }
        };
        let lasts = current
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .map_or(self.duration, |s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
        let free = holder.is_empty() || holder == self.holder || now >= first_seen + lasts;
        if !free {
            return Ok(None);
        }
        let inherited = current.metadata.annotations.as_ref().and_then(|a| a.get(REPORTED_ANNOTATION)).cloned();
        let mut next = current.clone();
        let spec = next.spec.get_or_insert_with(LeaseSpec::default);
        if holder != self.holder {
            spec.acquire_time = Some(now_micro());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.holder.clone());
        spec.lease_duration_seconds = Some(self.seconds());
        spec.renew_time = Some(now_micro());
        let sent = Instant::now();
        match bounded("take lease", self.api_timeout, self.api.replace(&self.name, &PostParams::default(), &next)).await
        {
            Ok(lease) => {
                tracing::info!(lease = %self.name, holder = %self.holder, previous = %holder, "took the lease");
                Ok(Some(Held { lease, renewed_at: sent, inherited }))
            }
            Err(KubeError::Conflict(_) | KubeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create(&self) -> Result<Option<Held>, KubeError> {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.holder.clone()),
                lease_duration_seconds: Some(self.seconds()),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        let sent = Instant::now();
        match bounded("create lease", self.api_timeout, self.api.create(&PostParams::default(), &lease)).await {
            Ok(lease) => {
                tracing::info!(lease = %self.name, holder = %self.holder, "created and took the lease");
                Ok(Some(Held { lease, renewed_at: sent, inherited: None }))
            }
            Err(KubeError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Renews a held lease, storing `reported` with it.
    ///
    /// # Errors
    /// `Conflict` when someone else wrote the lease since (it is lost); `ApiUnavailable` and
    /// other API errors when the write did not happen (it may still be held until it expires).
    pub(crate) async fn renew(&self, held: &mut Held, reported: &str) -> Result<(), KubeError> {
        let mut next = held.lease.clone();
        annotate(&mut next, reported);
        if let Some(spec) = next.spec.as_mut() {
            spec.renew_time = Some(now_micro());
        }
        let sent = Instant::now();
        let lease =
            bounded("renew lease", self.api_timeout, self.api.replace(&self.name, &PostParams::default(), &next))
                .await
                .map_err(|e| match e {
                    KubeError::NotFound(m) => KubeError::Conflict(m),
                    other => other,
                })?;
        if holder_of(&lease) != self.holder {
            return Err(KubeError::Conflict(format!("lease {} is held by {}", self.name, holder_of(&lease))));
        }
        held.lease = lease;
        held.renewed_at = sent;
        Ok(())
    }

    /// Gives a held lease up (empty holder, one-second duration) so another replica can lead at
    /// once, storing `reported` with it. A failure only delays the next leader until expiry.
    pub(crate) async fn release(&self, held: Held, reported: &str) {
        let mut next = held.lease;
        annotate(&mut next, reported);
        if let Some(spec) = next.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now_micro());
        }
        match bounded("release lease", self.api_timeout, self.api.replace(&self.name, &PostParams::default(), &next))
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, holder = %self.holder, "gave the lease up"),
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "could not give the lease up; it expires instead"),
        }
    }
}

fn annotate(lease: &mut Lease, reported: &str) {
    lease
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(REPORTED_ANNOTATION.to_owned(), reported.to_owned());
}
