//! Contract suites for the command repository and the queue.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;

use super::contracts_store::heartbeat_of;
use super::{now_micros, project_name, sample_command, sample_project, Store};
use crate::command::{CommandStatus, Completion, Idempotency, NewCommand, Priority, Termination, TerminationReason};
use crate::ids::{ApiKeyId, CommandId, WorkerId};
use crate::output::{CommandOutput, EventKind, OutputStream};
use crate::pagination::{Limit, PageRequest};
use crate::ports::{CommandFilter, CommandQueue, CommandRepository, ProjectRepository};
use crate::DomainError;

const LEASE: Duration = Duration::from_secs(60);

fn worker() -> WorkerId {
    WorkerId::new("contract-worker")
}

fn kinds(events: &[crate::output::CommandEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind.clone()).collect()
}

/// `CommandRepository`: enqueue, idempotency, listing, positions, stats, cancel, events.
pub async fn command_repository<S: Store, F: Fn() -> Fut, Fut: Future<Output = S>>(fresh: F) {
    let store = fresh().await;
    let web = sample_project("web", 1);
    let api = sample_project("api", 1);
    for p in [&web, &api] {
        ProjectRepository::create(&store, p).await.expect("create project");
    }
    let ghost = sample_project("ghost", 1);
    assert!(
        matches!(
            CommandRepository::enqueue(&store, sample_command(&ghost, Priority::Normal, None)).await,
            Err(DomainError::NotFound(_))
        ),
        "enqueue for a missing project MUST be NotFound"
    );

    let new = sample_command(&web, Priority::Normal, None);
    let stored = CommandRepository::enqueue(&store, new.clone()).await.expect("enqueue");
    assert!(!stored.replayed);
    assert_eq!(stored.command, new.clone().into_command());
    assert_eq!(CommandRepository::get(&store, new.id).await, Ok(new.clone().into_command()));
    let events = CommandRepository::events_after(&store, new.id, 0, 100).await.expect("events");
    assert_eq!(kinds(&events), vec![EventKind::Status(CommandStatus::Queued)]);
    assert_eq!(events[0].seq, 1);
    assert_eq!(CommandRepository::output(&store, new.id).await, Ok(CommandOutput::default()));
    assert!(matches!(CommandRepository::get(&store, CommandId::generate()).await, Err(DomainError::NotFound(_))));
    assert!(matches!(CommandRepository::output(&store, CommandId::generate()).await, Err(DomainError::NotFound(_))));

    idempotency(&store, &web).await;

    let high = CommandRepository::enqueue(&store, sample_command(&api, Priority::High, None)).await.expect("enqueue");
    let low = CommandRepository::enqueue(&store, sample_command(&api, Priority::Low, None)).await.expect("enqueue");
    assert_eq!(CommandRepository::queue_position(&store, high.command.id).await, Ok(Some(1)), "high goes first");
    let last = CommandRepository::queue_position(&store, low.command.id).await.expect("position");
    assert!(last.is_some_and(|p| p > 1), "low is behind the others");
    assert!(matches!(
        CommandRepository::queue_position(&store, CommandId::generate()).await,
        Err(DomainError::NotFound(_))
    ));
    let stats = CommandRepository::stats(&store, None).await.expect("stats");
    assert_eq!(
        stats.depth.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        Priority::ALL.to_vec(),
        "depth lists every priority, highest first"
    );
    assert_eq!(stats.depth.iter().find(|(p, _)| *p == Priority::High).map(|(_, n)| *n), Some(1));
    assert_eq!(stats.running, 0);
    let only_web = CommandRepository::stats(&store, Some(std::slice::from_ref(&web.name))).await.expect("stats");
    assert_eq!(
        only_web.depth.iter().find(|(p, _)| *p == Priority::High).map(|(_, n)| *n),
        Some(0),
        "stats over some projects count only theirs (the high one is in api)"
    );
    let none = CommandRepository::stats(&store, Some(&[])).await.expect("stats");
    assert!(none.depth.iter().all(|(_, n)| *n == 0), "no projects, nothing counted");

    let api_only = CommandFilter { project: Some(api.name.clone()), status: None };
    let listed = CommandRepository::list(&store, &api_only, PageRequest::default()).await.expect("list");
    assert_eq!(
        listed.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![high.command.id, low.command.id],
        "enqueue order"
    );
    let one = PageRequest { after: None, limit: Limit::new(1).expect("limit") };
    let first = CommandRepository::list(&store, &api_only, one).await.expect("list");
    let second =
        CommandRepository::list(&store, &api_only, PageRequest { after: first.next, ..one }).await.expect("list");
    assert_eq!(second.items.iter().map(|c| c.id).collect::<Vec<_>>(), vec![low.command.id]);

    let at = now_micros();
    let cancelled = CommandRepository::request_cancel(&store, low.command.id, at).await.expect("cancel");
    assert_eq!(cancelled.status, CommandStatus::Cancelled, "a queued command is cancelled at once");
    assert_eq!(cancelled.termination_reason, Some(TerminationReason::Cancelled));
    assert_eq!(cancelled.finished_at, Some(at));
    assert_eq!(CommandRepository::queue_position(&store, low.command.id).await, Ok(None));
    let events = CommandRepository::events_after(&store, low.command.id, 1, 100).await.expect("events");
    assert_eq!(kinds(&events), vec![EventKind::Status(CommandStatus::Cancelled), EventKind::Exit]);
    assert!(
        matches!(CommandRepository::request_cancel(&store, low.command.id, at).await, Err(DomainError::Conflict(_))),
        "cancelling an ended command is a Conflict"
    );
    assert!(matches!(
        CommandRepository::request_cancel(&store, CommandId::generate(), at).await,
        Err(DomainError::NotFound(_))
    ));
    let by_status = CommandFilter { project: None, status: Some(CommandStatus::Cancelled) };
    assert_eq!(CommandRepository::list(&store, &by_status, PageRequest::default()).await.map(|p| p.items.len()), Ok(1));

    let mut seqs = CommandRepository::last_event_seqs(&store, &[low.command.id, CommandId::generate(), new.id])
        .await
        .expect("last event seqs");
    seqs.sort();
    let mut expected = vec![(low.command.id, 3), (new.id, 1)];
    expected.sort();
    assert_eq!(seqs, expected, "the last seq of each known command; unknown ids are left out");
    assert_eq!(CommandRepository::last_event_seqs(&store, &[]).await, Ok(Vec::new()));

    queue_cap(&store).await;
    purge_finished(fresh().await).await;
}

