#![allow(clippy::expect_used, reason = "benchmark setup: a failure aborts the run")]

//! Hot pure paths, each beside a baseline measured in the same run:
//! - key authentication through the cache vs the same lookup straight from SQLite;
//! - the rate-limit decision vs the SHA-256 every request already pays for its key;
//! - picking by priority order vs a plain integer sort of the same size.
//!
//! Run: `cargo bench -p services --bench hot_paths` (figures in docs/performance.md).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use adapters_sqlite::SqliteStore;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use domain::api_key::{ApiKeySecret, ProjectAccess, Scope};
use domain::command::{dequeue_order, Priority};
use domain::ports::{ApiKeyRepository, Clock};
use domain::rate_limit::RateLimitPolicy;
use domain::testing::sample_key;
use services::api_keys::ApiKeyService;
use services::cache::{CacheConfig, CachedRepository};
use services::clock::SystemClock;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn key_lookup(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&format!("sqlite://{}/bench.db", dir.path().display())).expect("open");
    store.migrate().expect("migrate");
    let store: Arc<dyn ApiKeyRepository> = Arc::new(store);
    let (key, secret) = sample_key("bench", &[Scope::Admin], ProjectAccess::All);
    rt.block_on(store.create(&key)).expect("create");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let uncached = ApiKeyService::new(store.clone(), clock.clone());
    let cache = CachedRepository::new(store, CacheConfig { capacity: 1000, ttl: Duration::from_secs(60) });
    let cached = ApiKeyService::new(Arc::new(cache), clock);
    let presented = secret.expose().to_owned();
    let mut group = c.benchmark_group("authenticate");
    group.bench_function("baseline: sqlite lookup", |b| {
        b.iter(|| rt.block_on(uncached.authenticate(black_box(&presented), LOCAL)).expect("auth"))
    });
    group.bench_function("cached lookup", |b| {
        b.iter(|| rt.block_on(cached.authenticate(black_box(&presented), LOCAL)).expect("auth"))
    });
    group.finish();
}

fn rate_limit(c: &mut Criterion) {
    let policy = RateLimitPolicy { rps: 10, window_seconds: 10 };
    let now = SystemClock.now();
    let secret = ApiKeySecret::from_random_bytes([7; 32]);
    let mut group = c.benchmark_group("rate_limit");
    group.bench_function("baseline: sha256 of the key", |b| b.iter(|| black_box(&secret).hash()));
    group.bench_function("sliding-window decision", |b| {
        b.iter(|| policy.decide(black_box(37), black_box(52), policy.position(black_box(now))))
    });
    group.finish();
}

fn priority_pick(c: &mut Criterion) {
    let items: Vec<(Priority, i64)> = (0..1000).map(|i| (Priority::ALL[(i * 7 % 4) as usize], i)).collect();
    let plain: Vec<i64> = items.iter().map(|(_, s)| (s * 7919) % 1000).collect();
    let mut group = c.benchmark_group("priority_pick_1000");
    group.bench_function("baseline: sort 1000 integers", |b| {
        b.iter_batched(|| plain.clone(), |mut v| v.sort_unstable(), BatchSize::SmallInput)
    });
    group.bench_function("order 1000 queued commands", |b| {
        b.iter_batched(|| items.clone(), |mut v| v.sort_by(|x, y| dequeue_order(*x, *y)), BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = key_lookup, rate_limit, priority_pick
}
criterion_main!(benches);
