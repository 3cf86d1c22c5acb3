//! Behaviour of the PostgreSQL store itself: several replicas (stores) on one database, the
//! database-level guards, migrations, and what happens when the server is unreachable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adapters_postgres::testing::{raw_client, TestDatabase};
use adapters_postgres::{PgStore, MIGRATIONS};
use chrono::TimeDelta;
use domain::audit::{AuditEntry, AuditOutcome, ChainVerifier};
use domain::command::{CommandStatus, CommandStdin, Priority, Termination, TerminationReason};
use domain::ids::{CommandId, WorkerId};
use domain::output::{CommandOutput, EventKind, OutputStream};
use domain::ports::{AuditLog, CommandQueue, CommandRepository, HealthCheck, ProjectRepository, RateLimitStore};
use domain::rate_limit::RateLimitPolicy;
use domain::testing::{fixed_start, now_micros, sample_command, sample_project};
use domain::DomainError;

const LEASE: Duration = Duration::from_secs(60);

fn audit_entry(action: &str) -> AuditEntry {
    AuditEntry {
        at: now_micros(),
        actor: None,
        client_ip: Some("192.0.2.7".into()),
        action: action.into(),
        resource: "/v1/projects".into(),
        project: Some("web".into()),
        outcome: AuditOutcome::Success,
        detail: None,
        request_id: None,
        trace_id: None,
        count: 1,
    }
}

#[tokio::test]
async fn migrating_again_changes_nothing() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let web = sample_project("web", 1);
    ProjectRepository::create(&store, &web).await.expect("create");
    store.migrate().await.expect("second migrate");
    assert_eq!(ProjectRepository::get(&store, &web.name).await, Ok(web));
    let applied: i64 = db
        .raw_client()
        .await
        .query_one("SELECT count(*) FROM __diesel_schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    let on_disk = std::fs::read_dir("../../migrations/postgres").expect("migrations dir").count();
    assert_eq!(applied, i64::try_from(on_disk).expect("count"));
}

#[tokio::test]
async fn every_migration_reverts_and_reapplies() {
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    use diesel_migrations::MigrationHarness;
    let db = TestDatabase::create().await;
    let conn = AsyncPgConnection::establish(db.url()).await.expect("connect");
    tokio::task::spawn_blocking(move || {
        let mut sync = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        sync.revert_all_migrations(MIGRATIONS).expect("down.sql runs");
        sync.run_pending_migrations(MIGRATIONS).expect("up.sql runs again");
    })
    .await
    .expect("migration thread");
}

