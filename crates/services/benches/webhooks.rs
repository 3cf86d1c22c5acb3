#![allow(clippy::expect_used, reason = "benchmark setup: a failure aborts the run")]
#![allow(clippy::print_stdout, reason = "the idle latencies are timed by hand, so printing them is the report")]

//! Webhook delivery against a receiver on loopback, each beside a baseline from the same run:
//! - deliveries per second through the dispatcher (outbox → fan-out → lease → sign → POST →
//!   record) vs bare reqwest POSTs of the same bodies at the same concurrency;
//! - event → first attempt (a ping appended, the running dispatcher woken, the receiver seeing
//!   it) vs one bare POST seen by the receiver;
//! - the same after the path sat idle for 20 ms before each event, as events arrive in service:
//!   a server process that went to sleep answers its next round trip later, so this is what a
//!   chain of round trips costs when nothing keeps it warm. Criterion cannot leave gaps between
//!   iterations it does not count, so these are timed by hand, 200 each, and printed as
//!   percentiles (p50, p90, p99).
//!
//! Each on the memory store, SQLite, and Postgres (a throwaway cluster, or `DATABASE_URL`).
//!
//! Run: `cargo bench -p services --bench webhooks`.

use std::sync::Arc;
use std::time::Duration;

use adapters_postgres::testing::TestDatabase;
use adapters_sqlite::SqliteStore;
use adapters_webhook::testing::Receiver;
use adapters_webhook::{HttpWebhookSender, SenderConfig};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use domain::api_key::ProjectAccess;
use domain::ports::{AuditLog, Clock};
use domain::testing::MemoryStore;
use domain::webhook::{ping_event, DeliveryQueue, EventSet, WebhookId, WebhookRepository, WebhookUrl};
use futures::StreamExt;
use services::access::Principal;
use services::audit::AuditService;
use services::clock::SystemClock;
use services::signalling::Signals;
use services::webhooks::{DispatcherConfig, DispatcherPorts, NewWebhook, WebhookDispatcher, WebhookService};
use tokio_util::sync::CancellationToken;

/// Deliveries per measured batch.
const BATCH: usize = 100;
/// Sends in flight, for the dispatcher and the baseline alike.
const CONCURRENCY: usize = 16;

trait Stores: WebhookRepository + DeliveryQueue + AuditLog + 'static {}
impl<T: WebhookRepository + DeliveryQueue + AuditLog + 'static> Stores for T {}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

struct Setup<S: Stores> {
    store: Arc<S>,
    service: WebhookService,
    dispatcher: Arc<WebhookDispatcher>,
    webhook: WebhookId,
}

async fn setup<S: Stores>(store: Arc<S>, receiver: &Receiver) -> Setup<S> {
    let sender = Arc::new(
        HttpWebhookSender::new(SenderConfig { allow_private_targets: true, ..SenderConfig::default() })
            .expect("sender"),
    );
    let signals = Arc::new(Signals::default());
    let clock = Arc::new(SystemClock);
    let service = WebhookService::new(store.clone(), store.clone(), sender.clone(), clock.clone(), signals.clone());
    let ports = DispatcherPorts {
        webhooks: store.clone(),
        deliveries: store.clone(),
        sender,
        audit: AuditService::new(store.clone()),
        clock,
        signals,
    };
    let config = DispatcherConfig { concurrency: CONCURRENCY, ..DispatcherConfig::new("bench") };
    let dispatcher = WebhookDispatcher::new(ports, config);
    let new = NewWebhook {
        url: WebhookUrl::parse(&receiver.url("/hook")).expect("url"),
        events: EventSet::all(),
        projects: ProjectAccess::All,
    };
    let webhook = service.create(&Principal::system(), new).await.expect("create").0.id;
    Setup { store, service, dispatcher, webhook }
}

fn sqlite(dir: &std::path::Path) -> Arc<SqliteStore> {
    let store = SqliteStore::open(&format!("sqlite://{}/bench.db", dir.display())).expect("open");
    store.migrate().expect("migrate");
    Arc::new(store)
}

