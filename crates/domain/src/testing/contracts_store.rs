//! Contract suites for projects, API keys, the audit log and rate limits.

use std::future::Future;
use std::sync::Arc;

use chrono::TimeDelta;

use super::{fixed_start, now_micros, project_name, sample_command, sample_key, sample_project, Store};
use crate::api_key::{ApiKeySecret, PreviousSecret, ProjectAccess, Scope};
use crate::audit::{AuditEntry, AuditOutcome, ChainVerifier};
use crate::command::Priority;
use crate::ids::{ApiKeyId, WorkerId};
use crate::network::CidrList;
use crate::pagination::{Limit, PageRequest};
use crate::ports::{
    ApiKeyRepository, AuditFilter, AuditLog, CommandQueue, CommandRepository, ProjectRepository, RateLimitStore,
};
use crate::rate_limit::{RateLimitPolicy, UnusedGrant, WindowGrant};
use crate::DomainError;

fn page(limit: i64) -> PageRequest {
    PageRequest { after: None, limit: Limit::new(limit).unwrap_or(Limit::DEFAULT) }
}

/// `ProjectRepository`: create, conflicts, get, paging, update, delete rules.
pub async fn project_repository<S: Store, F: Fn() -> Fut, Fut: Future<Output = S>>(fresh: F) {
    let store = fresh().await;
    let web = sample_project("web", 2);
    ProjectRepository::create(&store, &web).await.expect("create");
    assert_eq!(ProjectRepository::get(&store, &web.name).await, Ok(web.clone()), "get returns what was stored");
    assert!(
        matches!(ProjectRepository::create(&store, &sample_project("web", 1)).await, Err(DomainError::Conflict(_))),
        "a taken name MUST be a Conflict"
    );
    assert!(matches!(ProjectRepository::get(&store, &project_name("nope")).await, Err(DomainError::NotFound(_))));

    for name in ["p-a", "p-b", "p-c", "p-d"] {
        ProjectRepository::create(&store, &sample_project(name, 1)).await.expect("create");
    }
    let first = ProjectRepository::list(&store, &ProjectAccess::All, page(2)).await.expect("list");
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.items[0].name, web.name, "ordered by id (creation order)");
    let second =
        ProjectRepository::list(&store, &ProjectAccess::All, PageRequest { after: first.next, limit: page(10).limit })
            .await
            .expect("list page 2");
    assert_eq!(second.items.len(), 3);
    assert_eq!(second.next, None, "no cursor after the last page");
    let only = ProjectAccess::Only([project_name("p-b"), project_name("p-x")].into());
    let visible = ProjectRepository::list(&store, &only, page(50)).await.expect("list");
    assert_eq!(visible.items.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["p-b"]);

    let mut changed = web.clone();
    changed.image = "debian:12".into();
    changed.max_concurrent_commands = 7;
    changed.max_queued_commands = Some(9);
    ProjectRepository::update(&store, &changed).await.expect("update");
    assert_eq!(
        ProjectRepository::get(&store, &web.name).await.map(|p| (
            p.image,
            p.max_concurrent_commands,
            p.max_queued_commands
        )),
        Ok(("debian:12".into(), 7, Some(9)))
    );
    let ghost = sample_project("ghost", 1);
    assert!(matches!(ProjectRepository::update(&store, &ghost).await, Err(DomainError::NotFound(_))));

    let queued =
        CommandRepository::enqueue(&store, sample_command(&web, Priority::Normal, None)).await.expect("enqueue");
    assert!(
        matches!(ProjectRepository::delete(&store, &web.name).await, Err(DomainError::Conflict(_))),
        "delete MUST be a Conflict while commands are queued"
    );
    CommandRepository::request_cancel(&store, queued.command.id, now_micros()).await.expect("cancel");
    ProjectRepository::delete(&store, &web.name).await.expect("delete once idle");
    assert!(matches!(ProjectRepository::get(&store, &web.name).await, Err(DomainError::NotFound(_))));
    assert!(matches!(ProjectRepository::delete(&store, &web.name).await, Err(DomainError::NotFound(_))));
    assert!(
        matches!(CommandRepository::get(&store, queued.command.id).await, Err(DomainError::NotFound(_))),
        "a deleted project's commands go with it"
    );
}

