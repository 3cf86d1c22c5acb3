//! Finishes of commands that end together share statements on PostgreSQL, and each keeps its
//! own fence check, events, webhook event and answer.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use adapters_postgres::testing::TestDatabase;
use adapters_postgres::PgStore;
use domain::api_key::ProjectAccess;
use domain::command::{Command, CommandStatus, Completion, Priority, Termination, TerminationReason};
use domain::ids::WorkerId;
use domain::output::CommandOutput;
use domain::ports::{Claim, CommandQueue, CommandRepository, ProjectRepository};
use domain::testing::webhooks::sample_webhook;
use domain::testing::{now_micros, sample_command, sample_project};
use domain::webhook::{command_event, EventSet, WebhookRepository};
use domain::DomainResult;
use futures::future::join_all;

const LEASE: Duration = Duration::from_secs(60);

/// `n` commands of a new project, claimed.
async fn claimed(store: &PgStore, project: &str, n: usize) -> Vec<Claim> {
    let p = sample_project(project, 100);
    ProjectRepository::create(store, &p).await.expect("project");
    for _ in 0..n {
        CommandRepository::enqueue(store, sample_command(&p, Priority::Normal, None)).await.expect("enqueue");
    }
    let mut claims = Vec::new();
    while claims.len() < n {
        let me = WorkerId::new("slots");
        let batch = CommandQueue::claim_batch(store, &me, now_micros(), LEASE, n - claims.len()).await;
        claims.extend(batch.expect("claim"));
    }
    claims
}

/// Finishes every claim at once (all submitted before any is written), with `completion`
/// for all but those `odd` picks.
async fn finish_all(
    store: &PgStore,
    claims: &[Claim],
    completion: &Completion,
    odd: impl Fn(usize) -> Option<Completion>,
) -> Vec<DomainResult<Option<Command>>> {
    let output = CommandOutput { stdout: "out".into(), ..CommandOutput::default() };
    let completions: Vec<Completion> =
        (0..claims.len()).map(|i| odd(i).unwrap_or_else(|| completion.clone())).collect();
    join_all(
        claims
            .iter()
            .zip(&completions)
            .map(|(c, done)| CommandQueue::finish(store, c.command.id, c.fence, done, &output, now_micros())),
    )
    .await
}

/// How many transactions wrote these commands last: one statement outside a transaction is one
/// transaction, and every row it changed carries its id in `xmin`.
async fn writers(client: &tokio_postgres::Client, claims: &[Claim]) -> i64 {
    let ids: Vec<String> = claims.iter().map(|c| format!("'{}'", c.command.id)).collect();
    let sql = format!("SELECT count(DISTINCT xmin::text) FROM commands WHERE id IN ({})", ids.join(", "));
    client.query_one(&sql, &[]).await.expect("xmin").get(0)
}

