//! Inputs the fuzz targets (fuzz/, `make fuzz`) once failed on, kept in
//! `fuzz/regressions/<target>/` and replayed here through the same entry points and checks,
//! so that `cargo test` guards them without the fuzzing toolchain.

use std::path::Path;

use pullsecret_injector::admission::{self, ClusterView, Outcome};
use pullsecret_injector::config::Config;
use pullsecret_injector::image::ImageName;
use pullsecret_injector::matching::Pattern;

/// The handler target's configuration (fuzz/fuzz_targets/handler.rs).
const HANDLER_CONFIG: &str = include_str!("../fuzz/handler-config.yaml");

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut inputs: Vec<_> = entries
        .map(|e| e.expect("directory entry").path())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read input");
            (p.display().to_string(), bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn handler_inputs_are_answered_and_allowed() {
    let settings = Config::from_yaml(HANDLER_CONFIG)
        .expect("config")
        .validate()
        .expect("valid");
    for (name, body) in inputs("handler") {
        if let Ok(reviewed) = admission::decode(&body)
            .and_then(|d| admission::review(&settings, &ClusterView::offline(&settings), d))
        {
            let response = &reviewed.response.response.admission;
            assert!(response.allowed, "{name}");
            assert_eq!(response.uid, reviewed.uid, "{name}");
            assert_eq!(
                reviewed.response.patch().is_some(),
                matches!(reviewed.outcome, Outcome::Patched(_)),
                "{name}"
            );
        }
    }
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
        .find(|(name, _)| name.ends_with("invalid-utf8-in-ignored-field.json"))
        .expect("the regression input");
    assert!(std::str::from_utf8(&body).is_err());
    let reviewed = admission::decode(&body)
        .and_then(|d| admission::review(&settings, &ClusterView::offline(&settings), d))
        .expect("answered");
    assert_eq!(reviewed.outcome.injected(), ["corp"]);
}

#[test]
fn image_pattern_and_config_inputs_do_not_panic() {
    for (_, bytes) in inputs("image") {
        let _ = ImageName::parse(&String::from_utf8_lossy(&bytes));
    }
    for (_, bytes) in inputs("pattern") {
        for raw in String::from_utf8_lossy(&bytes).split([' ', '\n']) {
            let _ = Pattern::parse(raw);
        }
    }
    for (_, bytes) in inputs("config") {
        if let Ok(config) = Config::from_yaml(&String::from_utf8_lossy(&bytes)) {
            let _ = config.validate();
        }
    }
}
