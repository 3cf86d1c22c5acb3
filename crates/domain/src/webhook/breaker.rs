//! A per-endpoint circuit breaker: closed while the failure rate over a sliding window stays
//! under the threshold, open (no sends) for a while once it does not, then half-open, where a
//! few probes decide whether it closes again or reopens.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::TimeDelta;

use crate::Timestamp;

/// Most outcomes one breaker remembers; older ones drop out even inside the window.
const MAX_SAMPLES: usize = 1024;

/// How a breaker decides.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// The sliding window the failure rate is measured over.
    pub window: Duration,
    /// Fewest outcomes in the window before the rate counts.
    pub min_calls: u32,
    /// Failure rate (0..=1) at or above which the breaker opens.
    pub failure_rate: f64,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Probes let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            min_calls: 10,
            failure_rate: 0.5,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Sends go through; outcomes are counted.
    Closed,
    /// No sends until `until`.
    Open {
        /// When probing may start.
        until: Timestamp,
    },
    /// Up to `half_open_probes` sends go through to test the endpoint.
    HalfOpen {
        /// Probes sent and not yet reported.
        in_flight: u32,
        /// Probes that succeeded.
        succeeded: u32,
    },
}

/// One endpoint's breaker. Not shared between replicas: each replica protects its own sends.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    samples: VecDeque<(Timestamp, bool)>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, state: BreakerState::Closed, samples: VecDeque::new() }
    }

    /// The current state (an open breaker whose time ran out still reads `Open` until asked).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to send one request at `now`; `true` lets it through (and, half-open, counts it as a
    /// probe in flight that `record` must settle).
    pub fn try_acquire(&mut self, now: Timestamp) -> bool {
        if let BreakerState::Open { until } = self.state {
            if now < until {
                return false;
            }
            self.state = BreakerState::HalfOpen { in_flight: 0, succeeded: 0 };
        }
        match &mut self.state {
            BreakerState::Closed => true,
            BreakerState::HalfOpen { in_flight, succeeded } => {
                if *in_flight + *succeeded < self.config.half_open_probes {
                    *in_flight += 1;
                    true
                } else {
                    false
                }
            }
            BreakerState::Open { .. } => false,
        }
    }

    /// When a refused request may be tried again at the earliest (for rescheduling).
    pub fn retry_at(&self, now: Timestamp) -> Timestamp {
        match self.state {
            BreakerState::Open { until } => until.max(now),
            _ => now,
        }
    }

    /// Records the outcome of a request `try_acquire` let through.
    pub fn record(&mut self, now: Timestamp, success: bool) {
        match &mut self.state {
            BreakerState::Closed => {
                self.samples.push_back((now, success));
                self.forget_before(now);
                if self.rate_exceeded() {
                    self.open(now);
                }
            }
            BreakerState::HalfOpen { in_flight, succeeded } => {
                *in_flight = in_flight.saturating_sub(1);
                if !success {
                    self.open(now);
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.config.half_open_probes {
                        self.state = BreakerState::Closed;
                        self.samples.clear();
                    }
                }
            }
            // Late answers to requests sent before it opened change nothing.
            BreakerState::Open { .. } => {}
        }
    }

    fn open(&mut self, now: Timestamp) {
        let open_for = TimeDelta::from_std(self.config.open_for).unwrap_or(TimeDelta::MAX);
        self.state = BreakerState::Open { until: now + open_for };
        self.samples.clear();
    }

    fn forget_before(&mut self, now: Timestamp) {
        let window = TimeDelta::from_std(self.config.window).unwrap_or(TimeDelta::MAX);
        while self.samples.front().is_some_and(|(at, _)| now - *at > window) || self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    fn rate_exceeded(&self) -> bool {
        let calls = self.samples.len();
        if calls == 0 || calls < self.config.min_calls as usize {
            return false;
        }
        let failures = self.samples.iter().filter(|(_, ok)| !ok).count();
        failures as f64 / calls as f64 >= self.config.failure_rate
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn t0() -> Timestamp {
        chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn ms(n: i64) -> TimeDelta {
        TimeDelta::milliseconds(n)
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_rate: 0.5,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    #[test]
    fn opens_on_the_failure_rate_then_probes_and_closes() {
        let mut b = Breaker::new(config());
        for i in 0..3 {
            assert!(b.try_acquire(t0() + ms(i)));
            b.record(t0() + ms(i), false);
        }
        assert_eq!(b.state(), BreakerState::Closed, "fewer than min_calls never opens");
        b.record(t0() + ms(3), true);
        assert!(matches!(b.state(), BreakerState::Open { .. }), "3 of 4 failed");
        assert!(!b.try_acquire(t0() + ms(4000)));
        assert_eq!(b.retry_at(t0()), t0() + ms(5003));
        let later = t0() + ms(5003);
        assert!(b.try_acquire(later) && b.try_acquire(later), "two probes");
        assert!(!b.try_acquire(later), "no third probe");
        b.record(later, true);
        assert!(!b.try_acquire(later), "the probe quota counts settled probes too");
        b.record(later, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let mut b = Breaker::new(BreakerConfig { min_calls: 1, ..config() });
        b.record(t0(), false);
        let later = t0() + ms(6000);
        assert!(b.try_acquire(later));
        b.record(later, false);
        assert_eq!(b.state(), BreakerState::Open { until: later + ms(5000) });
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut b = Breaker::new(config());
        for i in 0..3 {
            b.record(t0() + ms(i), false);
        }
        let later = t0() + ms(20_000);
        b.record(later, false);
        assert_eq!(b.state(), BreakerState::Closed, "only one failure is still in the window");
    }

    proptest! {
        #[test]
        fn successes_alone_never_open(n in 0usize..200) {
            let mut b = Breaker::new(config());
            for i in 0..n {
                let now = t0() + ms(i as i64 * 10);
                prop_assert!(b.try_acquire(now));
                b.record(now, true);
            }
            prop_assert_eq!(b.state(), BreakerState::Closed);
        }

        #[test]
        fn state_machine_invariants_hold(ops in prop::collection::vec((0i64..2000, any::<bool>(), any::<bool>()), 0..300)) {
            let cfg = config();
            let mut b = Breaker::new(cfg.clone());
            let mut now = t0();
            let mut outstanding = 0u32;
            for (step, acquire, success) in ops {
                now += ms(step);
                let before = b.state();
                if acquire {
                    let let_through = b.try_acquire(now);
                    if let BreakerState::Open { until } = before {
                        if now < until {
                            prop_assert!(!let_through, "an open breaker refuses until its time is up");
                        }
                    }
                    if before == BreakerState::Closed {
                        prop_assert!(let_through, "a closed breaker lets everything through");
                    }
                    if let BreakerState::HalfOpen { in_flight, succeeded } = b.state() {
                        prop_assert!(in_flight + succeeded <= cfg.half_open_probes);
                    }
                    if let_through {
                        outstanding += 1;
                    }
                } else if outstanding > 0 {
                    outstanding -= 1;
                    b.record(now, success);
                    if let BreakerState::HalfOpen { .. } = before {
                        if !success {
                            prop_assert!(matches!(b.state(), BreakerState::Open { .. }), "a failed probe reopens");
                        }
                    }
                }
            }
        }
    }
}