/// `ApiKeyRepository`: lookups by hash, revoke, rotate with a previous hash, touch, count, paging.
pub async fn api_key_repository<S: Store, F: Fn() -> Fut, Fut: Future<Output = S>>(fresh: F) {
    let store = fresh().await;
    assert_eq!(ApiKeyRepository::count(&store).await, Ok(0));
    let (mut key, secret) = sample_key(
        "ci",
        &[Scope::ProjectsRead, Scope::CommandsWrite],
        ProjectAccess::Only([project_name("web")].into()),
    );
    key.allowed_ips = CidrList::parse(&["10.0.0.0/8", "::1"]).expect("cidrs");
    key.rate_limit_rps = Some(3);
    key.expires_at = Some(now_micros() + TimeDelta::days(1));
    ApiKeyRepository::create(&store, &key).await.expect("create");
    assert_eq!(ApiKeyRepository::get(&store, key.id).await, Ok(key.clone()), "every field survives");
    assert_eq!(ApiKeyRepository::find_by_hash(&store, &secret.hash()).await, Ok(Some(key.clone())));
    let stranger = ApiKeySecret::from_random_bytes([9; 32]);
    assert_eq!(ApiKeyRepository::find_by_hash(&store, &stranger.hash()).await, Ok(None));
    assert!(matches!(ApiKeyRepository::get(&store, ApiKeyId::generate()).await, Err(DomainError::NotFound(_))));

    let new_secret = ApiKeySecret::from_random_bytes([1; 32]);
    let previous = PreviousSecret { hash: secret.hash(), valid_until: now_micros() + TimeDelta::seconds(30) };
    let rotated =
        ApiKeyRepository::rotate(&store, key.id, new_secret.hash(), &new_secret.display_prefix(), Some(previous))
            .await
            .expect("rotate");
    assert_eq!(rotated.hash, new_secret.hash());
    assert_eq!(rotated.previous, Some(previous));
    assert_eq!(
        ApiKeyRepository::find_by_hash(&store, &secret.hash()).await.map(|k| k.map(|k| k.id)),
        Ok(Some(key.id)),
        "the previous hash still finds the key"
    );
    assert_eq!(
        ApiKeyRepository::find_by_hash(&store, &new_secret.hash()).await.map(|k| k.map(|k| k.id)),
        Ok(Some(key.id))
    );

    let used = now_micros();
    ApiKeyRepository::touch(&store, key.id, used).await.expect("touch");
    ApiKeyRepository::touch(&store, ApiKeyId::generate(), used).await.expect("touching an unknown key is ignored");
    assert_eq!(ApiKeyRepository::get(&store, key.id).await.map(|k| k.last_used_at), Ok(Some(used)));

    let at = now_micros();
    let revoked = ApiKeyRepository::revoke(&store, key.id, at).await.expect("revoke");
    assert_eq!(revoked.revoked_at, Some(at));
    let again = ApiKeyRepository::revoke(&store, key.id, at + TimeDelta::seconds(5)).await.expect("revoke twice");
    assert_eq!(again.revoked_at, Some(at), "the first revocation time is kept");
    assert!(matches!(
        ApiKeyRepository::rotate(&store, key.id, stranger.hash(), "x", None).await,
        Err(DomainError::Conflict(_))
    ));
    assert!(matches!(ApiKeyRepository::revoke(&store, ApiKeyId::generate(), at).await, Err(DomainError::NotFound(_))));
    assert!(matches!(
        ApiKeyRepository::rotate(&store, ApiKeyId::generate(), stranger.hash(), "x", None).await,
        Err(DomainError::NotFound(_))
    ));

    for i in 0..3 {
        let (k, _) = sample_key(&format!("k{i}"), &[Scope::Admin], ProjectAccess::All);
        ApiKeyRepository::create(&store, &k).await.expect("create");
    }
    assert_eq!(ApiKeyRepository::count(&store).await, Ok(4));
    let first = ApiKeyRepository::list(&store, page(3)).await.expect("list");
    assert_eq!(first.items.len(), 3);
    assert_eq!(first.items[0].id, key.id, "ordered by id");
    let rest =
        ApiKeyRepository::list(&store, PageRequest { after: first.next, limit: page(3).limit }).await.expect("page 2");
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next, None);
}

fn entry(action: &str, project: Option<&str>, outcome: AuditOutcome, minutes: i64) -> AuditEntry {
    AuditEntry {
        at: fixed_start() + TimeDelta::minutes(minutes),
        actor: None,
        client_ip: Some("192.0.2.1".into()),
        action: action.into(),
        resource: "/v1/projects".into(),
        project: project.map(Into::into),
        outcome,
        detail: Some("201".into()),
        request_id: Some("req-1".into()),
        trace_id: None,
        count: 1,
    }
}

