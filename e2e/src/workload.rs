//! The chaos run's clients: ledger commands submitted over HTTP round-robin to the replicas,
//! paced over a span, each retried on another replica (same `Idempotency-Key`) when a replica
//! is down, stopped or the database is restarting.

use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;

use crate::api::Api;

/// Submissions in flight at once.
const IN_FLIGHT: usize = 32;
/// Tries per command before giving up (about a minute of a replica or the database away).
const MAX_TRIES: u32 = 60;

/// One command of the workload.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Its ledger token (also its `Idempotency-Key`).
    pub token: String,
    /// Its project.
    pub project: String,
    /// Its id, once a replica accepted it; `None` when every try failed.
    pub id: Option<String>,
    /// Requests it took.
    pub tries: u32,
    /// The last refusal, when it was never accepted.
    pub error: Option<String>,
}

/// The workload's shape.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Commands in all.
    pub commands: usize,
    /// Projects they are spread over.
    pub projects: Vec<String>,
    /// Submissions are spread evenly over this span.
    pub span: Duration,
    /// Each command sleeps uniformly within this range (milliseconds) between its ledger lines.
    pub sleep_ms: (u64, u64),
    /// Seeds the sleeps.
    pub seed: u64,
}

/// Submits the whole workload; returns every command's outcome, in token order.
pub async fn submit_all(api: &Api, bases: &[String], w: &Workload) -> Vec<Submission> {
    let start = tokio::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(w.seed);
    let plan: Vec<(usize, u64)> = (0..w.commands).map(|n| (n, rng.gen_range(w.sleep_ms.0..=w.sleep_ms.1))).collect();
    let mut out: Vec<Submission> = futures::stream::iter(plan)
        .map(|(n, sleep_ms)| {
            let at = start + w.span.mul_f64(n as f64 / w.commands.max(1) as f64);
            async move {
                tokio::time::sleep_until(at).await;
                submit_one(api, bases, &w.projects[n % w.projects.len()], n, sleep_ms).await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    out.sort_by(|a, b| a.token.cmp(&b.token));
    out
}

async fn submit_one(api: &Api, bases: &[String], project: &str, n: usize, sleep_ms: u64) -> Submission {
    let token = format!("c{n:06}");
    let body = json!({"script": crate::ledger::script(&token, sleep_ms)});
    let mut error = None;
    for attempt in 0..MAX_TRIES {
        // Round-robin, and the next replica on each retry.
        let base = &bases[(n + attempt as usize) % bases.len()];
        match api.submit(base, project, &body, Some(&token)).await {
            Ok(a) if a.status == StatusCode::ACCEPTED || a.status == StatusCode::OK => {
                let id = a.body["id"].as_str().map(str::to_owned);
                return Submission { token, project: project.to_owned(), id, tries: attempt + 1, error: None };
            }
            // A client error other than 408 and 429 is a bug in the request or the server: stop.
            // 408 is retried: a replica resumed after SIGSTOP times out request heads that
            // arrived while it was stopped.
            Ok(a)
                if a.status.is_client_error()
                    && a.status != StatusCode::TOO_MANY_REQUESTS
                    && a.status != StatusCode::REQUEST_TIMEOUT =>
            {
                error = Some(format!("{}: {}", a.status, a.body));
                return Submission { token, project: project.to_owned(), id: None, tries: attempt + 1, error };
            }
            Ok(a) => error = Some(format!("{}: {}", a.status, a.body)),
            Err(e) => error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt.min(4) + 1))).await;
    }
    Submission { token, project: project.to_owned(), id: None, tries: MAX_TRIES, error }
}
