//! Images without a Docker engine: layers written with `tar`, assembled and pushed by crane
//! (`make registry-tools`), into the registries of [`crate::registry`].
//!
//! ```ignore
//! let a = &registry::shared().a;
//! let app = images::push_test_image(a, "app", "v1");      // as A's user
//! app.reference;                                           // "127.0.0.1:PORT/app:v1"
//! let injector = images::push_injector_image(a, "pullsecret-injector", "test");
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use crate::registry::{Login, Registry, tool};

/// A label every test image carries, so a test can tell it from another image.
pub const TEST_IMAGE_LABEL: &str = "org.opencontainers.image.title=pullsecret-injector test image";

/// An image pushed to a registry.
#[derive(Clone, Debug)]
pub struct Image {
    /// `host/repository:tag`.
    pub reference: String,
    /// `sha256:…` of the manifest.
    pub digest: String,
}

impl Image {
    /// `host/repository@sha256:…`.
    pub fn pinned(&self) -> String {
        let repository = self
            .reference
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map_or(self.reference.as_str(), |(repository, _)| repository);
        format!("{repository}@{}", self.digest)
    }
}

/// Pushes the test image as `registry`'s own user: one layer with the static `sleeper` at
/// `/sleeper` (tests/registry/sleeper), which prints "pullsecret-injector test image
/// <repository>:<tag>" and then waits for SIGTERM (exits 0 at once). OCI media types, no
/// shell.
pub fn push_test_image(registry: &Registry, repository: &str, tag: &str) -> Image {
    let layer = sleeper_layer(registry);
    let reference = registry.image(repository, tag);
    let message = format!("pullsecret-injector test image {repository}:{tag}");
    assemble(
        registry,
        &reference,
        &layer,
        &[
            "--entrypoint=/sleeper",
            &format!("--cmd={message}"),
            &format!("--label={TEST_IMAGE_LABEL}"),
        ],
    )
}

/// Runs `image/build.sh` (what `make image` runs) to push the injector's image as
/// `registry`'s user to `<host>/<repository>:<tag>`. Needs the release binary (`make build`).
pub fn push_injector_image(registry: &Registry, repository: &str, tag: &str) -> Image {
    let repo = crate::repo_root();
    let binary = repo.join("target/release/pullsecret-injector");
    assert!(
        binary.is_file(),
        "{} not found: the image is assembled from the release binary; run `make build`",
        binary.display()
    );
    let output = run(
        Command::new(repo.join("image/build.sh"))
            .args(["--registry", registry.host(), "--repository", repository])
            .args(["--tag", tag])
            .envs(registry.client_env(Login::Own))
            .stdin(Stdio::null()),
        "image/build.sh",
    );
    let pinned = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    let digest = pinned
        .rsplit_once('@')
        .map(|(_, digest)| digest.to_string())
        .unwrap_or_else(|| panic!("image/build.sh printed no image digest: {pinned:?}"));
    Image {
        reference: registry.image(repository, tag),
        digest,
    }
}

/// The image config (`crane config`) of `reference`, read as `registry`'s user.
pub fn config(registry: &Registry, reference: &str) -> serde_json::Value {
    let output = run(
        registry.crane(Login::Own).args(["config", reference]),
        "crane config",
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("crane config {reference}: not JSON: {e}"))
}

/// The image's files, flattened (`crane export`), unpacked into `dir` with their owners
/// (as root) and modes: a rootfs for runc.
pub fn unpack(registry: &Registry, reference: &str, dir: &Path) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let tar = dir.with_extension("tar");
    run(
        registry
            .crane(Login::Own)
            .args(["export", reference])
            .arg(&tar),
        "crane export",
    );
    run(
        Command::new("tar")
            .args(["--extract", "--same-owner", "--same-permissions", "--file"])
            .arg(&tar)
            .arg("--directory")
            .arg(dir),
        "unpacking the image",
    );
    let _ = fs::remove_file(&tar);
}

/// Pushes `layer` on an empty OCI base as `reference`, then sets the config with
/// `crane mutate` `flags`.
fn assemble(registry: &Registry, reference: &str, layer: &Path, flags: &[&str]) -> Image {
    run(
        registry
            .crane(Login::Own)
            .args(["append", "--oci-empty-base", "--new_layer"])
            .arg(layer)
            .args(["--new_tag", reference]),
        "crane append",
    );
    let output = run(
        registry
            .crane(Login::Own)
            .args(["mutate", reference, "--tag", reference])
            .arg("--set-platform=linux/amd64")
            .args(flags),
        "crane mutate",
    );
    let pinned = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let digest = pinned
        .rsplit_once('@')
        .map(|(_, digest)| digest.to_string())
        .unwrap_or_else(|| panic!("crane mutate printed no digest: {pinned:?}"));
    Image {
        reference: reference.to_string(),
        digest,
    }
}

/// A layer with `/sleeper` (0755, root), written once per registry.
fn sleeper_layer(registry: &Registry) -> PathBuf {
    // Tests push in parallel: one writer, and nobody reads a half-written layer.
    static WRITING: Mutex<()> = Mutex::new(());
    let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = registry.scratch_dir();
    let layer = scratch.join("sleeper-layer.tar");
    if layer.is_file() {
        return layer;
    }
    let root = scratch.join("sleeper-root");
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
    fs::copy(tool("sleeper"), root.join("sleeper"))
        .unwrap_or_else(|e| panic!("copying the sleeper: {e}"));
    run(
        Command::new("tar")
            .args(["--create", "--file"])
            .arg(&layer)
            .arg("--directory")
            .arg(&root)
            .args(["--sort=name", "--mtime=@0", "--numeric-owner"])
            .args(["--owner=0", "--group=0", "--mode=go-w", "sleeper"]),
        "writing the sleeper layer",
    );
    layer
}

/// Runs `command`, panics with its stderr unless it succeeds.
fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {command:?}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
