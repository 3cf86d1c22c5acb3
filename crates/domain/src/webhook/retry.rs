//! When to try a failed delivery again, when to give up, and when to disable an endpoint.

use std::time::Duration;

use chrono::TimeDelta;

use super::model::NextStep;
use super::ports::{SendErrorKind, SendOutcome};
use crate::Timestamp;

/// The delays between attempts. The first attempt is always immediate; `retries[i]` is the
/// wait after the `(i + 1)`-th failed attempt, so a delivery gets `retries.len() + 1` attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    retries: Vec<Duration>,
}

impl RetrySchedule {
    /// The schedule of DESIGN.md §3: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub fn standard() -> Self {
        const MIN: u64 = 60;
        const HOUR: u64 = 3600;
        Self::new([5, 5 * MIN, 30 * MIN, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR].map(Duration::from_secs).to_vec())
    }

    /// A custom schedule (tests shrink it to milliseconds).
    pub fn new(retries: Vec<Duration>) -> Self {
        Self { retries }
    }

    /// How many attempts a delivery gets in all.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.retries.len()).unwrap_or(u32::MAX - 1) + 1
    }

    /// The wait after `attempts_made` failed attempts; `None` when the schedule is exhausted.
    pub fn delay_after(&self, attempts_made: u32) -> Option<Duration> {
        let index = usize::try_from(attempts_made.checked_sub(1)?).ok()?;
        self.retries.get(index).copied()
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::standard()
    }
}

/// What an attempt's outcome means for the delivery and its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptClass {
    /// A 2xx answer.
    Delivered,
    /// `410 Gone`: the receiver says the endpoint is gone for good.
    Gone,
    /// Anything else. `slow_down` after a timeout or a `429`: wait at least the floor.
    Failed {
        /// The receiver is overloaded or slow.
        slow_down: bool,
    },
}

impl AttemptClass {
    /// Whether the endpoint answered well (for breakers and `failing_since`).
    pub const fn is_success(self) -> bool {
        matches!(self, Self::Delivered)
    }
}

/// Classifies a send outcome: 2xx delivered; 410 gone; everything else (3xx included, since
/// redirects are not followed) failed.
pub fn classify(outcome: &SendOutcome) -> AttemptClass {
    match outcome.status {
        Some(code) if (200..300).contains(&code) => AttemptClass::Delivered,
        Some(410) => AttemptClass::Gone,
        Some(429) => AttemptClass::Failed { slow_down: true },
        Some(_) => AttemptClass::Failed { slow_down: false },
        None => {
            AttemptClass::Failed { slow_down: outcome.error.as_ref().is_some_and(|e| e.kind == SendErrorKind::Timeout) }
        }
    }
}

