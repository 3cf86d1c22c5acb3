//! Rate limiting over a store every replica shares, without a round trip per request: each
//! replica takes a block of a key's current window from the shared count (one round trip) and
//! admits from it in memory until it is used up.
//!
//! Exact as an upper bound: the shared count includes every block, so all replicas together
//! never admit more than the limit. What a replica holds unused can only be refused to the
//! others until its window ends; it is then handed back with the replica's next take, so the
//! previous window's weight is what was really admitted. Blocks grow while a key's requests
//! use them up fast and never exceed a sixteenth of the key's limit, so a key whose limit is
//! under 32 requests a window is decided one request per round trip, exactly as before.
//!
//! Once half of a block is admitted, the next one is taken in the background, so that under a
//! steady load no request waits for the store: a request only waits when it finds both blocks
//! used up (or the window changed). A replica therefore holds up to one block and a half more
//! than it admitted, which the others can be refused until the window ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::TimeDelta;
use domain::ports::RateLimitStore;
use domain::rate_limit::{RateDecision, RateLimitPolicy, UnusedGrant, WindowGrant, WindowLease, WindowPosition};
use domain::{DomainError, DomainResult, Timestamp};

/// The largest block a replica takes at once.
pub const MAX_BLOCK: u64 = 256;

/// How long a take of a block (ahead, or by a request that found nothing left) may keep the
/// key's refill lock: a store that never answers (a connection lost without a reset) must not
/// leave the key's requests waiting behind it. A block the store counted but never handed over
/// only refuses more, until its window ends.
const TAKE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A block used up faster than this asks for twice as much next time.
const FAST: TimeDelta = TimeDelta::milliseconds(100);

/// A block that lasted longer than this asks for half as much next time.
const SLOW: TimeDelta = TimeDelta::seconds(1);

/// A shared `RateLimitStore` whose decisions are admitted from blocks held in this process.
pub struct LeasedWindows {
    shared: Arc<dyn RateLimitStore>,
    keys: Mutex<LeaseTable>,
}

impl std::fmt::Debug for LeasedWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedWindows").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct LeaseTable {
    by_key: HashMap<String, Arc<KeySlot>>,
    /// Keys are swept of blocks that stopped counting once the map reaches this size.
    sweep_at: usize,
}

/// One key's blocks in this process.
#[derive(Default)]
struct KeySlot {
    /// The blocks; the async lock makes one request take the next block while the others of
    /// the same key wait for it instead of each taking one.
    held: tokio::sync::Mutex<KeyLease>,
    /// Held while a block is being taken, ahead in the background or by a request that waits:
    /// a request that finds nothing to admit waits for it rather than taking a block of its own.
    /// Always taken before `held` when both are awaited.
    refill: Arc<tokio::sync::Mutex<()>>,
}

/// A block and when it was taken.
#[derive(Debug, Clone, Copy)]
struct Taken {
    lease: WindowLease,
    at: Timestamp,
}

/// One key's blocks: the one admitting and the one taken ahead, always of the same window.
#[derive(Debug, Default)]
struct KeyLease {
    current: Option<Taken>,
    ahead: Option<Taken>,
    /// The store granted nothing ahead in the current block's window: no more tries until the
    /// next block is taken the ordinary way.
    ahead_refused: bool,
}

impl KeyLease {
    /// Admits one request from the current block, moving on to the block taken ahead once the
    /// current one is used up.
    fn admit(&mut self, policy: &RateLimitPolicy, pos: WindowPosition) -> Option<RateDecision> {
        if let Some(decision) = self.current.as_mut().and_then(|taken| taken.lease.admit(policy, pos)) {
            return Some(decision);
        }
        // A block not used up belongs to a window that ended: it and the one ahead are handed
        // back together by the next take.
        if self.current.is_some_and(|taken| !taken.lease.is_used_up()) {
            return None;
        }
        let ahead = self.ahead.take()?;
        self.current = Some(ahead);
        self.current.as_mut().and_then(|taken| taken.lease.admit(policy, pos))
    }

    /// How large a block taken ahead should be, or `None` when none is due: the current block
    /// is not half used yet, one is already ahead, or blocks are a single request.
    fn ahead_want(&self, policy: &RateLimitPolicy, now: Timestamp) -> Option<u64> {
        let cap = block_cap(policy);
        let Taken { lease, at } = self.current?;
        if cap < 2 || self.ahead.is_some() || self.ahead_refused || lease.remaining() > lease.granted() / 2 {
            return None;
        }
        Some(scaled(lease.granted(), now - at, 2).clamp(1, cap))
    }

