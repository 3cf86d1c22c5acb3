//! The breaker's tests, on both clocks it runs on: the monotonic one of the Kubernetes breaker
//! and the wall clock of the webhook dispatcher.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use proptest::prelude::*;

use super::*;

fn config() -> BreakerConfig {
    BreakerConfig {
        window: Duration::from_secs(10),
        min_calls: 4,
        failure_rate: 0.5,
        open_for: Duration::from_secs(5),
        probes: 2,
    }
}

/// One call through the breaker at `now`; whether it was let through.
fn call<T: Moment>(core: &mut Breaker<T>, now: T, ok: bool) -> bool {
    let allowed = core.try_acquire(now).is_ok();
    if allowed {
        core.record(now, ok);
    }
    allowed
}

mod monotonic {
    use super::*;

    #[test]
    fn opens_on_failure_rate_then_probes_and_closes() {
        let t0 = Instant::now();
        let mut core = Breaker::new(config());
        for ok in [true, false, true] {
            assert!(call(&mut core, t0, ok));
        }
        assert_eq!(core.state_at(t0), BreakerState::Closed, "under min_calls");
        assert!(call(&mut core, t0, false));
        assert_eq!(core.state_at(t0), BreakerState::Open, "2 of 4 failed");
        let rejected = core.try_acquire(t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(rejected, Refusal::Open { remaining: Duration::from_secs(4) });
        let later = t0 + Duration::from_secs(5);
        assert_eq!(core.state_at(later), BreakerState::HalfOpen);
        assert!(core.try_acquire(later).is_ok());
        assert!(core.try_acquire(later).is_ok());
        assert_eq!(core.try_acquire(later), Err(Refusal::ProbesOut), "only `probes` at once");
        core.record(later, true);
        assert_eq!(core.state_at(later), BreakerState::HalfOpen, "one success is not enough");
        core.record(later, true);
        assert_eq!(core.state_at(later), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut core = Breaker::new(config());
        for _ in 0..4 {
            call(&mut core, t0, false);
        }
        let later = t0 + Duration::from_secs(6);
        assert!(call(&mut core, later, false));
        assert_eq!(core.state_at(later), BreakerState::Open);
        assert_eq!(core.remaining_open(later), Duration::from_secs(5));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let mut core = Breaker::new(config());
        for _ in 0..3 {
            call(&mut core, t0, false);
        }
        let later = t0 + Duration::from_secs(11);
        for _ in 0..3 {
            call(&mut core, later, true);
        }
        call(&mut core, later, false);
        assert_eq!(core.state_at(later), BreakerState::Closed, "1 of 4 in the window failed");
    }

    #[test]
    fn an_answer_sent_before_it_opened_is_no_probe() {
        let t0 = Instant::now();
        let mut core = Breaker::new(config());
        assert!(core.try_acquire(t0).is_ok(), "a slow call starts");
        for _ in 0..4 {
            call(&mut core, t0, false);
        }
        let after_cool_down = t0 + Duration::from_secs(6);
        core.record(after_cool_down, true);
        assert_eq!(core.state(), BreakerState::Open, "the slow call's answer changes nothing");
        assert_eq!(core.state_at(after_cool_down), BreakerState::HalfOpen);
    }

    proptest! {
        #[test]
        fn never_opens_without_failures(steps in proptest::collection::vec(0u64..3000, 1..200)) {
            let t0 = Instant::now();
            let mut core = Breaker::new(config());
            let mut at = t0;
            for step in steps {
                at += Duration::from_millis(step);
                prop_assert!(call(&mut core, at, true));
                prop_assert_eq!(core.state_at(at), BreakerState::Closed);
            }
        }

        #[test]
        fn open_refuses_every_call_until_the_cool_down_ends(
            outcomes in proptest::collection::vec(any::<bool>(), 1..100),
            probe_at in 0u64..5000,
        ) {
            let t0 = Instant::now();
            let mut core = Breaker::new(config());
            for ok in outcomes {
                call(&mut core, t0, ok);
            }
            if core.state_at(t0) == BreakerState::Open {
                let at = t0 + Duration::from_millis(probe_at);
                prop_assert!(core.try_acquire(at).is_err());
                prop_assert!(core.try_acquire(t0 + Duration::from_secs(5)).is_ok());
            }
        }

        #[test]
        fn closed_breaker_opens_exactly_when_the_rate_is_reached(outcomes in proptest::collection::vec(any::<bool>(), 1..12)) {
            let t0 = Instant::now();
            let mut core = Breaker::new(config());
            let mut seen = Vec::new();
            for ok in outcomes {
                if core.state_at(t0) != BreakerState::Closed { break; }
                call(&mut core, t0, ok);
                seen.push(ok);
                let failures = seen.iter().filter(|ok| !**ok).count();
                let expect_open = seen.len() >= 4 && failures * 2 >= seen.len();
                prop_assert_eq!(core.state_at(t0) == BreakerState::Open, expect_open);
            }
        }
    }
}

mod wall_clock {
    use super::*;

    fn t0() -> Timestamp {
        chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn ms(n: i64) -> TimeDelta {
        TimeDelta::milliseconds(n)
    }

    #[test]
    fn opens_on_the_failure_rate_then_probes_and_closes() {
        let mut b = Breaker::new(config());
        for i in 0..3 {
            assert!(b.try_acquire(t0() + ms(i)).is_ok());
            b.record(t0() + ms(i), false);
        }
        assert_eq!(b.state(), BreakerState::Closed, "fewer than min_calls never opens");
        b.record(t0() + ms(3), true);
        assert_eq!(b.state(), BreakerState::Open, "3 of 4 failed");
        assert!(b.try_acquire(t0() + ms(4000)).is_err());
        assert_eq!(b.remaining_open(t0()), Duration::from_millis(5003));
        let later = t0() + ms(5003);
        assert!(b.try_acquire(later).is_ok() && b.try_acquire(later).is_ok(), "two probes");
        assert!(b.try_acquire(later).is_err(), "no third probe at once");
        b.record(later, true);
        assert!(b.try_acquire(later).is_ok(), "a settled probe frees its place");
        b.record(later, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let mut b = Breaker::new(BreakerConfig { min_calls: 1, ..config() });
        b.record(t0(), false);
        let later = t0() + ms(6000);
        assert!(b.try_acquire(later).is_ok());
        b.record(later, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.remaining_open(later), Duration::from_secs(5));
        assert!(b.is_open_at(later + ms(4999)) && !b.is_open_at(later + ms(5000)));
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

    #[test]
    fn an_earlier_now_waits_for_the_same_end_of_the_cool_down() {
        let mut b = Breaker::new(BreakerConfig { min_calls: 1, ..config() });
        b.record(t0(), false);
        assert!(b.is_open_at(t0() - ms(60_000)));
        assert_eq!(b.remaining_open(t0() - ms(60_000)), Duration::from_secs(65));
    }

    proptest! {
        #[test]
        fn successes_alone_never_open(n in 0usize..200) {
            let mut b = Breaker::new(config());
            for i in 0..n {
                let now = t0() + ms(i as i64 * 10);
                prop_assert!(b.try_acquire(now).is_ok());
                b.record(now, true);
            }
            prop_assert_eq!(b.state(), BreakerState::Closed);
        }

        #[test]
        fn state_machine_invariants_hold(ops in prop::collection::vec((0i64..2000, any::<bool>(), any::<bool>()), 0..300)) {
            let cfg = config();
            let mut b = Breaker::new(cfg);
            let mut now = t0();
            let mut outstanding = 0u32;
            for (step, acquire, success) in ops {
                now += ms(step);
                let before = b.state();
                if acquire {
                    let refused_as_open = b.is_open_at(now);
                    let let_through = b.try_acquire(now).is_ok();
                    if refused_as_open {
                        prop_assert!(!let_through, "an open breaker refuses until its time is up");
                    }
                    if before == BreakerState::Closed {
                        prop_assert!(let_through, "a closed breaker lets everything through");
                    }
                    if b.state() == BreakerState::HalfOpen {
                        prop_assert!(b.probes_in_flight <= cfg.probes);
                        prop_assert!(b.probe_successes < cfg.probes);
                    }
                    if let_through {
                        outstanding += 1;
                    }
                } else if outstanding > 0 {
                    outstanding -= 1;
                    b.record(now, success);
                    if before == BreakerState::HalfOpen && !success {
                        prop_assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
                    }
                }
            }
        }
    }
}
