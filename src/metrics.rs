//! Every metric family, in one place, exposed in the Prometheus text format.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    operation: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabels {
    secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

pub struct Metrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    injected: Family<SecretLabels, Counter>,
    duration: Histogram,
    bad_requests: Family<ReasonLabels, Counter>,
    certificate_reloads: Family<ResultLabels, Counter>,
    certificate_errors: Family<ReasonLabels, Counter>,
    tls_handshake_failures: Counter,
    open_connections: Gauge,
    copies: Family<ActionLabels, Counter>,
    conflicts: Counter,
    sync_errors: Family<ReasonLabels, Counter>,
    cache_objects: Family<CacheLabels, Gauge>,
    ensured: Family<ResultLabels, Counter>,
    namespace_syncs: Family<ResultLabels, Counter>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pullsecret_injector");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "AdmissionReviews answered, by operation and result (patched, unchanged, skipped)",
            admissions.clone(),
        );
        let injected = Family::<SecretLabels, Counter>::default();
        registry.register(
            "injected_secrets",
            "Pull secret references added to pods, by secret name",
            injected.clone(),
        );
        // From 50 µs to ~1.6 s: the hot path is microseconds, the apiserver's budget seconds.
        let duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.00005, 2.0, 16,
        ));
        registry.register(
            "admission_duration_seconds",
            "Time from a complete request body to the response, per AdmissionReview",
            duration.clone(),
        );
        let bad_requests = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "bad_requests",
            "Requests refused before a decision, by reason",
            bad_requests.clone(),
        );
        let certificate_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads, by result (success, error)",
            certificate_reloads.clone(),
        );
        let certificate_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "certificate_errors",
            "Failed checks of the self-managed certificate and caBundle, by reason (forbidden, conflict, api, generate)",
            certificate_errors.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "TLS connections currently open on the webhook listener",
            open_connections.clone(),
        );
        let copies = Family::<ActionLabels, Counter>::default();
        registry.register(
            "replicated_copies",
            "Secret copies written, by action (created, updated, overwritten, deleted)",
            copies.clone(),
        );
        let conflicts = Counter::default();
        registry.register(
            "replication_conflicts",
            "Syncs that found a Secret of the entry's name that the injector did not create",
            conflicts.clone(),
        );
        let sync_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "replication_errors",
            "Failed syncs and unusable sources, by reason",
            sync_errors.clone(),
        );
        let cache_objects = Family::<CacheLabels, Gauge>::default();
        registry.register(
            "cache_objects",
            "Objects in the watch caches (namespaces, sources, copies)",
            cache_objects.clone(),
        );
        let ensured = Family::<ResultLabels, Counter>::default();
        registry.register(
            "ensured_at_admission",
            "Missing copies handled while admitting a pod, by result (created, exists, failed)",
            ensured.clone(),
        );
        let namespace_syncs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "namespace_syncs",
            "Namespaces the leader synced (compared with the caches, and written to if needed), by result (ok, error)",
            namespace_syncs.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and replicates",
            leader.clone(),
        );
        registry.register_collector(Box::new(DroppedLogLines));
        Self {
            registry,
            admissions,
            copies,
            conflicts,
            sync_errors,
            cache_objects,
            ensured,
            namespace_syncs,
            leader,
            injected,
            duration,
            bad_requests,
            certificate_reloads,
            certificate_errors,
            tls_handshake_failures,
            open_connections,
        }
    }

    pub fn admission(&self, operation: &'static str, result: &'static str, elapsed: Duration) {
        self.admissions
            .get_or_create(&AdmissionLabels { operation, result })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn injected(&self, secret: &str) {
        self.injected
            .get_or_create(&SecretLabels {
                secret: secret.to_string(),
            })
            .inc();
    }

    pub fn bad_request(&self, reason: &'static str) {
        self.bad_requests
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn certificate_reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.certificate_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn certificate_error(&self, reason: &'static str) {
        self.certificate_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    pub fn copy_changed(&self, action: &'static str) {
        self.copies.get_or_create(&ActionLabels { action }).inc();
    }

    pub fn conflict(&self) {
        self.conflicts.inc();
    }

    pub fn replication_error(&self, reason: &'static str) {
        self.sync_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn cache_size(&self, cache: &'static str, objects: usize) {
        self.cache_objects
            .get_or_create(&CacheLabels { cache })
            .set(objects as i64);
    }

    pub fn ensured_at_admission(&self, result: &'static str) {
        self.ensured.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn namespace_synced(&self, result: &'static str) {
        self.namespace_syncs
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The log pipe's count of dropped lines (`telemetry`), read at each scrape.
#[derive(Debug)]
struct DroppedLogLines;

impl Collector for DroppedLogLines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(crate::telemetry::dropped_lines());
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log destination was too slow and the buffer full",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.admission("CREATE", "patched", Duration::from_micros(80));
        m.injected("acme");
        m.bad_request("invalid_json");
        m.certificate_reloaded(false);
        m.certificate_error("forbidden");
        let text = m.render();
        for line in [
            "pullsecret_injector_admissions_total{operation=\"CREATE\",result=\"patched\"} 1",
            "pullsecret_injector_injected_secrets_total{secret=\"acme\"} 1",
            "pullsecret_injector_bad_requests_total{reason=\"invalid_json\"} 1",
            "pullsecret_injector_certificate_reloads_total{result=\"error\"} 1",
            "pullsecret_injector_certificate_errors_total{reason=\"forbidden\"} 1",
            "pullsecret_injector_admission_duration_seconds_count 1",
            "pullsecret_injector_open_connections 0",
            "pullsecret_injector_log_lines_dropped_total ",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
