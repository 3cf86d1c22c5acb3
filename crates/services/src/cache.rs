//! `CachedRepository`: a bounded, short-TTL cache in front of the key repository, so the hot
//! path (one lookup per request) rarely reaches the store. Writes through this decorator
//! invalidate what they change; other replicas rely on the TTL (or a store notification calling
//! `invalidate`).
//!
//! A lookup of an entry older than half the TTL refreshes it in the background, so a key in
//! steady use is read again before it expires and its requests never wait for the store; an
//! entry still expires a TTL after it was read, so the staleness bound is unchanged.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::api_key::{ApiKey, KeyHash, PreviousSecret};
use domain::ids::ApiKeyId;
use domain::pagination::{Page, PageRequest};
use domain::ports::ApiKeyRepository;
use domain::{DomainResult, Timestamp};
use moka::future::Cache;

use crate::open_requests::OpenRequests;

/// Cache sizing.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Most cached lookups.
    pub capacity: u64,
    /// How long an entry lives; the upper bound for another replica's revocation to apply.
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { capacity: 10_000, ttl: Duration::from_millis(500) }
    }
}

/// A caching decorator over any `ApiKeyRepository`. Unknown hashes are cached too, so a flood
/// of bad keys does not reach the store; new keys have fresh random hashes, never cached before.
#[derive(Debug)]
pub struct CachedRepository<R> {
    inner: Arc<R>,
    by_hash: Cache<KeyHash, Lookup>,
    /// Age after which a lookup refreshes its entry in the background.
    refresh_after: Duration,
    /// Hashes being refreshed, so a busy key is read once per refresh, not once per request.
    refreshing: Arc<Mutex<HashSet<KeyHash>>>,
    /// Bumped by every invalidation: a lookup never answers with an entry whose read began
    /// before an invalidation that came before the lookup.
    invalidations: Arc<AtomicU64>,
    open_requests: Option<Arc<OpenRequests>>,
}

/// A cached lookup, when the store was read for it, and how many invalidations had happened
/// when that read began.
#[derive(Debug, Clone)]
struct Lookup {
    key: Option<ApiKey>,
    read_at: Instant,
    generation: u64,
}

impl<R: ApiKeyRepository + 'static> CachedRepository<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, config: CacheConfig) -> Self {
        let by_hash = Cache::builder().max_capacity(config.capacity).time_to_live(config.ttl).build();
        Self {
            inner: Arc::new(inner),
            by_hash,
            refresh_after: config.ttl / 2,
            refreshing: Arc::default(),
            invalidations: Arc::default(),
            open_requests: None,
        }
    }

    /// Also ends the open streams and waits of a key revoked through this cache, in the same
    /// step that drops it from the cache (other replicas do both on the key's signal).
    pub fn with_open_requests(mut self, open_requests: Arc<OpenRequests>) -> Self {
        self.open_requests = Some(open_requests);
        self
    }

    /// Drops every cached lookup of `key` (its current and previous hash).
    pub async fn invalidate(&self, key: &ApiKey) {
        // Bumped before the entries go: an entry read earlier and stored after this point still
        // carries the old generation, which every later lookup refuses (see `find_by_hash`).
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.by_hash.invalidate(&key.hash).await;
        if let Some(previous) = key.previous {
            self.by_hash.invalidate(&previous.hash).await;
        }
    }

    /// Drops everything (a notification that does not say which key changed).
    pub fn invalidate_all(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.by_hash.invalidate_all();
    }

    /// Reads `hash` from the store, noting the generation and time before the read: an entry
    /// never looks newer than it is.
    async fn read(inner: &R, invalidations: &AtomicU64, hash: &KeyHash) -> DomainResult<Lookup> {
        let generation = invalidations.load(Ordering::SeqCst);
        let read_at = Instant::now();
        Ok(Lookup { key: inner.find_by_hash(hash).await?, read_at, generation })
    }

    /// Reads `hash` again in the background and replaces its entry, unless a refresh of it runs
    /// already. A read that an invalidation overtook is stored with its older generation, which
    /// the next lookup refuses.
    fn refresh(&self, hash: KeyHash) {
        if !self.refreshing.lock().unwrap_or_else(PoisonError::into_inner).insert(hash) {
            return;
        }
        let (inner, cache) = (Arc::clone(&self.inner), self.by_hash.clone());
        let (refreshing, invalidations) = (Arc::clone(&self.refreshing), Arc::clone(&self.invalidations));
        tokio::spawn(async move {
            // A failed read leaves the entry to expire; the next lookup then reads (and fails) itself.
            if let Ok(lookup) = Self::read(&inner, &invalidations, &hash).await {
                cache.insert(hash, lookup).await;
            }
            refreshing.lock().unwrap_or_else(PoisonError::into_inner).remove(&hash);
        });
    }
}