/// Retention deletes finished commands that ended before the cut-off, with their events and
/// output, oldest first and at most `limit`; queued and running commands always stay.
async fn purge_finished<S: Store>(store: S) {
    let p = sample_project("old", 10);
    ProjectRepository::create(&store, &p).await.expect("project");
    let mut ended = Vec::new();
    for _ in 0..3 {
        let id = CommandRepository::enqueue(&store, sample_command(&p, Priority::Normal, None))
            .await
            .expect("enqueue")
            .command
            .id;
        CommandRepository::request_cancel(&store, id, now_micros()).await.expect("cancel");
        ended.push(id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let claimed_id = CommandRepository::enqueue(&store, sample_command(&p, Priority::Normal, None))
        .await
        .expect("enqueue")
        .command
        .id;
    let claim = CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await.expect("claim").expect("one");
    assert_eq!(claim.command.id, claimed_id);
    let queued = CommandRepository::enqueue(&store, sample_command(&p, Priority::Normal, None))
        .await
        .expect("enqueue")
        .command
        .id;
    let cutoff = now_micros() + TimeDelta::seconds(1);

    assert_eq!(CommandRepository::purge_finished(&store, cutoff, 2).await, Ok(2), "at most `limit`");
    for id in &ended[..2] {
        assert!(matches!(CommandRepository::get(&store, *id).await, Err(DomainError::NotFound(_))), "oldest first");
        assert!(matches!(CommandRepository::output(&store, *id).await, Err(DomainError::NotFound(_))));
        assert!(
            CommandRepository::events_after(&store, *id, 0, 10).await.is_ok_and(|e| e.is_empty())
                || matches!(CommandRepository::events_after(&store, *id, 0, 10).await, Err(DomainError::NotFound(_)))
        );
    }
    assert_eq!(
        CommandRepository::purge_finished(&store, ended_at(&store, ended[2]).await, 10).await,
        Ok(0),
        "the cut-off is exclusive"
    );
    assert_eq!(CommandRepository::purge_finished(&store, cutoff, 10).await, Ok(1));
    assert_eq!(CommandRepository::purge_finished(&store, cutoff, 10).await, Ok(0));
    for id in [claimed_id, queued] {
        assert!(CommandRepository::get(&store, id).await.is_ok(), "running and queued commands MUST stay");
    }
}

async fn ended_at<S: Store>(store: &S, id: CommandId) -> crate::Timestamp {
    CommandRepository::get(store, id).await.expect("get").finished_at.expect("ended")
}

/// A project's queue holds at most `max_queued` queued commands: a refused enqueue stores
/// nothing (no command, no event), and a replay of a stored command is still answered.
async fn queue_cap<S: Store>(store: &S) {
    let capped = sample_project("capped", 1);
    ProjectRepository::create(store, &capped).await.expect("create project");
    let capped_command = || {
        let mut new = sample_command(&capped, Priority::Normal, None);
        new.max_queued = 2;
        new
    };
    let mut first = capped_command();
    first.idempotency = Some(Idempotency::new("cap-1", "same".into()).expect("idempotency"));
    first.created_by = Some(ApiKeyId::generate());
    CommandRepository::enqueue(store, first.clone()).await.expect("first enqueue");
    CommandRepository::enqueue(store, capped_command()).await.expect("second enqueue");
    let refused = capped_command();
    assert_eq!(
        CommandRepository::enqueue(store, refused.clone()).await.map(|e| e.command.id),
        Err(DomainError::QueueFull { limit: 2 }),
        "a third queued command MUST be QueueFull"
    );
    assert!(matches!(CommandRepository::get(store, refused.id).await, Err(DomainError::NotFound(_))), "nothing stored");
    assert!(
        matches!(CommandRepository::events_after(store, refused.id, 0, 10).await, Err(DomainError::NotFound(_)))
            || CommandRepository::events_after(store, refused.id, 0, 10).await == Ok(Vec::new()),
        "no event"
    );
    let mut replay = first.clone();
    replay.id = CommandId::generate();
    let replayed = CommandRepository::enqueue(store, replay).await.expect("a replay is not a new command");
    assert!(replayed.replayed && replayed.command.id == first.id);
    let mut bigger = capped_command();
    bigger.max_queued = 3;
    CommandRepository::enqueue(store, bigger).await.expect("the cap is the one given with the command");
    CommandRepository::request_cancel(store, first.id, now_micros()).await.expect("cancel");
    let mut after_cancel = capped_command();
    after_cancel.max_queued = 3;
    CommandRepository::enqueue(store, after_cancel).await.expect("a cancelled command frees its place");
}

async fn idempotency<S: Store>(store: &S, project: &crate::project::Project) {
    let client = Some(ApiKeyId::generate());
    let mut first = sample_command(project, Priority::Normal, client);
    first.idempotency = Some(Idempotency::new("retry-1", "fp-a".into()).expect("key"));
    let original = CommandRepository::enqueue(store, first.clone()).await.expect("enqueue");
    let mut again = sample_command(project, Priority::Normal, client);
    again.idempotency = first.idempotency.clone();
    let replay = CommandRepository::enqueue(store, again.clone()).await.expect("replay");
    assert!(replay.replayed, "same key and fingerprint MUST replay");
    assert_eq!(replay.command.id, original.command.id);
    assert!(
        matches!(CommandRepository::get(store, again.id).await, Err(DomainError::NotFound(_))),
        "a replay stores nothing"
    );

    let mut other_body = sample_command(project, Priority::Normal, client);
    other_body.idempotency = Some(Idempotency::new("retry-1", "fp-b".into()).expect("key"));
    assert!(
        matches!(CommandRepository::enqueue(store, other_body).await, Err(DomainError::Conflict(_))),
        "same key, other request MUST be a Conflict"
    );

    let mut other_client = sample_command(project, Priority::Normal, Some(ApiKeyId::generate()));
    other_client.idempotency = first.idempotency.clone();
    assert!(!CommandRepository::enqueue(store, other_client).await.expect("enqueue").replayed, "keys are per client");

    let mut next_day = sample_command(project, Priority::Normal, client);
    next_day.idempotency = first.idempotency.clone();
    next_day.queued_at += Idempotency::RETENTION + TimeDelta::minutes(1);
    assert!(!CommandRepository::enqueue(store, next_day).await.expect("enqueue").replayed, "keys expire after 24 h");
}

/// `CommandQueue`: priority order under caps, fencing, leases, reaping, exactly-once claims.
pub async fn command_queue<S: Store, F: Fn() -> Fut, Fut: Future<Output = S>>(fresh: F) {
    priority_order_under_a_cap(fresh().await).await;
    trace_context_reaches_the_claim(fresh().await).await;
    fencing_and_finishing(fresh().await).await;
    a_finish_with_its_audit_record(fresh().await).await;
    expired_leases_are_lost(fresh().await).await;
    absent_owners_are_lost(fresh().await).await;
    commands_that_never_started_go_back(fresh().await).await;
    concurrent_claims_are_exclusive(Arc::new(fresh().await)).await;
    concurrent_enqueues_respect_the_cap(Arc::new(fresh().await)).await;
    concurrent_job_leases_have_one_winner(Arc::new(fresh().await)).await;
    super::contracts_claims::run(&fresh).await;
    super::contracts_finishes::run(&fresh).await;
    let store = fresh().await;
    heartbeat_of(&store, &WorkerId::new("a"), 5).await;
    heartbeat_of(&store, &WorkerId::new("b"), 3).await;
    heartbeat_of(&store, &WorkerId::new("a"), 5).await;
    let live = CommandQueue::live_workers(&store, now_micros() - TimeDelta::seconds(30)).await.expect("live");
    assert_eq!((live.replicas, live.capacity), (2, 8));
    let none = CommandQueue::live_workers(&store, now_micros() + TimeDelta::seconds(30)).await.expect("live");
    assert_eq!(none.replicas, 0);

    // Job leases: one holder at a time; the holder renews; an expired lease changes hands.
    let (a, b): (&'static WorkerId, &'static WorkerId) =
        (Box::leak(Box::new(WorkerId::new("a"))), Box::leak(Box::new(WorkerId::new("b"))));
    let now = now_micros();
    let lease = |owner: &'static WorkerId, at: crate::Timestamp, secs: i64| {
        CommandQueue::try_job_lease(&store, "retention", owner, at, at + TimeDelta::seconds(secs))
    };
    assert_eq!(lease(a, now, 10).await, Ok(true), "a free job is taken");
    assert_eq!(lease(b, now, 10).await, Ok(false), "MUST be refused while another holds it");
    assert_eq!(lease(a, now + TimeDelta::seconds(5), 10).await, Ok(true), "the holder renews");
    assert_eq!(lease(b, now + TimeDelta::seconds(12), 10).await, Ok(false), "renewed until now + 15 s");
    assert_eq!(lease(b, now + TimeDelta::seconds(16), 10).await, Ok(true), "an expired lease changes hands");
    assert_eq!(lease(a, now + TimeDelta::seconds(17), 10).await, Ok(false));
    assert_eq!(
        CommandQueue::try_job_lease(&store, "other", a, now, now + TimeDelta::seconds(10)).await,
        Ok(true),
        "jobs are independent"
    );
}

async fn priority_order_under_a_cap<S: Store>(store: S) {
    let solo = sample_project("solo", 1);
    ProjectRepository::create(&store, &solo).await.expect("project");
    assert_eq!(CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await, Ok(None), "empty queue");
    let mut ids = Vec::new();
    for p in [Priority::Low, Priority::Normal, Priority::Critical, Priority::High, Priority::Normal] {
        ids.push(CommandRepository::enqueue(&store, sample_command(&solo, p, None)).await.expect("enqueue").command.id);
    }
    let expected = [ids[2], ids[3], ids[1], ids[4], ids[0]];
    for want in expected {
        let claim =
            CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await.expect("claim").expect("claimable");
        assert_eq!(claim.command.id, want, "priority first, then age");
        assert_eq!(claim.command.status, CommandStatus::Running);
        assert!(claim.command.started_at.is_some());
        assert_eq!(
            CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await,
            Ok(None),
            "project cap of 1 holds"
        );
        let done = Termination::Exited(0).completion();
        CommandQueue::finish(&store, want, claim.fence, &done, &CommandOutput::default(), now_micros())
            .await
            .expect("finish")
            .expect("fresh fence");
    }
}

/// The replica that claims a command MUST get the trace context it was queued with, so its run
/// joins the caller's trace; a command queued without one has none.
async fn trace_context_reaches_the_claim<S: Store>(store: S) {
    let traced = sample_project("traced", 5);
    ProjectRepository::create(&store, &traced).await.expect("project");
    let trace = crate::trace::TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("rojo=00f067aa0ba902b7"),
    );
    assert!(trace.is_some());
    let with = NewCommand { trace: trace.clone(), ..sample_command(&traced, Priority::High, None) };
    let queued = CommandRepository::enqueue(&store, with).await.expect("enqueue").command;
    assert_eq!(queued.trace, trace, "enqueue MUST return the stored trace context");
    CommandRepository::enqueue(&store, sample_command(&traced, Priority::Low, None)).await.expect("enqueue");
    let first = CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await.expect("claim").expect("one");
    assert_eq!(first.command.trace, trace, "the claim MUST carry the trace context");
    let read = CommandRepository::get(&store, queued.id).await.expect("get");
    assert_eq!(read.trace, trace);
    let second = CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await.expect("claim").expect("one");
    assert_eq!(second.command.trace, None);
}

