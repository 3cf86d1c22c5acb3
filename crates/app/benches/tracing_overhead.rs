//! What exporting traces costs, measured through the real binary in one run: two `rdev-api
//! serve` processes with the same settings, one exporting every span over OTLP/HTTP to a
//! collector in this process, the other with tracing off (the baseline). Alternating between
//! them, it measures
//!
//! - throughput of authenticated `GET /v1/me` (key cache, one rate-limit decision in SQLite),
//!   16 connections, 10 pairs of 2 s rounds; each pair runs both sides back to back (in turn
//!   first), and the figure is the median of the pairs' ratios, so a burst of other load on the
//!   machine hits one pair, not one side;
//! - enqueue→start latency: commands submitted one at a time on an idle queue, latency
//!   `started_at − queued_at` as stored, 4 rounds of 50 each, alternating.
//!
//! Run: `cargo bench -p app --bench tracing_overhead`. Prints both, the ratios, and how many
//! spans the collector received and the exporter dropped. Targets (docs/performance.md):
//! throughput ≥ 0.90 of the baseline, enqueue→start p50 within +0.5 ms.
#![allow(clippy::expect_used, clippy::print_stdout, reason = "a benchmark binary: failures abort, results print")]

#[path = "../tests/common/otlp.rs"]
#[allow(dead_code, reason = "the test receiver has helpers this benchmark does not use")]
mod otlp;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CONNECTIONS: usize = 16;
const ROUND: Duration = Duration::from_secs(2);
const ROUNDS: usize = 10;
const LATENCY_SAMPLES: usize = 50;
const LATENCY_ROUNDS: usize = 4;

struct Server {
    child: Child,
    base: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(traces_url: Option<&str>) -> Server {
    let dir = tempfile::tempdir().expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let key_file = dir.path().join("admin.key");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rdev-api"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", format!("sqlite://{}/rdev.db", dir.path().display()))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("BOOTSTRAP_ADMIN_KEY_FILE", &key_file)
        .env("WORKSPACES_DIR", dir.path().join("workspaces"))
        .env("RATE_LIMIT_RPS", "100000")
        // Both sides alike; the sandbox's own cost is in the process-executor figures.
        .env("PROCESS_SANDBOX", "off")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(url) = traces_url {
        cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url);
    }
    let child = cmd.spawn().expect("spawn rdev-api");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "rdev-api did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = std::fs::read_to_string(&key_file).expect("admin key").trim().to_owned();
    let created = client
        .post(format!("{base}/v1/projects"))
        .bearer_auth(&admin)
        .json(&json!({"name": "bench", "image": "alpine:3.20", "max_concurrent_commands": 4}))
        .send()
        .await
        .expect("project");
    assert!(created.status().is_success());
    Server { child, base, admin, _dir: dir }
}

/// Authenticated `GET /v1/me` per second over `ROUND`, `CONNECTIONS` at a time.
async fn throughput(client: &reqwest::Client, server: &Server) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + ROUND;
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, url, key, done) =
                (client.clone(), format!("{}/v1/me", server.base), server.admin.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                while Instant::now() < until {
                    let res = client.get(&url).bearer_auth(&key).send().await.expect("request");
                    assert!(res.status().is_success(), "{}", res.status());
                    res.bytes().await.expect("body");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    done.load(Ordering::Relaxed) as f64 / ROUND.as_secs_f64()
}

/// Enqueue→start of commands submitted one at a time, in ms.
async fn latencies(client: &reqwest::Client, server: &Server) -> Vec<f64> {
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let v: Value = client
            .post(format!("{}/v1/projects/bench/commands?wait=10", server.base))
            .bearer_auth(&server.admin)
            .json(&json!({"command": ["true"]}))
            .send()
            .await
            .expect("submit")
            .json()
            .await
            .expect("json");
        let at = |f: &str| chrono::DateTime::parse_from_rfc3339(v[f].as_str().expect("timestamp")).expect("rfc3339");
        samples.push((at("started_at") - at("queued_at")).num_microseconds().expect("micros") as f64 / 1000.0);
    }
    samples
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

async fn counter(client: &reqwest::Client, server: &Server, name: &str) -> f64 {
    let metrics =
        client.get(format!("{}/metrics", server.base)).send().await.expect("metrics").text().await.expect("text");
    metrics.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let collector = otlp::start_counting("127.0.0.1:0").await.expect("collector");
    let off = serve(None).await;
    let on = serve(Some(&collector.url)).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS).build().expect("client");
    // Warm-up: connections, key caches, the project's workspace.
    for server in [&off, &on] {
        latencies(&client, server).await;
    }

    let (mut rps_off, mut rps_on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Back to back, in turn first, so machine noise hits both sides of a pair alike.
        let (t_off, t_on) = if round % 2 == 0 {
            let t_off = throughput(&client, &off).await;
            (t_off, throughput(&client, &on).await)
        } else {
            let t_on = throughput(&client, &on).await;
            (throughput(&client, &off).await, t_on)
        };
        rps_off.push(t_off);
        rps_on.push(t_on);
        ratios.push(t_on / t_off);
    }
    let (mut lat_off, mut lat_on) = (Vec::new(), Vec::new());
    for _ in 0..LATENCY_ROUNDS {
        lat_off.extend(latencies(&client, &off).await);
        lat_on.extend(latencies(&client, &on).await);
    }
    // Let the last batch go out before reading the exporter's counters.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let exported = counter(&client, &on, "otel_spans_exported_total").await;
    let dropped = counter(&client, &on, "otel_spans_dropped_total").await;

    let (t_off, t_on, ratio) = (median(&rps_off), median(&rps_on), median(&ratios));
    println!("tracing overhead ({CONNECTIONS} connections, {ROUNDS} pairs of {} s rounds, medians):", ROUND.as_secs());
    println!(
        "  GET /v1/me      baseline (tracing off) {t_off:>8.0} req/s   exported {t_on:>8.0} req/s   ratio {ratio:.3}"
    );
    let spread: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!("                  ratio of each pair: {}", spread.join(" "));
    let (p50_off, p50_on) = (percentile(&lat_off, 0.5), percentile(&lat_on, 0.5));
    println!(
        "  enqueue→start   baseline p50 {p50_off:.2} ms p99 {:.2} ms   exported p50 {p50_on:.2} ms p99 {:.2} ms   p50 +{:.2} ms",
        percentile(&lat_off, 0.99),
        percentile(&lat_on, 0.99),
        p50_on - p50_off
    );
    println!(
        "  spans: collector received {}, exporter counted {exported:.0} exported and {dropped:.0} dropped",
        collector.span_count()
    );
    println!(
        "  targets: throughput ratio >= 0.90: {}; p50 within +0.5 ms: {}",
        if ratio >= 0.90 { "met" } else { "MISSED" },
        if p50_on - p50_off <= 0.5 { "met" } else { "MISSED" }
    );
}