    /// How large the next block should be when a request has to wait for it: grown while
    /// blocks go fast, shrunk while they last.
    fn next_want(&self, policy: &RateLimitPolicy, now: Timestamp) -> u64 {
        let want = match self.current {
            Some(Taken { lease, at }) if lease.is_used_up() => scaled(lease.granted(), now - at, 1),
            // The window ended with some of the block unused: it was more than enough.
            Some(Taken { lease, .. }) => lease.granted() / 2,
            None => 1,
        };
        want.clamp(1, block_cap(policy))
    }

    /// Gives up both blocks, returning what to hand back of them.
    fn give_up(&mut self, pos: WindowPosition) -> Option<UnusedGrant> {
        let blocks = [self.current.take(), self.ahead.take()];
        self.ahead_refused = false;
        // Both blocks belong to one window (a block taken ahead is only kept in the current
        // block's window), so what they leave unused adds up.
        blocks
            .into_iter()
            .flatten()
            .filter_map(|taken| taken.lease.unused_at(pos))
            .reduce(|a, b| UnusedGrant { count: a.count + b.count, ..a })
    }
}

/// The largest block a key's policy allows.
fn block_cap(policy: &RateLimitPolicy) -> u64 {
    (policy.limit() / 16).clamp(1, MAX_BLOCK)
}

/// `granted` scaled by how fast `1/portion` of it went: doubled when faster than [`FAST`],
/// halved when slower than [`SLOW`] (each divided by `portion`).
fn scaled(granted: u64, lasted: TimeDelta, portion: i32) -> u64 {
    if lasted < FAST / portion {
        granted.saturating_mul(2)
    } else if lasted > SLOW / portion {
        granted / 2
    } else {
        granted
    }
}

impl LeasedWindows {
    /// Admits from blocks of `shared`'s windows.
    pub fn new(shared: Arc<dyn RateLimitStore>) -> Self {
        Self { shared, keys: Mutex::new(LeaseTable::default()) }
    }

    /// The slot of `key`, created when missing.
    fn slot(&self, key: &str, policy: &RateLimitPolicy, now: Timestamp) -> Arc<KeySlot> {
        let mut table = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if table.by_key.len() >= table.sweep_at {
            // A block taken two windows ago neither admits nor has anything to hand back.
            let stale_before = now - TimeDelta::seconds(2 * i64::from(policy.window_seconds.max(1)));
            table.by_key.retain(|_, slot| {
                slot.held.try_lock().map_or(true, |held| held.current.is_some_and(|taken| taken.at >= stale_before))
            });
            // Amortized: the next sweep waits until the map has doubled (or reaches 1024 keys).
            table.sweep_at = (table.by_key.len() * 2).max(1024);
        }
        table.by_key.entry(key.to_owned()).or_default().clone()
    }

    /// Takes the next block of `key` in the background when the current one is half used, so
    /// that the request that uses up the current one does not wait for the store.
    fn take_ahead(&self, slot: &Arc<KeySlot>, held: &KeyLease, key: &str, policy: RateLimitPolicy, now: Timestamp) {
        let Some(want) = held.ahead_want(&policy, now) else { return };
        let Ok(refilling) = Arc::clone(&slot.refill).try_lock_owned() else { return };
        let (shared, slot, key) = (Arc::clone(&self.shared), Arc::clone(slot), key.to_owned());
        // Spawned, so that a client hanging up cannot drop a block the store already counted.
        tokio::spawn(async move {
            let _refilling = refilling;
            let taken = tokio::time::timeout(TAKE_LIMIT, shared.take(&key, policy, now, want, None)).await;
            let Ok(Ok(grant)) = taken else {
                // The request that finds nothing left takes (and reports the store's error) itself.
                return;
            };
            let pos = policy.position(now);
            let mut held = slot.held.lock().await;
            let same_window = held.current.is_some_and(|taken| taken.lease.window_start() == pos.current_start);
            if grant.granted == 0 {
                held.ahead_refused = true;
            } else if same_window {
                held.ahead = Some(Taken { lease: WindowLease::new(pos, grant), at: now });
            }
            // Otherwise the window moved on while the block was taken: it stays counted and
            // unused, which can only refuse more, and only in a window that is ending.
        });
    }
}

#[async_trait]
impl RateLimitStore for LeasedWindows {
    async fn take(
        &self,
        key: &str,
        policy: RateLimitPolicy,
        now: Timestamp,
        want: u64,
        unused: Option<UnusedGrant>,
    ) -> DomainResult<WindowGrant> {
        self.shared.take(key, policy, now, want, unused).await
    }