async fn fencing_and_finishing<S: Store>(store: S) {
    let web = sample_project("web", 5);
    ProjectRepository::create(&store, &web).await.expect("project");
    let id = CommandRepository::enqueue(&store, sample_command(&web, Priority::Normal, None))
        .await
        .expect("enqueue")
        .command
        .id;
    let claim = CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await.expect("claim").expect("one");
    let stale = claim.fence - 1;
    assert_eq!(
        CommandQueue::append_output(&store, id, claim.fence, OutputStream::Stdout, "hello\n", now_micros()).await,
        Ok(true)
    );
    assert_eq!(
        CommandQueue::append_output(&store, id, stale, OutputStream::Stderr, "late", now_micros()).await,
        Ok(false),
        "a stale fence writes nothing"
    );
    let until = now_micros() + TimeDelta::seconds(60);
    assert_eq!(CommandQueue::renew_lease(&store, id, claim.fence, until).await.map(|l| l.held), Ok(true));
    assert_eq!(CommandQueue::renew_lease(&store, id, stale, until).await.map(|l| l.held), Ok(false));
    CommandRepository::request_cancel(&store, id, now_micros()).await.expect("cancel running");
    let lease = CommandQueue::renew_lease(&store, id, claim.fence, until).await.expect("renew");
    assert!(lease.held && lease.cancel_requested, "the worker learns of the cancel request");
    assert_eq!(
        CommandRepository::get(&store, id).await.map(|c| c.status),
        Ok(CommandStatus::Running),
        "a running command keeps running until its worker acts"
    );

    let failed = Completion {
        status: CommandStatus::Failed,
        exit_code: Some(3),
        reason: TerminationReason::Exited,
        error: None,
    };
    let output = CommandOutput {
        stdout: "hello\n".into(),
        stderr: "oops".into(),
        stdout_truncated: false,
        stderr_truncated: true,
    };
    assert_eq!(
        CommandQueue::finish(&store, id, stale, &failed, &output, now_micros()).await,
        Ok(None),
        "a stale finish changes nothing"
    );
    let at = now_micros();
    let done =
        CommandQueue::finish(&store, id, claim.fence, &failed, &output, at).await.expect("finish").expect("held");
    assert_eq!(
        (done.status, done.exit_code, done.termination_reason, done.finished_at),
        (CommandStatus::Failed, Some(3), Some(TerminationReason::Exited), Some(at))
    );
    assert_eq!(CommandRepository::output(&store, id).await, Ok(output));
    let events = CommandRepository::events_after(&store, id, 0, 100).await.expect("events");
    assert_eq!(
        kinds(&events),
        vec![
            EventKind::Status(CommandStatus::Queued),
            EventKind::Status(CommandStatus::Running),
            EventKind::Output { stream: OutputStream::Stdout, data: "hello\n".into() },
            EventKind::Status(CommandStatus::Failed),
            EventKind::Exit,
        ]
    );
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5], "gap-free sequence");
    assert_eq!(
        CommandQueue::finish(&store, id, claim.fence, &failed, &CommandOutput::default(), now_micros()).await,
        Ok(None),
        "finishing twice changes nothing"
    );
}

