//! The cluster part of self-managed certificates: every replica serves the pair that the
//! Secret holds; the leader creates, renews and rolls it over, and keeps the caBundle of the
//! webhook configuration current: a new CA is written into the bundle, and the Secret marked
//! so, before it signs what replicas serve (see `pair`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::pair::{self, Certificates, Lifetimes};
use crate::config::CertificatesConfig;
use crate::kubernetes::{FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, watch_backoff};
use crate::metrics::Metrics;
use crate::tls::CertResolver;

#[derive(Debug, Error)]
pub enum KeeperError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Generate(#[from] pair::PairError),
}

impl KeeperError {
    /// The `reason` of `certificate_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(status)) if status.is_forbidden() => "forbidden",
            Self::Kube(kube::Error::Api(status)) if status.is_conflict() => "conflict",
            Self::Kube(_) => "api",
            Self::Generate(_) => "generate",
        }
    }
}

/// How long a new caBundle is given to reach every apiserver (their informers watch the
/// webhook configuration) before a CA in it signs what replicas serve: a check interval, and
/// never less than this.
const MIN_SETTLE: Duration = Duration::from_secs(10);

/// Every replica: installs the Secret's serving pair whenever it changes.
pub async fn follow_secret(
    client: Client,
    namespace: String,
    config: CertificatesConfig,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let api = Api::<Secret>::namespaced(client, &namespace);
    let watch = watcher::Config::default().fields(&format!("metadata.name={}", config.secret_name));
    let origin = format!("secret {namespace}/{}", config.secret_name);
    let mut stream = std::pin::pin!(
        watcher(api, watch)
            .backoff(watch_backoff())
            .applied_objects()
    );
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(secret)) => {
                let Some(Certificates { pair, .. }) = pair::from_secret(&secret) else {
                    tracing::warn!(secret = %origin, "certificate secret is incomplete; waiting for the leader");
                    continue;
                };
                match resolver.install_pem(
                    pair.cert.as_bytes(),
                    pair.key.as_bytes(),
                    Path::new(&origin),
                ) {
                    Ok(()) => {
                        metrics.certificate_reloaded(true);
                        let ca_sha256 = pair::fingerprints(&pair.ca_cert).join(",");
                        tracing::info!(secret = %origin, not_after = pair.cert_not_after, ca_sha256, "serving certificate loaded");
                    }
                    Err(error) => {
                        metrics.certificate_reloaded(false);
                        tracing::error!(secret = %origin, %error, "certificate not loaded; still serving the previous one");
                    }
                }
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "watching the certificate secret failed; retrying")
            }
            None => return,
        }
    }
}

/// The leader: checks every `checkIntervalSeconds` that the pair exists and is fresh, and
/// that the webhook trusts its CA.
pub async fn keep(
    client: Client,
    namespace: String,
    config: CertificatesConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let interval = Duration::from_secs(config.check_interval_seconds);
    loop {
        if let Err(error) = keep_once(&client, &namespace, &config).await {
            metrics.certificate_error(error.metric_label());
            tracing::error!(%error, "keeping the webhook certificate failed; retrying");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

pub async fn keep_once(
    client: &Client,
    namespace: &str,
    config: &CertificatesConfig,
) -> Result<(), KeeperError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let lifetimes = Lifetimes {
        ca: Duration::from_secs(config.ca_validity_seconds),
        serving: Duration::from_secs(config.serving_validity_seconds),
    };
    let settle = Duration::from_secs(config.check_interval_seconds).max(MIN_SETTLE);
    let mut hosts = pair::service_dns_names(&config.service_name, namespace);
    hosts.extend(config.extra_hosts.iter().cloned());
    let mut existing = secrets.get_opt(&config.secret_name).await?;
    let stored = existing.as_ref().and_then(pair::from_secret);
    let steps = pair::plan(stored.as_ref(), lifetimes, settle, pair::now());
    let mut certificates = match (steps.is_empty(), stored) {
        (true, Some(stored)) => stored,
        (_, stored) => {
            let certificates = pair::apply(stored, &steps, &hosts, lifetimes)?;
            existing =
                Some(write(&secrets, &params, config, existing.as_ref(), &certificates).await?);
            tracing::info!(
                secret = %config.secret_name,
                ?steps,
                not_after = certificates.pair.cert_not_after,
                ca_not_after = certificates.pair.ca_not_after,
                "webhook certificate written"
            );
            certificates
        }
    };
    let in_place = ensure_ca_bundle(
        client,
        &config.webhook_configuration_name,
        certificates.ca_bundle().as_bytes(),
        &params,
    )
    .await?;
    // The next CA may sign once this bundle has settled: record when it was written.
    if in_place && certificates.mark_next_ca_trusted(pair::now()) {
        write(&secrets, &params, config, existing.as_ref(), &certificates).await?;
        tracing::info!(secret = %config.secret_name, "the next CA is in the caBundle; it signs after the bundle settles");
    }
    Ok(())
}

/// Creates or replaces (at the version read) the certificate Secret.
async fn write(
    secrets: &Api<Secret>,
    params: &PostParams,
    config: &CertificatesConfig,
    existing: Option<&Secret>,
    certificates: &Certificates,
) -> Result<Secret, KeeperError> {
    let labels = [(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into();
    let namespace = secrets.namespace().unwrap_or_default();
    let mut secret = pair::to_secret(&config.secret_name, namespace, certificates, labels);
    Ok(match existing {
        None => secrets.create(params, &secret).await?,
        Some(old) => {
            secret.metadata.resource_version = old.resource_version();
            secrets
                .replace(&config.secret_name, params, &secret)
                .await?
        }
    })
}

/// Sets the caBundle of every webhook in our configuration; writes only when it differs.
/// Whether the configuration now carries it (false: there is no such configuration).
async fn ensure_ca_bundle(
    client: &Client,
    name: &str,
    ca: &[u8],
    params: &PostParams,
) -> Result<bool, KeeperError> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let Some(mut configuration) = api.get_opt(name).await? else {
        tracing::warn!(
            webhook_configuration = name,
            "webhook configuration not found; caBundle not set"
        );
        return Ok(false);
    };
    let mut changed = false;
    for webhook in configuration.webhooks.iter_mut().flatten() {
        if webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            != Some(ca)
        {
            webhook.client_config.ca_bundle = Some(ByteString(ca.to_vec()));
            changed = true;
        }
    }
    if changed {
        api.replace(name, params, &configuration).await?;
        let cas = pair::fingerprints(&String::from_utf8_lossy(ca)).join(",");
        tracing::info!(webhook_configuration = %configuration.name_any(), ca_sha256 = cas, "caBundle updated");
    }
    Ok(true)
}
