//! Rate-limit windows in this process's memory, for a store no other process shares.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use domain::ports::RateLimitStore;
use domain::rate_limit::{RateLimitPolicy, UnusedGrant, WindowGrant};
use domain::{DomainResult, Timestamp};

/// The sliding windows held in this process: for a store only one process uses (SQLite), where
/// a window in the database would cost a write transaction per request on its one writer.
/// Same arithmetic (`RateLimitPolicy::decide`), same answers and headers as a shared store.
#[derive(Debug, Default)]
pub struct LocalWindows {
    windows: Mutex<Windows>,
}

#[derive(Debug, Default)]
struct Windows {
    /// Per key, the counts of its two latest fixed windows, by window start.
    by_key: HashMap<String, [(i64, u64); 2]>,
    /// Keys are swept of windows that stopped counting once the map reaches this size.
    sweep_at: usize,
}

impl Windows {
    fn sweep(&mut self, oldest_counting: i64) {
        self.by_key.retain(|_, windows| windows.iter().any(|(start, _)| *start >= oldest_counting));
        // Amortized: the next sweep waits until the map has doubled (or reaches 1024 keys).
        self.sweep_at = (self.by_key.len() * 2).max(1024);
    }
}

#[async_trait]
impl RateLimitStore for LocalWindows {
    async fn take(
        &self,
        key: &str,
        policy: RateLimitPolicy,
        now: Timestamp,
        want: u64,
        unused: Option<UnusedGrant>,
    ) -> DomainResult<WindowGrant> {
        let pos = policy.position(now);
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.by_key.len() >= windows.sweep_at {
            windows.sweep(pos.previous_start);
        }
        let slots = windows.by_key.entry(key.to_owned()).or_insert([(i64::MIN, 0); 2]);
        if let Some(unused) = unused {
            if let Some((_, n)) = slots.iter_mut().find(|(s, _)| *s == unused.window_start) {
                *n = n.saturating_sub(unused.count);
            }
        }
        let count_at = |start: i64| slots.iter().find(|(s, _)| *s == start).map_or(0, |(_, n)| *n);
        let (previous, current) = (count_at(pos.previous_start), count_at(pos.current_start));
        let granted = policy.room(previous, current, pos, want);
        if granted > 0 {
            match slots.iter_mut().find(|(s, _)| *s == pos.current_start) {
                Some((_, n)) => *n += granted,
                None => {
                    // The older slot is the one to replace: the other may be the previous window.
                    let oldest = if slots[0].0 <= slots[1].0 { 0 } else { 1 };
                    slots[oldest] = (pos.current_start, granted);
                }
            }
        }
        Ok(WindowGrant { previous, current, granted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_windows_pass_the_rate_limit_store_contract() {
        domain::testing::contracts::rate_limit_store(|| async { LocalWindows::default() }).await;
    }

    #[tokio::test]
    async fn keys_whose_windows_stopped_counting_are_swept() {
        let windows = LocalWindows::default();
        let policy = RateLimitPolicy { rps: 10, window_seconds: 1 };
        let t0 = domain::testing::fixed_start();
        for n in 0..1500 {
            windows.acquire(&format!("early:{n}"), policy, t0).await.expect("acquire");
        }
        // Growing past the next sweep point drops the keys whose windows stopped counting.
        let later = t0 + chrono::TimeDelta::seconds(10);
        for n in 0..600 {
            windows.acquire(&format!("late:{n}"), policy, later).await.expect("acquire");
        }
        let kept = windows.windows.lock().expect("lock").by_key.len();
        assert!(kept <= 600, "{kept} keys kept: the 1500 early ones should be gone");
    }
}