/// `AuditLog`: chained appends (also concurrent), filters, paging, scans.
pub async fn audit_log<S: Store, F: Fn() -> Fut, Fut: Future<Output = S>>(fresh: F) {
    let store = Arc::new(fresh().await);
    let actor = ApiKeyId::generate();
    let mut first = entry("projects.create", Some("web"), AuditOutcome::Success, 0);
    first.actor = Some(actor);
    let r1 = AuditLog::append(store.as_ref(), first.clone()).await.expect("append");
    assert_eq!((r1.seq, r1.prev_hash), (1, crate::audit::GENESIS_HASH));
    assert_eq!(r1.entry, first, "the entry is stored as given");
    // An aggregated record: its count is stored and read back as given.
    let aggregated = AuditEntry { count: 1234, ..entry("auth.denied", None, AuditOutcome::Denied, 1) };
    let r2 = AuditLog::append(store.as_ref(), aggregated.clone()).await.expect("append");
    assert_eq!((r2.seq, r2.prev_hash), (2, r1.hash), "each record links to the one before");

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                AuditLog::append(store.as_ref(), entry("commands.create", Some("api"), AuditOutcome::Success, 2 + i))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("concurrent append");
    }
    let all = AuditLog::scan(store.as_ref(), 0, 1000).await.expect("scan");
    assert_eq!(all.len(), 22);
    let mut verifier = ChainVerifier::default();
    assert!(all.iter().all(|r| verifier.check(r)), "concurrent appends keep one unbroken chain");
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=22).collect::<Vec<_>>());
    assert_eq!(AuditLog::scan(store.as_ref(), 20, 10).await.map(|v| v.len()), Ok(2));
    assert_eq!(all[1].entry, aggregated, "an aggregated record keeps its count");

    let by_actor = AuditFilter { actor: Some(actor), ..AuditFilter::default() };
    assert_eq!(AuditLog::list(store.as_ref(), &by_actor, page(50)).await.map(|p| p.items.len()), Ok(1));
    let denied = AuditFilter {
        outcome: Some(AuditOutcome::Denied),
        action: Some("auth.denied".into()),
        ..AuditFilter::default()
    };
    assert_eq!(AuditLog::list(store.as_ref(), &denied, page(50)).await.map(|p| p.items.len()), Ok(1));
    let window = AuditFilter {
        project: Some("api".into()),
        since: Some(fixed_start() + TimeDelta::minutes(5)),
        until: Some(fixed_start() + TimeDelta::minutes(10)),
        ..AuditFilter::default()
    };
    assert_eq!(
        AuditLog::list(store.as_ref(), &window, page(50)).await.map(|p| p.items.len()),
        Ok(5),
        "since inclusive, until exclusive"
    );
    let p1 = AuditLog::list(store.as_ref(), &AuditFilter::default(), page(10)).await.expect("list");
    let p2 =
        AuditLog::list(store.as_ref(), &AuditFilter::default(), PageRequest { after: p1.next, limit: page(10).limit })
            .await
            .expect("page 2");
    assert_eq!(p2.items.first().map(|r| r.seq), Some(11), "paged by seq");

    // Project visibility: only the listed projects, never records without a project.
    let limited = AuditFilter { visible_projects: Some(vec!["web".into()]), ..AuditFilter::default() };
    let seen = AuditLog::list(store.as_ref(), &limited, page(50)).await.expect("list");
    assert_eq!(seen.items.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1], "only web's record");
    let none = AuditFilter { visible_projects: Some(Vec::new()), ..AuditFilter::default() };
    assert_eq!(AuditLog::list(store.as_ref(), &none, page(50)).await.map(|p| p.items.len()), Ok(0));
    let crossed = AuditFilter {
        visible_projects: Some(vec!["web".into()]),
        project: Some("api".into()),
        ..AuditFilter::default()
    };
    assert_eq!(AuditLog::list(store.as_ref(), &crossed, page(50)).await.map(|p| p.items.len()), Ok(0));

    // Checkpoints: the latest record, stored once per seq, listed in order.
    let last = AuditLog::latest(store.as_ref()).await.expect("latest").expect("a record");
    assert_eq!(last.seq, 22);
    let key = crate::audit::CheckpointKey::new(&[1u8; 32]).expect("key");
    let cp5 = key.sign(5, all[4].hash, 5, fixed_start());
    let cp22 = key.sign(22, last.hash, 22, fixed_start());
    AuditLog::add_checkpoint(store.as_ref(), cp22.clone()).await.expect("checkpoint");
    AuditLog::add_checkpoint(store.as_ref(), cp5.clone()).await.expect("checkpoint");
    let mut again = cp22.clone();
    again.count = 99;
    AuditLog::add_checkpoint(store.as_ref(), again).await.expect("a second one for the same seq is ignored");
    assert_eq!(AuditLog::checkpoints(store.as_ref(), 0, 10).await, Ok(vec![cp5, cp22.clone()]));
    assert_eq!(AuditLog::checkpoints(store.as_ref(), 5, 10).await, Ok(vec![cp22]));
}

