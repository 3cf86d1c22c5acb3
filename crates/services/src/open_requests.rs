//! `OpenRequests`: the long-lived requests of each key (event streams, `?wait=` submits), so
//! that revoking or expiring a key ends them too, and so that one key cannot hold an unbounded
//! number of streams. Counting is per replica: each replica caps its own streams, and each
//! replica hears of revocations through the same signal that clears its key cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use domain::api_key::ApiKey;
use domain::ids::ApiKeyId;
use domain::ports::{ApiKeyRepository, Clock};
use domain::Timestamp;
use tokio_util::sync::CancellationToken;

/// Default of `MAX_STREAMS_PER_KEY`.
pub const DEFAULT_MAX_STREAMS_PER_KEY: u32 = 32;

/// A key already holds as many event streams on this replica as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this API key already has {limit} open event streams on this server")]
pub struct TooManyStreams {
    /// The cap that was reached.
    pub limit: u32,
}

/// What kind of long-lived request a registration is; only streams count against the cap
/// (a `?wait=` ends by itself within 60 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `GET /v1/commands/{id}/events`.
    Stream,
    /// `POST …/commands?wait=S`.
    Wait,
}

#[derive(Debug, Default)]
struct KeyRequests {
    streams: u32,
    next: u64,
    tokens: HashMap<u64, CancellationToken>,
}

/// How long a key change is remembered: a request that authenticated with a cached view of
/// the key just before the change may register just after it, and must be re-checked too. The
/// key cache's TTL (500 ms by default) bounds that gap; this is a generous margin over it.
const RECENT_CHANGE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Default)]
struct Shared {
    keys: Mutex<HashMap<ApiKeyId, KeyRequests>>,
    recent_changes: Mutex<HashMap<ApiKeyId, std::time::Instant>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ApiKeyId, KeyRequests>> {
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember_change(&self, id: ApiKeyId) {
        let mut recent = self.recent_changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.retain(|_, at| at.elapsed() < RECENT_CHANGE);
        recent.insert(id, std::time::Instant::now());
    }

    fn changed_recently(&self, id: ApiKeyId) -> bool {
        let recent = self.recent_changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.get(&id).is_some_and(|at| at.elapsed() < RECENT_CHANGE)
    }
}

/// The open long-lived requests of every key on this replica.
pub struct OpenRequests {
    shared: Arc<Shared>,
    keys: Arc<dyn ApiKeyRepository>,
    clock: Arc<dyn Clock>,
    max_streams_per_key: u32,
}

impl std::fmt::Debug for OpenRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRequests").field("max_streams_per_key", &self.max_streams_per_key).finish_non_exhaustive()
    }
}

/// One registered request; dropping it unregisters (and frees a stream slot).
#[derive(Debug)]
pub struct OpenRequest {
    shared: Arc<Shared>,
    key: ApiKeyId,
    slot: u64,
    kind: RequestKind,
    token: CancellationToken,
    /// When the key expires, as a deadline on the runtime clock.
    expires: Option<tokio::time::Instant>,
}

impl OpenRequest {
    /// Completes when the request must end: its key was revoked or it expired.
    pub async fn ended(&self) {
        match self.expires {
            Some(at) => {
                tokio::select! {
                    () = self.token.cancelled() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => self.token.cancelled().await,
        }
    }

    /// Whether the request must end now.
    pub fn is_ended(&self) -> bool {
        self.token.is_cancelled() || self.expires.is_some_and(|at| at <= tokio::time::Instant::now())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let mut keys = self.shared.lock();
        let Some(entry) = keys.get_mut(&self.key) else { return };
        entry.tokens.remove(&self.slot);
        if self.kind == RequestKind::Stream {
            entry.streams = entry.streams.saturating_sub(1);
        }
        if entry.tokens.is_empty() {
            keys.remove(&self.key);
        }
    }
}

impl OpenRequests {
    /// A registry that re-reads keys from `keys` when told one changed.
    pub fn new(keys: Arc<dyn ApiKeyRepository>, clock: Arc<dyn Clock>, max_streams_per_key: u32) -> Self {
        Self { shared: Arc::default(), keys, clock, max_streams_per_key }
    }

    /// Registers a request of `key`; a stream beyond the key's cap is refused. A key that
    /// changed moments ago is re-read from the store, as its caller may have been let in by a
    /// cached view from before the change.
    pub fn open(self: &Arc<Self>, key: &ApiKey, kind: RequestKind) -> Result<OpenRequest, TooManyStreams> {
        let token = CancellationToken::new();
        let slot = {
            let mut keys = self.shared.lock();
            let entry = keys.entry(key.id).or_default();
            if kind == RequestKind::Stream {
                if entry.streams >= self.max_streams_per_key {
                    return Err(TooManyStreams { limit: self.max_streams_per_key });
                }
                entry.streams += 1;
            }
            entry.next += 1;
            entry.tokens.insert(entry.next, token.clone());
            entry.next
        };
        let expires = key.expires_at.map(|at| deadline(at, self.clock.now()));
        if self.shared.changed_recently(key.id) {
            let this = Arc::clone(self);
            let id = key.id;
            tokio::spawn(async move { this.recheck(id).await });
        }
        Ok(OpenRequest { shared: Arc::clone(&self.shared), key: key.id, slot, kind, token, expires })
    }

    /// Ends every open request of `id` now (the key was revoked here).
    pub fn end_key(&self, id: ApiKeyId) {
        self.shared.remember_change(id);
        if let Some(entry) = self.shared.lock().get(&id) {
            entry.tokens.values().for_each(CancellationToken::cancel);
        }
    }

    /// `id` changed somewhere (revoked or rotated, maybe on another replica): re-reads it and
    /// ends its open requests if it can no longer be used. Returns at once; the store read
    /// runs in the background so the signal pump is never held up.
    pub fn key_changed(self: &Arc<Self>, id: ApiKeyId) {
        self.shared.remember_change(id);
        if !self.shared.lock().contains_key(&id) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move { this.recheck(id).await });
    }

    /// Signals may have been missed: re-reads every key that has open requests.
    pub fn resync(self: &Arc<Self>) {
        let ids: Vec<ApiKeyId> = self.shared.lock().keys().copied().collect();
        for id in ids {
            self.key_changed(id);
        }
    }

    async fn recheck(&self, id: ApiKeyId) {
        match self.keys.get(id).await {
            Ok(key) if key.revoked_at.is_none() && key.expires_at.is_none_or(|at| at > self.clock.now()) => {}
            Ok(_) | Err(domain::DomainError::NotFound(_)) => self.end_key(id),
            Err(e) => {
                // Leave the requests open: the key may well be fine, and a revoked key is
                // refused on its next request anyway.
                tracing::warn!(api_key_id = %id, error = %e, "could not re-read a changed key");
            }
        }
    }

    /// Re-reads every key with open requests each `every`, until `shutdown`: the backstop for a
    /// change no signal announces (a revocation by the CLI against SQLite, a lost NOTIFY).
    pub async fn run_backstop(self: Arc<Self>, every: std::time::Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let ids: Vec<ApiKeyId> = self.shared.lock().keys().copied().collect();
            for id in ids {
                self.recheck(id).await;
            }
        }
    }