/// `finish_audited`: the record is appended with the finish or not at all (then the caller
/// appends it); never by a stale fence.
async fn a_finish_with_its_audit_record<S: Store>(store: S) {
    let web = sample_project("web", 5);
    ProjectRepository::create(&store, &web).await.expect("project");
    CommandRepository::enqueue(&store, sample_command(&web, Priority::Normal, None)).await.expect("enqueue");
    let claim = CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await.expect("claim").expect("one");
    let id = claim.command.id;
    let done = Completion {
        status: CommandStatus::Succeeded,
        exit_code: Some(0),
        reason: TerminationReason::Exited,
        error: None,
    };
    let end = crate::audit::AuditEntry {
        at: now_micros(),
        actor: None,
        client_ip: None,
        action: "command.end".into(),
        resource: format!("command/{id}"),
        project: Some("web".into()),
        outcome: crate::audit::AuditOutcome::Success,
        detail: Some("status=succeeded".into()),
        request_id: None,
        trace_id: None,
        count: 1,
    };
    let records = || async {
        crate::ports::AuditLog::list(
            &store,
            &crate::ports::AuditFilter::default(),
            PageRequest { after: None, limit: Limit::DEFAULT },
        )
        .await
        .expect("audit log")
        .items
    };
    let output = CommandOutput::default();
    let stale =
        CommandQueue::finish_audited(&store, id, claim.fence - 1, &done, &output, now_micros(), end.clone()).await;
    assert_eq!(stale, Ok((None, None)), "a stale finish changes nothing");
    assert!(records().await.is_empty(), "MUST append nothing when the fence no longer holds");
    let (finished, record) =
        CommandQueue::finish_audited(&store, id, claim.fence, &done, &output, now_micros(), end).await.expect("finish");
    assert_eq!(finished.map(|c| c.status), Some(CommandStatus::Succeeded));
    let stored = records().await;
    match record {
        Some(record) => assert_eq!(stored, vec![record], "appended once, as returned"),
        None => assert!(stored.is_empty(), "left to the caller: nothing appended"),
    }
}