fn baseline_client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

fn body() -> String {
    let at = SystemClock.now();
    ping_event(WebhookId::generate(), at).expect("ping").payload.as_str().to_owned()
}

async fn post_all(client: &reqwest::Client, url: &str, n: usize) {
    let body = body();
    futures::stream::iter(0..n)
        .map(|_| client.post(url).header("content-type", "application/json").body(body.clone()).send())
        .buffer_unordered(CONCURRENCY)
        .for_each(|r| async move {
            r.expect("post");
        })
        .await;
}

fn dispatcher_throughput<S: Stores>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    s: &Setup<S>,
    receiver: &Receiver,
) {
    group.bench_function(name, |b| {
        b.iter_batched(
            || {
                receiver.clear();
                rt.block_on(async {
                    // Keep the store small between batches: drop what earlier batches delivered.
                    s.store.purge(SystemClock.now() + chrono::TimeDelta::hours(1)).await.expect("purge");
                    for _ in 0..BATCH {
                        s.store
                            .append_event(&ping_event(s.webhook, SystemClock.now()).expect("ping"))
                            .await
                            .expect("append");
                    }
                })
            },
            |()| {
                let sent = rt.block_on(s.dispatcher.run_once());
                assert_eq!(sent, BATCH);
            },
            BatchSize::PerIteration,
        )
    });
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let receiver = rt.block_on(Receiver::start()).expect("receiver");
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = rt.block_on(setup(Arc::new(MemoryStore::new()), &receiver));
    let on_sqlite = rt.block_on(setup(sqlite(dir.path()), &receiver));
    let db = rt.block_on(TestDatabase::create());
    let on_postgres = rt.block_on(async { setup(Arc::new(db.store().await), &receiver).await });
    let client = baseline_client();
    let url = receiver.url("/baseline");
    let mut group = c.benchmark_group("webhook_deliveries");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("baseline: bare reqwest POSTs", |b| {
        b.iter(|| {
            receiver.clear();
            rt.block_on(post_all(&client, &url, BATCH))
        })
    });
    dispatcher_throughput(&mut group, "dispatcher on the memory store", &rt, &memory, &receiver);
    dispatcher_throughput(&mut group, "dispatcher on SQLite", &rt, &on_sqlite, &receiver);
    dispatcher_throughput(&mut group, "dispatcher on Postgres", &rt, &on_postgres, &receiver);
    group.finish();
}

fn first_attempt<S: Stores>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    s: &Setup<S>,
    receiver: &Receiver,
) {
    let shutdown = CancellationToken::new();
    let running = rt.spawn(Arc::clone(&s.dispatcher).run(shutdown.clone()));
    group.bench_function(name, |b| {
        b.iter_batched(
            || {
                // Delivered pings pile up otherwise; the in-memory store scans them all.
                receiver.clear();
                rt.block_on(s.store.purge(SystemClock.now() + chrono::TimeDelta::hours(1))).expect("purge");
            },
            |()| {
                rt.block_on(async {
                    s.service.test(&Principal::system(), s.webhook).await.expect("ping");
                    assert_eq!(receiver.wait_for_count(1, Duration::from_secs(5)).await, 1, "delivered");
                })
            },
            BatchSize::PerIteration,
        )
    });
    shutdown.cancel();
    rt.block_on(running).expect("dispatcher stops");
}