#[async_trait]
impl<R: ApiKeyRepository + 'static> ApiKeyRepository for CachedRepository<R> {
    async fn create(&self, key: &ApiKey) -> DomainResult<()> {
        self.inner.create(key).await
    }

    async fn get(&self, id: ApiKeyId) -> DomainResult<ApiKey> {
        self.inner.get(id).await
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> DomainResult<Option<ApiKey>> {
        // One store read per expired entry, however many requests of that key arrive while it
        // runs: they wait for it rather than each reading the store (a burst at every expiry).
        let before = self.invalidations.load(Ordering::SeqCst);
        let read = Self::read(&self.inner, &self.invalidations, hash);
        let lookup =
            self.by_hash.try_get_with(*hash, read).await.map_err(|e: Arc<domain::DomainError>| (*e).clone())?;
        if lookup.generation < before {
            // The entry's read began before an invalidation this lookup came after (a read it
            // joined, or a refresh, started before a revocation): it may show the key as it
            // was. Drop it and ask the store itself.
            self.by_hash.invalidate(hash).await;
            return self.inner.find_by_hash(hash).await;
        }
        // Unknown hashes are not refreshed: a flood of made-up keys must not cost a read each
        // half TTL; they are read again when they expire.
        if lookup.key.is_some() && lookup.read_at.elapsed() >= self.refresh_after {
            self.refresh(*hash);
        }
        Ok(lookup.key)
    }

    async fn list(&self, page: PageRequest) -> DomainResult<Page<ApiKey>> {
        self.inner.list(page).await
    }

    async fn revoke(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<ApiKey> {
        let key = self.inner.revoke(id, at).await?;
        self.invalidate(&key).await;
        if let Some(open) = &self.open_requests {
            open.end_key(id);
        }
        Ok(key)
    }

    async fn rotate(
        &self,
        id: ApiKeyId,
        hash: KeyHash,
        prefix: &str,
        previous: Option<PreviousSecret>,
    ) -> DomainResult<ApiKey> {
        let before = self.inner.get(id).await?;
        let key = self.inner.rotate(id, hash, prefix, previous).await?;
        self.invalidate(&before).await;
        self.invalidate(&key).await;
        Ok(key)
    }

    async fn touch(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<()> {
        self.inner.touch(id, at).await
    }

    async fn count(&self) -> DomainResult<u64> {
        self.inner.count().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::api_key::{ProjectAccess, Scope};
    use domain::testing::{now_micros, sample_key, MemoryStore};

    #[tokio::test]
    async fn revoking_through_the_cache_takes_effect_at_once() {
        let cache =
            CachedRepository::new(MemoryStore::new(), CacheConfig { capacity: 10, ttl: Duration::from_secs(60) });
        let (key, secret) = sample_key("k", &[Scope::Admin], ProjectAccess::All);
        cache.create(&key).await.expect("create");
        assert!(cache.find_by_hash(&secret.hash()).await.expect("lookup").is_some_and(|k| k.revoked_at.is_none()));
        cache.revoke(key.id, now_micros()).await.expect("revoke");
        let after = cache.find_by_hash(&secret.hash()).await.expect("lookup");
        assert!(after.is_some_and(|k| k.revoked_at.is_some()), "the cached entry was dropped");
    }

    /// Counts the lookups that reach the store.
    #[derive(Debug, Default)]
    struct Counting {
        store: MemoryStore,
        lookups: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl ApiKeyRepository for Counting {
        async fn create(&self, key: &ApiKey) -> DomainResult<()> {
            self.store.create(key).await
        }
        async fn get(&self, id: ApiKeyId) -> DomainResult<ApiKey> {
            self.store.get(id).await
        }
        async fn find_by_hash(&self, hash: &KeyHash) -> DomainResult<Option<ApiKey>> {
            self.lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let found = self.store.find_by_hash(hash).await;
            // Slow enough that the concurrent lookups below all arrive while it runs, and that a
            // change can land between the read and its answer.
            tokio::time::sleep(Duration::from_millis(20)).await;
            found
        }
        async fn list(&self, page: PageRequest) -> DomainResult<Page<ApiKey>> {
            self.store.list(page).await
        }
        async fn revoke(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<ApiKey> {
            self.store.revoke(id, at).await
        }
        async fn rotate(
            &self,
            id: ApiKeyId,
            hash: KeyHash,
            prefix: &str,
            previous: Option<PreviousSecret>,
        ) -> DomainResult<ApiKey> {
            self.store.rotate(id, hash, prefix, previous).await
        }
        async fn touch(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<()> {
            self.store.touch(id, at).await
        }
        async fn count(&self) -> DomainResult<u64> {
            self.store.count().await
        }
    }

    /// A cache living `ttl` over a slow counting store that holds one key; the key's hash.
    async fn cache_over_one_key(
        ttl: Duration,
    ) -> (Arc<Counting>, Arc<CachedRepository<Arc<Counting>>>, ApiKey, KeyHash) {
        let counting = Arc::new(Counting::default());
        let cache = Arc::new(CachedRepository::new(Arc::clone(&counting), CacheConfig { capacity: 10, ttl }));
        let (key, secret) = sample_key("k", &[Scope::Admin], ProjectAccess::All);
        counting.create(&key).await.expect("create");
        (counting, cache, key, secret.hash())
    }

    #[tokio::test]
    async fn concurrent_lookups_of_an_uncached_key_read_the_store_once() {
        let (counting, cache, key, hash) = cache_over_one_key(Duration::from_secs(60)).await;
        let lookups: Vec<_> = (0..16)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.find_by_hash(&hash).await })
            })
            .collect();
        for lookup in lookups {
            assert!(lookup.await.expect("task").expect("lookup").is_some_and(|k| k.id == key.id));
        }
        assert_eq!(counting.lookups.load(std::sync::atomic::Ordering::SeqCst), 1, "one store read for all 16");
    }

    #[tokio::test]
    async fn a_key_in_steady_use_is_refreshed_before_it_expires_so_no_lookup_waits() {
        let (counting, cache, _, hash) = cache_over_one_key(Duration::from_millis(100)).await;
        cache.find_by_hash(&hash).await.expect("first lookup reads");
        let mut waited = Vec::new();
        for n in 0..60 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let started = Instant::now();
            assert!(cache.find_by_hash(&hash).await.expect("lookup").is_some());
            if started.elapsed() >= Duration::from_millis(15) {
                waited.push(n);
            }
        }
        assert!(waited.is_empty(), "lookups that waited for the store: {waited:?}");
        let reads = counting.lookups.load(std::sync::atomic::Ordering::SeqCst);
        assert!((5..=20).contains(&reads), "{reads} store reads in 600 ms: refreshed every ~50 ms");
    }

    #[tokio::test]
    async fn a_read_overtaken_by_a_revocation_is_not_kept() {
        let (counting, cache, key, hash) = cache_over_one_key(Duration::from_millis(100)).await;
        // A lookup whose read lands after the revocation: it answers with what it read…
        let lookup = tokio::spawn({
            let cache = Arc::clone(&cache);
            async move { cache.find_by_hash(&hash).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        cache.revoke(key.id, now_micros()).await.expect("revoke");
        assert!(lookup.await.expect("task").expect("lookup").is_some_and(|k| k.revoked_at.is_none()));
        // …but does not keep it.
        assert!(cache.find_by_hash(&hash).await.expect("lookup").is_some_and(|k| k.revoked_at.is_some()));
        // The same for a background refresh: one starts once the entry is half its TTL old.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (other, other_secret) = sample_key("other", &[Scope::Admin], ProjectAccess::All);
        counting.create(&other).await.expect("create");
        cache.find_by_hash(&other_secret.hash()).await.expect("lookup");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(cache.find_by_hash(&other_secret.hash()).await.expect("lookup").is_some(), "refresh starts");
        tokio::time::sleep(Duration::from_millis(5)).await;
        cache.revoke(other.id, now_micros()).await.expect("revoke");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let after = cache.find_by_hash(&other_secret.hash()).await.expect("lookup");
        assert!(after.is_some_and(|k| k.revoked_at.is_some()), "the refresh's older read was not kept");
    }

    #[tokio::test]
    async fn a_lookup_after_a_revocation_never_joins_a_read_that_began_before_it() {
        let (_, cache, key, hash) = cache_over_one_key(Duration::from_secs(60)).await;
        // A lookup whose store read (20 ms) is still running when the key is revoked…
        let earlier = tokio::spawn({
            let cache = Arc::clone(&cache);
            async move { cache.find_by_hash(&hash).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        cache.revoke(key.id, now_micros()).await.expect("revoke");
        // …must not answer a lookup that came after the revocation.
        let later = cache.find_by_hash(&hash).await.expect("lookup");
        assert!(later.is_some_and(|k| k.revoked_at.is_some()), "a revoked key was accepted after its revocation");
        earlier.await.expect("task").expect("earlier lookup");
        assert!(cache.find_by_hash(&hash).await.expect("lookup").is_some_and(|k| k.revoked_at.is_some()));
    }

    #[tokio::test]
    async fn unknown_hashes_are_not_refreshed() {
        let counting = Arc::new(Counting::default());
        let cache =
            CachedRepository::new(Arc::clone(&counting), CacheConfig { capacity: 10, ttl: Duration::from_secs(1) });
        let (_, unknown) = sample_key("never stored", &[Scope::Admin], ProjectAccess::All);
        for _ in 0..8 {
            assert_eq!(cache.find_by_hash(&unknown.hash()).await, Ok(None));
            // Past half the TTL (a refresh's age) by the last lookup, well within the TTL.
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        let reads = counting.lookups.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(reads, 1, "one read within the TTL, no refresh of a hash no key has");
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let cache = CachedRepository::new(
            std::sync::Arc::clone(&store),
            CacheConfig { capacity: 10, ttl: Duration::from_millis(50) },
        );
        let (key, secret) = sample_key("k", &[Scope::Admin], ProjectAccess::All);
        assert_eq!(cache.find_by_hash(&secret.hash()).await, Ok(None), "unknown keys are cached as unknown");
        store.create(&key).await.expect("create behind the cache");
        assert_eq!(cache.find_by_hash(&secret.hash()).await, Ok(None));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(cache.find_by_hash(&secret.hash()).await.expect("lookup").is_some(), "the TTL bounds staleness");
    }
}
