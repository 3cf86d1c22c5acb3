//! The chaos run's verdict, from three independent witnesses: the ledger (what the commands
//! themselves wrote), the API (what the service says), and the webhook receiver (what it
//! announced). Each check lists its violations; an empty list is a pass.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::chaos::{Fault, FaultKind};
use crate::ledger::Runs;
use crate::workload::Submission;

/// Terminal statuses and their webhook event types.
pub const TERMINAL: [&str; 5] = ["succeeded", "failed", "timed_out", "cancelled", "lost"];

/// A command lost without a start line must have been marked lost this soon after a kill or
/// stop (claimed by the victim, not yet started): the lease plus the reaper's period, with room.
const UNSTARTED_LOST_WINDOW_SECS: i64 = 45;
/// How long after a strike a command claimed before it may still write its first ledger line.
const SPAWN_IN_FLIGHT_MS: i64 = 1000;

/// DESIGN §3: a dead replica's commands are `lost` within 5 s (its database session ends).
const KILL_TO_LOST_SECS: f64 = 5.0;
/// DESIGN §3: an alive but silent replica's within 30 s (of its last renewal, which is before the stop).
const STOP_TO_LOST_SECS: f64 = 30.0;

/// A result written in the instant of the fault (the statement already sent when the signal
/// landed, or the test process descheduled between reading the clock and signalling) is not a
/// command the fault hit: results written this soon after the fault's instant are left out.
/// A late write after a stop is still caught: the reaper's `command.lost` and the late result
/// would be two terminal events for one command.
const IN_FLIGHT_SLACK_MS: i64 = 1000;

/// Examples kept per check.
const EXAMPLES: usize = 10;

/// What the verdict is drawn from.
#[derive(Debug)]
pub struct Evidence<'a> {
    /// Every submission.
    pub submissions: &'a [Submission],
    /// Every command the API lists, by id.
    pub commands: &'a BTreeMap<String, Value>,
    /// The ledgers, by token.
    pub runs: &'a BTreeMap<String, Runs>,
    /// Kills and stops (other faults are ignored here).
    pub faults: &'a [Fault],
    /// Delivered webhook event types, by command id.
    pub hook_events: &'a BTreeMap<String, Vec<String>>,
    /// For lost commands: whether their SSE stream carried the `lost` status.
    pub sse_lost: &'a BTreeMap<String, bool>,
}

/// One check: its name and what broke it.
#[derive(Debug, Clone)]
pub struct Check {
    /// What it checks.
    pub name: &'static str,
    /// How many violations.
    pub count: usize,
    /// The first few.
    pub examples: Vec<String>,
}

/// The verdict and its figures.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Commands by status.
    pub counts: BTreeMap<String, usize>,
    /// Each check.
    pub checks: Vec<Check>,
    /// Largest kill → `finished_at` of a command the kill hit (seconds).
    pub kill_to_lost_max: Option<f64>,
    /// Largest stop → `finished_at` of a command the stop hit (seconds).
    pub stop_to_lost_max: Option<f64>,
    /// Commands running on a replica when it was killed / stopped.
    pub hit_by_kill: usize,
    /// See `hit_by_kill`.
    pub hit_by_stop: usize,
    /// `failed` commands by reason (they are reported, not judged).
    pub failed_reasons: BTreeMap<String, usize>,
}

impl Verdict {
    /// The checks that failed.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| c.count > 0).collect()
    }
}

