//! Micro-benchmarks of the pure core (no socket): image normalization, keyring matching with
//! 10 to 1,000 patterns, patch building, and a whole `admission::review` for the typical
//! (5 KB) and pathological (1 MB) fixtures. `make bench` runs them; see BENCHMARKS.md.
//!
//! The fixtures come from `benches/fixtures/generate.py` (run here when they are missing).
//! Under `cargo test` criterion runs each benchmark once, as a smoke test.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{LocalObjectReference, Pod};
use kube::core::admission::AdmissionReview;
use pullsecret_injector::admission::{self, ClusterView, Outcome};
use pullsecret_injector::config::{Config, Settings};
use pullsecret_injector::image::ImageName;
use pullsecret_injector::matching::{Keyring, Pattern};
use pullsecret_injector::patch::append_pull_secrets;

/// References as pod specs write them: Docker Hub short names, registries with ports,
/// digests.
const IMAGES: [&str; 10] = [
    "nginx",
    "nginx:1.27",
    "corp/log-shipper:3.2.0",
    "ghcr.io/acme/web:1.4.2",
    "acmeprod.azurecr.io/platform/envoy:1.31.2",
    "registry.example.com:5000/tools/metrics-agent:0.9.3",
    "quay.io/prometheus/node-exporter:v1.8.2",
    "registry.k8s.io/pause:3.10",
    "docker.io/library/busybox@sha256:9ae97d36d26566ff84e8893c64a6dc4fe8ca6d1144bf5b87b2b85a32def253c7",
    "public.ecr.aws/eks-distro/kubernetes/kube-proxy:v1.31.0-eks-1-31-3",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a generated fixture, generating them first if needed.
fn fixture(name: &str) -> Vec<u8> {
    let dir = root().join("target/bench/fixtures");
    let path = dir.join(format!("{name}.json"));
    if !path.is_file() {
        let status = Command::new("python3")
            .arg(root().join("benches/fixtures/generate.py"))
            .arg(&dir)
            .status()
            .expect("running python3 benches/fixtures/generate.py (is python3 installed?)");
        assert!(status.success(), "benches/fixtures/generate.py failed");
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn example_settings() -> Settings {
    let path: PathBuf = root().join("examples/config.yaml");
    Config::from_file(&path)
        .and_then(Config::validate)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `count` patterns of one shape: `literal` ones are indexed by host, globbed ones (`*.x`)
/// are tried one by one, so the glob keyring is the worst case for growth.
fn keyring(count: usize, shape: Shape) -> Keyring {
    Keyring::new((0..count).map(|i| {
        let raw = match shape {
            Shape::Literal => format!("registry-{i}.example.com/team-{i}/"),
            // Same label count as acmeprod.azurecr.io, so every glob is really tried.
            Shape::Glob => format!("*.region{i}.io/team-{i}/"),
            // One in ten globbed, as a big multi-registry config might be.
            Shape::Mixed if i % 10 == 0 => format!("*.region{i}.azurecr.io"),
            Shape::Mixed => format!("registry-{i}.example.com/team-{i}/"),
        };
        (i, Pattern::parse(&raw).expect("benchmark pattern parses"))
    }))
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    Literal,
    Glob,
    Mixed,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Self::Literal => "literal",
            Self::Glob => "glob",
            Self::Mixed => "mixed",
        }
    }
}

fn image_normalization(c: &mut Criterion) {
    let mut group = c.benchmark_group("image/parse");
    for reference in [IMAGES[0], IMAGES[3], IMAGES[5], IMAGES[8]] {
        group.bench_with_input(
            BenchmarkId::from_parameter(reference),
            reference,
            |b, reference| b.iter(|| ImageName::parse(black_box(reference))),
        );
    }
    group.finish();
}

fn count_matches(keyring: &Keyring, images: &[ImageName]) -> usize {
    let mut found = 0;
    for image in images {
        keyring.for_each_match(image, |_, _, _| found += 1);
    }
    found
}

fn pattern_matching(c: &mut Criterion) {
    let images: Vec<ImageName> = IMAGES
        .iter()
        .map(|r| ImageName::parse(r).expect("benchmark image parses"))
        .collect();
    let one = std::slice::from_ref(&images[4]);
    // Per image: growth with the number of patterns.
    let mut group = c.benchmark_group("match/one-image");
    for shape in [Shape::Literal, Shape::Glob] {
        for count in [10, 100, 1_000] {
            let keyring = keyring(count, shape);
            group.bench_with_input(BenchmarkId::new(shape.name(), count), &keyring, |b, k| {
                b.iter(|| count_matches(black_box(k), one))
            });
        }
    }
    group.finish();
    // The target: 1,000 patterns x 10 images.
    let mut group = c.benchmark_group("match/ten-images");
    group.throughput(Throughput::Elements(images.len() as u64));
    for shape in [Shape::Literal, Shape::Mixed, Shape::Glob] {
        for count in [10, 1_000] {
            let keyring = keyring(count, shape);
            group.bench_with_input(BenchmarkId::new(shape.name(), count), &keyring, |b, k| {
                b.iter(|| count_matches(black_box(k), &images))
            });
        }
    }
    group.finish();
}

fn patch_building(c: &mut Criterion) {
    let existing = ["existing", "acme-ghcr"].map(|name| LocalObjectReference {
        name: name.to_string(),
    });
    let mut group = c.benchmark_group("patch");
    group.bench_function("absent-list/2-secrets", |b| {
        b.iter(|| append_pull_secrets(black_box(&["spec"]), None, ["acme-ghcr", "corp"]))
    });
    group.bench_function("existing-list/1-of-2-missing", |b| {
        b.iter(|| {
            append_pull_secrets(
                black_box(&["spec"]),
                Some(black_box(&existing[..])),
                ["acme-ghcr", "corp"],
            )
        })
    });
    group.bench_function("nothing-missing", |b| {
        b.iter(|| {
            append_pull_secrets(
                black_box(&["spec"]),
                Some(black_box(&existing[..])),
                ["acme-ghcr"],
            )
        })
    });
    group.finish();
}

/// The patch must be one `add` of `/spec/imagePullSecrets` (the pod has none): a targeted
/// patch, never a diff of the whole pod.
fn assert_targeted_patch(name: &str, reviewed: &admission::Reviewed) {
    let Outcome::Patched(patch) = &reviewed.outcome else {
        panic!("{name}: expected a patch, got {:?}", reviewed.outcome);
    };
    let [PatchOperation::Add(add)] = patch.patch.0.as_slice() else {
        panic!("{name}: expected one add operation, got {:?}", patch.patch);
    };
    assert_eq!(add.path.as_str(), "/spec/imagePullSecrets", "{name}");
    let encoded = reviewed.response.patch().map_or(0, <[u8]>::len);
    assert!(encoded < 256, "{name}: patch is {encoded} bytes");
    eprintln!(
        "{name}: patch {} ({encoded} bytes)",
        String::from_utf8_lossy(reviewed.response.patch().unwrap_or_default())
    );
}

/// Decode and decide, as the standalone server does: bytes in, the answer out.
fn review(settings: &Settings, body: &[u8]) -> Result<admission::Reviewed, admission::ReviewError> {
    let decoded = admission::decode(body)?;
    admission::review(settings, &ClusterView::offline(settings), decoded)
}

fn whole_review(c: &mut Criterion) {
    let settings = example_settings();
    let mut group = c.benchmark_group("review");
    for name in ["typical", "pathological"] {
        let body = fixture(name);
        let reviewed = review(&settings, &body).expect("fixture is a valid review");
        assert_targeted_patch(name, &reviewed);
        if name == "pathological" {
            // Fewer, longer iterations: each takes milliseconds.
            group.sample_size(20);
        }
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| review(black_box(&settings), black_box(body)))
        });
        // What the server does after deciding: serialize the response review.
        group.bench_with_input(BenchmarkId::new("review+encode", name), &body, |b, body| {
            b.iter(|| {
                let reviewed = review(&settings, black_box(body)).expect("review");
                serde_json::to_vec(&reviewed.response).expect("encode")
            })
        });
    }
    group.finish();
}

/// What decoding only the fields the decision reads (`admission::decode`, into kube's
/// `AdmissionRequest<PodView>`) saves over decoding the whole typed `AdmissionReview<Pod>`
/// (what the injector did before), and how far it is from skipping the body unread.
fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for name in ["typical", "pathological"] {
        let body = fixture(name);
        if name == "pathological" {
            group.sample_size(20);
        }
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("injector", name), &body, |b, body| {
            b.iter(|| admission::decode(black_box(body)).expect("decode"))
        });
        group.bench_with_input(BenchmarkId::new("typed-pod", name), &body, |b, body| {
            b.iter(|| {
                serde_json::from_slice::<AdmissionReview<Pod>>(black_box(body)).expect("decode")
            })
        });
        group.bench_with_input(BenchmarkId::new("skip-all", name), &body, |b, body| {
            b.iter(|| {
                serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).expect("decode")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = core;
    // Short windows keep `make bench` within its budget; these timings are stable.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = image_normalization, pattern_matching, patch_building, whole_review, decode
}
criterion_main!(core);
