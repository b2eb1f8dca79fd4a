//! Credential provider plugins for the suites: the fake plugin (crates/fake-credential-provider,
//! speaking the kubelet's protocol), built on demand, a plugin directory and kubelet
//! CredentialProviderConfig naming it, and what it issued.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use crate::secrets::DOCKERCONFIGJSON_KEY;

/// The fake plugin, built once per test binary with the cargo that runs the tests (it takes
/// seconds: its only dependency is serde_json).
pub fn fake_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(crate::repo_root())
            .args([
                "build",
                "--locked",
                "--quiet",
                "-p",
                "fake-credential-provider",
                "--message-format=json",
            ])
            .output()
            .expect("running cargo build -p fake-credential-provider");
        assert!(
            out.status.success(),
            "cargo build -p fake-credential-provider failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|m| {
                (m["reason"] == "compiler-artifact"
                    && m["target"]["name"] == "fake-credential-provider")
                    .then(|| m["executable"].as_str().map(PathBuf::from))
                    .flatten()
            })
            .expect("cargo reported the fake plugin's executable")
    })
}

/// A plugin directory holding the fake plugin as provider `name`, its state directory, and a
/// kubelet CredentialProviderConfig for it.
pub struct FakeProvider {
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl FakeProvider {
    /// Provider `name` matching `match_images`, whose plugin answers with `cache_duration`
    /// (none: the provider's `default_cache_duration` applies).
    pub fn new(
        name: &str,
        match_images: &[&str],
        cache_duration: Option<&str>,
        default_cache_duration: &str,
    ) -> Self {
        Self::with_args(
            name,
            match_images,
            cache_duration,
            default_cache_duration,
            &[],
        )
    }

    /// [`Self::new`], with more plugin flags (`--username U`, `--htpasswd FILE`, `--key K`).
    pub fn with_args(
        name: &str,
        match_images: &[&str],
        cache_duration: Option<&str>,
        default_cache_duration: &str,
        extra_args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let provider = Self {
            name: name.to_string(),
            dir,
        };
        std::fs::create_dir(provider.bin_dir()).expect("bin dir");
        std::fs::create_dir(provider.state_dir()).expect("state dir");
        std::os::unix::fs::symlink(fake_plugin(), provider.bin_dir().join(name))
            .expect("link the plugin");
        let mut args = vec![
            "--state-dir".to_string(),
            provider.state_dir().display().to_string(),
        ];
        if let Some(duration) = cache_duration {
            args.extend(["--cache-duration".to_string(), duration.to_string()]);
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let config = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1",
            "kind": "CredentialProviderConfig",
            "providers": [{
                "name": name,
                "matchImages": match_images,
                "defaultCacheDuration": default_cache_duration,
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "args": args,
            }],
        });
        std::fs::write(provider.config_file(), config.to_string()).expect("write the config");
        provider
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("providers.json")
    }

    /// The injector config's `credentialProviders` block for this provider.
    pub fn config_block(&self, timeout_seconds: u64) -> String {
        format!(
            "credentialProviders:\n  configFile: {}\n  binDir: {}\n  timeoutSeconds: {timeout_seconds}\n",
            self.config_file().display(),
            self.bin_dir().display()
        )
    }

    /// How the plugin behaves from its next run on: `ok`, `fail`, `leak`, `malformed`,
    /// `wrong-api-version`, `wrong-kind`, `empty`, `hang`.
    pub fn set_mode(&self, mode: &str) {
        let path = self.state_dir().join("mode");
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, mode).expect("write the mode");
        std::fs::rename(&temporary, &path).expect("set the mode");
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        std::fs::read_to_string(self.state_dir().join("counter"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The last token issued.
    pub fn token(&self) -> Option<String> {
        std::fs::read_to_string(self.state_dir().join("token")).ok()
    }

    /// Every request the plugin was sent, in order.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state_dir().join("requests"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON request per line"))
            .collect()
    }
}

/// The `auths` of a dockerconfigjson Secret, as JSON (`{}` when it has none).
pub fn auths_of(secret: &Secret) -> Value {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(DOCKERCONFIGJSON_KEY))
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes.0).ok())
        .map(|json| json["auths"].clone())
        .unwrap_or_else(|| serde_json::json!({}))
}

/// The password a dockerconfigjson Secret holds for `key`.
pub fn password_of(secret: &Secret, key: &str) -> Option<String> {
    auths_of(secret)[key]["password"].as_str().map(String::from)
}
