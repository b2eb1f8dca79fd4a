//! One Rust release everywhere: rust-toolchain.toml (what rustup runs here and in CI), the
//! crates' rust-version and the Dockerfile's builder image name the same one.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of `key = "value"` on a line of its own.
fn quoted(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.trim().strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_string())
    })
}

#[test]
fn toolchain_rust_version_and_docker_builder_agree() {
    let channel = quoted(&read("rust-toolchain.toml"), "channel").expect("a pinned channel");
    let parts: Vec<&str> = channel.split('.').collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "rust-toolchain.toml pins an exact release, not {channel:?}"
    );
    let minor = parts[..2].join(".");
    for manifest in ["Cargo.toml", "crates/test-support/Cargo.toml"] {
        assert_eq!(
            quoted(&read(manifest), "rust-version").as_deref(),
            Some(minor.as_str()),
            "{manifest}'s rust-version"
        );
    }
    let builder = read("Dockerfile")
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:").map(str::to_string))
        .expect("a rust builder stage");
    assert!(
        builder.starts_with(&format!("{channel}-")),
        "the Dockerfile builds with rust:{builder}, the toolchain is {channel}"
    );
}
