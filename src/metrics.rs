//! Every metric family, in one place, exposed in the Prometheus text format.

mod process;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use process::ProcessStats;

/// The metrics' common prefix; the process collector's `process_*` names go without.
pub const PREFIX: &str = "pullsecret_injector";

/// Admission latency buckets, from the microseconds of the hot path to the 30 s maximum
/// webhook timeout, 1-2.5-5 per decade.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    /// `namespace/name`.
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    secret: String,
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderResultLabels {
    secret: String,
    provider: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderReasonLabels {
    secret: String,
    provider: String,
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    skipped: Family<ReasonLabels, Counter>,
    injected: Family<SecretLabels, Counter>,
    duration: Histogram,
    bad_requests: Family<ReasonLabels, Counter>,
    certificate_reloads: Family<ResultLabels, Counter>,
    certificate_expiry: Gauge,
    certificate_errors: Family<ReasonLabels, Counter>,
    tls_handshake_failures: Counter,
    open_connections: Gauge,
    copies: Family<ActionLabels, Counter>,
    conflicts: Counter,
    sync_errors: Family<ReasonLabels, Counter>,
    cache_objects: Family<CacheLabels, Gauge>,
    source_synced: Family<SourceLabels, Gauge>,
    ensured: Family<ResultLabels, Counter>,
    namespace_syncs: Family<ResultLabels, Counter>,
    leader: Gauge,
    provider_refreshes: Family<ProviderResultLabels, Counter>,
    provider_errors: Family<ProviderReasonLabels, Counter>,
    provider_expiry: Family<ProviderLabels, Gauge>,
    provider_last_refresh: Family<ProviderLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix(PREFIX);
        registry.register(
            "build",
            "The running version: 1, labelled with the version",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "AdmissionReviews answered, by operation and result (patched; unchanged: the pod had every matching secret; skipped)",
            admissions.clone(),
        );
        let skipped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "skipped_admissions",
            "AdmissionReviews answered without a change because of what they are, by reason (opted_out, mirror_pod, not_pod_create, no_match)",
            skipped.clone(),
        );
        let injected = Family::<SecretLabels, Counter>::default();
        registry.register(
            "injected_secrets",
            "Pull secret references added to pods, by secret name",
            injected.clone(),
        );
        let duration = Histogram::new(DURATION_BUCKETS);
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
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the serving certificate in use expires, in seconds since the Unix epoch (0 before one is loaded)",
            certificate_expiry.clone(),
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
        let source_synced = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "source_last_sync_timestamp_seconds",
            "When a copy of each source was last written or found current (by the leader, or at admission), in seconds since the Unix epoch",
            source_synced.clone(),
        );
        let ensured = Family::<ResultLabels, Counter>::default();
        registry.register(
            "ensured_at_admission",
            "Missing copies handled while admitting a pod, by result (created; exists: found taken; joined: made by another admission, waited for; failed)",
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
        // Closed label sets start at zero, so that a rate is defined and a dashboard panel
        // shows 0 rather than "no data" before the first event.
        for reason in ["opted_out", "mirror_pod", "not_pod_create", "no_match"] {
            let _ = skipped.get_or_create(&ReasonLabels { reason });
        }
        for action in ["created", "updated", "overwritten", "deleted"] {
            let _ = copies.get_or_create(&ActionLabels { action });
        }
        for result in ["success", "error"] {
            let _ = certificate_reloads.get_or_create(&ResultLabels { result });
        }
        for result in ["created", "exists", "joined", "failed"] {
            let _ = ensured.get_or_create(&ResultLabels { result });
        }
        for reason in ["forbidden", "conflict", "api", "generate"] {
            let _ = certificate_errors.get_or_create(&ReasonLabels { reason });
        }
        for reason in ["api", "forbidden", "conflict", "lease", "invalid_source"] {
            let _ = sync_errors.get_or_create(&ReasonLabels { reason });
        }
        let provider_refreshes = Family::<ProviderResultLabels, Counter>::default();
        registry.register(
            "provider_refreshes",
            "Credential provider plugin runs for entries with a provider, by result (success, failure)",
            provider_refreshes.clone(),
        );
        let provider_errors = Family::<ProviderReasonLabels, Counter>::default();
        registry.register(
            "provider_errors",
            "Failed credential refreshes, by reason (exit, timeout, spawn, output_too_large, malformed, wrong_kind, wrong_api_version, invalid_cache, no_credentials, invalid_key, write, conflict)",
            provider_errors.clone(),
        );
        let provider_expiry = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "provider_credentials_expiry_timestamp_seconds",
            "When the credentials in force expire (issue time plus the plugin's cacheDuration), in seconds since the epoch; set by the Lease holder",
            provider_expiry.clone(),
        );
        let provider_last_refresh = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "provider_last_refresh_timestamp_seconds",
            "When the credentials in force were issued (the last successful refresh), in seconds since the epoch; set by the Lease holder",
            provider_last_refresh.clone(),
        );
        Self {
            registry: root,
            provider_refreshes,
            provider_errors,
            provider_expiry,
            provider_last_refresh,
            admissions,
            skipped,
            certificate_expiry,
            source_synced,
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

    pub fn skipped(&self, reason: &'static str) {
        self.skipped.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// The serving certificate's notAfter, in seconds since the Unix epoch.
    pub fn set_certificate_expiry(&self, not_after: i64) {
        self.certificate_expiry.set(not_after);
    }

    /// A copy of `source` (`namespace/name`) was written or found current just now.
    pub fn source_synced(&self, source: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.source_synced
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .set(now);
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

    pub fn provider_refreshed(&self, secret: &str, provider: &str) {
        self.provider_refreshes
            .get_or_create(&ProviderResultLabels {
                secret: secret.to_string(),
                provider: provider.to_string(),
                result: "success",
            })
            .inc();
    }

    pub fn provider_failed(&self, secret: &str, provider: &str, reason: &'static str) {
        self.provider_refreshes
            .get_or_create(&ProviderResultLabels {
                secret: secret.to_string(),
                provider: provider.to_string(),
                result: "failure",
            })
            .inc();
        self.provider_errors
            .get_or_create(&ProviderReasonLabels {
                secret: secret.to_string(),
                provider: provider.to_string(),
                reason,
            })
            .inc();
    }

    /// The credentials in force for `secret`: issued and expiring at these epoch seconds.
    pub fn provider_credentials(&self, secret: &str, provider: &str, issued: i64, expires: i64) {
        let labels = ProviderLabels {
            secret: secret.to_string(),
            provider: provider.to_string(),
        };
        self.provider_last_refresh
            .get_or_create(&labels)
            .set(issued);
        self.provider_expiry.get_or_create(&labels).set(expires);
    }

    /// A replica that stops refreshing (its Lease term ended) stops reporting the timestamps,
    /// which the next holder reports.
    pub fn provider_forget(&self, secret: &str, provider: &str) {
        let labels = ProviderLabels {
            secret: secret.to_string(),
            provider: provider.to_string(),
        };
        self.provider_last_refresh.remove(&labels);
        self.provider_expiry.remove(&labels);
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
        m.skipped("no_match");
        m.set_certificate_expiry(1_900_000_000);
        m.source_synced("injector/regcred");
        m.certificate_error("forbidden");
        m.provider_refreshed("ecr", "ecr-credential-provider");
        m.provider_failed("ecr", "ecr-credential-provider", "timeout");
        m.provider_credentials(
            "ecr",
            "ecr-credential-provider",
            1_764_300_000,
            1_764_343_200,
        );
        let text = m.render();
        for line in [
            "pullsecret_injector_skipped_admissions_total{reason=\"no_match\"} 1",
            "pullsecret_injector_certificate_expiry_timestamp_seconds 1900000000",
            "pullsecret_injector_source_last_sync_timestamp_seconds{source=\"injector/regcred\"} ",
            "pullsecret_injector_admission_duration_seconds_bucket{le=\"30.0\"} 1",
            "pullsecret_injector_admission_duration_seconds_bucket{le=\"0.0001\"} 1",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "pullsecret_injector_admissions_total{operation=\"CREATE\",result=\"patched\"} 1",
            "pullsecret_injector_injected_secrets_total{secret=\"acme\"} 1",
            "pullsecret_injector_bad_requests_total{reason=\"invalid_json\"} 1",
            "pullsecret_injector_certificate_reloads_total{result=\"error\"} 1",
            "pullsecret_injector_certificate_errors_total{reason=\"forbidden\"} 1",
            "pullsecret_injector_admission_duration_seconds_count 1",
            "pullsecret_injector_open_connections 0",
            "pullsecret_injector_log_lines_dropped_total ",
            "pullsecret_injector_provider_refreshes_total{secret=\"ecr\",provider=\"ecr-credential-provider\",result=\"success\"} 1",
            "pullsecret_injector_provider_refreshes_total{secret=\"ecr\",provider=\"ecr-credential-provider\",result=\"failure\"} 1",
            "pullsecret_injector_provider_errors_total{secret=\"ecr\",provider=\"ecr-credential-provider\",reason=\"timeout\"} 1",
            "pullsecret_injector_provider_credentials_expiry_timestamp_seconds{secret=\"ecr\",provider=\"ecr-credential-provider\"} 1764343200",
            "pullsecret_injector_provider_last_refresh_timestamp_seconds{secret=\"ecr\",provider=\"ecr-credential-provider\"} 1764300000",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let build = format!(
            "pullsecret_injector_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "missing {build:?} in\n{text}");
        assert!(
            !text.contains("le=\"+Inf\"} 0"),
            "the 80 µs review is in every bucket from 100 µs on:\n{text}"
        );
        m.provider_forget("ecr", "ecr-credential-provider");
        assert!(!m.render().contains("expiry_timestamp_seconds{"));
    }
}
