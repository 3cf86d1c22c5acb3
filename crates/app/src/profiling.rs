//! CPU profiles of this process in pprof's protobuf format (`go tool pprof` reads them).
//!
//! The sampling timer is process-wide, so there is one profiler per process: a second request
//! while a profile is being taken is refused rather than queued.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pprof::protos::Message;

/// Shortest profile, in seconds.
pub const MIN_SECONDS: u64 = 1;
/// Longest profile, in seconds: longer ones would hold a request (and the profiler) for too long.
pub const MAX_SECONDS: u64 = 60;
/// Length of a profile when the request does not say.
pub const DEFAULT_SECONDS: u64 = 30;
/// Samples per second: Go's default, and not a multiple of common timer ticks.
const FREQUENCY_HZ: i32 = 99;
/// Frames of the signal machinery itself, which say nothing about the service.
const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

static BUSY: AtomicBool = AtomicBool::new(false);

/// Why no profile was taken.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Another profile is being taken in this process.
    #[error("a CPU profile is already being taken; try again when it is done")]
    Busy,
    /// The profiler failed (the signal timer, symbolization, encoding).
    #[error("profiling failed: {0}")]
    Failed(String),
}

/// Releases the profiler when the profile is done or its request is dropped.
struct Slot;

impl Slot {
    fn take() -> Result<Self, ProfileError> {
        BUSY.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| Slot)
            .map_err(|_| ProfileError::Busy)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

/// Samples every thread's stack for `duration` and returns the profile, protobuf-encoded.
pub async fn cpu_profile(duration: Duration) -> Result<Vec<u8>, ProfileError> {
    let slot = Slot::take()?;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        .blocklist(&BLOCKLIST)
        .build()
        .map_err(|e| ProfileError::Failed(e.to_string()))?;
    tokio::time::sleep(duration).await;
    // Symbolizing thousands of stacks is CPU work: it runs off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let profile = guard.report().build().and_then(|report| report.pprof());
        drop(guard);
        drop(slot);
        profile.map(|p| p.encode_to_vec()).map_err(|e| ProfileError::Failed(e.to_string()))
    })
    .await
    .map_err(|e| ProfileError::Failed(e.to_string()))??;
    metrics::counter!(services::metrics::CPU_PROFILES_TOTAL).increment(1);
    Ok(encoded)
}

/// The profile length of `?seconds=`: whole seconds in `MIN_SECONDS..=MAX_SECONDS`.
pub fn parse_seconds(raw: Option<&str>) -> Option<Duration> {
    match raw {
        None => Some(Duration::from_secs(DEFAULT_SECONDS)),
        Some(s) => s.parse::<u64>().ok().filter(|n| (MIN_SECONDS..=MAX_SECONDS).contains(n)).map(Duration::from_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_whole_and_bounded() {
        assert_eq!(parse_seconds(None), Some(Duration::from_secs(30)));
        assert_eq!(parse_seconds(Some("1")), Some(Duration::from_secs(1)));
        assert_eq!(parse_seconds(Some("60")), Some(Duration::from_secs(60)));
        for bad in ["0", "61", "-1", "1.5", "", "abc", "99999999999999999999"] {
            assert_eq!(parse_seconds(Some(bad)), None, "{bad}");
        }
    }
}
