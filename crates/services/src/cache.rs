//! `CachedRepository`: a bounded, short-TTL cache in front of the key repository, so the hot
//! path (one lookup per request) rarely reaches the store. Writes through this decorator
//! invalidate what they change; other replicas rely on the TTL (or a store notification calling
//! `invalidate`).

use std::sync::Arc;
use std::time::Duration;

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
    inner: R,
    by_hash: Cache<KeyHash, Option<ApiKey>>,
    open_requests: Option<Arc<OpenRequests>>,
}

impl<R: ApiKeyRepository> CachedRepository<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, config: CacheConfig) -> Self {
        let by_hash = Cache::builder().max_capacity(config.capacity).time_to_live(config.ttl).build();
        Self { inner, by_hash, open_requests: None }
    }

    /// Also ends the open streams and waits of a key revoked through this cache, in the same
    /// step that drops it from the cache (other replicas do both on the key's signal).
    pub fn with_open_requests(mut self, open_requests: Arc<OpenRequests>) -> Self {
        self.open_requests = Some(open_requests);
        self
    }

    /// Drops every cached lookup of `key` (its current and previous hash).
    pub async fn invalidate(&self, key: &ApiKey) {
        self.by_hash.invalidate(&key.hash).await;
        if let Some(previous) = key.previous {
            self.by_hash.invalidate(&previous.hash).await;
        }
    }

    /// Drops everything (a notification that does not say which key changed).
    pub fn invalidate_all(&self) {
        self.by_hash.invalidate_all();
    }
}

#[async_trait]
impl<R: ApiKeyRepository> ApiKeyRepository for CachedRepository<R> {
    async fn create(&self, key: &ApiKey) -> DomainResult<()> {
        self.inner.create(key).await
    }

    async fn get(&self, id: ApiKeyId) -> DomainResult<ApiKey> {
        self.inner.get(id).await
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> DomainResult<Option<ApiKey>> {
        // One store read per expired entry, however many requests of that key arrive while it
        // runs: they wait for it rather than each reading the store (a burst at every expiry).
        self.by_hash.try_get_with(*hash, self.inner.find_by_hash(hash)).await.map_err(|e| (*e).clone())
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
            // Slow enough that the concurrent lookups below all arrive while it runs.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.store.find_by_hash(hash).await
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

    #[tokio::test]
    async fn concurrent_lookups_of_an_uncached_key_read_the_store_once() {
        let counting = Arc::new(Counting::default());
        let cache = Arc::new(CachedRepository::new(
            Arc::clone(&counting),
            CacheConfig { capacity: 10, ttl: Duration::from_secs(60) },
        ));
        let (key, secret) = sample_key("k", &[Scope::Admin], ProjectAccess::All);
        counting.create(&key).await.expect("create");
        let lookups: Vec<_> = (0..16)
            .map(|_| {
                let cache = Arc::clone(&cache);
                let hash = secret.hash();
                tokio::spawn(async move { cache.find_by_hash(&hash).await })
            })
            .collect();
        for lookup in lookups {
            assert!(lookup.await.expect("task").expect("lookup").is_some_and(|k| k.id == key.id));
        }
        assert_eq!(counting.lookups.load(std::sync::atomic::Ordering::SeqCst), 1, "one store read for all 16");
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
