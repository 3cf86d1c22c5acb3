//! The chaos run: three `rdev-api` replicas on one PostgreSQL, `E2E_COMMANDS` ledger commands
//! (default 5000) submitted round-robin over HTTP across four projects with `EXECUTOR=process`,
//! while replicas are killed and restarted, stopped past their lease and continued, the
//! database restarts, and the webhook receiver answers 500 for a while. Then: nothing ran
//! twice, nothing succeeded without its ledger lines, nothing is left queued or running,
//! every command a fault hit ended `lost` with its `command.lost` event, and every finished
//! command's event reached the receiver. Prints the figures; see e2e/README.md for the knobs.
#![allow(clippy::expect_used, reason = "test: a failed expectation is a failed test")]
#![allow(clippy::print_stderr, reason = "the run reports its figures")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use e2e::api::Api;
use e2e::chaos::{ChaosPlan, Fault, Strike};
use e2e::hooks::Hooks;
use e2e::stack::{Stack, StackConfig};
use e2e::verdict::{Evidence, Verdict, TERMINAL};
use e2e::workload::{Submission, Workload};
use e2e::{env_number, ledger};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// The run's knobs (`E2E_*`).
#[derive(Debug)]
struct Knobs {
    commands: usize,
    concurrent: u32,
    lease: u64,
    span: u64,
    outage: u64,
    drain: u64,
    seed: u64,
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            commands: env_number("E2E_COMMANDS", 5000),
            concurrent: env_number("E2E_CONCURRENT", 8),
            lease: env_number("E2E_LEASE_SECONDS", 6),
            span: env_number("E2E_SUBMIT_SECONDS", 60),
            outage: env_number("E2E_WEBHOOK_OUTAGE_SECONDS", 60),
            drain: env_number("E2E_DRAIN_SECONDS", 900),
            seed: env_number("E2E_SEED", rand::random::<u64>() % 1_000_000),
        }
    }
}

