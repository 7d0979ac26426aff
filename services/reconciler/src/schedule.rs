//! When to ask OpenRouter again, and what to say when giving up: pure
//! functions of the generation's age, the answer and the configuration.
//!
//! # The schedule
//!
//! A generation's *age* is the time since its `completed_at`. The first
//! lookup happens at age `first_delay`. After a lookup at age `a` that did
//! not give the cost, the next one is due after
//!
//! ```text
//! delay = clamp(a, first_delay, max_delay)      (then at least Retry-After)
//! ```
//!
//! i.e. lookups at ages 1, 2, 4, 8, 16, 32, 64 s, then every `max_delay`
//! (defaults: 1 s and 60 s). The last delay before the deadline is cut so
//! that one final lookup happens right at the deadline; its answer is what
//! the unresolved event reports.
//!
//! # Decisions
//!
//! * **Age-proportional (doubling) backoff, from the event's own clock.**
//!   OpenRouter publishes statistics a few seconds after the end of a
//!   generation, much later after an interrupted stream: early lookups
//!   should be frequent and late ones rare. Deriving the delay from the age
//!   (not from a retry counter) makes the schedule the same after a restart,
//!   on another instance, after a redelivery or a deferral, with no state to
//!   keep; and a delay never exceeds the time already waited, so the
//!   lookups of one generation stay within a factor of two of "as soon as it
//!   is there" until the cap. The cap (60 s by default, equal to the
//!   consumer's ack wait) bounds how late a slow generation is noticed.
//! * **No jitter.** Generations complete at different instants, so their
//!   schedules are already spread; after an outage the shared rate limiter,
//!   not randomness, keeps the herd polite.
//! * **`Retry-After` only lengthens a delay**, never shortens it.
//! * **Key problems are not the generation's fault** (see
//!   [`Verdict::KeyProblem`]): they are retried after
//!   [`KEY_PROBLEM_DELAY`] for as long as it takes, even past the deadline.

use std::time::Duration;

use tally_openrouter::OpenRouterError;

/// Delay before asking again after a key problem (HTTP 401/403/402 or an
/// unusable client configuration).
pub const KEY_PROBLEM_DELAY: Duration = Duration::from_secs(300);

/// The shortest delay a message is put back with (the server would
/// redeliver at once otherwise).
pub const MIN_DELAY: Duration = Duration::from_millis(50);

