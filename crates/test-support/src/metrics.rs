//! Series of the injector's Prometheus text, by the names the suites assert on.

/// The value of a metric line (`name{labels} value`) in Prometheus text, or 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Copies written by replication, by `action` (created, updated, overwritten, deleted).
pub fn copies_metric(text: &str, action: &str) -> f64 {
    metric(
        text,
        &format!("pullsecret_injector_replicated_copies_total{{action=\"{action}\"}}"),
    )
}

/// Failed replication attempts, by `reason`.
pub fn errors_metric(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("pullsecret_injector_replication_errors_total{{reason=\"{reason}\"}}"),
    )
}

/// Same-named Secrets of the user's that replication left alone.
pub fn conflicts_metric(text: &str) -> f64 {
    metric(text, "pullsecret_injector_replication_conflicts_total")
}

/// 1 while this replica holds the Lease.
pub fn leader_metric(text: &str) -> f64 {
    metric(text, "pullsecret_injector_leader")
}

/// Copies made (or found) while admitting a pod, by `result`.
pub fn ensured_metric(text: &str, result: &str) -> f64 {
    metric(
        text,
        &format!("pullsecret_injector_ensured_at_admission_total{{result=\"{result}\"}}"),
    )
}
