//! Inputs kept in `fuzz/regressions/<target>/` (what a fuzz target once failed on, and edge
//! inputs named for the boundary they hold), replayed through the very checks the fuzz
//! targets run (`test_support::fuzz_checks`), so that `cargo test` guards them without the
//! fuzzing toolchain. Every target's directory must hold at least one input.

use std::path::Path;

use pullsecret_injector::admission::{self, ClusterView};
use pullsecret_injector::config::{Config, ConfigError};
use pullsecret_injector::image::ImageName;
use pullsecret_injector::matching::Pattern;
use test_support::fuzz_checks::{self, HANDLER_CONFIG};

/// The inputs kept for `target`, by file name; panics when there are none.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut inputs: Vec<_> = entries
        .map(|e| e.expect("directory entry").path())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read input");
            let name = p.file_name().expect("file name").to_string_lossy().into();
            (name, bytes)
        })
        .collect();
    inputs.sort();
    assert!(
        !inputs.is_empty(),
        "{} holds no input: keep at least one per target",
        dir.display()
    );
    inputs
}

/// Runs `check` on every input of `target`, naming the input that fails.
fn replay(target: &str, check: fn(&[u8])) -> Vec<(String, Vec<u8>)> {
    let inputs = inputs(target);
    for (name, bytes) in &inputs {
        if let Err(panic) = std::panic::catch_unwind(|| check(bytes)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("fuzz/regressions/{target}/{name}: {message}");
        }
    }
    inputs
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("a UTF-8 input")
}

#[test]
fn image_inputs_pass_the_image_checks() {
    for (name, bytes) in replay("image", fuzz_checks::image) {
        // Each parses, so that the normalization checks ran on it.
        ImageName::parse(text(&bytes)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn pattern_inputs_pass_the_keyring_checks() {
    for (name, bytes) in replay("pattern", fuzz_checks::pattern) {
        let mut lines = text(&bytes).split('\n');
        for raw in lines.next().unwrap_or_default().split(' ') {
            Pattern::parse(raw).unwrap_or_else(|e| panic!("{name}: pattern {raw:?}: {e}"));
        }
        for image in lines {
            ImageName::parse(image).unwrap_or_else(|e| panic!("{name}: image {image:?}: {e}"));
        }
    }
}

#[test]
fn config_inputs_pass_the_config_checks() {
    let mut valid = 0;
    let mut invalid = 0;
    for (name, bytes) in replay("config", fuzz_checks::config) {
        let config = Config::from_yaml(text(&bytes)).unwrap_or_else(|e| panic!("{name}: {e}"));
        match config.validate() {
            Ok(_) => valid += 1,
            Err(ConfigError::Invalid(fields)) => {
                assert!(fields.len() >= 10, "{name}: only {fields:?}");
                invalid += 1;
            }
            Err(other) => panic!("{name}: {other}"),
        }
    }
    assert!(
        valid >= 1 && invalid >= 1,
        "a valid and an invalid config ({valid} valid, {invalid} invalid)"
    );
}

#[test]
fn handler_inputs_pass_the_handler_checks() {
    replay("handler", fuzz_checks::handler);
}

/// Invalid UTF-8 inside a field the decoder ignores (`userInfo`): serde_json skips it
/// unchecked, so the review is answered as usual (the apiserver never sends such bytes; the
/// fuzz oracle had assumed every accepted body parses as a `serde_json::Value`).
#[test]
fn invalid_utf8_in_an_ignored_field_is_answered() {
    let settings = Config::from_yaml(HANDLER_CONFIG)
        .expect("config")
        .validate()
        .expect("valid");
    let (_, body) = inputs("handler")
        .into_iter()
        .find(|(name, _)| name == "invalid-utf8-in-ignored-field.json")
        .expect("the regression input");
    assert!(std::str::from_utf8(&body).is_err());
    let reviewed = admission::decode(&body)
        .and_then(|d| admission::review(&settings, &ClusterView::offline(&settings), d))
        .expect("answered");
    assert_eq!(reviewed.outcome.injected(), ["corp"]);
}
