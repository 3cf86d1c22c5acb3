//! The faults of the chaos run, one at a time at random moments while work flows: `kill -9`
//! of a replica (restarted a moment later on its port), `SIGSTOP` of a replica past its lease
//! (then `SIGCONT`), an immediate PostgreSQL restart; and, alongside, a webhook receiver
//! outage. Each fault is recorded with its instants so the verdict can tell which commands it hit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adapters_postgres::testing::TestCluster;
use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::hooks::Hooks;
use crate::replica::Replica;

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `kill -9` of a replica, restarted after a pause.
    Kill,
    /// `SIGSTOP` of a replica for longer than its lease, then `SIGCONT`.
    Stop,
    /// `pg_ctl restart -m immediate`.
    PgRestart,
    /// The webhook receiver answering 500.
    WebhookOutage,
}

/// One fault, done.
#[derive(Debug, Clone)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// To which replica (index), if to one.
    pub replica: Option<usize>,
    /// When it struck (just before the signal).
    pub at: DateTime<Utc>,
    /// When it was over: restarted and ready, continued, server back, receiver healthy again.
    pub until: DateTime<Utc>,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = (self.until - self.at).num_milliseconds() as f64 / 1000.0;
        match self.replica {
            Some(r) => write!(f, "{:?} r{r} at {} for {secs:.1} s", self.kind, self.at.format("%H:%M:%S%.3f")),
            None => write!(f, "{:?} at {} for {secs:.1} s", self.kind, self.at.format("%H:%M:%S%.3f")),
        }
    }
}

/// A fault the chaos loop strikes (the webhook outage runs beside it: `webhook_outage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// `kill -9`, then a restart.
    Kill,
    /// `SIGSTOP`, then `SIGCONT`.
    Stop,
    /// An immediate PostgreSQL restart.
    PgRestart,
}

/// How the chaos runs.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// Faults that must happen at least once, in random order.
    pub must: Vec<Strike>,
    /// Pause between faults: uniform in this range (seconds).
    pub gap_secs: (f64, f64),
    /// How long a stopped replica stays stopped.
    pub stop_for: Duration,
    /// How long a killed replica stays down before it is restarted: uniform (seconds).
    pub down_secs: (f64, f64),
}

/// Runs faults until every `must` fault happened and `work_done` is set; returns them in order.
pub async fn run(
    plan: &ChaosPlan,
    replicas: &mut [Replica],
    cluster: &Arc<TestCluster>,
    client: &reqwest::Client,
    work_done: &AtomicBool,
    rng: &mut StdRng,
) -> Vec<Fault> {
    let mut deck = plan.must.clone();
    deck.shuffle(rng);
    let mut done = Vec::new();
    // Bounded by the deck and by the workload, which ends; the cap is a backstop.
    for _ in 0..1000 {
        if deck.is_empty() && work_done.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_secs_f64(rng.gen_range(plan.gap_secs.0..plan.gap_secs.1))).await;
        let strike = deck.pop().unwrap_or_else(|| if rng.gen_bool(0.7) { Strike::Kill } else { Strike::Stop });
        let fault = match strike {
            Strike::Kill => {
                let r = rng.gen_range(0..replicas.len());
                let at = replicas[r].kill9();
                tokio::time::sleep(Duration::from_secs_f64(rng.gen_range(plan.down_secs.0..plan.down_secs.1))).await;
                replicas[r].spawn();
                replicas[r].wait_ready(client).await;
                Fault { kind: FaultKind::Kill, replica: Some(r), at, until: Utc::now() }
            }
            Strike::Stop => {
                let r = rng.gen_range(0..replicas.len());
                let at = replicas[r].signal(Signal::SIGSTOP);
                tokio::time::sleep(plan.stop_for).await;
                replicas[r].signal(Signal::SIGCONT);
                Fault { kind: FaultKind::Stop, replica: Some(r), at, until: Utc::now() }
            }
            Strike::PgRestart => {
                let at = Utc::now();
                let cluster = Arc::clone(cluster);
                tokio::task::spawn_blocking(move || cluster.restart_immediate())
                    .await
                    .expect("pg_ctl restart task")
                    .unwrap_or_else(|e| panic!("PostgreSQL did not come back: {e}"));
                Fault { kind: FaultKind::PgRestart, replica: None, at, until: Utc::now() }
            }
        };
        eprintln!("e2e chaos: {fault}");
        done.push(fault);
    }
    done
}

/// The receiver answers 500 for `length`, starting `after` from now.
pub async fn webhook_outage(hooks: &Hooks, after: Duration, length: Duration) -> Fault {
    tokio::time::sleep(after).await;
    let at = Utc::now();
    hooks.fail(true);
    tokio::time::sleep(length).await;
    hooks.fail(false);
    let fault = Fault { kind: FaultKind::WebhookOutage, replica: None, at, until: Utc::now() };
    eprintln!("e2e chaos: {fault}");
    fault
}