async fn expired_leases_are_lost<S: Store>(store: S) {
    let web = sample_project("web", 5);
    ProjectRepository::create(&store, &web).await.expect("project");
    let id = CommandRepository::enqueue(&store, sample_command(&web, Priority::Normal, None))
        .await
        .expect("enqueue")
        .command
        .id;
    let t0 = now_micros();
    let claim =
        CommandQueue::claim_next(&store, &worker(), t0, Duration::from_secs(1)).await.expect("claim").expect("one");
    assert_eq!(CommandQueue::reap_expired(&store, t0).await, Ok(vec![]), "a live lease is not reaped");
    let reaped = CommandQueue::reap_expired(&store, t0 + TimeDelta::seconds(2)).await.expect("reap");
    assert_eq!(
        reaped.iter().map(|c| (c.id, c.status, c.termination_reason, c.exit_code)).collect::<Vec<_>>(),
        vec![(id, CommandStatus::Lost, Some(TerminationReason::WorkerLost), None)]
    );
    assert_eq!(
        CommandQueue::renew_lease(&store, id, claim.fence, t0 + TimeDelta::seconds(90)).await.map(|l| l.held),
        Ok(false)
    );
    let late = Termination::Exited(0).completion();
    assert_eq!(
        CommandQueue::finish(&store, id, claim.fence, &late, &CommandOutput::default(), now_micros()).await,
        Ok(None),
        "the lost worker's late result changes nothing"
    );
    assert_eq!(
        CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await,
        Ok(None),
        "a lost command is never re-run"
    );
    assert_eq!(CommandRepository::get(&store, id).await.map(|c| c.status), Ok(CommandStatus::Lost));
}

