//! Properties over generated pods and configurations: the patch always applies and yields a
//! valid Pod, keeps what was there, adds nothing twice, adds nothing on a second pass, adds
//! only configured names, and the matcher agrees with a deliberately simple reference.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::AdmissionReview;
use proptest::prelude::*;
use pullsecret_injector::admission::{self, ClusterView};
use pullsecret_injector::config::{Config, Settings};
use pullsecret_injector::image::ImageName;
use pullsecret_injector::matching::{Keyring, Pattern};
use serde_json::{Value, json};

const HOSTS: &[&str] = &[
    "ghcr.io",
    "docker.io",
    "registry.example.com",
    "registry.example.com:5000",
    "a.azurecr.io",
    "b.azurecr.io",
    "x.y.azurecr.io",
    "localhost:5000",
    "quay.io",
];
const PATHS: &[&str] = &[
    "acme/app",
    "acme-labs/x",
    "library/nginx",
    "corp/web",
    "team/a/b",
    "app",
];
const PATTERNS: &[&str] = &[
    "ghcr.io",
    "ghcr.io/acme",
    "ghcr.io/acme/",
    "docker.io/library",
    "docker.io/corp",
    "registry.example.com",
    "registry.example.com:5000",
    "*.azurecr.io",
    "*.*.azurecr.io",
    "localhost:5000/team",
    "quay.io/acme/",
    "https://registry.example.com/v2/corp",
];

fn image() -> impl Strategy<Value = String> {
    (
        0..HOSTS.len(),
        0..PATHS.len(),
        prop::option::of("[a-z0-9]{1,5}"),
    )
        .prop_map(|(h, p, tag)| {
            let base = format!("{}/{}", HOSTS[h], PATHS[p]);
            match tag {
                Some(tag) => format!("{base}:{tag}"),
                None => base,
            }
        })
}

fn config() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
    prop::collection::vec(prop::collection::vec(0..PATTERNS.len(), 1..3), 1..5).prop_map(
        |secrets| {
            secrets
                .into_iter()
                .enumerate()
                .map(|(i, pats)| {
                    (
                        format!("s{i}"),
                        pats.into_iter().map(|p| PATTERNS[p].to_string()).collect(),
                    )
                })
                .collect()
        },
    )
}

fn existing() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(prop::collection::vec(
        prop_oneof!["s[0-5]", "own-[a-c]"],
        0..4,
    ))
}

fn settings(secrets: &[(String, Vec<String>)]) -> Settings {
    let yaml = serde_json::to_string(&json!({
        "secrets": secrets.iter().map(|(n, r)| json!({"name": n, "registries": r})).collect::<Vec<_>>()
    }))
    .unwrap();
    Config::from_yaml(&yaml).unwrap().validate().unwrap()
}

fn review(containers: &[String], init: &[String], existing: &Option<Vec<String>>) -> Value {
    let mut spec = json!({
        "containers": containers.iter().enumerate().map(|(i, img)| json!({"name": format!("c{i}"), "image": img})).collect::<Vec<_>>(),
    });
    if !init.is_empty() {
        spec["initContainers"] = json!(
            init.iter()
                .enumerate()
                .map(|(i, img)| json!({"name": format!("i{i}"), "image": img}))
                .collect::<Vec<_>>()
        );
    }
    if let Some(existing) = existing {
        spec["imagePullSecrets"] = json!(
            existing
                .iter()
                .map(|n| json!({"name": n}))
                .collect::<Vec<_>>()
        );
    }
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ns", "operation": "CREATE", "userInfo": {},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "p-"}, "spec": spec},
        }
    })
}

