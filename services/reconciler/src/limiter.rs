//! The shared, adaptive rate limiter toward OpenRouter.
//!
//! Every lookup of every generation takes one slot from this limiter before
//! it may call OpenRouter, so the reconciler as a whole never asks faster
//! than its configured rate, however many generations are pending.
//!
//! It is a GCRA-style token bucket ("virtual scheduling"): each reservation
//! books the next free slot, `1 / rate` after the previous one, with a small
//! burst allowance. The rate adapts (AIMD):
//!
//! * **Halve on rate limiting.** At the end of each one-second window, if at
//!   least [`RATE_LIMITED_SHARE_PERCENT`] % of the window's lookups were
//!   answered 429, the rate halves (never below one per second).
//! * **Recover slowly.** Every window without that share of 429s adds one
//!   twentieth of the configured rate, so recovering from half to full speed
//!   takes about ten seconds of calm.
//!
//! # Decisions
//!
//! * **Hand-written rather than `governor`.** `governor`'s quotas are fixed
//!   at construction; an adaptive rate would mean swapping limiters and
//!   losing their state on every change. The bucket is thirty lines of
//!   integer arithmetic under one mutex that is held for nanoseconds.
//! * **A share of 429s, not a single one, halves the rate.** A lone 429
//!   among hundreds of successes is noise, and that message already honours
//!   its `Retry-After` on its own schedule; halving on every single one would
//!   collapse the rate under any background error rate. When OpenRouter
//!   really limits us, most answers in the window are 429 and the rate halves
//!   within a second.
//! * **`Retry-After` does not pause every lookup.** It is honoured per
//!   generation (its next delivery is delayed at least that long); the
//!   shared rate reacts through the halving above.
//! * **Reservations are refused beyond a maximum wait** instead of queueing
//!   without bound: the caller puts the message back on the stream with that
//!   delay (a `nak`), so no message sits in memory longer than the consumer's
//!   ack wait.
//! * **Integer arithmetic only**, like every other part of tally that is not
//!   a Prometheus sample.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Share of 429 answers in a one-second window that halves the rate.
pub(crate) const RATE_LIMITED_SHARE_PERCENT: u64 = 5;

/// Length of the window over which answers are counted.
const WINDOW: Duration = Duration::from_secs(1);

/// The lowest rate the limiter falls to, in lookups per second.
const MIN_RATE: u32 = 1;

/// What a lookup's answer tells the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feedback {
    /// OpenRouter answered 429.
    RateLimited,
    /// Any other answer (or none): the call was not rate limited.
    Other,
}

/// An adaptive token bucket shared by every lookup of one reconciler.
#[derive(Debug)]
pub(crate) struct AdaptiveLimiter {
    max_rate: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Current rate, lookups per second (`MIN_RATE..=max_rate`).
    rate: u32,
    /// The earliest instant the next slot may be booked at.
    next: Instant,
    /// Start of the current counting window.
    window_start: Instant,
    /// Answers counted in the window.
    calls: u64,
    /// 429 answers counted in the window.
    limited: u64,
}

