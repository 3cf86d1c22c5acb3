//! Enqueue→start latency on Postgres, measured through the real service: two replicas on one
//! throwaway database, only replica B runs commands. Each command is submitted over HTTP, one at
//! a time on an idle queue, and its latency is `started_at - queued_at` as the store records it.
//!
//! - measured: submitted on replica A, so B learns of it through LISTEN/NOTIFY;
//! - baseline (same run): submitted on replica B itself, woken in-process with no database
//!   signal — the floor that NOTIFY adds to.
//!
//! Run: `cargo bench -p app --bench enqueue_to_start` (starts its own PostgreSQL, or uses
//! `DATABASE_URL`). Prints p50/p99 of both and their ratio.
#![allow(clippy::expect_used, clippy::print_stdout, reason = "a benchmark binary: failures abort, results print")]

use std::sync::Arc;
use std::time::Duration;

use adapters_postgres::testing::TestDatabase;
use app::config::{Cli, Command};
use clap::Parser;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SAMPLES: usize = 200;

struct Replica {
    base: String,
    admin: String,
}

async fn replica(url: &str, admin: Option<String>, slots: &str, shutdown: &CancellationToken) -> Replica {
    let dir = tempfile::tempdir().expect("dir").keep();
    let workspaces = dir.join("ws").display().to_string();
    let args = [
        "rdev-api",
        "--database-url",
        url,
        "serve",
        "--listen-addr",
        "127.0.0.1:0",
        "--workspaces-dir",
        &workspaces,
        "--rate-limit-rps",
        "100000",
        "--concurrent-commands",
        slots,
    ];
    let cli = Cli::try_parse_from(args).expect("flags");
    let db = cli.database();
    let Some(Command::Serve(cfg)) = cli.command else { panic!("serve") };
    let stores =
        app::stores::open(&db.url, app::stores::OpenOptions { migrate: true, pool_size: 8 }).await.expect("store");
    let service = app::wiring::build(stores, &cfg, app::telemetry::metrics_handle()).await.expect("wiring");
    let admin = match admin {
        Some(a) => a,
        None => service.state.keys.bootstrap_admin().await.expect("bootstrap").expect("empty").1.expose().to_owned(),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(Arc::clone(&service.worker).run(shutdown.clone()));
    if let Some(pump) = service.pump {
        tokio::spawn(pump.run(shutdown.clone()));
    }
    tokio::spawn(app::server::server(service.state, listener, 1).expect("server"));
    Replica { base, admin }
}

async fn latencies(client: &reqwest::Client, submit_on: &Replica, admin: &str) -> Vec<f64> {
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let res = client
            .post(format!("{}/v1/projects/bench/commands?wait=10", submit_on.base))
            .bearer_auth(admin)
            .json(&json!({"command": ["true"]}))
            .send()
            .await
            .expect("submit");
        let v: Value = res.json().await.expect("json");
        let at = |f: &str| chrono::DateTime::parse_from_rfc3339(v[f].as_str().expect("timestamp")).expect("rfc3339");
        samples.push((at("started_at") - at("queued_at")).num_microseconds().expect("micros") as f64 / 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    samples
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let db = TestDatabase::create().await;
    let shutdown = CancellationToken::new();
    let b = replica(db.url(), None, "4", &shutdown).await;
    let a = replica(db.url(), Some(b.admin.clone()), "0", &shutdown).await;
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/v1/projects", a.base))
        .bearer_auth(&a.admin)
        .json(&json!({"name": "bench", "image": "alpine:3.20", "max_concurrent_commands": 4}))
        .send()
        .await
        .expect("project");
    assert!(created.status().is_success());
    latencies(&client, &b, &b.admin).await; // warm-up: pod (workspace) start, connections
    let mut rounds = Vec::new();
    for _ in 0..2 {
        // Alternate the two so machine noise hits both alike.
        rounds.push((latencies(&client, &b, &b.admin).await, latencies(&client, &a, &a.admin).await));
    }
    let (local, notify): (Vec<f64>, Vec<f64>) =
        rounds.into_iter().fold((Vec::new(), Vec::new()), |(mut l, mut n), (x, y)| {
            l.extend(x);
            n.extend(y);
            (l, n)
        });
    let (mut local, mut notify) = (local, notify);
    local.sort_by(f64::total_cmp);
    notify.sort_by(f64::total_cmp);
    println!("enqueue→start, {} commands each, idle queue:", local.len());
    println!(
        "  baseline  in-process wake-up (submit on the running replica): p50 {:.2} ms  p99 {:.2} ms",
        percentile(&local, 0.5),
        percentile(&local, 0.99)
    );
    println!(
        "  measured  LISTEN/NOTIFY (submit on the other replica):        p50 {:.2} ms  p99 {:.2} ms",
        percentile(&notify, 0.5),
        percentile(&notify, 0.99)
    );
    println!("  ratio p50 {:.2}", percentile(&notify, 0.5) / percentile(&local, 0.5));
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
}