    /// Open streams of `id` on this replica (for tests and metrics).
    pub fn streams_of(&self, id: ApiKeyId) -> u32 {
        self.shared.lock().get(&id).map_or(0, |e| e.streams)
    }
}

/// The runtime instant at which the wall-clock time `at` arrives.
fn deadline(at: Timestamp, now: Timestamp) -> tokio::time::Instant {
    let left = (at - now).to_std().unwrap_or_default();
    tokio::time::Instant::now() + left
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use domain::api_key::{ProjectAccess, Scope};
    use domain::testing::{now_micros, sample_key, ManualClock, MemoryStore};

    use super::*;

    fn registry(store: Arc<MemoryStore>, cap: u32) -> Arc<OpenRequests> {
        Arc::new(OpenRequests::new(store, Arc::new(ManualClock::at_fixed_start()), cap))
    }

    #[tokio::test]
    async fn streams_beyond_the_cap_are_refused_and_slots_come_back_on_drop() {
        let store = Arc::new(MemoryStore::new());
        let open = registry(store, 2);
        let (key, _) = sample_key("k", &[Scope::Admin], ProjectAccess::All);
        let a = open.open(&key, RequestKind::Stream).expect("first");
        let _b = open.open(&key, RequestKind::Stream).expect("second");
        assert_eq!(open.open(&key, RequestKind::Stream).err(), Some(TooManyStreams { limit: 2 }));
        let _wait = open.open(&key, RequestKind::Wait).expect("waits do not count");
        drop(a);
        assert!(open.open(&key, RequestKind::Stream).is_ok());
    }

    #[tokio::test]
    async fn a_revoked_key_ends_its_requests_and_a_still_valid_one_does_not() {
        let store = Arc::new(MemoryStore::new());
        let open = registry(store.clone(), 8);
        let (key, _) = sample_key("k", &[Scope::Admin], ProjectAccess::All);
        store.create(&key).await.expect("create");
        let request = open.open(&key, RequestKind::Wait).expect("open");
        open.key_changed(key.id);
        assert!(tokio::time::timeout(Duration::from_millis(100), request.ended()).await.is_err(), "key still valid");
        store.revoke(key.id, now_micros()).await.expect("revoke");
        open.key_changed(key.id);
        tokio::time::timeout(Duration::from_secs(1), request.ended()).await.expect("ended after revocation");
        assert!(request.is_ended());
    }

    #[tokio::test]
    async fn a_request_registered_just_after_a_revocation_is_ended_too() {
        let store = Arc::new(MemoryStore::new());
        let open = registry(store.clone(), 8);
        let (key, _) = sample_key("k", &[Scope::Admin], ProjectAccess::All);
        store.create(&key).await.expect("create");
        // The caller authenticated with a cached view of the key; the revocation lands first.
        store.revoke(key.id, now_micros()).await.expect("revoke");
        open.key_changed(key.id);
        let late = open.open(&key, RequestKind::Stream).expect("open");
        tokio::time::timeout(Duration::from_secs(1), late.ended()).await.expect("ended after the late re-check");
    }
}
