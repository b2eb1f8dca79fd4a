//! The kubelet's own code as the judge of our matching and normalization: every row of
//! `tests/fixtures/matching-cases.tsv`, the fuzz corpus and `ORACLE_CASES` (100,000) generated
//! cases go to the kubelet keyring oracle (tests/oracle: `pkg/credentialprovider` and
//! `reference.ParseNormalizedNamed` at the pinned release) and through our code; every answer
//! must agree. A case is one image looked up with one set of pull secrets:
//!
//! - the normalized name, or that the image does not parse;
//! - the credentials the kubelet would use, in its order: for patterns written in the config
//!   (`Keyring::lookup`, what `match` prints, and `admission::wanted_secrets`, what is
//!   injected), and for a source Secret's `auths` as replication reads the same bytes the
//!   kubelet reads (`replicate::keyring::build`).
//!
//! `make oracle-soak` runs the same with 10 million cases. `ORACLE_SEED` picks the cases.

#[path = "kubelet_oracle/cases.rs"]
mod cases;
#[path = "kubelet_oracle/oracle.rs"]
mod oracle;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use pullsecret_injector::admission;
use pullsecret_injector::config::{Config, Settings};
use pullsecret_injector::image::ImageName;
use pullsecret_injector::matching::{Keyring, Pattern};
use pullsecret_injector::replicate::{dockerconfig, keyring};
use serde_json::json;
use test_support::matching_cases;

use cases::{Case, Flavor, Rng, entry_id};
use oracle::{Answer, Oracle, Request};

const DEFAULT_CASES: u64 = 100_000;
const DEFAULT_SEED: u64 = 0x6b75_6265_6c65_7421;
const IMAGES_PER_CASE: usize = 50;
/// Requests in flight: enough to keep both processes busy.
const PIPELINE: usize = 32;
const SHOWN_DISAGREEMENTS: usize = 25;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

#[test]
fn our_matching_and_normalization_agree_with_the_kubelets_code() {
    let wanted = env_u64("ORACLE_CASES", DEFAULT_CASES);
    let seed = env_u64("ORACLE_SEED", DEFAULT_SEED);
    let started = Instant::now();
    let mut run = Run::new();

    let tsv = run.matching_cases();
    let fuzz = run.fuzz_corpus();
    let mut rng = Rng::new(seed);
    let mut generated = 0;
    while generated < wanted {
        let case = cases::generate(&mut rng, IMAGES_PER_CASE);
        generated += case.images.len() as u64;
        run.submit(Question::from_case(case));
    }
    run.finish();

    let total = run.compared;
    let summary = format!(
        "kubelet oracle: compared {total} cases with the kubelet's code ({tsv} matching-cases.tsv rows, {fuzz} from the fuzz corpus, {generated} generated with seed {seed:#x}) in {:.1} s: {} disagreements\n\
         kubelet oracle: {} looked up with config patterns, {} with a source Secret's bytes; the kubelet uses credentials for {}, cannot parse {} images, refuses the secrets of {} requests\n",
        started.elapsed().as_secs_f64(),
        run.disagreements,
        run.from_config,
        run.from_source,
        run.with_credentials,
        run.invalid_images,
        run.refused_secrets
    );
    print!("{summary}");
    // `make test` shows it after the run (test output is captured).
    let summary_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubelet-oracle-summary.txt");
    std::fs::write(&summary_file, &summary)
        .unwrap_or_else(|e| panic!("write {}: {e}", summary_file.display()));
    assert!(
        run.disagreements == 0,
        "{} disagreements with the kubelet; the first ones:\n{}",
        run.disagreements,
        run.shown.join("\n")
    );
    assert!(
        generated >= wanted && tsv >= 57,
        "too few cases compared: {generated} generated, {tsv} rows"
    );
}

/// One request to the oracle and what our code answers to the same question.
struct Question {
    label: String,
    request_secrets: Vec<ByteString>,
    images: Vec<String>,
    ours: Ours,
    /// The row of matching-cases.tsv, checked against the kubelet too.
    row: Option<Row>,
    flavor_is_config: bool,
}

struct Row {
    line: usize,
    expected: String,
    normalized: String,
}

