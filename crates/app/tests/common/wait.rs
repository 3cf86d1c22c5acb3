//! Bounded waits for a condition: a test waits for what it expects to happen, never for a
//! fixed time that is too long on a quiet machine and too short on a loaded one.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is looked at: short next to every wait, long enough not to load the
/// service under test with the looking.
const EVERY: Duration = Duration::from_millis(25);

/// Polls `probe` until it yields a value or `limit` passes; `None` when it never did.
pub async fn poll<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Polls `probe` until it yields a value, which it returns; panics naming `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(limit, probe).await.unwrap_or_else(|| panic!("{what}: not within {limit:?}"))
}

/// Polls `condition` until it holds; panics naming `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, limit, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await;
}