#[derive(Debug, Default)]
struct Checker(BTreeMap<&'static str, Vec<String>>);

impl Checker {
    fn expect(&mut self, name: &'static str) {
        self.0.entry(name).or_default();
    }
    fn violate(&mut self, name: &'static str, what: String) {
        self.0.entry(name).or_default().push(what);
    }
}

fn at(v: &Value, field: &str) -> Option<DateTime<Utc>> {
    v[field].as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// Judges a run.
pub fn judge(e: &Evidence<'_>) -> Verdict {
    let mut v = Verdict::default();
    let mut c = Checker::default();
    for name in CHECKS {
        c.expect(name);
    }
    let token_of: BTreeMap<&str, &str> =
        e.submissions.iter().filter_map(|s| s.id.as_deref().map(|id| (id, s.token.as_str()))).collect();
    for s in e.submissions.iter().filter(|s| s.id.is_none()) {
        c.violate("every command was accepted", format!("{}: {}", s.token, s.error.as_deref().unwrap_or("?")));
    }
    for (s, id) in e.submissions.iter().filter_map(|s| s.id.as_deref().map(|id| (s, id))) {
        if !e.commands.contains_key(id) {
            c.violate("every accepted command is still there", format!("{} ({id}) was answered but is gone", s.token));
        }
    }
    for (id, cmd) in e.commands {
        let status = cmd["status"].as_str().unwrap_or("?").to_owned();
        *v.counts.entry(status.clone()).or_default() += 1;
        let Some(token) = token_of.get(id.as_str()) else {
            c.violate("no command was created twice by a retried submission", id.clone());
            continue;
        };
        let runs = e.runs.get(*token).cloned().unwrap_or_default();
        if runs.starts > 1 {
            c.violate(
                "no command ran twice",
                format!("{token} ({id}) started {} times on {:?}", runs.starts, runs.replicas),
            );
        }
        if status == "succeeded" && (runs.starts == 0 || runs.ends == 0) {
            c.violate("no command succeeded without its ledger lines", format!("{token} ({id})"));
        }
        if matches!(status.as_str(), "queued" | "running") {
            c.violate("no command was left queued or running", format!("{token} ({id}): {status}"));
        }
        if status == "failed" {
            let why = format!("{} {}", cmd["termination_reason"], cmd["error"].as_str().unwrap_or_default());
            *v.failed_reasons.entry(why).or_default() += 1;
        }
        judge_events(&mut c, e, id, &status);
    }
    let hit = judge_faults(&mut v, &mut c, e, &token_of);
    judge_lost(&mut c, e, &token_of, &hit);
    v.checks =
        c.0.into_iter()
            .map(|(name, all)| Check { name, count: all.len(), examples: all.into_iter().take(EXAMPLES).collect() })
            .collect();
    v
}

/// Every check's name, so that a check without violations is still listed as passed.
const CHECKS: [&str; 13] = [
    "every command was accepted",
    "every accepted command is still there",
    "no command was created twice by a retried submission",
    "no command ran twice",
    "no command succeeded without its ledger lines",
    "no command was left queued or running",
    "every command running on a killed or stopped replica ended lost",
    "every command hit by a kill ended lost within 5 s",
    "every command hit by a stop ended lost within 30 s",
    "every lost command is explained by a kill or a stop",
    "no lost command ran after it was declared lost",
    "every lost command has its command.lost event (webhook and SSE)",
    "every finished command's event was delivered, once per outcome",
];

fn judge_events(c: &mut Checker, e: &Evidence<'_>, id: &str, status: &str) {
    if !TERMINAL.contains(&status) {
        return;
    }
    let delivered = e.hook_events.get(id).cloned().unwrap_or_default();
    let terminal: BTreeSet<&str> = delivered
        .iter()
        .map(String::as_str)
        .filter(|t| TERMINAL.iter().any(|s| t.strip_prefix("command.") == Some(*s)))
        .collect();
    let expected = format!("command.{status}");
    if !terminal.contains(expected.as_str()) || terminal.len() > 1 {
        c.violate(
            "every finished command's event was delivered, once per outcome",
            format!("{id}: {status}, delivered {terminal:?}"),
        );
    }
    if status == "lost" && (!terminal.contains("command.lost") || !e.sse_lost.get(id).copied().unwrap_or(false)) {
        let sse = e.sse_lost.get(id).copied().unwrap_or(false);
        c.violate(
            "every lost command has its command.lost event (webhook and SSE)",
            format!("{id}: webhook {terminal:?}, SSE lost {sse}"),
        );
    }
}

/// Commands a kill or a stop hit: started on the victim before it struck and not finished
/// before it. Each must be lost; the largest fault → `finished_at` is the figure.
fn judge_faults(
    v: &mut Verdict,
    c: &mut Checker,
    e: &Evidence<'_>,
    token_of: &BTreeMap<&str, &str>,
) -> BTreeSet<String> {
    let mut hit = BTreeSet::new();
    for f in e.faults.iter().filter(|f| matches!(f.kind, FaultKind::Kill | FaultKind::Stop)) {
        let Some(victim) = f.replica else { continue };
        for (id, cmd) in e.commands {
            let Some(runs) = token_of.get(id.as_str()).and_then(|t| e.runs.get(*t)) else { continue };
            // Claimed before the strike; its process may write its first ledger line a moment
            // after (a spawn in flight when the signal landed: the sandbox's chain of parent-death
            // signals takes tens of milliseconds to reach it under load).
            let claimed_before = at(cmd, "started_at").is_some_and(|s| s < f.at);
            let spawn_slack = chrono::TimeDelta::milliseconds(SPAWN_IN_FLIGHT_MS);
            let started_on_victim = runs.replicas.first() == Some(&victim)
                && runs.started_at.is_some_and(|s| s < f.at || (claimed_before && s < f.at + spawn_slack));
            let status = cmd["status"].as_str().unwrap_or("?");
            let slack = chrono::TimeDelta::milliseconds(IN_FLIGHT_SLACK_MS);
            let open_at_fault =
                at(cmd, "finished_at").is_none_or(|end| end > f.at + slack || (status == "lost" && end > f.at));
            if !started_on_victim || !open_at_fault {
                continue;
            }
            hit.insert(id.clone());
            if status != "lost" {
                c.violate(
                    "every command running on a killed or stopped replica ended lost",
                    format!(
                        "{id} on r{victim}, {:?} at {}: {status}, started {:?}, finished {:?}",
                        f.kind,
                        f.at.format("%H:%M:%S%.3f"),
                        runs.started_at.map(|t| t.format("%H:%M:%S%.3f").to_string()),
                        cmd["finished_at"].as_str()
                    ),
                );
                continue;
            }
            let took = at(cmd, "finished_at").map(|end| secs(f.at, end));
            let (count, max, bound, check) = match f.kind {
                FaultKind::Kill => (
                    &mut v.hit_by_kill,
                    &mut v.kill_to_lost_max,
                    KILL_TO_LOST_SECS,
                    "every command hit by a kill ended lost within 5 s",
                ),
                _ => (
                    &mut v.hit_by_stop,
                    &mut v.stop_to_lost_max,
                    STOP_TO_LOST_SECS,
                    "every command hit by a stop ended lost within 30 s",
                ),
            };
            *count += 1;
            if let Some(t) = took {
                *max = Some(max.map_or(t, |m: f64| m.max(t)));
                if t > bound {
                    c.violate(check, format!("{id} on r{victim}: lost {t:.2} s after the {:?}", f.kind));
                }
            }
        }
    }
    hit
}

fn judge_lost(c: &mut Checker, e: &Evidence<'_>, token_of: &BTreeMap<&str, &str>, hit: &BTreeSet<String>) {
    let strikes: Vec<&Fault> =
        e.faults.iter().filter(|f| matches!(f.kind, FaultKind::Kill | FaultKind::Stop)).collect();
    for (id, cmd) in e.commands.iter().filter(|(_, cmd)| cmd["status"] == "lost") {
        let runs = token_of.get(id.as_str()).and_then(|t| e.runs.get(*t)).cloned().unwrap_or_default();
        let end = at(cmd, "finished_at");
        if let (Some(started), Some(end)) = (runs.started_at, end) {
            if started > end {
                c.violate(
                    "no lost command ran after it was declared lost",
                    format!("{id}: started {started}, lost {end}"),
                );
            }
        }
        if hit.contains(id) {
            continue;
        }
        let near_a_strike = end.is_some_and(|end| {
            strikes.iter().any(|f| end >= f.at && (end - f.at).num_seconds() <= UNSTARTED_LOST_WINDOW_SECS)
        });
        if runs.starts > 0 || !near_a_strike {
            c.violate(
                "every lost command is explained by a kill or a stop",
                format!("{id}: started on {:?} at {:?}, lost at {:?}", runs.replicas, runs.started_at, end),
            );
        }
    }
}
