//! The harness of pullsecret-injector's suites (tests/), benchmarks (benches/) and fuzz
//! regressions: one helper per concept, so that every suite starts, builds and waits for
//! things the same way.
//!
//! | concept | module |
//! |---|---|
//! | a real control plane (etcd, kube-apiserver, kube-controller-manager), namespaces, polling | [`controlplane`] |
//! | a real node beside it (containerd, runc, the CNI bridge, the kubelet, kube-scheduler) | [`node`] |
//! | the pinned helm | [`helm`] |
//! | private registries on loopback (TLS, htpasswd), their logs, containerd's hosts.toml | [`registry`] |
//! | images without Docker: the test image, the pause archive, the injector's image | [`images`] |
//! | the `pullsecret-injector serve` binary, its logs and metrics | [`injector`] |
//! | printing logs when a test fails | [`logs`] |
//! | the registry-matching specification (matching-cases.tsv) | [`matching_cases`] |
//! | Prometheus text | [`metrics`] |
//! | test CAs, serving certificates, Secrets mounted like the kubelet mounts them | [`pki`] |
//! | free loopback ports | [`ports`] |
//! | Pods, dry-run creates, AdmissionReviews | [`pods`] |
//! | Secrets and registry credentials | [`secrets`] |
//! | copies made by replication, and the config that asks for them | [`replication`] |
//! | credential provider plugins: the fake plugin, its directory and kubelet config | [`providers`] |
//! | MutatingWebhookConfigurations | [`webhook`] |
//! | ServiceAccount tokens and the kubeconfigs that use them | [`accounts`] |
//! | the chart's RBAC and Secret policy for an injector under test, and its token | [`access`] |
//! | a TLS client that talks like the apiserver | [`client`] |
//! | the fuzz targets' checks, shared with their regression replay | [`fuzz_checks`] |
//! | hostile clients and a measured valid load | [`adversary`] |

pub mod access;
pub mod accounts;
pub mod adversary;
pub mod client;
pub mod controlplane;
pub mod fuzz_checks;
pub mod helm;
pub mod images;
pub mod injector;
pub mod logs;
pub mod matching_cases;
pub mod metrics;
pub mod node;
pub mod pki;
pub mod pods;
pub mod ports;
pub mod providers;
pub mod registry;
pub mod replication;
pub mod secrets;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root (this crate lives in `crates/test-support`): where `.cache/` and
/// `target/` are.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// Keeps `command`'s traffic to loopback off any proxy in the environment: the servers the
/// tests start call each other on 127.0.0.1.
pub fn loopback_only(command: &mut Command) -> &mut Command {
    command
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env("NO_PROXY", "127.0.0.1,localhost")
}
