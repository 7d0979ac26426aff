//! When to ask OpenRouter again, and when to give up: pure functions of the
//! generation's age, tally's first lookup of it, the answer and the
//! configuration.
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
//! (defaults: 1 s and 60 s). The last delay before the give-up instant is
//! cut so that one final lookup happens right then; its answer is what the
//! unresolved event reports.
//!
//! # The give-up rule
//!
//! A hunt ends without the cost only when **both** hold:
//!
//! * at least `deadline` (`TALLY_RECONCILE_DEADLINE`) has passed since the
//!   generation's `completed_at`, **and**
//! * at least `min_window` (`TALLY_RECONCILE_MIN_WINDOW`) has passed since
//!   tally's own first lookup of it;
//!
//! and the last answer was a real one (404 "not yet", or a BYOK reply
//! without the upstream bill). A *transient* last answer (429, 5xx, timeout,
//! malformed body) never ends the hunt by itself: it is asked again for
//! one more `min_window` past that instant, and only if every answer stays
//! transient that long is it given up with the transient reason.
//!
//! The first lookup's instant matters only near the deadline: a lookup made
//! at least `min_window` before the deadline already satisfies the second
//! condition. So it is recorded (in Postgres, shared by every instance and
//! kept across restarts) only by the last lookup before that zone and by
//! every lookup inside it ([`needs_first_lookup`]); fresh generations that
//! are found early never cost a write.
//!
//! Inside the zone ([`late_next`]) the delay grows from the first lookup,
//! not from the age: an event that reaches tally twenty minutes late (a
//! backlog, a restart) is asked at 0, 1, 2, 4, … s after its first lookup
//! instead of once per `max_delay`, so a transient first answer costs a
//! second, not a minute.
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
//! * **A later first lookup only adds patience.** If the record of an
//!   earlier lookup was lost (a crash between the lookup and the write), the
//!   next lookup in the zone becomes the "first": the hunt lasts longer,
//!   never shorter.

use std::time::Duration;

use chrono::{DateTime, Utc};

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

/// Whether the answer behind an unresolved `reason` is transient (429, 5xx,
/// unexpected status, timeout, malformed body): one that says nothing about
/// whether the statistics exist.
pub fn is_transient(reason: &str) -> bool {
    matches!(
        reason,
        REASON_MALFORMED_REPLY | REASON_UPSTREAM_ERROR | REASON_UPSTREAM_UNREACHABLE
    )
}

/// Whether a failed lookup at age `age`, whose next lookup would come after
/// `next`, must record the first-lookup instant: when that next lookup falls
/// within `min_window` of the deadline, or later.
pub fn needs_first_lookup(
    age: Duration,
    next: Duration,
    deadline: Duration,
    min_window: Duration,
) -> bool {
    age.saturating_add(next).saturating_add(min_window) > deadline
}

/// Whether a lookup at age `age` is inside the zone where the first
/// lookup's instant decides when to give up.
pub fn in_window_zone(age: Duration, deadline: Duration, min_window: Duration) -> bool {
    age.saturating_add(min_window) > deadline
}

/// The instant a hunt may end: the later of `completed_at + deadline` and
/// `first_lookup + min_window`, plus one more `min_window` when the last
/// answer was transient.
pub fn give_up_at(
    completed_at: DateTime<Utc>,
    first_lookup: DateTime<Utc>,
    deadline: Duration,
    min_window: Duration,
    transient: bool,
) -> DateTime<Utc> {
    let d = |x: Duration| chrono::Duration::from_std(x).unwrap_or(chrono::Duration::MAX);
    let base = (completed_at + d(deadline)).max(first_lookup + d(min_window));
    if transient {
        base + d(min_window)
    } else {
        base
    }
}

/// The settings [`late_next`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// `TALLY_RECONCILE_DEADLINE`, from `completed_at`.
    pub deadline: Duration,
    /// `TALLY_RECONCILE_MIN_WINDOW`, from the first lookup.
    pub min_window: Duration,
    /// Shortest delay between lookups.
    pub first_delay: Duration,
    /// Longest delay between lookups.
    pub max_delay: Duration,
}

