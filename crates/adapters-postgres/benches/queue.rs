#![allow(clippy::expect_used, clippy::unwrap_used, reason = "benchmark setup: a failure aborts the run")]
#![allow(clippy::print_stdout, reason = "the comparison with the baseline is the report")]

//! Queue throughput of `PgStore` on a throwaway cluster (or `DATABASE_URL`), beside a baseline
//! measured in the same run: pgbench driving the same claim/finish statements as plain SQL
//! (`benches/pgbench-queue.sql`), so the ratio is what the adapter (Rust, diesel-async, pool)
//! costs on top of the database work itself.
//!
//! - `queue/enqueue`: N commands enqueued by `CLAIMERS` concurrent tasks;
//! - `queue/claim+finish`: N queued commands drained by `CLAIMERS` concurrent claimers, each
//!   claiming and finishing one command at a time (a no-op executor).
//!
//! The comparison printed at the end also drains with batch claims: each claimer is a worker
//! with `SLOTS` slots that claims up to `SLOTS` commands in one transaction (`claim_batch`) and
//! then finishes them concurrently, as a worker's slots do when their commands end together, so
//! finishes of one worker and of different workers arrive together. `PgStore` groups finishes
//! that arrive together into one statement; the same drain against a store that writes each
//! finish alone (`with_max_finish_batch(1)`) shows what that grouping is worth. pgbench stays
//! one claim and one finish per transaction: the same SQL per command as the adapter's single
//! claim and single finish. Each run also reads the CPU the client (or pgbench) and the server
//! spent per command, from `/proc`, when the server runs on this machine.
//!
//! Run: `cargo bench -p adapters-postgres --features testing --bench queue`

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use adapters_postgres::PgStore;
use criterion::{Criterion, Throughput};
use domain::command::{Priority, Termination};
use domain::ids::WorkerId;
use domain::output::CommandOutput;
use domain::ports::{CommandQueue, CommandRepository, ProjectRepository};
use domain::project::Project;
use domain::testing::{now_micros, sample_command, sample_project};
use futures::future::join_all;
use tokio::runtime::Runtime;

/// Commands per measured batch.
const COMMANDS: usize = 2000;
/// Alternating rounds of the comparison (its median is reported).
const ROUNDS: usize = 5;
/// Concurrent claimers (and pgbench clients).
const CLAIMERS: usize = 8;
/// Slots per claimer when claiming in batches.
const SLOTS: usize = 4;
/// pgbench worker threads (the machine has 2 cores).
const PGBENCH_THREADS: usize = 2;
/// Projects the commands spread over; their caps never bind here.
const PROJECTS: usize = 4;
const LEASE: Duration = Duration::from_secs(60);

struct Bench {
    rt: Runtime,
    db: TestDatabase,
    /// Finishes that arrive together share a statement (the default).
    store: PgStore,
    /// Every finish is a statement of its own.
    alone: PgStore,
    projects: Vec<Project>,
    /// The database server's main process, when it runs on this machine (its CPU is read).
    postmaster: Option<u32>,
}

impl Bench {
    fn new() -> Bench {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let db = rt.block_on(TestDatabase::create());
        let store = rt.block_on(db.store());
        let alone = rt.block_on(db.store()).with_max_finish_batch(1);
        let projects: Vec<Project> = (0..PROJECTS).map(|i| sample_project(&format!("bench-{i}"), 1000)).collect();
        for p in &projects {
            rt.block_on(ProjectRepository::create(&store, p)).expect("project");
        }
        let mut bench = Bench { rt, db, store, alone, projects, postmaster: None };
        bench.postmaster = bench.backend_pid().and_then(|pid| Some(stat(pid)?.ppid));
        bench
    }

    /// The process id of a server backend, as the server reports it.
    fn backend_pid(&self) -> Option<u32> {
        self.rt.block_on(async {
            let client = self.db.raw_client().await;
            let row = client.query_one("SELECT pg_backend_pid()", &[]).await.ok()?;
            u32::try_from(row.get::<_, i32>(0)).ok()
        })
    }

    /// CPU used so far by this process, by its waited-for children (pgbench), and by the server.
    fn cpu(&self) -> Option<Cpu> {
        let me = stat(std::process::id())?;
        Some(Cpu { client: me.own, children: me.children, server: server_cpu(self.postmaster?)? })
    }