fn latency(c: &mut Criterion) {
    let rt = runtime();
    let receiver = rt.block_on(Receiver::start()).expect("receiver");
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = rt.block_on(setup(Arc::new(MemoryStore::new()), &receiver));
    let on_sqlite = rt.block_on(setup(sqlite(dir.path()), &receiver));
    let db = rt.block_on(TestDatabase::create());
    let on_postgres = rt.block_on(async { setup(Arc::new(db.store().await), &receiver).await });
    let client = baseline_client();
    let url = receiver.url("/baseline");
    let mut group = c.benchmark_group("webhook_first_attempt_latency");
    group.bench_function("baseline: one bare POST seen by the receiver", |b| {
        b.iter_batched(
            || receiver.clear(),
            |()| {
                rt.block_on(async {
                    post_all(&client, &url, 1).await;
                    assert_eq!(receiver.wait_for_count(1, Duration::from_secs(5)).await, 1);
                })
            },
            BatchSize::PerIteration,
        )
    });
    first_attempt(&mut group, "event to first attempt, memory store", &rt, &memory, &receiver);
    first_attempt(&mut group, "event to first attempt, SQLite", &rt, &on_sqlite, &receiver);
    first_attempt(&mut group, "event to first attempt, Postgres", &rt, &on_postgres, &receiver);
    group.finish();
}

/// Events timed per store after an idle pause.
const IDLE_SAMPLES: usize = 200;
/// How long the path sits idle before each of them.
const IDLE: Duration = Duration::from_millis(20);

/// p50, p90 and p99 of `samples`, in microseconds.
fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| {
        // `samples` is never empty here: IDLE_SAMPLES of them.
        let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
        samples[i].as_micros()
    };
    format!("p50 {} µs, p90 {} µs, p99 {} µs", at(0.5), at(0.9), at(0.99))
}

/// Times `IDLE_SAMPLES` runs of `once`, each after `IDLE` with nothing going on.
fn after_idle<'a>(
    rt: &tokio::runtime::Runtime,
    receiver: &Receiver,
    once: impl Fn() -> futures::future::BoxFuture<'a, ()>,
) -> String {
    let mut samples = Vec::with_capacity(IDLE_SAMPLES);
    for _ in 0..IDLE_SAMPLES {
        receiver.clear();
        std::thread::sleep(IDLE);
        let started = std::time::Instant::now();
        rt.block_on(async {
            once().await;
            assert_eq!(receiver.wait_for_count(1, Duration::from_secs(5)).await, 1, "delivered");
        });
        samples.push(started.elapsed());
    }
    percentiles(samples)
}

fn first_attempt_after_idle<S: Stores>(rt: &tokio::runtime::Runtime, s: &Setup<S>, receiver: &Receiver) -> String {
    let shutdown = CancellationToken::new();
    let running = rt.spawn(Arc::clone(&s.dispatcher).run(shutdown.clone()));
    rt.block_on(s.store.purge(SystemClock.now() + chrono::TimeDelta::hours(1))).expect("purge");
    let result = after_idle(rt, receiver, || {
        Box::pin(async move {
            s.service.test(&Principal::system(), s.webhook).await.expect("ping");
        })
    });
    shutdown.cancel();
    rt.block_on(running).expect("dispatcher stops");
    result
}

fn latency_after_idle(_: &mut Criterion) {
    let rt = runtime();
    let receiver = rt.block_on(Receiver::start()).expect("receiver");
    let memory = rt.block_on(setup(Arc::new(MemoryStore::new()), &receiver));
    let db = rt.block_on(TestDatabase::create());
    let on_postgres = rt.block_on(async { setup(Arc::new(db.store().await), &receiver).await });
    let client = baseline_client();
    let url = receiver.url("/baseline");
    let baseline = after_idle(&rt, &receiver, || Box::pin(post_all(&client, &url, 1)));
    println!("webhook_first_attempt_after_{}ms_idle/baseline: one bare POST: {baseline}", IDLE.as_millis());
    let memory = first_attempt_after_idle(&rt, &memory, &receiver);
    println!("webhook_first_attempt_after_{}ms_idle/memory store: {memory}", IDLE.as_millis());
    let postgres = first_attempt_after_idle(&rt, &on_postgres, &receiver);
    println!("webhook_first_attempt_after_{}ms_idle/Postgres: {postgres}", IDLE.as_millis());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = throughput, latency, latency_after_idle
}
criterion_main!(benches);