/// After a failed lookup at `now` inside the window zone: `None` to give up,
/// else the delay until the next lookup (grown from the first lookup, cut
/// to the give-up instant, at least `retry_after`).
pub fn late_next(
    p: Patience,
    now: DateTime<Utc>,
    completed_at: DateTime<Utc>,
    first_lookup: DateTime<Utc>,
    transient: bool,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let end = give_up_at(
        completed_at,
        first_lookup,
        p.deadline,
        p.min_window,
        transient,
    );
    if now >= end {
        return None;
    }
    let since_first = (now - first_lookup).to_std().unwrap_or(Duration::ZERO);
    let age = (now - completed_at).to_std().unwrap_or(Duration::ZERO);
    let left = (end - now).to_std().unwrap_or(Duration::ZERO);
    Some(next_delay(
        since_first.min(age),
        p.first_delay,
        p.max_delay,
        retry_after,
        left,
    ))
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

    fn p(deadline: u64, min_window: u64) -> Patience {
        Patience {
            deadline: secs(deadline),
            min_window: secs(min_window),
            first_delay: S,
            max_delay: secs(60),
        }
    }

    fn at(t0: DateTime<Utc>, s: u64) -> DateTime<Utc> {
        t0 + chrono::Duration::seconds(s as i64)
    }

    /// Replays a hunt that never finds the cost: the ages of its lookups.
    fn hunt(p: Patience, first_age: u64, transient: bool) -> Vec<u64> {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let mut now = at(t0, first_age);
        let mut first: Option<DateTime<Utc>> = None;
        let mut ages = Vec::new();
        for _ in 0..1000 {
            let age = (now - t0).to_std().unwrap();
            ages.push(age.as_secs());
            let until = p.deadline.saturating_sub(age);
            let delay = if !in_window_zone(age, p.deadline, p.min_window) {
                let next = next_delay(age, p.first_delay, p.max_delay, None, until);
                if needs_first_lookup(age, next, p.deadline, p.min_window) {
                    first.get_or_insert(now);
                }
                next
            } else {
                let f = *first.get_or_insert(now);
                match late_next(p, now, t0, f, transient, None) {
                    Some(d) => d,
                    None => return ages,
                }
            };
            now += chrono::Duration::from_std(delay).unwrap();
        }
        panic!("the hunt never ended");
    }

    #[test]
    fn a_fresh_hunt_ends_at_the_deadline_with_no_extra_lookup() {
        // Deadline 15 min, window 2 min: the same lookups as a deadline
        // counted from completion alone (1, 2, 4, … 64, then every 60 s,
        // the last one cut to land on 900 s).
        let ages = hunt(p(900, 120), 1, false);
        let mut expected = vec![1, 2, 4, 8, 16, 32, 64];
        let mut a = 64;
        while a + 60 < 900 {
            a += 60;
            expected.push(a);
        }
        expected.push(900);
        assert_eq!(ages, expected);
    }

    #[test]
    fn a_late_event_is_asked_patiently_from_its_first_lookup() {
        // Completed 20 min ago, deadline 8 s, window 120 s: lookups at
        // 0, 1, 2, 4, … s after the first, the last at +120 s.
        let ages = hunt(p(8, 120), 1200, false);
        let since: Vec<u64> = ages.iter().map(|a| a - 1200).collect();
        assert_eq!(since, vec![0, 1, 2, 4, 8, 16, 32, 64, 120]);
    }

    #[test]
    fn transient_answers_earn_one_more_window() {
        let ages = hunt(p(8, 120), 1200, true);
        assert_eq!(*ages.last().unwrap(), 1200 + 240);
        // Still polite: at most one lookup per max_delay once capped.
        assert!(ages.len() <= 12, "{ages:?}");
    }

    #[test]
    fn the_give_up_instant_is_the_later_of_both_rules() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        // First lookup long before the deadline: the deadline decides.
        assert_eq!(
            give_up_at(t0, at(t0, 10), secs(900), secs(120), false),
            at(t0, 900)
        );
        // First lookup after it: the window decides.
        assert_eq!(
            give_up_at(t0, at(t0, 1200), secs(900), secs(120), false),
            at(t0, 1320)
        );
        assert_eq!(
            give_up_at(t0, at(t0, 1200), secs(900), secs(120), true),
            at(t0, 1440)
        );
        assert!(is_transient(REASON_UPSTREAM_ERROR));
        assert!(is_transient(REASON_UPSTREAM_UNREACHABLE));
        assert!(is_transient(REASON_MALFORMED_REPLY));
        assert!(!is_transient(REASON_DEADLINE_EXCEEDED));
        assert!(!is_transient(REASON_MISSING_UPSTREAM_COST));
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