/// Our answers, and how to name each credential as the oracle does.
struct Ours {
    /// Per image: the normalized name, or None when it does not parse.
    names: Vec<Option<String>>,
    /// Per image: the credentials we would use, as ids, in the kubelet's order.
    used: Vec<Vec<String>>,
    /// The key each id stands for, to put equal keys of one secret in a fixed order.
    key_of: BTreeMap<String, String>,
    /// Secrets injected for a pod with all the images (config flavor), as ids' secret indexes.
    wanted: Option<BTreeSet<usize>>,
    /// Source flavor: we refuse the Secret as the kubelet would.
    refused: Option<bool>,
    /// Source flavor: the id of the entry whose credentials the kubelet returns without a
    /// username.
    anonymous_id: Option<String>,
    /// Describes our setup for a disagreement report.
    setup: String,
}

impl Question {
    fn from_case(case: Case) -> Self {
        match case.flavor {
            Flavor::Config => {
                config_question("generated, config patterns", &case.secrets, case.images)
            }
            Flavor::Source => source_question(
                "generated, source secret",
                case.source_bytes.expect("source bytes"),
                &case.secrets[0],
                case.anonymous_entry,
                case.images,
            ),
        }
    }
}

/// Patterns written in the config, one secret each list; the kubelet gets the same strings
/// as `auths` keys. Patterns the config refuses are left out of both.
fn config_question(label: &str, secrets: &[Vec<String>], images: Vec<String>) -> Question {
    let accepted: Vec<Vec<String>> = secrets
        .iter()
        .map(|keys| {
            keys.iter()
                .filter(|k| Pattern::parse(k).is_ok())
                .cloned()
                .collect::<Vec<_>>()
        })
        .filter(|keys| !keys.is_empty())
        .collect();
    let yaml = serde_json::to_string(&json!({
        "secrets": accepted.iter().enumerate().map(|(i, r)| json!({"name": format!("s{i}"), "registries": r})).collect::<Vec<_>>()
    }))
    .expect("config serializes");
    let settings: Settings = Config::from_yaml(&yaml)
        .expect("config parses")
        .validate()
        .unwrap_or_else(|e| panic!("accepted patterns must make a valid config: {e}\n{yaml}"));
    let request_secrets = accepted
        .iter()
        .enumerate()
        .map(|(s, keys)| {
            let auths: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .enumerate()
                .map(|(k, key)| {
                    (
                        key.clone(),
                        json!({"username": entry_id(s, k), "password": "p"}),
                    )
                })
                .collect();
            ByteString(serde_json::to_vec(&json!({ "auths": auths })).expect("serializes"))
        })
        .collect();
    let key_index: BTreeMap<(usize, &str), usize> = accepted
        .iter()
        .enumerate()
        .flat_map(|(s, keys)| {
            keys.iter()
                .enumerate()
                .map(move |(k, key)| ((s, key.as_str()), k))
        })
        .collect();
    let mut ours = answer_with(&settings.keyring, &images, |secret, pattern| {
        key_index
            .get(&(secret, pattern.raw()))
            .map(|&k| entry_id(secret, k))
    });
    ours.wanted = Some(
        admission::wanted_secrets(
            &settings,
            &settings.keyring,
            images.iter().map(String::as_str),
        )
        .into_iter()
        .collect(),
    );
    ours.setup = format!("config secrets {accepted:?}");
    Question {
        label: label.to_string(),
        request_secrets,
        images,
        ours,
        row: None,
        flavor_is_config: true,
    }
}