/// What an unsuccessful lookup means for the generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Ask again later on the normal schedule; at the deadline, give up with
    /// `reason` and `last_status`.
    Retry {
        /// The unresolved reason if this was the final lookup.
        reason: &'static str,
        /// The HTTP status of the answer, if there was one.
        last_status: Option<u16>,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The API key or account is the problem (401, 403, 402, bad
    /// configuration): not the generation's. Log loudly, ask again after
    /// [`KEY_PROBLEM_DELAY`], never give up because of it.
    KeyProblem,
}

/// Reason code: the statistics never appeared (every answer was 404, or the
/// last answer was) before the deadline.
pub const REASON_DEADLINE_EXCEEDED: &str = "deadline_exceeded";
/// Reason code: the last answer was a reply whose cost could not be read
/// exactly.
pub const REASON_MALFORMED_REPLY: &str = "malformed_reply";
/// Reason code: the last answer was an HTTP error (429, 5xx, unexpected).
pub const REASON_UPSTREAM_ERROR: &str = "upstream_error";
/// Reason code: the last lookup got no answer (timeout, connection error).
pub const REASON_UPSTREAM_UNREACHABLE: &str = "upstream_unreachable";
/// Reason code: the organisation has no connected provider, so its
/// generations cannot be looked up with its own key.
pub const REASON_PROVIDER_NOT_CONNECTED: &str = "provider_not_connected";
/// Reason code: a BYOK generation whose upstream cost was never reported,
/// so only OpenRouter's fee would have been known (money rule 8).
pub const REASON_MISSING_UPSTREAM_COST: &str = "missing_upstream_cost";

/// The verdict on a failed lookup.
pub fn verdict(err: &OpenRouterError) -> Verdict {
    let retry = |reason| Verdict::Retry {
        reason,
        last_status: err.status(),
        retry_after: err.retry_after(),
    };
    match err {
        OpenRouterError::NotYet => retry(REASON_DEADLINE_EXCEEDED),
        OpenRouterError::Malformed { .. } => retry(REASON_MALFORMED_REPLY),
        OpenRouterError::RateLimited { .. }
        | OpenRouterError::Unavailable { .. }
        | OpenRouterError::BadGateway { .. }
        | OpenRouterError::EdgeTimeout
        | OpenRouterError::ProviderOverloaded { .. }
        | OpenRouterError::Server { .. }
        | OpenRouterError::UnexpectedStatus { .. } => retry(REASON_UPSTREAM_ERROR),
        OpenRouterError::Timeout | OpenRouterError::Transport(_) => {
            retry(REASON_UPSTREAM_UNREACHABLE)
        }
        OpenRouterError::Auth { .. }
        | OpenRouterError::Payment { .. }
        | OpenRouterError::InvalidConfig(_) => Verdict::KeyProblem,
    }
}

/// How long to wait before the first lookup of a generation of age `age`
/// (`None`: it is due now).
pub fn first_wait(age: Duration, first_delay: Duration) -> Option<Duration> {
    (age < first_delay).then(|| (first_delay - age).max(MIN_DELAY))
}

/// The delay before the next lookup after one at age `age` failed.
///
/// `until_deadline` is the time left until the deadline (zero when it has
/// passed); `retry_after` the server's wish.
pub fn next_delay(
    age: Duration,
    first_delay: Duration,
    max_delay: Duration,
    retry_after: Option<Duration>,
    until_deadline: Duration,
) -> Duration {
    let max_delay = max_delay.max(first_delay);
    let mut delay = age.clamp(first_delay, max_delay);
    if !until_deadline.is_zero() {
        // One final lookup right at the deadline.
        delay = delay.min(until_deadline);
    }
    if let Some(wait) = retry_after {
        delay = delay.max(wait);
    }
    delay.max(MIN_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn lookups_double_then_cap() {
        let mut age = secs(1);
        let mut ages = vec![age];
        for _ in 0..9 {
            age += next_delay(age, S, secs(60), None, secs(3600));
            ages.push(age);
        }
        assert_eq!(
            ages,
            [1, 2, 4, 8, 16, 32, 64, 124, 184, 244].map(secs).to_vec()
        );
    }

    #[test]
    fn the_last_delay_lands_on_the_deadline() {
        // Age 8 s, deadline at 10 s: ask again in 2 s, not 8 s.
        assert_eq!(next_delay(secs(8), S, secs(60), None, secs(2)), secs(2));
        // Past the deadline (final lookup failed with a key problem, say):
        // the normal schedule applies.
        assert_eq!(
            next_delay(secs(20), S, secs(60), None, Duration::ZERO),
            secs(20)
        );
    }

    #[test]
    fn retry_after_only_lengthens() {
        assert_eq!(
            next_delay(secs(2), S, secs(60), Some(secs(7)), secs(100)),
            secs(7)
        );
        assert_eq!(
            next_delay(secs(30), S, secs(60), Some(secs(7)), secs(100)),
            secs(30)
        );
        // Even past the deadline's cut: the server asked for it.
        assert_eq!(
            next_delay(secs(8), S, secs(60), Some(secs(5)), secs(2)),
            secs(5)
        );
    }

    #[test]
    fn delays_are_never_zero() {
        assert_eq!(
            next_delay(
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                None,
                Duration::ZERO
            ),
            MIN_DELAY
        );
        assert_eq!(first_wait(Duration::from_millis(999), S), Some(MIN_DELAY));
        assert_eq!(
            first_wait(Duration::from_millis(200), S),
            Some(Duration::from_millis(800))
        );
        assert_eq!(first_wait(S, S), None);
    }

    #[test]
    fn verdicts() {
        let v = verdict(&OpenRouterError::NotYet);
        assert_eq!(
            v,
            Verdict::Retry {
                reason: REASON_DEADLINE_EXCEEDED,
                last_status: Some(404),
                retry_after: None
            }
        );
        let v = verdict(&OpenRouterError::RateLimited {
            retry_after: Some(secs(3)),
        });
        assert_eq!(
            v,
            Verdict::Retry {
                reason: REASON_UPSTREAM_ERROR,
                last_status: Some(429),
                retry_after: Some(secs(3))
            }
        );
        let v = verdict(&OpenRouterError::Malformed {
            status: 200,
            reason: "x".into(),
        });
        assert!(matches!(
            v,
            Verdict::Retry {
                reason: REASON_MALFORMED_REPLY,
                last_status: Some(200),
                ..
            }
        ));
        assert!(matches!(
            verdict(&OpenRouterError::Timeout),
            Verdict::Retry {
                reason: REASON_UPSTREAM_UNREACHABLE,
                last_status: None,
                ..
            }
        ));
        for e in [
            OpenRouterError::Auth {
                status: 401,
                message: String::new(),
            },
            OpenRouterError::Auth {
                status: 403,
                message: String::new(),
            },
            OpenRouterError::Payment {
                message: String::new(),
            },
        ] {
            assert_eq!(verdict(&e), Verdict::KeyProblem, "{e:?}");
        }
    }
}