    async fn acquire(&self, key: &str, policy: RateLimitPolicy, now: Timestamp) -> DomainResult<RateDecision> {
        let slot = self.slot(key, &policy, now);
        let pos = policy.position(now);
        let mut held = slot.held.lock().await;
        if let Some(decision) = held.admit(&policy, pos) {
            self.take_ahead(&slot, &held, key, policy, now);
            return Ok(decision);
        }
        let _refilling = match slot.refill.try_lock() {
            Ok(refilling) => refilling,
            Err(_) => {
                // A block is on its way: wait for it, then look once more. The refill lock is
                // kept while looking, so that the requests waiting take turns rather than each
                // handing the lock to the next and none ever finding it free (a livelock).
                drop(held);
                let refilling = slot.refill.lock().await;
                held = slot.held.lock().await;
                if let Some(decision) = held.admit(&policy, pos) {
                    return Ok(decision);
                }
                refilling
            }
        };
        self.take_waiting(&mut held, key, policy, now).await
    }
}

impl LeasedWindows {
    /// Takes the next block while the request waits, handing back what the old ones left.
    async fn take_waiting(
        &self,
        held: &mut KeyLease,
        key: &str,
        policy: RateLimitPolicy,
        now: Timestamp,
    ) -> DomainResult<RateDecision> {
        let pos = policy.position(now);
        let want = held.next_want(&policy, now);
        // The old blocks are given up before the round trip: if the request is dropped after
        // the store handed them back (a client hanging up) or the call fails, they must not be
        // handed back a second time, which would let the key past its limit. Losing them only
        // refuses more, until the window ends.
        let unused = held.give_up(pos);
        let grant = tokio::time::timeout(TAKE_LIMIT, self.shared.take(key, policy, now, want, unused)).await.map_err(
            |_| DomainError::Unavailable(format!("the rate-limit store did not answer within {TAKE_LIMIT:?}")),
        )??;
        let mut lease = WindowLease::new(pos, grant);
        let decision = lease
            .admit(&policy, pos)
            .unwrap_or_else(|| RateDecision::refused(&policy, grant.previous, grant.current, pos));
        held.current = Some(Taken { lease, at: now });
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use domain::testing::{fixed_start, MemoryStore};

    fn over(shared: &Arc<MemoryStore>) -> LeasedWindows {
        LeasedWindows::new(shared.clone())
    }

    #[tokio::test]
    async fn leased_windows_pass_the_rate_limit_store_contract() {
        domain::testing::contracts::rate_limit_store(|| async { over(&Arc::new(MemoryStore::new())) }).await;
    }

    /// Admits `n` requests of `key` at `at` on `replica`, returning how many were allowed.
    async fn allowed(replica: &LeasedWindows, key: &str, policy: RateLimitPolicy, at: Timestamp, n: u32) -> u32 {
        let mut allowed = 0;
        for _ in 0..n {
            if replica.acquire(key, policy, at).await.expect("acquire").allowed {
                allowed += 1;
            }
        }
        allowed
    }

    #[tokio::test]
    async fn one_replica_admits_exactly_the_limit_and_its_headers_count_down() {
        let shared = Arc::new(MemoryStore::new());
        let replica = over(&shared);
        let policy = RateLimitPolicy { rps: 100, window_seconds: 10 };
        let t0 = fixed_start();
        let mut remaining = Vec::new();
        for n in 0..1000 {
            // Requests 1 ms apart, so blocks grow.
            let d = replica.acquire("k", policy, t0 + TimeDelta::microseconds(n * 10)).await.expect("acquire");
            assert!(d.allowed, "request {n} is within the limit");
            remaining.push(d.remaining);
        }
        assert_eq!(remaining, (0..1000).rev().collect::<Vec<u64>>(), "RateLimit-Remaining counts down by one");
        let refused = replica.acquire("k", policy, t0 + TimeDelta::milliseconds(20)).await.expect("acquire");
        assert!(!refused.allowed && refused.retry_after_seconds.is_some(), "request 1001 is refused");
    }

    #[tokio::test]
    async fn replicas_together_never_exceed_the_limit() {
        let shared = Arc::new(MemoryStore::new());
        let replicas = [over(&shared), over(&shared), over(&shared)];
        let policy = RateLimitPolicy { rps: 100, window_seconds: 10 };
        let t0 = fixed_start();
        let mut total = 0;
        for round in 0..600 {
            for replica in &replicas {
                total += allowed(replica, "k", policy, t0 + TimeDelta::milliseconds(round), 1).await;
            }
        }
        assert!(total <= 1000, "{total} admitted across replicas, the limit is 1000");
        assert!(total >= 1000 - 3 * (1000 / 16), "{total}: at most each replica's last block goes unused");
    }

    #[tokio::test]
    async fn concurrent_requests_of_one_replica_never_exceed_the_limit() {
        let replica = Arc::new(over(&Arc::new(MemoryStore::new())));
        let policy = RateLimitPolicy { rps: 40, window_seconds: 1 };
        let t0 = fixed_start();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let replica = replica.clone();
                tokio::spawn(async move { replica.acquire("k", policy, t0).await.expect("acquire").allowed })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += u32::from(task.await.expect("task"));
        }
        assert_eq!(admitted, 40);
    }