/// One source Secret, read by replication as the kubelet reads the same bytes.
fn source_question(
    label: &str,
    bytes: Vec<u8>,
    decoded_keys: &[String],
    anonymous_entry: Option<usize>,
    images: Vec<String>,
) -> Question {
    let settings: Settings =
        Config::from_yaml("namespace: oracle\nsecrets: [{name: s0, source: {name: src}}]\n")
            .expect("config parses")
            .validate()
            .expect("config valid");
    let secret = Secret {
        type_: Some(dockerconfig::DOCKERCONFIGJSON_TYPE.to_string()),
        data: Some(BTreeMap::from([(
            dockerconfig::DOCKERCONFIGJSON_KEY.to_string(),
            ByteString(bytes.clone()),
        )])),
        ..Secret::default()
    };
    let refused =
        dockerconfig::auth_patterns(secret.type_.as_deref(), secret.data.as_ref()).is_err();
    let source = Arc::new(secret);
    let (keyring, _problems) = keyring::build(&settings, |_| Some(source.clone()));
    // A later entry with the same key replaces an earlier one, as in a Go map.
    let key_index: BTreeMap<&str, usize> = decoded_keys
        .iter()
        .enumerate()
        .map(|(k, key)| (key.as_str(), k))
        .collect();
    let mut ours = answer_with(&keyring, &images, |secret, pattern| {
        key_index.get(pattern.raw()).map(|&k| entry_id(secret, k))
    });
    ours.anonymous_id = anonymous_entry.map(|k| entry_id(0, k));
    ours.wanted = Some(
        admission::wanted_secrets(&settings, &keyring, images.iter().map(String::as_str))
            .into_iter()
            .collect(),
    );
    ours.refused = Some(refused);
    ours.setup = format!(
        "source .dockerconfigjson {:?} (keys as Go decodes them: {decoded_keys:?})",
        String::from_utf8_lossy(&bytes)
    );
    Question {
        label: label.to_string(),
        request_secrets: vec![ByteString(bytes)],
        images,
        ours,
        row: None,
        flavor_is_config: false,
    }
}

fn answer_with(
    keyring: &Keyring,
    images: &[String],
    id_of: impl Fn(usize, &Pattern) -> Option<String>,
) -> Ours {
    let mut key_of = BTreeMap::new();
    let mut names = Vec::with_capacity(images.len());
    let mut used = Vec::with_capacity(images.len());
    for image in images {
        match ImageName::parse(image) {
            Ok(name) => {
                let ids = keyring
                    .lookup(&name)
                    .into_iter()
                    .map(|m| {
                        let id = id_of(m.secret, m.pattern).unwrap_or_else(|| {
                            format!("<no id: secret {} key {:?}>", m.secret, m.pattern.raw())
                        });
                        key_of.insert(id.clone(), m.pattern.key().to_string());
                        id
                    })
                    .collect();
                names.push(Some(name.as_str().to_string()));
                used.push(ids);
            }
            Err(_) => {
                names.push(None);
                used.push(Vec::new());
            }
        }
    }
    Ours {
        names,
        used,
        key_of,
        wanted: None,
        refused: None,
        anonymous_id: None,
        setup: String::new(),
    }
}

/// Equal keys of one secret come in Go's random map order: put each such run in id order.
fn canonical(used: &[String], key_of: &BTreeMap<String, String>) -> Vec<String> {
    let secret_of = |id: &str| id.split('_').next().unwrap_or_default().to_string();
    let group = |id: &String| (secret_of(id), key_of.get(id).cloned());
    let mut out: Vec<String> = Vec::with_capacity(used.len());
    let mut start = 0;
    for i in 1..=used.len() {
        if i == used.len() || group(&used[i]) != group(&used[start]) {
            let mut run = used[start..i].to_vec();
            run.sort_by_key(|id| id.split('_').nth(1).and_then(|k| k.parse::<usize>().ok()));
            out.extend(run);
            start = i;
        }
    }
    out
}

struct Run {
    oracle: Oracle,
    pending: VecDeque<(u64, Question)>,
    next_id: u64,
    compared: u64,
    from_config: u64,
    from_source: u64,
    /// How far the cases reach: images the kubelet finds credentials for, images it cannot
    /// parse, requests whose secrets it refuses.
    with_credentials: u64,
    invalid_images: u64,
    refused_secrets: u64,
    disagreements: u64,
    shown: Vec<String>,
}

impl Run {
    fn new() -> Self {
        Self {
            oracle: Oracle::start(),
            pending: VecDeque::new(),
            next_id: 0,
            compared: 0,
            from_config: 0,
            from_source: 0,
            with_credentials: 0,
            invalid_images: 0,
            refused_secrets: 0,
            disagreements: 0,
            shown: Vec::new(),
        }
    }

    fn submit(&mut self, question: Question) {
        let id = self.next_id;
        self.next_id += 1;
        self.oracle.send(&Request {
            id,
            secrets: question.request_secrets.clone(),
            images: question.images.clone(),
        });
        self.pending.push_back((id, question));
        if self.pending.len() >= PIPELINE {
            self.judge_one();
        }
    }

    fn finish(&mut self) {
        while !self.pending.is_empty() {
            self.judge_one();
        }
    }