#[tokio::test]
async fn finishes_that_end_together_share_a_statement_and_keep_their_events_and_outbox_rows() {
    const N: usize = 16;
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let client = db.raw_client().await;
    WebhookRepository::create(&store, &sample_webhook(EventSet::all(), ProjectAccess::All)).await.expect("webhook");

    let claims = claimed(&store, "grouped", N).await;
    let ok = Termination::Exited(0).completion();
    let answers = finish_all(&store, &claims, &ok, |_| None).await;
    let done: Vec<Command> = answers.into_iter().map(|a| a.expect("finish").expect("held")).collect();
    for (c, d) in claims.iter().zip(&done) {
        assert_eq!((d.id, d.status), (c.command.id, CommandStatus::Succeeded), "each finish answers its own command");
    }
    let grouped = writers(&client, &claims).await;
    assert!(grouped < N as i64, "{N} finishes submitted together took {grouped} statements");

    for d in &done {
        let at = d.finished_at.expect("finished");
        let row = client
            .query_one(
                "SELECT payload, (SELECT count(*) FROM command_events e WHERE e.command_id = w.id_of) \
                 FROM (SELECT payload, (payload::json->'data'->>'id')::uuid AS id_of FROM webhook_events \
                       WHERE event_type = 'command.succeeded') w \
                 WHERE w.id_of::text = $1",
                &[&d.id.to_string()],
            )
            .await
            .expect("one outbox row per finished command");
        let stored: serde_json::Value = serde_json::from_str(row.get::<_, &str>(0)).expect("json");
        let built: serde_json::Value =
            serde_json::from_str(command_event(d, at).payload.as_str()).expect("domain payload");
        assert_eq!(stored, built, "the batch writes the payload the domain builds");
        assert_eq!(row.get::<_, i64>(1), 4, "queued, running, succeeded, exit");
    }

    // The same with grouping off: one statement per finish, as before.
    let alone = db.store().await.with_max_finish_batch(1);
    let claims = claimed(&alone, "alone", N).await;
    for a in finish_all(&alone, &claims, &ok, |_| None).await {
        a.expect("finish").expect("held");
    }
    assert_eq!(writers(&client, &claims).await, N as i64);
}

#[tokio::test]
async fn a_finish_that_cannot_be_written_fails_alone_with_the_error_it_gets_alone() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let claims = claimed(&store, "mixed", 6).await;
    // PostgreSQL text cannot hold NUL: this finish fails, and fails its batch's statement.
    let unwritable = Completion {
        status: CommandStatus::Failed,
        exit_code: None,
        reason: TerminationReason::StartFailed,
        error: Some("bad\0error".into()),
    };
    let ok = Termination::Exited(0).completion();
    let answers = finish_all(&store, &claims, &ok, |i| (i == 2).then(|| unwritable.clone())).await;
    for (i, a) in answers.iter().enumerate() {
        match i {
            2 => assert!(a.is_err(), "the unwritable finish fails: {a:?}"),
            _ => assert_eq!(a.as_ref().map(|d| d.as_ref().map(|d| d.status)), Ok(Some(CommandStatus::Succeeded))),
        }
    }
    let still = CommandRepository::get(&store, claims[2].command.id).await.expect("get");
    assert_eq!(still.status, CommandStatus::Running, "nothing of the failed finish was written");

    let alone = db.store().await.with_max_finish_batch(1);
    let more = claimed(&alone, "one-by-one", 1).await;
    let output = CommandOutput::default();
    let single = CommandQueue::finish(&alone, more[0].command.id, more[0].fence, &unwritable, &output, now_micros());
    assert_eq!(single.await, answers[2].clone(), "the same error as without company");
}

#[tokio::test]
async fn finishes_whose_callers_hang_up_still_end_their_commands() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let claims = claimed(&store, "hangups", 8).await;
    let ok = Termination::Exited(0).completion();
    let tasks: Vec<_> = claims
        .iter()
        .map(|c| {
            let (store, ok, id, fence) = (store.clone(), ok.clone(), c.command.id, c.fence);
            tokio::spawn(async move {
                CommandQueue::finish(&store, id, fence, &ok, &CommandOutput::default(), now_micros()).await
            })
        })
        .collect();
    // Every task submits its finish (this runtime runs one task at a time), then half of the
    // callers go away.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let mut kept = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if i % 2 == 0 {
            task.abort();
        } else {
            kept.push(task);
        }
    }
    for task in kept {
        let done = tokio::time::timeout(Duration::from_secs(10), task).await.expect("not stranded");
        assert_eq!(done.expect("task").expect("finish").map(|d| d.status), Some(CommandStatus::Succeeded));
    }
    for c in &claims {
        let mut status = CommandStatus::Running;
        for _ in 0..100 {
            status = CommandRepository::get(&store, c.command.id).await.expect("get").status;
            if status != CommandStatus::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, CommandStatus::Succeeded, "a finish whose caller left is written all the same");
    }
}