/// Runs the review and returns the object after applying the answer's patch.
fn mutate(settings: &Settings, review: &Value) -> (Value, Vec<String>) {
    let body = serde_json::to_vec(review).unwrap();
    let reviewed = admission::decode(&body)
        .and_then(|decoded| admission::review(settings, &ClusterView::offline(settings), decoded))
        .expect("reviews");
    let mut answer = serde_json::to_value(&reviewed.response).unwrap();
    // The patch is a base64 string; kube's own type reads the rest (it wants bytes as numbers).
    let patch = answer["response"]
        .as_object_mut()
        .and_then(|r| r.remove("patch"));
    let _: AdmissionReview<kube::core::DynamicObject> =
        serde_json::from_value(answer.clone()).unwrap();
    let mut object = review["request"]["object"].clone();
    if let Some(patch) = patch {
        let bytes: k8s_openapi::ByteString =
            serde_json::from_value(patch).expect("the patch is a base64 string");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes.0).unwrap();
        json_patch::patch(&mut object, &patch).expect("the patch applies");
    }
    (object, reviewed.outcome.injected().to_vec())
}

fn names(pod: &Value) -> Vec<String> {
    let pod: Pod = serde_json::from_value(pod.clone()).expect("the result is a valid Pod");
    pod.spec
        .unwrap()
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_patch_only_appends_configured_names_once_and_is_idempotent(
        secrets in config(),
        containers in prop::collection::vec(image(), 1..4),
        init in prop::collection::vec(image(), 0..2),
        existing in existing(),
    ) {
        let settings = settings(&secrets);
        let original = review(&containers, &init, &existing);
        let (patched, injected) = mutate(&settings, &original);
        let before = existing.clone().unwrap_or_default();
        let after = names(&patched);
        prop_assert_eq!(&after[..before.len()], &before[..], "existing entries keep order and values");
        let added = &after[before.len()..];
        prop_assert_eq!(added, &injected[..]);
        let unique: BTreeSet<&String> = added.iter().collect();
        prop_assert_eq!(unique.len(), added.len(), "no name added twice");
        prop_assert!(added.iter().all(|n| !before.contains(n)), "no name already present is added");
        prop_assert!(added.iter().all(|n| secrets.iter().any(|(s, _)| s == n)), "only configured names");

        // Exactly the secrets the reference matcher wants, in config order.
        let images: Vec<&String> = containers.iter().chain(&init).collect();
        let wanted: Vec<String> = secrets
            .iter()
            .filter(|(_, patterns)| images.iter().any(|i| patterns.iter().any(|p| reference_matches(p, i))))
            .map(|(n, _)| n.clone())
            .filter(|n| !before.contains(n))
            .collect();
        prop_assert_eq!(added, &wanted[..]);

        // A second pass (reinvocation) over the patched pod adds nothing.
        let mut again = original.clone();
        again["request"]["object"] = patched;
        let (_, second) = mutate(&settings, &again);
        prop_assert!(second.is_empty(), "second pass added {:?}", second);
    }

    #[test]
    fn the_keyring_agrees_with_the_reference_matcher(image in image(), pattern in 0..PATTERNS.len()) {
        let raw = PATTERNS[pattern];
        let keyring = Keyring::new([(0, Pattern::parse(raw).unwrap())]);
        let name = ImageName::parse(&image).unwrap();
        let mut matched = false;
        keyring.for_each_match(&name, |_, _, _| matched = true);
        prop_assert_eq!(matched, reference_matches(raw, &image), "{} vs {}", raw, image);
    }
}

/// The rules, written as plainly as possible for the generated shapes (no Docker Hub
/// fallback patterns, images always name their registry).
fn reference_matches(pattern: &str, image: &str) -> bool {
    let pattern = pattern
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (p_host, p_path) = match pattern.find('/') {
        Some(i) => (&pattern[..i], &pattern[i..]),
        None => (pattern, ""),
    };
    let p_path = if p_path.starts_with("/v2/") || p_path.starts_with("/v1/") {
        &p_path[3..]
    } else {
        p_path
    };
    let p_path = if p_path == "/" { "" } else { p_path };
    let (host, rest) = image.split_once('/').unwrap();
    let host = if host == "index.docker.io" {
        "docker.io"
    } else {
        host
    };
    let repo = rest.split(':').next().unwrap();
    let repo = if host == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_string()
    };
    let split = |h: &str| match h.rsplit_once(':') {
        Some((name, port)) => (name.to_string(), port.to_string()),
        None => (h.to_string(), String::new()),
    };
    let (p_name, p_port) = split(p_host);
    let (i_name, i_port) = split(host);
    let p_labels: Vec<&str> = p_name.split('.').collect();
    let i_labels: Vec<&str> = i_name.split('.').collect();
    p_port == i_port
        && p_labels.len() == i_labels.len()
        && p_labels
            .iter()
            .zip(&i_labels)
            .all(|(p, i)| *p == "*" || p == i)
        && format!("/{repo}").starts_with(p_path)
}

