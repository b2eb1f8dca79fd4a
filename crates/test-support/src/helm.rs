//! The pinned helm from `make controlplane`.

use std::process::Command;

use crate::controlplane;

/// `helm` with its own state (cache, repositories, plugins) under `target/`, not in `$HOME`,
/// and none of the caller's kube context: add `--kubeconfig` to reach a cluster.
pub fn command() -> Command {
    let home = crate::repo_root().join("target/tmp/helm-home");
    let mut command = Command::new(controlplane::binary("helm"));
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .env_remove("HELM_KUBECONTEXT")
        .env_remove("HELM_NAMESPACE");
    command
}