    fn judge_one(&mut self) {
        let Some((id, question)) = self.pending.pop_front() else {
            return;
        };
        let answer = self.oracle.receive(id);
        self.judge(&question, &answer);
    }

    fn disagree(&mut self, what: String) {
        self.disagreements += 1;
        if self.shown.len() < SHOWN_DISAGREEMENTS {
            self.shown.push(what);
        }
    }

    fn judge(&mut self, q: &Question, answer: &Answer) {
        assert_eq!(answer.images.len(), q.images.len(), "one answer per image");
        let ours = &q.ours;
        if answer.keyring_error.is_some() {
            self.refused_secrets += 1;
        }
        if let Some(refused) = ours.refused
            && refused != answer.keyring_error.is_some()
        {
            self.disagree(format!(
                "[{}] the kubelet {} this Secret, we {} it\n  {}",
                q.label,
                if answer.keyring_error.is_some() {
                    "refuses"
                } else {
                    "accepts"
                },
                if refused { "refuse" } else { "accept" },
                ours.setup
            ));
        }
        let mut kubelet_wanted = BTreeSet::new();
        for (i, image) in q.images.iter().enumerate() {
            let kubelet = &answer.images[i];
            if q.flavor_is_config {
                self.from_config += 1;
            } else {
                self.from_source += 1;
            }
            self.compared += 1;
            let kubelet_name = kubelet.name.clone();
            if kubelet_name.is_none() {
                self.invalid_images += 1;
            }
            if !kubelet.used.is_empty() {
                self.with_credentials += 1;
            }
            if kubelet.repo_to_pull != kubelet_name {
                self.disagree(format!(
                    "[{}] image {image:?}: the oracle's reference.ParseNormalizedNamed says {kubelet_name:?}, the kubelet's ParseImageName {:?}",
                    q.label, kubelet.repo_to_pull
                ));
            }
            if ours.names[i] != kubelet_name {
                self.disagree(format!(
                    "[{}] image {image:?}: normalized by the kubelet to {:?} ({:?}), by us to {:?}",
                    q.label, kubelet_name, kubelet.error, ours.names[i]
                ));
                continue;
            }
            let kubelet_used: Vec<String> = kubelet
                .used
                .iter()
                .map(|id| match &ours.anonymous_id {
                    Some(anonymous) if id.is_empty() => anonymous.clone(),
                    _ => id.clone(),
                })
                .collect();
            let theirs = canonical(&kubelet_used, &ours.key_of);
            let mine = canonical(&ours.used[i], &ours.key_of);
            if theirs != mine {
                self.disagree(format!(
                    "[{}] image {image:?} ({:?}): the kubelet uses {theirs:?}, we use {mine:?}\n  {}",
                    q.label, kubelet_name, ours.setup
                ));
            }
            for id in &kubelet_used {
                if let Some(secret) = id.split('_').next().and_then(|s| s.parse::<usize>().ok()) {
                    kubelet_wanted.insert(secret);
                }
            }
            if let Some(row) = &q.row {
                let kubelet_says = match (&kubelet_name, kubelet.used.is_empty()) {
                    (None, _) => "invalid",
                    (Some(_), true) => "no",
                    (Some(_), false) => "used",
                };
                let row_says = match row.expected.as_str() {
                    "yes" | "fallback" => "used",
                    other => other,
                };
                let normalized = kubelet_name.clone().unwrap_or_else(|| "-".into());
                if kubelet_says != row_says || normalized != row.normalized {
                    self.disagree(format!(
                        "matching-cases.tsv line {}: image {image:?}: the row says {} / {}, the kubelet {kubelet_says} / {normalized}",
                        row.line, row.expected, row.normalized
                    ));
                }
            }
        }
        if let Some(wanted) = &ours.wanted
            && *wanted != kubelet_wanted
        {
            self.disagree(format!(
                "[{}] a pod with images {:?}: the kubelet uses secrets {kubelet_wanted:?}, we inject {wanted:?}\n  {}",
                q.label, q.images, ours.setup
            ));
        }
    }

