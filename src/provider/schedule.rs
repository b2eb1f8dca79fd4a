//! When to run a plugin again: pure functions of the credentials' lifetime, the failures so
//! far and a jitter in [0, 1) that the caller draws.

use std::time::{Duration, SystemTime};

/// Credentials are refreshed after two thirds of their life, leaving a third for retries.
const REFRESH_NUMERATOR: u32 = 2;
const REFRESH_DENOMINATOR: u32 = 3;
/// Up to this share of the refresh delay is taken off at random, so that installations and
/// entries that started together do not call their plugins (and the cloud's token API) at
/// the same instant forever.
const REFRESH_JITTER: f64 = 0.1;
/// Retries after a failure: doubling from the first, capped.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// How long after issue credentials valid for `valid_for` are refreshed: two thirds of it,
/// less up to a tenth of that at random.
pub fn refresh_after(valid_for: Duration, jitter: f64) -> Duration {
    let two_thirds = valid_for * REFRESH_NUMERATOR / REFRESH_DENOMINATOR;
    two_thirds.mul_f64(1.0 - REFRESH_JITTER * jitter.clamp(0.0, 1.0))
}

/// How long to wait after the `failures`-th failure in a row (1 for the first): 1 s, 2 s,
/// 4 s … up to a minute, each between half and all of that at random (full jitter would
/// allow retrying at once).
pub fn retry_after(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let delay = RETRY_FIRST.saturating_mul(1u32 << doublings).min(RETRY_MAX);
    delay.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

/// When a new leader refreshes credentials another replica issued at `issued` to last until
/// `expires`: at two thirds of their life, as the issuer would have (now, if that is past).
pub fn resume_at(issued: SystemTime, expires: SystemTime, jitter: f64) -> SystemTime {
    let life = expires.duration_since(issued).unwrap_or_default();
    issued + refresh_after(life, jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_at_two_thirds_of_the_life_less_up_to_a_tenth() {
        let twelve_hours = Duration::from_secs(12 * 3600);
        assert_eq!(
            refresh_after(twelve_hours, 0.0),
            Duration::from_secs(8 * 3600)
        );
        assert_eq!(
            refresh_after(twelve_hours, 0.999_999_999),
            Duration::from_secs(8 * 3600).mul_f64(1.0 - 0.099_999_999_9)
        );
        for jitter in [0.0, 0.3, 0.7, 0.999] {
            let d = refresh_after(Duration::from_secs(6), jitter);
            assert!(
                d <= Duration::from_secs(4) && d > Duration::from_millis(3_600),
                "{jitter}: {d:?}"
            );
        }
    }

    #[test]
    fn retries_double_from_a_second_up_to_a_minute_and_stay_above_half() {
        let delays: Vec<Duration> = (1..=10).map(|n| retry_after(n, 0.0)).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 16, 32, 60, 60, 60, 60].map(Duration::from_secs)
        );
        assert_eq!(retry_after(u32::MAX, 0.0), Duration::from_secs(60));
        assert_eq!(
            retry_after(1, 0.999),
            Duration::from_secs(1).mul_f64(0.5005)
        );
        assert!(retry_after(0, 0.0) == Duration::from_secs(1));
    }

    #[test]
    fn a_new_leader_resumes_at_the_issuers_schedule() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let expires = issued + Duration::from_secs(3600);
        assert_eq!(
            resume_at(issued, expires, 0.0),
            issued + Duration::from_secs(2400)
        );
        // Expiry before issue (a clock step, a hand edit): refresh at once.
        assert_eq!(resume_at(expires, issued, 0.0), expires);
    }
}
