//! Behaviour of the SQLite store itself: migrations, files, the database-level guards.
#![expect(clippy::expect_used, reason = "in test set-up a failure is a failed test")]

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use adapters_sqlite::SqliteStore;
use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl, SqliteConnection};
use domain::audit::{AuditEntry, AuditOutcome};
use domain::command::Priority;
use domain::ids::WorkerId;
use domain::ports::{ApiKeyRepository, AuditLog, CommandQueue, CommandRepository, HealthCheck, ProjectRepository};
use domain::testing::{now_micros, sample_command, sample_key, sample_project};
use domain::DomainError;

const LEASE: Duration = Duration::from_secs(60);

fn open(path: &Path) -> SqliteStore {
    let store = SqliteStore::open(&format!("sqlite://{}", path.display())).expect("open");
    store.migrate().expect("migrate");
    store
}

fn raw(path: &Path) -> SqliteConnection {
    SqliteConnection::establish(&path.display().to_string()).expect("raw connection")
}

fn audit_entry() -> AuditEntry {
    AuditEntry {
        at: now_micros(),
        actor: None,
        client_ip: None,
        action: "projects.create".into(),
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
async fn migrating_twice_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rdev.db");
    let store = open(&path);
    let web = sample_project("web", 1);
    ProjectRepository::create(&store, &web).await.expect("create");
    store.migrate().expect("second migrate");
    assert_eq!(ProjectRepository::get(&store, &web.name).await, Ok(web));
    let applied: i64 = {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query("SELECT COUNT(*) AS n FROM __diesel_schema_migrations")
            .get_result::<Count>(&mut raw(&path))
            .expect("count")
            .n
    };
    assert_eq!(applied, std::fs::read_dir("../../migrations/sqlite").expect("migrations dir").count() as i64);
}

#[test]
fn every_migration_reverts_and_reapplies() {
    use diesel_migrations::MigrationHarness;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("down.db");
    drop(open(&path));
    let mut conn = raw(&path);
    conn.revert_all_migrations(adapters_sqlite::MIGRATIONS).expect("down.sql runs");
    conn.run_pending_migrations(adapters_sqlite::MIGRATIONS).expect("up.sql runs again");
}

#[tokio::test]
async fn the_audit_log_refuses_updates_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let store = open(&path);
    AuditLog::append(&store, audit_entry()).await.expect("append");
    let mut conn = raw(&path);
    for statement in ["UPDATE audit_log SET action = 'forged'", "DELETE FROM audit_log"] {
        let refused = diesel::sql_query(statement).execute(&mut conn).expect_err(statement);
        assert!(refused.to_string().contains("append-only"), "{statement}: {refused}");
    }
    assert_eq!(AuditLog::scan(&store, 0, 10).await.map(|r| r[0].entry.action.clone()), Ok("projects.create".into()));
}

#[tokio::test]
async fn reopening_a_file_keeps_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/dirs/rdev.db");
    let web = sample_project("web", 1);
    let (key, secret) = sample_key("ci", &[domain::api_key::Scope::Admin], domain::api_key::ProjectAccess::All);
    {
        let store = open(&path);
        ProjectRepository::create(&store, &web).await.expect("create project");
        ApiKeyRepository::create(&store, &key).await.expect("create key");
        AuditLog::append(&store, audit_entry()).await.expect("append");
    }
    let store = open(&path);
    assert_eq!(ProjectRepository::get(&store, &web.name).await, Ok(web));
    assert_eq!(ApiKeyRepository::find_by_hash(&store, &secret.hash()).await, Ok(Some(key)));
    let second = AuditLog::append(&store, audit_entry()).await.expect("append after reopen");
    assert_eq!(second.seq, 2, "the chain continues across restarts");
}