    #[tokio::test]
    async fn what_a_replica_did_not_use_is_handed_back_when_the_window_ends() {
        let shared = Arc::new(MemoryStore::new());
        let replica = over(&shared);
        let policy = RateLimitPolicy { rps: 100, window_seconds: 10 };
        let t0 = fixed_start();
        // A fast burst grows the block, then the key goes quiet with most of it unused.
        assert_eq!(allowed(&replica, "k", policy, t0, 100).await, 100);
        let next_window = t0 + TimeDelta::seconds(10);
        replica.acquire("k", policy, next_window).await.expect("acquire");
        // At the new window's start the previous one weighs fully: what it really admitted.
        let grant = shared.take("k", policy, next_window, 0, None).await.expect("take");
        assert_eq!(grant.previous, 100, "the unused part of the block was handed back");
    }

    /// Lets blocks being taken ahead land.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// What the next take of a `Faulty` store does wrong.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        /// Takes, then never answers: as when a client hangs up after the database committed.
        HangAfterTaking,
        /// Fails without taking anything: a database that is away.
        Fail,
    }

    /// A store whose next take goes wrong the way it is told, and whose every take needs
    /// `delay` to answer (like a database a round trip away).
    struct Faulty {
        inner: Arc<MemoryStore>,
        next: std::sync::Mutex<Option<Fault>>,
        delay: Duration,
    }

    impl Faulty {
        fn over(inner: &Arc<MemoryStore>) -> Arc<Self> {
            Self::distant(inner, Duration::ZERO)
        }

        fn distant(inner: &Arc<MemoryStore>, delay: Duration) -> Arc<Self> {
            Arc::new(Self { inner: inner.clone(), next: std::sync::Mutex::new(None), delay })
        }

        fn next(&self, fault: Fault) {
            *self.next.lock().expect("lock") = Some(fault);
        }
    }

    #[async_trait]
    impl RateLimitStore for Faulty {
        async fn take(
            &self,
            key: &str,
            policy: RateLimitPolicy,
            now: Timestamp,
            want: u64,
            unused: Option<UnusedGrant>,
        ) -> DomainResult<WindowGrant> {
            let fault = self.next.lock().expect("lock").take();
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            if let Some(Fault::Fail) = fault {
                return Err(domain::DomainError::Unavailable("database restarting".into()));
            }
            let grant = self.inner.take(key, policy, now, want, unused).await;
            if let Some(Fault::HangAfterTaking) = fault {
                std::future::pending::<()>().await;
            }
            grant
        }
    }

    #[tokio::test]
    async fn a_request_dropped_after_its_take_never_hands_a_block_back_twice() {
        let shared = Arc::new(MemoryStore::new());
        let store = Faulty::over(&shared);
        let replica = LeasedWindows::new(store.clone());
        let policy = RateLimitPolicy { rps: 100, window_seconds: 10 };
        let t0 = fixed_start();
        assert_eq!(allowed(&replica, "k", policy, t0, 100).await, 100);
        settle().await;
        let next_window = t0 + TimeDelta::seconds(10);
        store.next(Fault::HangAfterTaking);
        let hung = tokio::time::timeout(Duration::from_millis(50), replica.acquire("k", policy, next_window)).await;
        assert!(hung.is_err(), "the first take of the window hangs after handing the block back");
        replica.acquire("k", policy, next_window).await.expect("acquire");
        let previous = shared.take("k", policy, next_window, 0, None).await.expect("take").previous;
        assert_eq!(previous, 100, "handed back once: the previous window weighs what it admitted");
    }

    #[tokio::test]
    async fn a_store_that_fails_admits_nothing_and_the_next_request_takes_again() {
        let shared = Arc::new(MemoryStore::new());
        let store = Faulty::over(&shared);
        let replica = LeasedWindows::new(store.clone());
        let policy = RateLimitPolicy { rps: 100, window_seconds: 10 };
        let t0 = fixed_start();
        store.next(Fault::Fail);
        assert!(replica.acquire("k", policy, t0).await.is_err(), "no decision without the store");
        assert!(replica.acquire("k", policy, t0).await.expect("acquire").allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_steady_load_requests_stop_waiting_for_the_store() {
        let shared = Arc::new(MemoryStore::new());
        let replica = LeasedWindows::new(Faulty::distant(&shared, Duration::from_millis(5)));
        let policy = RateLimitPolicy { rps: 1000, window_seconds: 10 };
        let t0 = fixed_start();
        let mut waited = Vec::new();
        for n in 0..1000 {
            let started = tokio::time::Instant::now();
            let d = replica.acquire("k", policy, t0 + TimeDelta::milliseconds(n)).await.expect("acquire");
            assert!(d.allowed);
            if started.elapsed() >= Duration::from_millis(1) {
                waited.push(n);
            }
            // One request a millisecond.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(waited.len() < 10 && waited.iter().all(|&n| n < 100), "requests that waited: {waited:?}");
        let counted = shared.take("k", policy, t0 + TimeDelta::seconds(1), 0, None).await.expect("take").current;
        assert!((1000..=1000 + 3 * MAX_BLOCK / 2).contains(&counted), "{counted} counted for 1000 admitted");
    }

    /// Runs 200 requests of one key within its limit, the block taken ahead during request 50
    /// meeting `fault`: every one of them must be decided, and allowed, within `2 * TAKE_LIMIT`.
    async fn every_request_is_decided_when_the_block_taken_ahead_meets(fault: Fault) {
        let shared = Arc::new(MemoryStore::new());
        let store = Faulty::over(&shared);
        let replica = LeasedWindows::new(store.clone());
        let policy = RateLimitPolicy { rps: 100, window_seconds: 10 };
        let t0 = fixed_start();
        for n in 0..200 {
            if n == 50 {
                store.next(fault);
            }
            let decided = tokio::time::timeout(2 * TAKE_LIMIT, replica.acquire("k", policy, t0)).await;
            assert!(decided.expect("decided, not stuck behind the take").expect("acquire").allowed, "request {n}");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_taken_ahead_that_fails_leaves_the_next_request_to_take_its_own() {
        every_request_is_decided_when_the_block_taken_ahead_meets(Fault::Fail).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_taken_ahead_that_never_answers_does_not_hold_the_key_up() {
        every_request_is_decided_when_the_block_taken_ahead_meets(Fault::HangAfterTaking).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_take_that_never_answers_is_an_unavailable_store_and_does_not_hold_the_key_up() {
        let shared = Arc::new(MemoryStore::new());
        let store = Faulty::over(&shared);
        let replica = LeasedWindows::new(store.clone());
        let policy = RateLimitPolicy { rps: 100, window_seconds: 10 };
        let t0 = fixed_start();
        store.next(Fault::HangAfterTaking);
        let first = tokio::time::timeout(2 * TAKE_LIMIT, replica.acquire("k", policy, t0)).await;
        let first = first.expect("decided, not stuck on the store");
        assert!(matches!(first, Err(DomainError::Unavailable(_))), "{first:?}");
        let next = tokio::time::timeout(2 * TAKE_LIMIT, replica.acquire("k", policy, t0)).await;
        assert!(next.expect("decided").expect("acquire").allowed, "the next request takes its own block");
    }

    #[tokio::test]
    async fn blocks_grow_while_used_fast_and_stay_within_a_sixteenth_of_the_limit() {
        let policy = RateLimitPolicy { rps: 1000, window_seconds: 10 };
        let t0 = fixed_start();
        let mut held = KeyLease::default();
        assert_eq!(held.next_want(&policy, t0), 1);
        let pos = policy.position(t0);
        let mut want = 1;
        for _ in 0..12 {
            let lease = WindowLease::new(pos, WindowGrant { previous: 0, current: 0, granted: want });
            held.current = Some(Taken { lease, at: t0 });
            while held.admit(&policy, pos).is_some() {}
            want = held.next_want(&policy, t0 + TimeDelta::milliseconds(1));
        }
        assert_eq!(want, MAX_BLOCK.min(policy.limit() / 16));
        assert_eq!(held.next_want(&policy, t0 + TimeDelta::seconds(5)), want / 2, "a block that lasted shrinks");
    }
}
