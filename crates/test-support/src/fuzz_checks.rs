//! The checks of the fuzz targets, one function per target: the fuzzer (fuzz/fuzz_targets)
//! runs them on what it generates, tests/fuzz_regressions.rs on every input kept in
//! `fuzz/regressions/<target>/`. Each panics when a property does not hold.

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use pullsecret_injector::admission::{self, ClusterView, Outcome};
use pullsecret_injector::config::{Config, ConfigError, Settings};
use pullsecret_injector::image::ImageName;
use pullsecret_injector::matching::{Keyring, MatchKind, Pattern};
use pullsecret_injector::metrics::Metrics;
use pullsecret_injector::server::{AppState, router};
use serde_json::Value;
use tower::ServiceExt;

/// The handler target's configuration, shared with its regression replay.
pub const HANDLER_CONFIG: &str = include_str!("../../../fuzz/handler-config.yaml");

/// Image references: any text either parses or is refused, never panics, and what parses is
/// a normalized name that parses to itself.
pub fn image(data: &[u8]) {
    let Ok(reference) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(name) = ImageName::parse(reference) else {
        return;
    };
    assert_eq!(format!("{}/{}", name.domain(), name.path()), name.as_str());
    // distribution/reference limits the repository path (all of a domain-less name).
    assert!(name.path().len() <= 255, "over the path limit: {name}");
    let again = ImageName::parse(name.as_str())
        .unwrap_or_else(|e| panic!("normalized {name} of {reference:?} does not parse: {e}"));
    assert_eq!(again, name, "normalizing {reference:?} twice");
}

/// Registry patterns and the keyring. Input: patterns separated by spaces on the first line,
/// images on the following lines, read as `auths` keys (as the kubelet reads them). Parsing
/// never panics, a pattern the config accepts reads the same as a key, and the keyring's
/// indexed lookup agrees with a plain scan of `matches_directly` over every pattern, the
/// Docker Hub fallback applying only when nothing matched directly.
pub fn pattern(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let patterns: Vec<Pattern> = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|raw| {
            let pattern = Pattern::from_auths_key(raw).ok()?;
            assert_eq!(pattern.raw(), raw);
            if let Ok(configured) = Pattern::parse(raw) {
                assert_eq!(configured, pattern, "config and auths readings of {raw:?}");
            }
            Some(pattern)
        })
        .collect();
    let keyring = Keyring::new(patterns.iter().cloned().enumerate());
    assert_eq!(keyring.len(), patterns.len());
    for image in lines.filter_map(|line| ImageName::parse(line).ok()) {
        let mut direct = Vec::new();
        let mut fallback = Vec::new();
        keyring.for_each_match(&image, |secret, pattern, kind| {
            assert_eq!(pattern, &patterns[secret]);
            match kind {
                MatchKind::Direct => direct.push(secret),
                MatchKind::DockerHubFallback => fallback.push(secret),
            }
            let _ = pattern.matches_mid_segment(&image);
        });
        direct.sort_unstable();
        let scanned: Vec<usize> = (0..patterns.len())
            .filter(|&i| patterns[i].matches_directly(&image))
            .collect();
        assert_eq!(direct, scanned, "direct matches of {image}");
        assert!(
            direct.is_empty() || fallback.is_empty(),
            "fallback used for {image} although a pattern matched directly"
        );
        assert!(
            fallback
                .iter()
                .all(|&i| patterns[i].is_docker_hub_fallback()),
            "fallback through a pattern that is not index.docker.io"
        );
    }
}

/// The configuration file: any text is parsed and validated or refused with a message,
/// never a panic; a refusal names at least one field.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_yaml(text) else {
        return;
    };
    match config.validate() {
        Ok(settings) => {
            let _ = settings.needs_cluster();
        }
        Err(error) => {
            if let ConfigError::Invalid(fields) = &error {
                assert!(!fields.is_empty(), "an invalid config names its fields");
            }
            assert!(!error.to_string().is_empty());
        }
    }
}