    /// Every row, as a source key, and as a config pattern unless the row says the config
    /// refuses it.
    fn matching_cases(&mut self) -> u64 {
        let mut rows = 0;
        for case in matching_cases::cases() {
            rows += 1;
            let line = case.line;
            let (image, pattern) = (case.image.to_string(), case.pattern.to_string());
            let row = || Row {
                line,
                expected: case.expected.to_string(),
                normalized: case.normalized.to_string(),
            };
            let mut source = source_question(
                &format!("matching-cases.tsv line {line}, source key"),
                serde_json::to_vec(&json!({"auths": {&pattern: {"username": entry_id(0, 0)}}}))
                    .expect("serializes"),
                std::slice::from_ref(&pattern),
                None,
                vec![image.clone()],
            );
            source.row = Some(row());
            self.submit(source);
            // A refused pattern is refused (matching_cases.rs checks it); the others also go
            // through the config.
            if !case.refused {
                let mut config = config_question(
                    &format!("matching-cases.tsv line {line}, config pattern"),
                    &[vec![pattern]],
                    vec![image],
                );
                config.row = Some(row());
                self.submit(config);
            }
        }
        rows
    }

    /// Inputs the fuzzers found (fuzz/corpus, after `make fuzz-smoke`) and keep
    /// (fuzz/regressions): image names against a battery of keys, and pattern sets against
    /// their own images and a battery of images.
    fn fuzz_corpus(&mut self) -> u64 {
        const KEYS: &[&str] = &[
            "docker.io",
            "https://index.docker.io/v1/",
            "ghcr.io/acme",
            "ghcr.io/acme/",
            "*.azurecr.io",
            "localhost:5000",
            "localhost",
            "*",
            "*.*",
            "[::1]:5000",
            "my_registry.example",
            "registry.example.com:5000/team",
        ];
        const IMAGES: &[&str] = &[
            "nginx",
            "docker.io/library/nginx:1",
            "ghcr.io/acme/app",
            "ghcr.io/acme-labs/x",
            "x.azurecr.io/a",
            "localhost:5000/a/b",
            "localhost/foo",
            "[::1]:5000/x",
            "my_registry.example/a/app",
            "registry.example.com:5000/team/app",
            "MyRegistry/app",
        ];
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let files = |target: &str| -> Vec<String> {
            let mut texts = Vec::new();
            for dir in [
                root.join("corpus").join(target),
                root.join("regressions").join(target),
            ] {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                paths.sort();
                // The fuzz targets skip input that is not UTF-8; so does this.
                texts.extend(
                    paths
                        .iter()
                        .filter_map(|p| std::fs::read(p).ok())
                        .filter_map(|b| String::from_utf8(b).ok()),
                );
            }
            texts
        };
        let mut compared = 0u64;
        let battery: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
        for chunk in files("image").chunks(IMAGES_PER_CASE) {
            let images = chunk.to_vec();
            compared += 2 * images.len() as u64;
            self.submit(config_question(
                "fuzz corpus (image), config patterns",
                std::slice::from_ref(&battery),
                images.clone(),
            ));
            let bytes = serde_json::to_vec(&json!({
                "auths": battery.iter().enumerate().map(|(k, key)| (key.clone(), json!({"username": entry_id(0, k)}))).collect::<serde_json::Map<_, _>>()
            }))
            .expect("serializes");
            self.submit(source_question(
                "fuzz corpus (image), source keys",
                bytes,
                &battery,
                None,
                images,
            ));
        }
        for text in files("pattern") {
            let mut lines = text.split('\n');
            let mut keys: Vec<String> = Vec::new();
            for key in lines.next().unwrap_or_default().split(' ') {
                if !keys.iter().any(|k| k == key) {
                    keys.push(key.to_string());
                }
            }
            let images: Vec<String> = lines
                .map(str::to_string)
                .chain(IMAGES.iter().map(|i| i.to_string()))
                .collect();
            compared += images.len() as u64;
            let bytes = serde_json::to_vec(&json!({
                "auths": keys.iter().enumerate().map(|(k, key)| (key.clone(), json!({"username": entry_id(0, k)}))).collect::<serde_json::Map<_, _>>()
            }))
            .expect("serializes");
            self.submit(source_question(
                "fuzz corpus (pattern), source keys",
                bytes,
                &keys,
                None,
                images.clone(),
            ));
            if keys.iter().any(|k| Pattern::parse(k).is_ok()) {
                compared += images.len() as u64;
                self.submit(config_question(
                    "fuzz corpus (pattern), config patterns",
                    &[keys],
                    images,
                ));
            }
        }
        compared
    }
}
