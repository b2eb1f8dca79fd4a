//! What every part that writes to or watches the Kubernetes API shares: how the objects we
//! write are marked, and how our watches retry. Replication and the certificate keeper both
//! build on it, and on nothing of each other.

use std::time::Duration;

use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;

/// The label on every object we write (copies, the self-managed certificate Secret).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "pullsecret-injector";
/// Our field manager for writes, as server-side apply and managedFields show it.
pub const FIELD_MANAGER: &str = "pullsecret-injector";

/// How every watch of ours retries after an error: client-go's reflector backoff (0.8 s,
/// doubling, reset after 2 min quiet) but capped at 5 s instead of 30 s (5–10 s with the
/// jitter, which adds up to one delay), so copies and certificates converge within seconds
/// of an apiserver coming back. A handful of watches per replica retrying that often is no
/// load for a recovering apiserver.
pub fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    ResetTimerBackoff::new(
        ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(800))
                .with_max_delay(Duration::from_secs(5))
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(120),
    )
}

#[cfg(test)]
mod tests {
    use kube::runtime::utils::Backoff;

    use super::*;

    #[test]
    fn watch_retries_start_under_a_second_and_never_wait_long() {
        let mut backoff = watch_backoff();
        let delays: Vec<Duration> = (0..30)
            .map(|_| backoff.next().expect("never gives up"))
            .collect();
        assert!(delays[0] <= Duration::from_millis(1600), "{delays:?}");
        // Jitter may add up to one delay on top of the 5 s cap.
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(10)),
            "{delays:?}"
        );
        assert!(delays[29] >= Duration::from_secs(5), "{delays:?}");
        backoff.reset();
        assert!(backoff.next().expect("after a reset") <= Duration::from_millis(1600));
    }
}