/// `RateLimitStore`: the window arithmetic, per-key isolation, windows moving on, concurrency.
pub async fn rate_limit_store<S, F, Fut>(fresh: F)
where
    S: RateLimitStore + Send + Sync + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let store = Arc::new(fresh().await);
    let policy = RateLimitPolicy { rps: 1, window_seconds: 5 };
    let t0 = fixed_start();
    for i in 0..5 {
        let d = RateLimitStore::acquire(store.as_ref(), "key-a", policy, t0).await.expect("acquire");
        assert!(d.allowed, "request {i} within the limit");
        assert_eq!(d.remaining, 4 - i);
    }
    let refused = RateLimitStore::acquire(store.as_ref(), "key-a", policy, t0).await.expect("acquire");
    assert!(!refused.allowed && refused.retry_after_seconds.is_some(), "the sixth request in 5 s is refused");
    assert!(
        RateLimitStore::acquire(store.as_ref(), "key-b", policy, t0).await.expect("acquire").allowed,
        "keys are independent"
    );
    // 2.5 s into the next window half of the previous 5 still count.
    let later = t0 + TimeDelta::milliseconds(7_500);
    let allowed: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(RateLimitStore::acquire(store.as_ref(), "key-a", policy, later).await.expect("acquire").allowed);
        }
        v
    };
    assert_eq!(allowed, vec![true, true, false, false], "previous window weighted by its overlap");
    let much_later = t0 + TimeDelta::seconds(60);
    assert_eq!(
        RateLimitStore::acquire(store.as_ref(), "key-a", policy, much_later).await.map(|d| d.remaining),
        Ok(4),
        "old windows stop counting"
    );

    let burst = RateLimitPolicy { rps: 10, window_seconds: 1 };
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { RateLimitStore::acquire(store.as_ref(), "key-c", burst, much_later).await })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        if t.await.expect("task").expect("acquire").allowed {
            granted += 1;
        }
    }
    assert_eq!(granted, 10, "concurrent requests never exceed the limit");
    rate_limit_blocks(store.as_ref(), much_later + TimeDelta::seconds(60)).await;
}

/// `RateLimitStore::take`: blocks granted up to the room left, and unused ones handed back.
async fn rate_limit_blocks<S: RateLimitStore>(store: &S, at: crate::Timestamp) {
    let policy = RateLimitPolicy { rps: 1, window_seconds: 5 };
    let take = |want, unused| RateLimitStore::take(store, "key-d", policy, at, want, unused);
    assert_eq!(take(3, None).await, Ok(WindowGrant { previous: 0, current: 0, granted: 3 }));
    assert_eq!(take(5, None).await, Ok(WindowGrant { previous: 0, current: 3, granted: 2 }), "only the room left");
    assert_eq!(take(1, None).await, Ok(WindowGrant { previous: 0, current: 5, granted: 0 }), "nothing is left");
    let acquired = RateLimitStore::acquire(store, "key-d", policy, at).await.expect("acquire");
    assert!(!acquired.allowed, "a block counts like the requests it holds");
    // At the next window's start the previous one weighs fully: only what was handed back fits.
    let next = at + TimeDelta::seconds(5);
    let start = policy.position(at).current_start;
    let unused = Some(UnusedGrant { window_start: start, count: 2 });
    let grant = RateLimitStore::take(store, "key-d", policy, next, 5, unused).await;
    assert_eq!(grant, Ok(WindowGrant { previous: 3, current: 0, granted: 2 }), "two were handed back");
}

/// Registers `worker` so that queue suites can look at capacity.
pub(super) async fn heartbeat_of<S: CommandQueue>(store: &S, worker: &WorkerId, capacity: u32) {
    CommandQueue::heartbeat(store, worker, capacity, now_micros()).await.expect("heartbeat");
}