// A credential provider plugin's stdout is input from outside the process: whatever it
// writes is parsed or refused, never a panic, and a refusal never quotes a password.

/// A response-shaped JSON document with each field present, missing or of the wrong kind.
fn plugin_response() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        Just(Value::Null),
        Just(json!(7)),
        "[ -~]{0,50}".prop_map(Value::from),
        Just(json!("credentialprovider.kubelet.k8s.io/v1")),
        Just(json!("CredentialProviderResponse")),
        Just(json!("Registry")),
        Just(json!("12h")),
        Just(json!("0s")),
    ];
    let auth = prop_oneof![
        Just(Value::Null),
        Just(json!("p4ssw0rd-secret")),
        prop::collection::btree_map(
            prop_oneof![
                "[a-z*.:/@-]{0,20}",
                Just("r.io".to_string()),
                Just("https://u:p4ssw0rd-secret@r.io".to_string())
            ],
            prop_oneof![
                Just(json!({"username": "u", "password": "p4ssw0rd-secret"})),
                Just(json!({"password": 5})),
                Just(json!("p4ssw0rd-secret")),
            ],
            0..3,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect())),
    ];
    (
        text.clone(),
        text.clone(),
        text.clone(),
        text,
        auth,
        prop::bool::ANY,
    )
        .prop_map(
            |(api_version, kind, key_type, duration, auth, drop_nulls)| {
                let mut doc = serde_json::Map::new();
                for (k, v) in [
                    ("apiVersion", api_version),
                    ("kind", kind),
                    ("cacheKeyType", key_type),
                    ("cacheDuration", duration),
                    ("auth", auth),
                ] {
                    if !(drop_nulls && v.is_null()) {
                        doc.insert(k.to_string(), v);
                    }
                }
                Value::Object(doc)
            },
        )
}

proptest! {
    #[test]
    fn plugin_output_is_parsed_or_refused_without_quoting_a_password(
        response in plugin_response(),
        cut in 0usize..400,
    ) {
        use pullsecret_injector::provider::kubelet::parse_response;
        let bytes = serde_json::to_vec(&response).unwrap();
        let default = std::time::Duration::from_secs(60);
        for input in [&bytes[..], &bytes[..cut.min(bytes.len())]] {
            match parse_response(input, "credentialprovider.kubelet.k8s.io/v1", default) {
                Ok(issued) => {
                    prop_assert!(!issued.auths.is_empty());
                    prop_assert!(!issued.valid_for.is_zero());
                    for key in issued.auths.keys() {
                        prop_assert!(Pattern::parse(key).is_ok(), "{key}");
                    }
                }
                Err(error) => {
                    let text = error.to_string();
                    prop_assert!(!text.contains("p4ssw0rd"), "{text}");
                    prop_assert!(text.len() < 400, "{text}");
                }
            }
        }
    }

    #[test]
    fn go_durations_never_panic_and_read_back_what_they_say(
        hours in 0u64..1000, minutes in 0u64..60, millis in 0u64..60_000, noise in "[0-9a-zµ.+-]{0,12}",
    ) {
        use pullsecret_injector::provider::kubelet::parse_go_duration;
        let text = format!("{hours}h{minutes}m{}.{:03}s", millis / 1000, millis % 1000);
        prop_assert_eq!(
            parse_go_duration(&text).unwrap(),
            std::time::Duration::from_millis(((hours * 60 + minutes) * 60) * 1000 + millis)
        );
        let _ = parse_go_duration(&noise);
    }
}