const PROJECTS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];
/// After a webhook outage, deliveries whose second attempt failed wait for the third: 5 min
/// (+20 % jitter) on the dispatcher's schedule; a delivery leased by a killed replica waits
/// for its 60 s lease; half a minute of slack on top.
const WEBHOOK_CATCH_UP: Duration = Duration::from_secs(360 + 60 + 30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_and_lost_never_rerun_under_kills_stops_a_database_restart_and_a_webhook_outage() {
    let k = Knobs::from_env();
    eprintln!("e2e chaos: {k:?} (reproduce the fault order with E2E_SEED={})", k.seed);
    let mut cfg = StackConfig::new(3, k.concurrent);
    cfg.lease_seconds = k.lease;
    let mut stack = Stack::start(&cfg).await;
    let bases = stack.bases();
    let api = Api::new(stack.api.key(), Duration::from_secs(5));
    let hooks = Hooks::start().await;
    stack.api.subscribe_commands(&bases[0], &hooks.url()).await;
    for p in PROJECTS {
        stack.api.create_project(&bases[0], p, k.concurrent).await;
    }
    let workload = Workload {
        commands: k.commands,
        projects: PROJECTS.iter().map(|p| (*p).to_owned()).collect(),
        span: Duration::from_secs(k.span),
        sleep_ms: (20, 800),
        seed: k.seed,
    };
    let plan = ChaosPlan {
        must: vec![Strike::Kill, Strike::Kill, Strike::Stop, Strike::PgRestart],
        gap_secs: (3.0, 9.0),
        stop_for: Duration::from_secs((2 * k.lease).max(k.lease + 6)),
        down_secs: (0.5, 3.0),
    };
    let mut rng = StdRng::seed_from_u64(k.seed);
    let outage_after = Duration::from_secs_f64(rng.gen_range(2.0..6.0));
    let started = Instant::now();
    let work_done = AtomicBool::new(false);
    let (cluster, client) = (Arc::clone(&stack.cluster), stack.api.client().clone());
    let (submissions, mut faults, outage) = tokio::join!(
        async {
            let s = e2e::workload::submit_all(&api, &bases, &workload).await;
            eprintln!("e2e chaos: {} submitted in {:.1} s", s.len(), started.elapsed().as_secs_f64());
            work_done.store(true, Ordering::SeqCst);
            s
        },
        e2e::chaos::run(&plan, &mut stack.replicas, &cluster, &client, &work_done, &mut rng),
        e2e::chaos::webhook_outage(&hooks, outage_after, Duration::from_secs(k.outage)),
    );
    faults.push(outage.clone());
    let drained = wait_until_drained(&stack.api, &bases, k.drain, started).await;
    let commands = all_commands(&stack.api, &bases).await;
    let webhook_wait = wait_for_webhooks(&hooks, &commands, &outage).await;
    let sse_lost = lost_streams(&stack.api, &bases[0], &commands).await;
    let files: Vec<(usize, std::path::PathBuf)> =
        stack.replicas.iter().enumerate().flat_map(|(i, r)| PROJECTS.iter().map(move |p| (i, r.ledger(p)))).collect();
    let runs = ledger::read(&files.iter().map(|(i, p)| (*i, p.as_path())).collect::<Vec<_>>());
    let hook_events = hooks.command_events();
    let verdict = e2e::verdict::judge(&Evidence {
        submissions: &submissions,
        commands: &commands,
        runs: &runs,
        faults: &faults,
        hook_events: &hook_events,
        sse_lost: &sse_lost,
    });
    report(&k, &verdict, &faults, &submissions, &hooks, drained, webhook_wait, started.elapsed());
    let failures = verdict.failures();
    assert!(failures.is_empty(), "failed checks: {:#?}", failures);
}

/// Waits until nothing is queued or running; returns how long the run took from its start.
async fn wait_until_drained(api: &Api, bases: &[String], bound: u64, started: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(bound);
    let mut last_report = Instant::now();
    loop {
        let mut seen = None;
        for base in bases {
            if let Ok(depth) = api.queue_depth(base).await {
                seen = Some(depth);
                break;
            }
        }
        if seen == Some((0, 0)) {
            return started.elapsed();
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("e2e chaos: draining, (queued, running) = {seen:?} at {:.0} s", started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        assert!(Instant::now() < deadline, "still (queued, running) = {seen:?} after {bound} s (E2E_DRAIN_SECONDS)");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn all_commands(api: &Api, bases: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for p in PROJECTS {
        for c in api.all_commands(&bases[0], p).await {
            if let Some(id) = c["id"].as_str() {
                out.insert(id.to_owned(), c);
            }
        }
    }
    out
}

/// Waits (bounded by the dispatcher's retry schedule after the outage) until every finished
/// command's terminal event was delivered; returns how long it waited.
async fn wait_for_webhooks(hooks: &Hooks, commands: &BTreeMap<String, Value>, outage: &Fault) -> Duration {
    let since = Instant::now();
    let outage_over = (Utc::now() - outage.until).to_std().unwrap_or_default();
    let bound = WEBHOOK_CATCH_UP.saturating_sub(outage_over).max(Duration::from_secs(60));
    let mut last_report = Instant::now();
    loop {
        let delivered = hooks.command_events();
        let missing = commands
            .iter()
            .filter(|(_, c)| c["status"].as_str().is_some_and(|s| TERMINAL.contains(&s)))
            .filter(|(id, c)| {
                let want = format!("command.{}", c["status"].as_str().unwrap_or_default());
                !delivered.get(id.as_str()).is_some_and(|types| types.contains(&want))
            })
            .count();
        if missing == 0 || since.elapsed() >= bound {
            return since.elapsed();
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "e2e chaos: {missing} terminal events not delivered yet ({:.0} s of at most {:.0} s)",
                since.elapsed().as_secs_f64(),
                bound.as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// For each lost command: did its SSE stream carry the `lost` status?
async fn lost_streams(api: &Api, base: &str, commands: &BTreeMap<String, Value>) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for id in commands.iter().filter(|(_, c)| c["status"] == "lost").map(|(id, _)| id) {
        let (events, _) = api.events(base, id, Duration::from_secs(10)).await;
        out.insert(id.clone(), events.iter().any(|(e, d)| e == "status" && d["status"] == "lost"));
    }
    out
}

#[allow(clippy::too_many_arguments, reason = "one report of one run")]
fn report(
    k: &Knobs,
    v: &Verdict,
    faults: &[Fault],
    submissions: &[Submission],
    hooks: &Hooks,
    drained: Duration,
    webhook_wait: Duration,
    total: Duration,
) {
    let finished: usize = v.counts.iter().filter(|(s, _)| TERMINAL.contains(&s.as_str())).map(|(_, n)| n).sum();
    let retried = submissions.iter().filter(|s| s.tries > 1).count();
    let delivered = hooks.delivered();
    let duplicates: u32 = delivered.values().map(|d| d.times.saturating_sub(1)).sum();
    let show = |t: Option<f64>| t.map_or_else(|| "n/a (no command was hit)".to_owned(), |t| format!("{t:.2} s"));
    eprintln!("==== e2e chaos figures (seed {}) ====", k.seed);
    eprintln!("commands: {} submitted ({retried} needed a retry on another replica), executor: process (sandboxed), 3 replicas x {} slots, lease {} s", submissions.len(), k.concurrent, k.lease);
    eprintln!("outcomes: {:?}", v.counts);
    if !v.failed_reasons.is_empty() {
        eprintln!("failed commands by reason: {:?}", v.failed_reasons);
    }
    for f in faults {
        eprintln!("fault: {f}");
    }
    eprintln!(
        "hit by a kill: {} (largest kill -> lost: {}); hit by a stop: {} (largest stop -> lost: {})",
        v.hit_by_kill,
        show(v.kill_to_lost_max),
        v.hit_by_stop,
        show(v.stop_to_lost_max)
    );
    eprintln!("webhooks: {} deliveries answered 2xx, {duplicates} duplicates absorbed by webhook-id, {} requests in all; waited {:.1} s after the drain", delivered.len(), hooks.requests(), webhook_wait.as_secs_f64());
    eprintln!(
        "time: drained after {:.1} s, {:.1} commands/s; total {:.1} s",
        drained.as_secs_f64(),
        finished as f64 / drained.as_secs_f64().max(0.001),
        total.as_secs_f64()
    );
    for c in &v.checks {
        let verdict = if c.count == 0 { "ok".to_owned() } else { format!("FAILED ({}): {:?}", c.count, c.examples) };
        eprintln!("check: {} — {verdict}", c.name);
    }
}