async fn absent_owners_are_lost<S: Store>(store: S) {
    let web = sample_project("web", 5);
    ProjectRepository::create(&store, &web).await.expect("project");
    let (alive, dead) = (WorkerId::new("alive"), WorkerId::new("dead"));
    let mut claims = Vec::new();
    for w in [&alive, &dead] {
        assert_eq!(CommandQueue::hold_presence(&store, w, now_micros()).await, Ok(true), "presence is taken");
        CommandRepository::enqueue(&store, sample_command(&web, Priority::Normal, None)).await.expect("enqueue");
        claims.push(CommandQueue::claim_next(&store, w, now_micros(), LEASE).await.expect("claim").expect("one"));
    }
    assert_eq!(CommandQueue::hold_presence(&store, &alive, now_micros()).await, Ok(true), "confirming keeps it");
    assert_eq!(CommandQueue::absent_owners(&store, now_micros()).await, Ok(vec![]), "both present");
    assert_eq!(
        CommandQueue::reap_absent(&store, &dead, now_micros()).await,
        Ok(vec![]),
        "MUST change nothing while the owner is present"
    );
    CommandQueue::release_presence(&store, &dead).await.expect("release");
    assert_eq!(CommandQueue::absent_owners(&store, now_micros()).await, Ok(vec![dead.clone()]));
    let reaped = CommandQueue::reap_absent(&store, &dead, now_micros()).await.expect("reap");
    assert_eq!(
        reaped.iter().map(|c| (c.id, c.status, c.termination_reason)).collect::<Vec<_>>(),
        vec![(claims[1].command.id, CommandStatus::Lost, Some(TerminationReason::WorkerLost))],
        "only the absent owner's command"
    );
    let events = CommandRepository::events_after(&store, claims[1].command.id, 0, 10).await.expect("events");
    assert_eq!(
        events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>(),
        vec![
            EventKind::Status(CommandStatus::Queued),
            EventKind::Status(CommandStatus::Running),
            EventKind::Status(CommandStatus::Lost),
            EventKind::Exit
        ]
    );
    let late = Termination::Exited(0).completion();
    let id = claims[1].command.id;
    assert_eq!(
        CommandQueue::finish(&store, id, claims[1].fence, &late, &CommandOutput::default(), now_micros()).await,
        Ok(None),
        "the absent worker's late result changes nothing"
    );
    assert_eq!(CommandQueue::absent_owners(&store, now_micros()).await, Ok(vec![]), "nothing of it runs any more");
    assert_eq!(CommandQueue::reap_absent(&store, &dead, now_micros()).await, Ok(vec![]), "reaped once");
    assert_eq!(
        CommandRepository::get(&store, claims[0].command.id).await.map(|c| c.status),
        Ok(CommandStatus::Running),
        "the present owner's command runs on"
    );
    assert_eq!(CommandQueue::claim_next(&store, &alive, now_micros(), LEASE).await, Ok(None), "never re-run");
}

