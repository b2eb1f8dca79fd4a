//! Secrets for the end-to-end tests: builders, registry credentials as `kubectl create secret
//! docker-registry` writes them, and the API calls the suites make on Secrets.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

pub const DOCKERCONFIGJSON: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";

/// Secret `name` of type `type_` with `data` (key, bytes).
pub fn secret(name: &str, type_: &str, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        type_: Some(type_.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A dockerconfigjson Secret (without namespace) holding `dockerconfigjson`.
pub fn pull_secret(name: &str, dockerconfigjson: &[u8]) -> Secret {
    secret(
        name,
        DOCKERCONFIGJSON,
        &[(DOCKERCONFIGJSON_KEY, dockerconfigjson)],
    )
}

/// Registry credentials as `kubectl create secret docker-registry` writes them.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(registry: &str, username: &str, password: &str) -> Self {
        Self {
            registry: registry.into(),
            username: username.into(),
            password: password.into(),
        }
    }

    /// `base64(user:password)`, the `auth` field.
    pub fn auth(&self) -> String {
        base64(format!("{}:{}", self.username, self.password).as_bytes())
    }

    /// The `.dockerconfigjson` bytes of these credentials alone.
    pub fn dockerconfigjson(&self) -> Vec<u8> {
        dockerconfigjson(std::slice::from_ref(self))
    }
}

/// A `.dockerconfigjson` with one `auths` entry per credentials.
pub fn dockerconfigjson(credentials: &[Credentials]) -> Vec<u8> {
    let auths: serde_json::Map<String, serde_json::Value> = credentials
        .iter()
        .map(|c| {
            (
                c.registry.clone(),
                json!({"username": c.username, "password": c.password, "auth": c.auth()}),
            )
        })
        .collect();
    serde_json::to_vec(&json!({ "auths": auths })).expect("JSON")
}

/// Standard base64 with padding (what the API uses for Secret data).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub async fn create_secret(client: &kube::Client, namespace: &str, secret: &Secret) -> Secret {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), secret)
        .await
        .unwrap_or_else(|e| panic!("creating a Secret in {namespace}: {e}"))
}

pub async fn get_secret(client: &kube::Client, namespace: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("getting Secret {namespace}/{name}: {e}"))
}

/// Replaces a pull secret's `.dockerconfigjson` with one of `credentials`; returns the stored
/// Secret.
pub async fn rotate(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    credentials: &[Credentials],
) -> Secret {
    let patch = json!({"data": {DOCKERCONFIGJSON_KEY: ByteString(dockerconfigjson(credentials))}});
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("rotating {namespace}/{name}: {e}"))
}

/// The Secret's data (empty when it has none).
pub fn data_of(secret: &Secret) -> BTreeMap<String, ByteString> {
    secret.data.clone().unwrap_or_default()
}