impl AdaptiveLimiter {
    /// A limiter allowing `rate_per_sec` lookups per second at most (and at
    /// start).
    pub(crate) fn new(rate_per_sec: u32) -> Self {
        let max_rate = rate_per_sec.max(MIN_RATE);
        let now = Instant::now();
        AdaptiveLimiter {
            max_rate,
            state: Mutex::new(State {
                rate: max_rate,
                next: now,
                window_start: now,
                calls: 0,
                limited: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked (every update
        // is a plain assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current rate, lookups per second.
    pub(crate) fn rate(&self) -> u32 {
        self.lock().rate
    }

    /// Books the next slot if it is at most `max_wait` away and returns how
    /// long to wait for it; otherwise books nothing and returns `Err` with
    /// the wait the slot would have needed.
    pub(crate) fn reserve(&self, max_wait: Duration) -> Result<Duration, Duration> {
        let now = Instant::now();
        let mut s = self.lock();
        let interval = Duration::from_secs(1) / s.rate;
        // Allow a burst of up to a tenth of a second's worth of slots (at
        // least one), so lookups that become due together are not serialised
        // needlessly at low load.
        let burst = interval * (s.rate / 10).max(1);
        let earliest = now.checked_sub(burst).unwrap_or(now);
        let slot = s.next.max(earliest);
        let wait = slot.saturating_duration_since(now);
        if wait > max_wait {
            return Err(wait);
        }
        s.next = slot + interval;
        Ok(wait)
    }

    /// Records the answer of one lookup and adapts the rate at the end of a
    /// window. Returns the new rate when it changed.
    pub(crate) fn record(&self, feedback: Feedback) -> Option<u32> {
        self.record_at(feedback, Instant::now())
    }

    fn record_at(&self, feedback: Feedback, now: Instant) -> Option<u32> {
        let mut s = self.lock();
        s.calls += 1;
        if feedback == Feedback::RateLimited {
            s.limited += 1;
        }
        if now.saturating_duration_since(s.window_start) < WINDOW {
            return None;
        }
        let before = s.rate;
        if s.limited > 0 && s.limited * 100 >= s.calls * RATE_LIMITED_SHARE_PERCENT {
            s.rate = (s.rate / 2).max(MIN_RATE);
        } else {
            let step = (self.max_rate / 20).max(1);
            s.rate = s.rate.saturating_add(step).min(self.max_rate);
        }
        s.window_start = now;
        s.calls = 0;
        s.limited = 0;
        (s.rate != before).then_some(s.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_by_the_rate() {
        let l = AdaptiveLimiter::new(10);
        // The burst allowance is one slot at 10/s; later slots are 100 ms apart.
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(l.reserve(Duration::from_secs(10)).unwrap());
        }
        assert!(waits[0] <= Duration::from_millis(1), "{waits:?}");
        let last = waits[4];
        assert!(
            last >= Duration::from_millis(350) && last <= Duration::from_millis(450),
            "{waits:?}"
        );
    }

    #[test]
    fn reservations_beyond_the_maximum_wait_are_refused_and_not_booked() {
        let l = AdaptiveLimiter::new(1);
        assert!(l.reserve(Duration::ZERO).is_ok());
        let refused = l.reserve(Duration::from_millis(100)).unwrap_err();
        assert!(refused > Duration::from_millis(800), "{refused:?}");
        // Refusing booked nothing: the same wait is quoted again.
        let again = l.reserve(Duration::from_millis(100)).unwrap_err();
        assert!(again <= refused);
    }

    #[test]
    fn a_share_of_429s_halves_the_rate_and_calm_recovers_it() {
        let l = AdaptiveLimiter::new(1000);
        let t0 = Instant::now();
        // Window 1: 10 % rate limited → halve.
        for i in 0..100 {
            let f = if i % 10 == 0 {
                Feedback::RateLimited
            } else {
                Feedback::Other
            };
            assert_eq!(l.record_at(f, t0), None);
        }
        assert_eq!(l.record_at(Feedback::Other, t0 + WINDOW), Some(500));
        // Window 2: again → quarter.
        l.record_at(Feedback::RateLimited, t0 + WINDOW);
        assert_eq!(
            l.record_at(Feedback::RateLimited, t0 + WINDOW * 2),
            Some(250)
        );
        // Calm windows add 5 % of the maximum each.
        assert_eq!(l.record_at(Feedback::Other, t0 + WINDOW * 3), Some(300));
        assert_eq!(l.record_at(Feedback::Other, t0 + WINDOW * 4), Some(350));
        assert_eq!(l.rate(), 350);
    }

    #[test]
    fn a_stray_429_does_not_halve() {
        let l = AdaptiveLimiter::new(100);
        let t0 = Instant::now();
        for _ in 0..98 {
            l.record_at(Feedback::Other, t0);
        }
        l.record_at(Feedback::RateLimited, t0);
        // 1 in 100: below the 5 % share; already at the maximum.
        assert_eq!(l.record_at(Feedback::Other, t0 + WINDOW), None);
        assert_eq!(l.rate(), 100);
    }

    #[test]
    fn the_rate_never_falls_below_one_per_second() {
        let l = AdaptiveLimiter::new(4);
        let t0 = Instant::now();
        for i in 1..10 {
            l.record_at(Feedback::RateLimited, t0 + WINDOW * i);
        }
        assert_eq!(l.rate(), 1);
        assert!(l.reserve(Duration::from_secs(2)).is_ok());
    }
}