    /// Enqueues `n` commands with `CLAIMERS` concurrent tasks; returns how long it took.
    fn enqueue(&self, n: usize) -> Duration {
        let started = Instant::now();
        self.rt.block_on(async {
            let tasks: Vec<_> = (0..CLAIMERS)
                .map(|t| {
                    let store = self.store.clone();
                    let projects = self.projects.clone();
                    tokio::spawn(async move {
                        for i in (t..n).step_by(CLAIMERS) {
                            let priority = Priority::ALL[i % Priority::ALL.len()];
                            let command = sample_command(&projects[i % projects.len()], priority, None);
                            CommandRepository::enqueue(&store, command).await.expect("enqueue");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("enqueuer");
            }
        });
        started.elapsed()
    }

    /// Claims and finishes everything queued through `store` with `CLAIMERS` concurrent
    /// claimers, each claiming up to `batch` commands at once (a batch of one is `claim_next`'s
    /// single claim) and finishing what it claimed concurrently, as a worker's slots do when
    /// their commands end together (a no-op executor).
    fn drain(&self, store: &PgStore, batch: usize) -> (Duration, usize) {
        let started = Instant::now();
        let done = Arc::new(AtomicUsize::new(0));
        self.rt.block_on(async {
            let tasks: Vec<_> = (0..CLAIMERS)
                .map(|t| {
                    let store = store.clone();
                    let done = Arc::clone(&done);
                    tokio::spawn(async move {
                        let me = WorkerId::new(format!("bench-{t}"));
                        let ok = Termination::Exited(0).completion();
                        let output = CommandOutput::default();
                        loop {
                            let now = now_micros();
                            let claims =
                                CommandQueue::claim_batch(&store, &me, now, LEASE, batch).await.expect("claim");
                            if claims.is_empty() {
                                break;
                            }
                            let finishes = claims.iter().map(|claim| {
                                CommandQueue::finish(&store, claim.command.id, claim.fence, &ok, &output, now_micros())
                            });
                            for finished in join_all(finishes).await {
                                finished.expect("finish").expect("held");
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("claimer");
            }
        });
        (started.elapsed(), done.load(Ordering::Relaxed))
    }

    /// Empties the tables between batches, so every batch sees the same database.
    fn reset(&self) {
        self.sql("TRUNCATE commands CASCADE; VACUUM ANALYZE commands; VACUUM ANALYZE command_events;");
    }

    fn sql(&self, sql: &str) {
        self.rt.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(self.db.url(), tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(connection);
            // One at a time: VACUUM refuses the implicit transaction of a multi-statement query.
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                client.batch_execute(statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
            }
        });
    }
}

/// The pgbench baseline: `CLAIMERS` clients each running `per_client` claim/finish cycles over
/// as many queued commands; returns commands per second (pgbench's tps, one command per
/// transaction) and the CPU spent by pgbench and the server, queue set-up excluded.
fn pgbench(bench: &Bench, per_client: usize) -> (f64, Option<Cpu>, Option<Cpu>) {
    bench.reset();
    let total = per_client * CLAIMERS;
    bench.sql(&format!(
        "INSERT INTO commands (id, project_id, project_name, spec, env, timeout_seconds, priority, status, queued_at, event_seq) \
         SELECT gen_random_uuid(), p.id, p.name, '{{\"argv\":[\"true\"]}}', '{{}}', 30, (g % 4)::smallint, 'queued', now(), 1 \
         FROM generate_series(1, {total}) g \
         JOIN (SELECT id, name, row_number() OVER (ORDER BY name) - 1 AS k FROM projects) p ON p.k = g % {PROJECTS}; \
         INSERT INTO command_events (command_id, seq, kind, stream, data, at) \
         SELECT id, 1, 'status', NULL, convert_to('queued', 'UTF8'), queued_at FROM commands; \
         VACUUM ANALYZE commands;"
    ));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pgbench-queue.sql");
    let before = bench.cpu();
    let output = Command::new(pgbench_binary())
        .args(["-n", "-M", "prepared", "-f", script])
        .args(["-c", &CLAIMERS.to_string(), "-j", &PGBENCH_THREADS.to_string(), "-t", &per_client.to_string()])
        .arg(bench.db.url())
        .output()
        .expect("run pgbench (apt-get install -y postgresql-contrib or postgresql-client)");
    let after = bench.cpu();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "pgbench failed:\n{text}\n{}", String::from_utf8_lossy(&output.stderr));
    let failed = text.lines().find(|l| l.contains("number of failed transactions")).unwrap_or_default().to_owned();
    assert!(failed.is_empty() || failed.contains(": 0 "), "pgbench had failures: {failed}");
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{text}"));
    (tps, before, after)
}

fn pgbench_binary() -> String {
    let packaged = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin/pgbench")).find(|p| p.is_file()))
        .ok()
        .flatten();
    let on_path = Command::new("pgbench").arg("--version").output().is_ok_and(|o| o.status.success());
    match (on_path, packaged) {
        (true, _) => "pgbench".to_owned(),
        (false, Some(path)) => path.display().to_string(),
        (false, None) => panic!("pgbench not found: apt-get install -y postgresql-contrib"),
    }
}

fn criterion_benches(c: &mut Criterion, bench: &Bench) {
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(COMMANDS as u64));
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(15));
    group.bench_function("enqueue", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    bench.reset();
                    bench.enqueue(COMMANDS)
                })
                .sum()
        })
    });
    group.bench_function("claim+finish", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    bench.reset();
                    bench.enqueue(COMMANDS);
                    let (took, done) = bench.drain(&bench.store, 1);
                    assert_eq!(done, COMMANDS, "every command claimed and finished once");
                    took
                })
                .sum()
        })
    });
    group.finish();
}