#[tokio::test]
async fn the_audit_log_refuses_changes_and_verify_finds_one_made_without_the_trigger() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    for action in ["projects.create", "projects.update", "projects.delete"] {
        AuditLog::append(&store, audit_entry(action)).await.expect("append");
    }
    let client = db.raw_client().await;
    for statement in
        ["UPDATE audit_log SET action = 'forged' WHERE seq = 2", "DELETE FROM audit_log", "TRUNCATE audit_log"]
    {
        let refused = client.batch_execute(statement).await.expect_err(statement);
        let message = refused.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(message.contains("append-only"), "{statement}: {refused:?}");
    }
    let intact = AuditLog::scan(&store, 0, 10).await.expect("scan");
    let mut verifier = ChainVerifier::default();
    assert!(intact.iter().all(|r| verifier.check(r)), "nothing changed");

    // Someone with the owner's rights switches the guard off: the chain still gives it away.
    client
        .batch_execute(
            "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update; \
             UPDATE audit_log SET action = 'forged' WHERE seq = 2; \
             ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update;",
        )
        .await
        .expect("tamper");
    let tampered = AuditLog::scan(&store, 0, 10).await.expect("scan");
    let mut verifier = ChainVerifier::default();
    tampered.iter().for_each(|r| {
        verifier.check(r);
    });
    assert_eq!(verifier.report().first_bad_id, Some(tampered[1].id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_appends_from_two_replicas_form_one_chain() {
    let db = TestDatabase::create().await;
    let replicas = [db.store().await, db.store().await];
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = replicas[i % 2].clone();
            tokio::spawn(async move { AuditLog::append(&store, audit_entry(&format!("a{i}"))).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("append");
    }
    let all = AuditLog::scan(&replicas[0], 0, 100).await.expect("scan");
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
    let mut verifier = ChainVerifier::default();
    assert!(all.iter().all(|r| verifier.check(r)), "one unbroken chain");
}

/// Largest number of running commands per project the database held at any one moment.
async fn watch_running(url: String, stop: Arc<AtomicUsize>) -> i64 {
    let client = raw_client(&url).await;
    let mut worst = 0;
    while stop.load(Ordering::Relaxed) == 0 {
        let rows = client
            .query("SELECT count(*) FROM commands WHERE status = 'running' GROUP BY project_id", &[])
            .await
            .expect("count running");
        worst = rows.iter().map(|r| r.get::<_, i64>(0)).chain([worst]).max().unwrap_or(worst);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_claim_each_command_once_and_keep_project_caps() {
    const PROJECTS: usize = 5;
    const PER_PROJECT: usize = 100;
    const CAP: u32 = 2;
    let db = TestDatabase::create().await;
    let replicas = [db.store().await, db.store().await];
    let projects: Vec<_> = (0..PROJECTS).map(|i| sample_project(&format!("p{i}"), CAP)).collect();
    let mut expected = HashSet::new();
    for (i, p) in projects.iter().enumerate() {
        ProjectRepository::create(&replicas[i % 2], p).await.expect("project");
    }
    for n in 0..PER_PROJECT {
        for (i, p) in projects.iter().enumerate() {
            let priority = Priority::ALL[(n + i) % Priority::ALL.len()];
            let c = CommandRepository::enqueue(&replicas[(n + i) % 2], sample_command(p, priority, None));
            expected.insert(c.await.expect("enqueue").command.id);
        }
    }
    let total = expected.len();
    let stop = Arc::new(AtomicUsize::new(0));
    let watcher = tokio::spawn(watch_running(db.url().to_owned(), Arc::clone(&stop)));
    let finished = Arc::new(AtomicUsize::new(0));
    let running: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let claimers: Vec<_> = (0..12)
        .map(|i| {
            let store = replicas[i % 2].clone();
            let (finished, running) = (Arc::clone(&finished), Arc::clone(&running));
            tokio::spawn(async move {
                let me = WorkerId::new(format!("w{i}"));
                let mut mine = Vec::new();
                while finished.load(Ordering::SeqCst) < total {
                    assert!(Instant::now() < deadline, "claimers did not drain the queue in time");
                    let Some(claim) = CommandQueue::claim_next(&store, &me, now_micros(), LEASE).await.expect("claim")
                    else {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    };
                    let project = claim.command.project.as_str().to_owned();
                    {
                        let mut running = running.lock().unwrap();
                        let n = running.entry(project.clone()).or_default();
                        *n += 1;
                        assert!(*n <= CAP, "{project} runs {n} commands, cap {CAP}");
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    *running.lock().unwrap().entry(project).or_default() -= 1;
                    let done = Termination::Exited(0).completion();
                    let ended = CommandQueue::finish(
                        &store,
                        claim.command.id,
                        claim.fence,
                        &done,
                        &CommandOutput::default(),
                        now_micros(),
                    )
                    .await
                    .expect("finish");
                    assert!(ended.is_some(), "the claimer's own fence holds");
                    finished.fetch_add(1, Ordering::SeqCst);
                    mine.push((claim.command.id, claim.fence));
                }
                mine
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut fences = HashSet::new();
    for c in claimers {
        for (id, fence) in c.await.expect("claimer") {
            assert!(seen.insert(id), "{id} was claimed twice");
            assert!(fences.insert(fence), "fence {fence} was handed out twice");
        }
    }
    stop.store(1, Ordering::Relaxed);
    let worst = watcher.await.expect("watcher");
    assert_eq!(seen, expected, "every command ran exactly once");
    assert!(worst <= i64::from(CAP), "the database once held {worst} running commands of one project");
    let stats = CommandRepository::stats(&replicas[1], None).await.expect("stats");
    assert_eq!(stats.running, 0);
    assert!(stats.depth.iter().all(|(_, n)| *n == 0));
}

#[tokio::test]
async fn a_rate_limit_consumed_through_one_replica_is_seen_through_another() {
    let db = TestDatabase::create().await;
    let (a, b) = (db.store().await, db.store().await);
    let policy = RateLimitPolicy { rps: 1, window_seconds: 3 };
    let t0 = fixed_start();
    for _ in 0..2 {
        assert!(RateLimitStore::acquire(&a, "key-1", policy, t0).await.expect("acquire").allowed);
    }
    let on_b = RateLimitStore::acquire(&b, "key-1", policy, t0).await.expect("acquire");
    assert!(on_b.allowed && on_b.remaining == 0, "B sees A's two requests: {on_b:?}");
    let refused = RateLimitStore::acquire(&a, "key-1", policy, t0).await.expect("acquire");
    assert!(!refused.allowed && refused.retry_after_seconds.is_some(), "A sees B's request: {refused:?}");
}

#[tokio::test]
async fn a_stale_fence_changes_nothing_and_a_lost_command_never_runs_again() {
    let db = TestDatabase::create().await;
    let (a, b) = (db.store().await, db.store().await);
    let web = sample_project("web", 3);
    ProjectRepository::create(&a, &web).await.expect("project");
    let id = CommandRepository::enqueue(&a, sample_command(&web, Priority::Normal, None)).await.expect("enqueue");
    let id = id.command.id;
    let t0 = now_micros();
    let claim = CommandQueue::claim_next(&a, &WorkerId::new("dies"), t0, Duration::from_secs(1))
        .await
        .expect("claim")
        .expect("claimable");
    assert!(CommandQueue::append_output(&a, id, claim.fence, OutputStream::Stdout, "before\n", t0).await.unwrap());

    // Replica B reaps the expired lease; A's worker wakes up later and tries to carry on.
    let reaped = CommandQueue::reap_expired(&b, t0 + TimeDelta::seconds(2)).await.expect("reap");
    assert_eq!(reaped.iter().map(|c| (c.id, c.status)).collect::<Vec<_>>(), vec![(id, CommandStatus::Lost)]);
    assert_eq!(reaped[0].termination_reason, Some(TerminationReason::WorkerLost));
    assert_eq!(CommandQueue::reap_expired(&a, t0 + TimeDelta::seconds(3)).await, Ok(vec![]), "reaped once");
    let late = now_micros();
    assert_eq!(
        CommandQueue::append_output(&a, id, claim.fence, OutputStream::Stdout, "after\n", late).await,
        Ok(false)
    );
    let renewal = CommandQueue::renew_lease(&a, id, claim.fence, late + TimeDelta::seconds(60)).await.expect("renew");
    assert!(!renewal.held);
    let output = CommandOutput { stdout: "late".into(), ..CommandOutput::default() };
    let done = Termination::Exited(0).completion();
    assert_eq!(CommandQueue::finish(&a, id, claim.fence, &done, &output, late).await, Ok(None));
    assert_eq!(CommandRepository::output(&b, id).await, Ok(CommandOutput::default()), "no late output");
    for store in [&a, &b] {
        assert_eq!(CommandQueue::claim_next(store, &WorkerId::new("next"), now_micros(), LEASE).await, Ok(None));
    }
    let command = CommandRepository::get(&b, id).await.expect("get");
    assert_eq!((command.status, command.exit_code), (CommandStatus::Lost, None));
    let events = CommandRepository::events_after(&b, id, 0, 100).await.expect("events");
    assert_eq!(
        events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>(),
        vec![
            EventKind::Status(CommandStatus::Queued),
            EventKind::Status(CommandStatus::Running),
            EventKind::Output { stream: OutputStream::Stdout, data: "before\n".into() },
            EventKind::Status(CommandStatus::Lost),
            EventKind::Exit,
        ]
    );
}

#[tokio::test]
async fn nul_bytes_in_output_and_stdin_survive() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let web = sample_project("web", 1);
    ProjectRepository::create(&store, &web).await.expect("project");
    let mut new = sample_command(&web, Priority::Normal, None);
    let stdin = CommandStdin::parse("in\0put").expect("a small stdin");
    new.stdin = Some(stdin.clone());
    let id = CommandRepository::enqueue(&store, new).await.expect("enqueue").command.id;
    assert_eq!(CommandRepository::get(&store, id).await.map(|c| c.stdin), Ok(Some(stdin)));
    let claim = CommandQueue::claim_next(&store, &WorkerId::new("w"), now_micros(), LEASE).await.unwrap().unwrap();
    CommandQueue::append_output(&store, id, claim.fence, OutputStream::Stderr, "a\0b", now_micros()).await.unwrap();
    let output = CommandOutput { stdout: "x\0y".into(), stderr: "a\0b".into(), ..CommandOutput::default() };
    let done = Termination::Exited(0).completion();
    CommandQueue::finish(&store, id, claim.fence, &done, &output, now_micros()).await.unwrap().unwrap();
    assert_eq!(CommandRepository::output(&store, id).await, Ok(output));
    let events = CommandRepository::events_after(&store, id, 2, 1).await.unwrap();
    assert_eq!(events[0].kind, EventKind::Output { stream: OutputStream::Stderr, data: "a\0b".into() });
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let refused = PgStore::connect(&format!("postgres://rdev@127.0.0.1:{port}/rdev"), 4).await;
    assert!(matches!(refused, Err(DomainError::Unavailable(_))), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let malformed = PgStore::connect("postgres://rdev@127.0.0.1:notaport/rdev", 4).await;
    assert!(matches!(malformed, Err(DomainError::Invalid(_))), "{malformed:?}");
    let no_bus = adapters_postgres::PgSignalBus::connect(&format!("postgres://rdev@127.0.0.1:{port}/rdev")).await;
    assert!(matches!(no_bus, Err(DomainError::Unavailable(_))), "{no_bus:?}");
}

#[tokio::test]
async fn fences_rise_across_replicas_and_deleted_projects() {
    let db = TestDatabase::create().await;
    let (a, b) = (db.store().await, db.store().await);
    let worker = WorkerId::new("w");
    let mut last = 0;
    for (i, store) in [&a, &b, &a, &b].into_iter().enumerate() {
        let p = sample_project(&format!("gone-{i}"), 1);
        ProjectRepository::create(store, &p).await.expect("project");
        CommandRepository::enqueue(store, sample_command(&p, Priority::Normal, None)).await.expect("enqueue");
        let claim = CommandQueue::claim_next(store, &worker, now_micros(), LEASE).await.expect("claim").expect("one");
        assert!(claim.fence > last, "{} must exceed {last}", claim.fence);
        last = claim.fence;
        let done = Termination::Exited(0).completion();
        CommandQueue::finish(store, claim.command.id, claim.fence, &done, &CommandOutput::default(), now_micros())
            .await
            .expect("finish");
        ProjectRepository::delete(store, &p.name).await.expect("delete");
        assert!(matches!(CommandRepository::get(store, claim.command.id).await, Err(DomainError::NotFound(_))));
    }
    let unknown = CommandId::generate();
    assert!(matches!(
        CommandQueue::append_output(&a, unknown, last, OutputStream::Stdout, "x", now_micros()).await,
        Err(DomainError::NotFound(_))
    ));
}

#[tokio::test]
async fn concurrent_enqueues_with_one_idempotency_key_store_one_command() {
    let db = TestDatabase::create().await;
    let (a, b) = (db.store().await, db.store().await);
    let web = sample_project("web", 1);
    ProjectRepository::create(&a, &web).await.expect("project");
    let client = Some(domain::ids::ApiKeyId::generate());
    let key = domain::command::Idempotency::new("same", "fp".into()).expect("key");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let mut new = sample_command(&web, Priority::Normal, client);
            new.idempotency = Some(key.clone());
            tokio::spawn(async move { CommandRepository::enqueue(&store, new).await })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.expect("task").expect("enqueue or replay").command.id);
    }
    assert_eq!(ids.len(), 1, "every request got the first command");
}

#[tokio::test]
async fn the_store_recovers_by_itself_after_the_server_restarts() {
    use adapters_postgres::testing::TestCluster;
    use domain::ports::SignalBus;
    use domain::signal::Signal;
    use futures::StreamExt;

    let cluster = TestCluster::start_dedicated();
    let db = TestDatabase::create_on(&cluster).await;
    let store = db.store().await;
    let bus = db.signal_bus().await;
    let mut signals = bus.subscribe();
    assert_eq!(HealthCheck::check(&store).await, Ok(()));
    ProjectRepository::create(&store, &sample_project("before", 1)).await.expect("write before");

    cluster.stop();
    let started = Instant::now();
    let health = HealthCheck::check(&store).await;
    assert!(matches!(health, Err(DomainError::Unavailable(_))), "{health:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "the first outage answer took {:?}", started.elapsed());
    // Once a connection attempt failed, answers come at once.
    for _ in 0..3 {
        let started = Instant::now();
        let write = ProjectRepository::create(&store, &sample_project("during", 1)).await;
        assert!(matches!(write, Err(DomainError::Unavailable(_))), "{write:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "an outage answer took {:?}", started.elapsed());
    }
    assert!(matches!(bus.publish(Signal::WorkQueued).await, Err(DomainError::Unavailable(_))));

    cluster.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while HealthCheck::check(&store).await.is_err() {
        assert!(Instant::now() < deadline, "the store did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ProjectRepository::create(&store, &sample_project("after", 1)).await.expect("write after recovery");
    let resync = tokio::time::timeout(Duration::from_secs(20), signals.next()).await.expect("a signal after restart");
    assert_eq!(resync, Some(Signal::Resync), "the listener says it may have missed signals");
    let key = domain::ids::ApiKeyId::generate();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "signals did not flow again");
        if bus.publish(Signal::KeyChanged(key)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = tokio::time::timeout(Duration::from_secs(2), signals.next()).await.expect("signal after restart");
    assert_eq!(next, Some(Signal::KeyChanged(key)));
}

#[tokio::test]
async fn a_replica_whose_session_ends_is_absent_at_once_and_one_that_holds_it_never_is() {
    let db = TestDatabase::create().await;
    let (dying, watcher) = (db.store().await, db.store().await);
    let web = sample_project("web", 5);
    ProjectRepository::create(&dying, &web).await.expect("project");
    let (doomed, survivor) = (WorkerId::new("doomed-1"), WorkerId::new("survivor-1"));
    assert_eq!(dying.hold_presence(&doomed, now_micros()).await, Ok(true));
    assert_eq!(watcher.hold_presence(&survivor, now_micros()).await, Ok(true));
    let mut ids = Vec::new();
    for (store, owner) in [(&dying, &doomed), (&watcher, &survivor)] {
        CommandRepository::enqueue(store, sample_command(&web, Priority::Normal, None)).await.expect("enqueue");
        ids.push(store.claim_next(owner, now_micros(), LEASE).await.expect("claim").expect("one").command.id);
    }
    assert_eq!(watcher.absent_owners(now_micros()).await, Ok(vec![]));

    // The doomed replica's presence session dies the way a killed process's does: the server
    // ends it. Nothing else of that store is touched.
    let killed: i64 = db
        .raw_client()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.objid = hashtext('doomed-1')::oid AND l.objsubid = 2",
            &[],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1, "one session held the doomed presence");
    let deadline = Instant::now() + Duration::from_secs(5);
    while watcher.absent_owners(now_micros()).await != Ok(vec![doomed.clone()]) {
        assert!(Instant::now() < deadline, "the ended session's owner is seen absent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reaped = watcher.reap_absent(&doomed, now_micros()).await.expect("reap");
    assert_eq!(reaped.iter().map(|c| (c.id, c.status)).collect::<Vec<_>>(), vec![(ids[0], CommandStatus::Lost)]);
    assert_eq!(watcher.reap_absent(&survivor, now_micros()).await, Ok(vec![]), "a held presence is never reaped");
    assert_eq!(CommandRepository::get(&watcher, ids[1]).await.map(|c| c.status), Ok(CommandStatus::Running));

    // The doomed replica notices its session is gone and takes its presence again; commands
    // already reaped stay lost.
    assert_eq!(dying.hold_presence(&doomed, now_micros()).await, Ok(true), "taken again on a new session");
    assert_eq!(CommandRepository::get(&watcher, ids[0]).await.map(|c| c.status), Ok(CommandStatus::Lost));

    // A session still holding the presence (as a half-open connection would) is not this
    // attempt's: it is refused, the lingering session is ended, and the next attempt takes it.
    assert_eq!(watcher.hold_presence(&doomed, now_micros()).await, Ok(false), "held by another session");
    let deadline = Instant::now() + Duration::from_secs(5);
    while watcher.hold_presence(&doomed, now_micros()).await != Ok(true) {
        assert!(Instant::now() < deadline, "the lingering session was ended and the presence taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
