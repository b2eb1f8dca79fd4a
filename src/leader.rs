//! Leader election: every replica competes for the Lease; the holder alone runs the leader's
//! duties (replication, the self-managed certificate) and stops them when it loses it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::kubernetes::FIELD_MANAGER;
use crate::metrics::Metrics;

/// Backoff while the Lease cannot be read or created (apiserver unreachable, RBAC).
const LEASE_RETRY_MIN: Duration = Duration::from_secs(1);
const LEASE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Competes for the Lease of `settings` as `identity` and, each time it is won, runs
/// `duties` until the Lease is lost or `stop` fires; a duty that panics is reported and the
/// replica goes on holding the Lease.
pub async fn lead<D, F>(
    client: Client,
    settings: Arc<Settings>,
    identity: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    duties: D,
) where
    D: Fn(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let le = &settings.leader_election;
    let duration = le.lease_duration_seconds;
    // Building the manager reads (or creates) the Lease: when the apiserver cannot be reached
    // yet, try again with backoff instead of never leading.
    let mut retry_in = LEASE_RETRY_MIN;
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), &le.lease_name)
            .with_namespace(&settings.namespace)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace(duration / 3)
            .with_field_manager(FIELD_MANAGER)
            .build()
            .await;
        match built {
            Ok(manager) => break manager,
            Err(error) => {
                metrics.replication_error("lease");
                tracing::error!(
                    %error,
                    retry_in_seconds = retry_in.as_secs(),
                    "cannot set up leader election; retrying"
                );
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry_in) => {}
                }
                retry_in = (retry_in * 2).min(LEASE_RETRY_MAX);
            }
        }
    };
    let (mut leader, lease_task) = manager.watch().await;
    loop {
        // Wait to become the leader.
        while !*leader.borrow_and_update() {
            tokio::select! {
                _ = stop.cancelled() => { drop(leader); let _ = lease_task.await; return; }
                changed = leader.changed() => if changed.is_err() { return; },
            }
        }
        tracing::info!(identity, lease = %le.lease_name, "became the leader; replicating");
        metrics.set_leader(true);
        let term = CancellationToken::new();
        let running = tokio::spawn(duties(term.clone()));
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = async { while *leader.borrow_and_update() { if leader.changed().await.is_err() { break; } } } => {
                tracing::warn!(identity, "lost the lease; stopped replicating");
            }
        }
        term.cancel();
        if let Err(error) = running.await {
            tracing::error!(%error, "the leader's duties failed");
        }
        metrics.set_leader(false);
        if stop.is_cancelled() {
            // Dropping the receiver makes the lease task release the Lease for a fast hand-over.
            drop(leader);
            let _ = lease_task.await;
            return;
        }
    }
}