async fn commands_that_never_started_go_back<S: Store>(store: S) {
    let solo = sample_project("solo", 1);
    ProjectRepository::create(&store, &solo).await.expect("project");
    let mut ids = Vec::new();
    for p in [Priority::High, Priority::Normal] {
        ids.push(CommandRepository::enqueue(&store, sample_command(&solo, p, None)).await.expect("enqueue").command.id);
    }
    let claim = CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await.expect("claim").expect("one");
    assert_eq!(claim.command.id, ids[0]);
    assert_eq!(CommandQueue::hand_back(&store, ids[0], claim.fence + 1, now_micros()).await, Ok(false), "stale fence");
    assert_eq!(CommandQueue::hand_back(&store, ids[0], claim.fence, now_micros()).await, Ok(true));
    let back = CommandRepository::get(&store, ids[0]).await.expect("get");
    assert_eq!((back.status, back.started_at), (CommandStatus::Queued, None));
    assert_eq!(CommandRepository::queue_position(&store, ids[0]).await, Ok(Some(1)), "its old place");
    assert_eq!(
        CommandQueue::finish(
            &store,
            ids[0],
            claim.fence,
            &Termination::Exited(0).completion(),
            &CommandOutput::default(),
            now_micros()
        )
        .await,
        Ok(None),
        "the old claim's fence holds nothing"
    );
    let again = CommandQueue::claim_next(&store, &worker(), now_micros(), LEASE).await.expect("claim").expect("one");
    assert_eq!(again.command.id, ids[0], "the cap freed and the command claimed again first");
    assert!(again.fence > claim.fence);
    let kinds: Vec<EventKind> = CommandRepository::events_after(&store, ids[0], 0, 10)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [CommandStatus::Queued, CommandStatus::Running, CommandStatus::Queued, CommandStatus::Running]
            .map(EventKind::Status)
            .to_vec()
    );
    CommandRepository::request_cancel(&store, ids[0], now_micros()).await.expect("cancel");
    assert_eq!(
        CommandQueue::hand_back(&store, ids[0], again.fence, now_micros()).await,
        Ok(false),
        "a command a client cancelled is not handed back"
    );
    assert_eq!(CommandRepository::get(&store, ids[0]).await.map(|c| c.status), Ok(CommandStatus::Running));
}