/// The retry and disable policy of the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delays between attempts.
    pub schedule: RetrySchedule,
    /// Relative jitter applied to every delay (0.2 = ±20 %).
    pub jitter: f64,
    /// Shortest wait after a timeout or a `429` (60 s).
    pub slow_down_floor: Duration,
    /// Longest `Retry-After` honoured; longer requests are capped to it.
    pub max_retry_after: Duration,
    /// An endpoint failing without a single success for this long is disabled (5 days).
    pub disable_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            schedule: RetrySchedule::standard(),
            jitter: 0.2,
            slow_down_floor: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(24 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// What follows an attempt of class `class`, the `attempts_made`-th of its delivery, made
    /// at `now`. `random` in `[0, 1)` picks the jitter (injected so tests are exact).
    pub fn next_step(
        &self,
        class: AttemptClass,
        attempts_made: u32,
        retry_after: Option<Duration>,
        now: Timestamp,
        random: f64,
    ) -> NextStep {
        let slow_down = match class {
            AttemptClass::Delivered => return NextStep::Succeeded,
            AttemptClass::Gone => return NextStep::Dead,
            AttemptClass::Failed { slow_down } => slow_down,
        };
        let Some(base) = self.schedule.delay_after(attempts_made) else { return NextStep::Failed };
        let factor = 1.0 + self.jitter.clamp(0.0, 1.0) * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        let mut delay = base.mul_f64(factor);
        if slow_down {
            delay = delay.max(self.slow_down_floor);
        }
        if let Some(asked) = retry_after {
            delay = delay.max(asked.min(self.max_retry_after));
        }
        NextStep::Retry { at: now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX) }
    }

    /// Whether an endpoint that has failed continuously since `failing_since` must be disabled at `now`.
    pub fn should_disable(&self, failing_since: Option<Timestamp>, now: Timestamp) -> bool {
        let limit = TimeDelta::from_std(self.disable_after).unwrap_or(TimeDelta::MAX);
        failing_since.is_some_and(|since| now - since >= limit)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::webhook::ports::SendError;
    use proptest::prelude::*;

    fn at() -> Timestamp {
        chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn answer(status: u16) -> SendOutcome {
        SendOutcome { status: Some(status), ..SendOutcome::default() }
    }

    fn failed(kind: SendErrorKind) -> SendOutcome {
        SendOutcome { error: Some(SendError { kind, message: "x".into() }), ..SendOutcome::default() }
    }

    fn wait(step: NextStep) -> Duration {
        match step {
            NextStep::Retry { at: when } => (when - at()).to_std().unwrap(),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn the_standard_schedule_has_eight_attempts() {
        let s = RetrySchedule::standard();
        assert_eq!(s.max_attempts(), 8);
        assert_eq!(s.delay_after(0), None, "the first attempt is immediate");
        assert_eq!(s.delay_after(1), Some(Duration::from_secs(5)));
        assert_eq!(s.delay_after(2), Some(Duration::from_secs(300)));
        assert_eq!(s.delay_after(7), Some(Duration::from_secs(36_000)));
        assert_eq!(s.delay_after(8), None);
    }

    #[test]
    fn outcomes_are_classified() {
        assert_eq!(classify(&answer(204)), AttemptClass::Delivered);
        assert_eq!(classify(&answer(410)), AttemptClass::Gone);
        assert_eq!(classify(&answer(429)), AttemptClass::Failed { slow_down: true });
        assert_eq!(classify(&answer(302)), AttemptClass::Failed { slow_down: false }, "redirects are failures");
        assert_eq!(classify(&answer(500)), AttemptClass::Failed { slow_down: false });
        assert_eq!(classify(&failed(SendErrorKind::Timeout)), AttemptClass::Failed { slow_down: true });
        assert_eq!(classify(&failed(SendErrorKind::Connect)), AttemptClass::Failed { slow_down: false });
    }

    #[test]
    fn jitter_spans_twenty_percent_each_way() {
        let p = RetryPolicy::default();
        let fail = AttemptClass::Failed { slow_down: false };
        assert_eq!(wait(p.next_step(fail, 2, None, at(), 0.0)), Duration::from_secs(240));
        assert_eq!(wait(p.next_step(fail, 2, None, at(), 0.5)), Duration::from_secs(300));
        assert!(wait(p.next_step(fail, 2, None, at(), 0.999_999)) < Duration::from_secs(360));
    }

    #[test]
    fn timeouts_and_429_wait_at_least_a_minute() {
        let p = RetryPolicy::default();
        let slow = AttemptClass::Failed { slow_down: true };
        assert_eq!(wait(p.next_step(slow, 1, None, at(), 0.5)), Duration::from_secs(60));
        assert_eq!(wait(p.next_step(slow, 2, None, at(), 0.5)), Duration::from_secs(300), "longer delays stand");
    }

    #[test]
    fn retry_after_is_honoured_up_to_a_cap() {
        let p = RetryPolicy::default();
        let fail = AttemptClass::Failed { slow_down: false };
        assert_eq!(wait(p.next_step(fail, 1, Some(Duration::from_secs(120)), at(), 0.5)), Duration::from_secs(120));
        assert_eq!(wait(p.next_step(fail, 2, Some(Duration::from_secs(1)), at(), 0.5)), Duration::from_secs(300));
        let huge = Some(Duration::from_secs(10 * 24 * 3600));
        assert_eq!(wait(p.next_step(fail, 1, huge, at(), 0.5)), p.max_retry_after);
    }

    #[test]
    fn success_gone_and_exhaustion_end_the_delivery() {
        let p = RetryPolicy::default();
        assert_eq!(p.next_step(AttemptClass::Delivered, 3, None, at(), 0.5), NextStep::Succeeded);
        assert_eq!(p.next_step(AttemptClass::Gone, 1, None, at(), 0.5), NextStep::Dead);
        assert_eq!(p.next_step(AttemptClass::Failed { slow_down: false }, 8, None, at(), 0.5), NextStep::Failed);
    }

    #[test]
    fn endpoints_are_disabled_after_days_of_failure() {
        let p = RetryPolicy::default();
        assert!(!p.should_disable(None, at()));
        assert!(!p.should_disable(Some(at() - TimeDelta::days(4)), at()));
        assert!(p.should_disable(Some(at() - TimeDelta::days(5)), at()));
    }

    proptest! {
        #[test]
        fn every_retry_stays_within_the_jitter_band(attempt in 1u32..8, random in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let base = p.schedule.delay_after(attempt).unwrap();
            let got = wait(p.next_step(AttemptClass::Failed { slow_down: false }, attempt, None, at(), random));
            prop_assert!(got >= base.mul_f64(0.8) && got <= base.mul_f64(1.2));
        }

        #[test]
        fn slow_downs_never_retry_sooner_than_the_floor(attempt in 1u32..8, random in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let got = wait(p.next_step(AttemptClass::Failed { slow_down: true }, attempt, None, at(), random));
            prop_assert!(got >= p.slow_down_floor);
        }
    }
}
