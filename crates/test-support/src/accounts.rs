//! Credentials other than the admin's: a ServiceAccount's token and a kubeconfig that uses
//! it, for tests that run the injector with exactly the permissions it is given.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ObjectMeta, PostParams};

/// A token for `namespace/name` from the TokenRequest API, valid for three hours: longer than
/// any suite or benchmark runs.
pub async fn service_account_token(client: &kube::Client, namespace: &str, name: &str) -> String {
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3 * 3600),
            ..TokenRequestSpec::default()
        }),
        status: None,
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("TokenRequest status with a token")
}

/// Writes a kubeconfig for `server` (trusting `ca_pem`) that authenticates with `token`.
pub fn token_kubeconfig(dir: &Path, server: &str, ca_pem: &str, token: &str) -> PathBuf {
    let ca = dir.join("apiserver-ca.crt");
    std::fs::write(&ca, ca_pem).expect("write CA");
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: sa\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: sa\n\
         current-context: test\n",
        ca = ca.display()
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// A client that authenticates with the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("load kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// The HTTP status of a failed API call (0 when it succeeded or failed otherwise).
pub fn status_of<T>(result: &Result<T, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        _ => 0,
    }
}