#[tokio::test]
async fn every_url_form_opens_and_a_blocked_path_is_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in [
        format!("sqlite://{}/a/one.db", dir.path().display()),
        format!("sqlite:{}/b/two.db", dir.path().display()),
        format!("{}/c/three.db", dir.path().display()),
        ":memory:".to_owned(),
    ] {
        let store = SqliteStore::open(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
        store.migrate().unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(HealthCheck::check(&store).await, Ok(()), "{url}");
        ProjectRepository::create(&store, &sample_project("web", 1)).await.expect("write");
    }
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write file");
    let blocked = SqliteStore::open(&format!("{}/db.sqlite", file.display()));
    assert!(matches!(blocked, Err(DomainError::Unavailable(_))), "{blocked:?}");
}

#[tokio::test]
async fn a_duplicate_key_is_a_conflict() {
    let store = SqliteStore::open(":memory:").expect("open");
    store.migrate().expect("migrate");
    let (key, _) = sample_key("ci", &[domain::api_key::Scope::Admin], domain::api_key::ProjectAccess::All);
    ApiKeyRepository::create(&store, &key).await.expect("create");
    assert!(matches!(ApiKeyRepository::create(&store, &key).await, Err(DomainError::Conflict(_))));
    assert_eq!(ApiKeyRepository::count(&store).await, Ok(1), "the failed insert left nothing behind");
}

#[tokio::test]
async fn fences_keep_rising_after_the_highest_one_is_deleted() {
    let store = SqliteStore::open(":memory:").expect("open");
    store.migrate().expect("migrate");
    let worker = WorkerId::new("w");
    let gone = sample_project("gone", 1);
    ProjectRepository::create(&store, &gone).await.expect("project");
    CommandRepository::enqueue(&store, sample_command(&gone, Priority::Normal, None)).await.expect("enqueue");
    let first = CommandQueue::claim_next(&store, &worker, now_micros(), LEASE).await.expect("claim").expect("one");
    let done = domain::command::Termination::Exited(0).completion();
    CommandQueue::finish(&store, first.command.id, first.fence, &done, &Default::default(), now_micros())
        .await
        .expect("finish");
    ProjectRepository::delete(&store, &gone.name).await.expect("delete");

    let next = sample_project("next", 1);
    ProjectRepository::create(&store, &next).await.expect("project");
    CommandRepository::enqueue(&store, sample_command(&next, Priority::Normal, None)).await.expect("enqueue");
    let second = CommandQueue::claim_next(&store, &worker, now_micros(), LEASE).await.expect("claim").expect("one");
    assert!(second.fence > first.fence, "{} must exceed {}", second.fence, first.fence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_file_never_claim_the_same_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let replicas = [open(&path), open(&path)];
    let project = sample_project("shared", 1000);
    ProjectRepository::create(&replicas[0], &project).await.expect("project");
    let mut expected = HashSet::new();
    for _ in 0..40 {
        let c = CommandRepository::enqueue(&replicas[1], sample_command(&project, Priority::High, None));
        expected.insert(c.await.expect("enqueue").command.id);
    }
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = replicas[i % 2].clone();
            tokio::spawn(async move {
                let me = WorkerId::new(format!("w{i}"));
                let mut mine = Vec::new();
                while let Some(c) = CommandQueue::claim_next(&store, &me, now_micros(), LEASE).await.expect("claim") {
                    mine.push(c.command.id);
                }
                mine
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.expect("task") {
            assert!(seen.insert(id), "{id} claimed twice");
        }
    }
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_database_locked_by_another_process_is_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("locked.db");
    let store = open(&path);
    let mut holder = raw(&path);
    holder.batch_execute("BEGIN EXCLUSIVE").expect("lock");
    // The store waits out its busy timeout (5 s), then reports the database as unavailable.
    let blocked = AuditLog::append(&store, audit_entry()).await;
    assert!(matches!(blocked, Err(DomainError::Unavailable(_))), "{blocked:?}");
    holder.batch_execute("ROLLBACK").expect("unlock");
    assert!(AuditLog::append(&store, audit_entry()).await.is_ok());
}