static SETTINGS: LazyLock<Arc<Settings>> = LazyLock::new(|| {
    let config = Config::from_yaml(HANDLER_CONFIG).expect("the handler config parses");
    Arc::new(config.validate().expect("the handler config is valid"))
});
static STATE: LazyLock<AppState> =
    LazyLock::new(|| AppState::new(Arc::clone(&SETTINGS), Arc::new(Metrics::new()), None));
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
});

/// The whole request handler, bytes in, response out, twice: through `admission::review`
/// (the pure core, as the standalone server calls it) with HANDLER_CONFIG, and through the
/// axum router (`server::router`, no cluster) with `oneshot`. Nothing panics; a body is
/// answered 200 exactly when the core accepts it, with the same review, else 400 with the
/// core's reason; every answer allows; and a patch applies to the pod the request carried (a
/// patch that does not apply makes the apiserver reject the pod even with failurePolicy
/// Ignore), adding only configured names that were not there, and leaving a valid Pod valid.
pub fn handler(data: &[u8]) {
    let core = admission::decode(data).and_then(|decoded| {
        admission::review(&SETTINGS, &ClusterView::offline(&SETTINGS), decoded)
    });
    if let Ok(reviewed) = &core {
        check_review(data, reviewed);
    }
    let (status, body) = RUNTIME.block_on(serve(data));
    let body: Value = serde_json::from_slice(&body).expect("every answer is JSON");
    match core {
        Ok(reviewed) => {
            assert_eq!(status, StatusCode::OK, "{body}");
            let expected = serde_json::to_value(&reviewed.response).expect("review encodes");
            assert_eq!(body, expected, "the router answers what the core decided");
        }
        Err(error) => {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["reason"], error.metric_label());
        }
    }
}

async fn serve(data: &[u8]) -> (StatusCode, bytes::Bytes) {
    let request = Request::post("/mutate?timeout=10s")
        .header("content-type", "application/json")
        .body(Body::from(data.to_vec()))
        .expect("request");
    let response = router(STATE.clone())
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    (status, body)
}

fn check_review(data: &[u8], reviewed: &admission::Reviewed) {
    let response = &reviewed.response.response.admission;
    assert!(response.allowed, "the injector never denies");
    assert_eq!(response.uid, reviewed.uid, "the uid is echoed");
    let Outcome::Patched(patched) = &reviewed.outcome else {
        assert!(
            reviewed.response.patch().is_none(),
            "a patch without a Patched outcome"
        );
        return;
    };
    let patch: json_patch::Patch = serde_json::from_slice(
        reviewed
            .response
            .patch()
            .expect("a Patched outcome has a patch"),
    )
    .expect("the patch is a JSON patch");
    // serde_json skips ignored fields without checking their strings, so an accepted body can
    // hold invalid UTF-8 or lone surrogates there (the apiserver never sends either). Apply
    // the patch to the body as the apiserver would have re-encoded it.
    let Ok(request) = serde_json::from_str::<Value>(&String::from_utf8_lossy(data)) else {
        return;
    };
    let mut pod = request["request"]["object"].clone();
    let was_pod = serde_json::from_value::<Pod>(pod.clone()).is_ok();
    let before = pull_secret_names(&pod);
    json_patch::patch(&mut pod, &patch)
        .unwrap_or_else(|e| panic!("the patch {patch:?} does not apply to {pod}: {e}"));
    let after = pull_secret_names(&pod);
    assert_eq!(
        after[..before.len()],
        before[..],
        "existing entries keep their order"
    );
    assert_eq!(
        after[before.len()..],
        patched.added[..],
        "appended exactly the added names"
    );
    for name in &patched.added {
        assert!(!before.contains(name), "{name} added although present");
        assert!(
            SETTINGS.secrets.iter().any(|s| &s.name == name),
            "{name} not configured"
        );
    }
    // The decision reads only names, annotations, images and pull secrets, so it also answers
    // objects the apiserver would refuse anyway; a valid Pod must stay valid.
    if was_pod {
        serde_json::from_value::<Pod>(pod).expect("the patched Pod is still a Pod");
    }
}

fn pull_secret_names(pod: &Value) -> Vec<String> {
    pod["spec"]["imagePullSecrets"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}
