//! The one circuit breaker of rdev-api, as a pure state machine: closed while the failure rate
//! over a sliding window stays under a threshold, open (every call refused) for a cool-down once
//! it does not, then half-open, where a few probe calls decide whether it closes or reopens.
//!
//! Time is an argument (`Moment`: a wall-clock `Timestamp` or a monotonic `Instant`), so the
//! machine is property-tested and does no I/O. The Kubernetes breaker (`services::breaker`, with
//! its lock, metrics and port decorators) and the per-endpoint webhook breakers (the dispatcher's)
//! are both this machine with their own `BreakerConfig`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Timestamp;

/// Most outcomes one breaker remembers; older ones drop out even inside the window, so a busy
/// backend cannot grow the memory of its breaker without bound.
const MAX_SAMPLES: usize = 1024;

/// A point in time the breaker can measure distances between.
pub trait Moment: Copy {
    /// How long after `earlier` this is; zero when it is not later (a clock that stepped back).
    fn since(self, earlier: Self) -> Duration;
}

impl Moment for Instant {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl Moment for Timestamp {
    fn since(self, earlier: Self) -> Duration {
        (self - earlier).to_std().unwrap_or(Duration::ZERO)
    }
}

/// When a breaker opens and how it recovers. `Default` is the Kubernetes API breaker's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Outcomes older than this are forgotten.
    pub window: Duration,
    /// Fewer calls than this in the window never open the breaker.
    pub min_calls: u32,
    /// Opens when failures / calls in the window reach this (0..=1).
    pub failure_rate: f64,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probes allowed at once when half-open; this many successes in a row close it.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            min_calls: 5,
            failure_rate: 0.5,
            open_for: Duration::from_secs(10),
            probes: 2,
        }
    }
}

/// Where a breaker is, as `/readyz`, logs and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// A few probe calls pass; their outcome decides.
    HalfOpen,
}

impl BreakerState {
    /// The wire and metric name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Why a call was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Open: probes may pass once `remaining` has elapsed.
    Open {
        /// What is left of the cool-down.
        remaining: Duration,
    },
    /// Half-open with every probe out: try again shortly.
    ProbesOut,
}

/// One breaker. Not shared between replicas: each replica protects its own calls.
#[derive(Debug, Clone)]
pub struct Breaker<T> {
    config: BreakerConfig,
    state: BreakerState,
    outcomes: VecDeque<(T, bool)>,
    opened_at: Option<T>,
    probes_in_flight: u32,
    probe_successes: u32,
}

impl<T: Moment> Breaker<T> {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            outcomes: VecDeque::new(),
            opened_at: None,
            probes_in_flight: 0,
            probe_successes: 0,
        }
    }

    /// The state as last moved (an open breaker whose cool-down ended reads `Open` until asked
    /// with `state_at` or `try_acquire`).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The state at `now` (an open breaker whose cool-down ended becomes half-open).
    pub fn state_at(&mut self, now: T) -> BreakerState {
        self.advance(now);
        self.state
    }

    /// Whether calls are refused at `now` because the breaker is open (no state change).
    pub fn is_open_at(&self, now: T) -> bool {
        self.state == BreakerState::Open && !self.remaining_open(now).is_zero()
    }

    /// Asks to make a call at `now`; `Ok` means go ahead and report the outcome with `record`
    /// (half-open, the call is a probe).
    pub fn try_acquire(&mut self, now: T) -> Result<(), Refusal> {
        self.advance(now);
        match self.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => Err(Refusal::Open { remaining: self.remaining_open(now) }),
            BreakerState::HalfOpen if self.probes_in_flight < self.config.probes => {
                self.probes_in_flight += 1;
                Ok(())
            }
            BreakerState::HalfOpen => Err(Refusal::ProbesOut),
        }
    }

    /// Reports the outcome of a call that `try_acquire` allowed.
    pub fn record(&mut self, now: T, success: bool) {
        // No `advance` here: while open, an answer is to a call made before the breaker opened,
        // even when it arrives after the cool-down, and must not count as a probe.
        match self.state {
            BreakerState::Closed => {
                self.outcomes.push_back((now, success));
                self.forget_old(now);
                if self.should_open() {
                    self.open(now);
                }
            }
            BreakerState::HalfOpen => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                if !success {
                    self.open(now);
                } else {
                    self.probe_successes += 1;
                    if self.probe_successes >= self.config.probes {
                        self.close();
                    }
                }
            }
            BreakerState::Open => {}
        }
    }

    /// How long until probes may pass (zero unless open): the end of the cool-down minus `now`,
    /// also when `now` precedes the opening (a send that began before another's failure opened it).
    pub fn remaining_open(&self, now: T) -> Duration {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) => (self.config.open_for + at.since(now)).saturating_sub(now.since(at)),
            _ => Duration::ZERO,
        }
    }

    fn advance(&mut self, now: T) {
        if self.state == BreakerState::Open && self.remaining_open(now).is_zero() {
            self.state = BreakerState::HalfOpen;
            self.probes_in_flight = 0;
            self.probe_successes = 0;
        }
    }

    fn forget_old(&mut self, now: T) {
        while self.outcomes.front().is_some_and(|(at, _)| now.since(*at) > self.config.window)
            || self.outcomes.len() > MAX_SAMPLES
        {
            self.outcomes.pop_front();
        }
    }

    fn should_open(&self) -> bool {
        let calls = self.outcomes.len() as u32;
        let failures = self.outcomes.iter().filter(|(_, ok)| !ok).count() as f64;
        calls >= self.config.min_calls.max(1) && failures / f64::from(calls) >= self.config.failure_rate
    }

    fn open(&mut self, now: T) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.outcomes.clear();
        self.probes_in_flight = 0;
        self.probe_successes = 0;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.opened_at = None;
        self.outcomes.clear();
    }
}

#[cfg(test)]
mod tests;