async fn concurrent_claims_are_exclusive<S: Store>(store: Arc<S>) {
    let mut expected = HashSet::new();
    for name in ["alpha", "beta"] {
        let p = sample_project(name, 1000);
        ProjectRepository::create(store.as_ref(), &p).await.expect("project");
        for _ in 0..30 {
            expected.insert(
                CommandRepository::enqueue(store.as_ref(), sample_command(&p, Priority::Normal, None))
                    .await
                    .expect("enqueue")
                    .command
                    .id,
            );
        }
    }
    let claimers: Vec<_> = (0..6)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let me = WorkerId::new(format!("w{i}"));
                let mut mine = Vec::new();
                while let Some(c) =
                    CommandQueue::claim_next(store.as_ref(), &me, now_micros(), LEASE).await.expect("claim")
                {
                    mine.push((c.command.id, c.fence));
                }
                mine
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut fences = HashSet::new();
    for c in claimers {
        for (id, fence) in c.await.expect("task") {
            assert!(seen.insert(id), "command {id} was claimed twice");
            assert!(fences.insert(fence), "fence {fence} was handed out twice");
        }
    }
    assert_eq!(seen, expected, "every command claimed exactly once");
    assert_eq!(CommandRepository::stats(store.as_ref(), None).await.map(|s| s.running), Ok(60));
    let _ = project_name("alpha");
}

/// Concurrent enqueues never push a project's queue past its cap (the count and the insert are
/// one atomic step).
async fn concurrent_enqueues_respect_the_cap<S: Store>(store: Arc<S>) {
    let p = sample_project("racy", 1);
    ProjectRepository::create(store.as_ref(), &p).await.expect("project");
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let store = Arc::clone(&store);
            let mut new = sample_command(&p, Priority::Normal, None);
            new.max_queued = 5;
            tokio::spawn(async move { CommandRepository::enqueue(store.as_ref(), new).await })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => stored += 1,
            Err(DomainError::QueueFull { limit: 5 }) => {}
            Err(e) => panic!("unexpected enqueue error: {e}"),
        }
    }
    assert_eq!(stored, 5, "exactly the cap was stored");
    let queued = CommandFilter { project: Some(p.name.clone()), status: Some(CommandStatus::Queued) };
    assert_eq!(
        CommandRepository::list(store.as_ref(), &queued, PageRequest::default()).await.map(|p| p.items.len()),
        Ok(5)
    );
}

/// Replicas racing for a free job lease: exactly one gets it.
async fn concurrent_job_leases_have_one_winner<S: Store>(store: Arc<S>) {
    let now = now_micros();
    let takers: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let me = WorkerId::new(format!("replica-{i}"));
                CommandQueue::try_job_lease(store.as_ref(), "retention", &me, now, now + TimeDelta::seconds(60)).await
            })
        })
        .collect();
    let mut winners = 0;
    for t in takers {
        if t.await.expect("task").expect("lease") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "one replica at a time holds a job");
}