/// Linux reports process times in clock ticks of 1/100 s (`USER_HZ`).
const TICK: Duration = Duration::from_millis(10);

/// CPU time (user + system) used so far, in the three places a command costs it.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    /// This process: the Rust client.
    client: Duration,
    /// This process's waited-for children: pgbench.
    children: Duration,
    /// The database server: its main process and every backend, live or ended.
    server: Duration,
}

impl Cpu {
    /// Microseconds per command of (client, server) between `self` and `later`; pgbench counts as the client.
    fn per_command(self, later: Cpu, commands: usize) -> (f64, f64) {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / commands as f64;
        let client = (later.client + later.children).saturating_sub(self.client + self.children);
        (us(client), us(later.server.saturating_sub(self.server)))
    }
}

/// What `/proc/<pid>/stat` says about a process.
struct Stat {
    ppid: u32,
    /// Its own user + system time.
    own: Duration,
    /// User + system time of its children that ended and were waited for.
    children: Duration,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields that follow start after the last ')'.
    let fields: Vec<u64> = text[text.rfind(')')? + 2..].split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    let ticks = |range: std::ops::Range<usize>| -> Option<Duration> {
        Some(TICK * u32::try_from(fields.get(range)?.iter().sum::<u64>()).ok()?)
    };
    // After the name: state, ppid, …, utime (11), stime, cutime, cstime (14).
    Some(Stat { ppid: u32::try_from(*fields.get(1)?).ok()?, own: ticks(11..13)?, children: ticks(13..15)? })
}

/// CPU used so far by the server whose main process is `postmaster`: its own, its live
/// children's, and that of the children it has reaped (ended backends).
fn server_cpu(postmaster: u32) -> Option<Duration> {
    let main = stat(postmaster)?;
    let mut total = main.own + main.children;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(child) = stat(pid).filter(|s| s.ppid == postmaster) {
            total += child.own;
        }
    }
    Some(total)
}

/// Median of a few runs of `f`.
fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() {
    let bench = Bench::new();
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &bench);
    c.final_summary();

    // The comparison itself: the same number of cycles, the same concurrency, alternating.
    // Each run also reads the CPU the client and the server spent on it.
    let variants = [
        ("pgbench, one claim + one finish per transaction (baseline)", None, 1),
        ("PgStore, single claims, grouped finishes", Some(&bench.store), 1),
        ("PgStore, batches of up to 4, each finish alone", Some(&bench.alone), SLOTS),
        ("PgStore, batches of up to 4, grouped finishes", Some(&bench.store), SLOTS),
    ];
    let mut runs: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = variants.iter().map(|_| Default::default()).collect();
    for _ in 0..ROUNDS {
        for ((_, store, batch), (rates, client, server)) in variants.iter().zip(&mut runs) {
            let rate = match store {
                Some(store) => {
                    bench.reset();
                    bench.enqueue(COMMANDS);
                    let before = bench.cpu();
                    let (took, done) = bench.drain(store, *batch);
                    assert_eq!(done, COMMANDS, "every command claimed and finished once");
                    let rate = done as f64 / took.as_secs_f64();
                    record_cpu(before, bench.cpu(), client, server);
                    rate
                }
                None => {
                    let (tps, before, after) = pgbench(&bench, COMMANDS / CLAIMERS);
                    record_cpu(before, after, client, server);
                    tps
                }
            };
            rates.push(rate);
        }
    }
    let baseline = median(runs[0].0.clone());
    println!("\nqueue throughput, {CLAIMERS} concurrent claimers, {COMMANDS} commands (median of {ROUNDS}):");
    for ((name, _, _), (rates, client, server)) in variants.iter().zip(runs) {
        let rate = median(rates);
        let cpu = if client.is_empty() {
            String::new()
        } else {
            format!("  CPU per command: client {:>4.0} µs, server {:>4.0} µs", median(client), median(server))
        };
        println!("  {name:<60} {rate:>6.0} commands/s  ratio {:.2}{cpu}", rate / baseline);
    }
}

/// Adds one run's CPU per command to `client` and `server`, when it could be read.
fn record_cpu(before: Option<Cpu>, after: Option<Cpu>, client: &mut Vec<f64>, server: &mut Vec<f64>) {
    if let (Some(before), Some(after)) = (before, after) {
        let (c, s) = before.per_command(after, COMMANDS);
        client.push(c);
        server.push(s);
    }
}
