//! The command line as a person uses it: `mutate` previews, `match` explanations, and the
//! exit code 2 with a precise message for anything the user must fix.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_pullsecret-injector");
const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config.yaml");

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("wait")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config_file(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    f
}

#[test]
fn mutate_previews_workloads_and_passes_other_documents_through() {
    let out = run(
        &[
            "mutate",
            "--config",
            EXAMPLE_CONFIG,
            "-f",
            "examples/deployment.yaml",
            "-o",
            "json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(docs.len(), 2);
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(docs[0].clone()).unwrap();
    let names: Vec<String> = deployment
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["acme-ghcr"]);
    assert_eq!(docs[1]["kind"], "Service");
    assert!(docs[1]["spec"].get("imagePullSecrets").is_none());
}

#[test]
fn mutate_handles_every_workload_kind_from_stdin_as_yaml() {
    let input = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 0 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: corp/report:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  imagePullSecrets: [{name: mine}]
  containers: [{name: c, image: ghcr.io/acme/app}]
"#;
    let out = run(&["mutate", "--config", EXAMPLE_CONFIG], input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    assert_eq!(
        docs[0]
            .pointer("/spec/jobTemplate/spec/template/spec/imagePullSecrets")
            .unwrap(),
        &serde_json::json!([{"name": "corp"}])
    );
    assert_eq!(
        docs[1].pointer("/spec/imagePullSecrets").unwrap(),
        &serde_json::json!([{"name": "mine"}, {"name": "acme-ghcr"}])
    );
}

#[test]
fn mutate_prints_the_patch_with_output_patch() {
    let out = run(
        &[
            "mutate",
            "--config",
            EXAMPLE_CONFIG,
            "-f",
            "examples/admission-review.json",
            "--output",
            "patch",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let patch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        patch,
        serde_json::json!([
            {"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": "acme-ghcr"}},
            {"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": "corp"}}
        ])
    );
}

#[test]
fn mutate_refuses_bad_documents_with_exit_2_naming_document_and_field() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: []}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers: \"nope\"\n";
    let out = run(&["mutate", "--config", EXAMPLE_CONFIG], input);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("document 2 (Deployment web): spec.template.spec:"),
        "{err}"
    );
    assert!(err.contains("invalid type"), "{err}");
    let out = run(&["mutate", "--config", EXAMPLE_CONFIG], "{not yaml: [");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("input is not valid YAML or JSON"));
    let out = run(
        &["mutate", "--config", EXAMPLE_CONFIG],
        "metadata: {name: x}\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("document 1: kind: missing"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn match_explains_which_secret_matches_and_why() {
    let out = run(
        &[
            "match",
            "--config",
            EXAMPLE_CONFIG,
            "ghcr.io/acme/web:1",
            "ghcr.io/acme-labs/x",
            "myacr.azurecr.io/a",
            "Nginx",
        ],
        "",
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "two images match no secret: {}",
        text(&out.stderr)
    );
    let report = text(&out.stdout);
    assert!(report.contains("ghcr.io/acme/web:1\n  normalized: ghcr.io/acme/web\n  secret \"acme-ghcr\": pattern \"ghcr.io/acme/\""), "{report}");
    assert!(
        report.contains(
            "ghcr.io/acme-labs/x\n  normalized: ghcr.io/acme-labs/x\n  no configured secret matches"
        ),
        "{report}"
    );
    assert!(
        report.contains("secret \"acme-ghcr\": pattern \"*.azurecr.io\""),
        "{report}"
    );
    assert!(
        report.contains("Nginx\n  invalid image reference"),
        "{report}"
    );
}

#[test]
fn match_exits_1_when_an_image_matches_no_secret_and_reports_json() {
    let matched = run(
        &[
            "match",
            "--config",
            EXAMPLE_CONFIG,
            "ghcr.io/acme/web:1",
            "docker.io/corp/api",
        ],
        "",
    );
    assert_eq!(matched.status.code(), Some(0), "{}", text(&matched.stderr));
    let unmatched = run(
        &[
            "match",
            "--config",
            EXAMPLE_CONFIG,
            "ghcr.io/acme/web:1",
            "quay.io/x/y",
        ],
        "",
    );
    assert_eq!(
        unmatched.status.code(),
        Some(1),
        "{}",
        text(&unmatched.stderr)
    );
    let allowed = run(
        &[
            "match",
            "--allow-unmatched",
            "--config",
            EXAMPLE_CONFIG,
            "quay.io/x/y",
        ],
        "",
    );
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed.stderr));

    let json = run(
        &[
            "match",
            "-o",
            "json",
            "--config",
            EXAMPLE_CONFIG,
            "ghcr.io/acme/web:1",
            "quay.io/x/y",
            "Nginx",
        ],
        "",
    );
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("one JSON document");
    assert_eq!(
        report[0],
        serde_json::json!({
            "image": "ghcr.io/acme/web:1",
            "normalized": "ghcr.io/acme/web",
            "secrets": [{"secret": "acme-ghcr", "pattern": "ghcr.io/acme/", "key": "ghcr.io/acme/",
                         "how": "direct", "midSegment": false}],
        })
    );
    assert_eq!(report[1]["secrets"], serde_json::json!([]));
    assert!(
        report[2]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{report}"
    );
}

/// A fatal error under `--log-format json` is one JSON line; the flag wins over
/// `PULLSECRET_INJECTOR_LOG_LEVEL`, which wins over `RUST_LOG`.
#[test]
fn flags_win_over_the_environment_and_a_fatal_error_is_a_json_line() {
    let fatal = |args: &[&str], env: &[(&str, &str)]| -> (Option<i32>, String) {
        let out = Command::new(BIN)
            .args(["serve", "--config", "/missing/config.yaml"])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("PULLSECRET_INJECTOR_LOG_LEVEL")
            .env_remove("PULLSECRET_INJECTOR_LOG_FORMAT")
            .envs(env.iter().copied())
            .output()
            .expect("run");
        (out.status.code(), text(&out.stderr))
    };
    let (code, err) = fatal(&["--log-format", "json"], &[]);
    assert_eq!(code, Some(2));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["message"], "fatal", "{line}");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("/missing/config.yaml")),
        "{line}"
    );

    // The format from the environment, and the flag over it.
    let (_, err) = fatal(&[], &[("PULLSECRET_INJECTOR_LOG_FORMAT", "json")]);
    assert!(err.starts_with('{'), "{err}");
    let (_, err) = fatal(
        &["--log-format", "text"],
        &[("PULLSECRET_INJECTOR_LOG_FORMAT", "json")],
    );
    assert!(err.starts_with("error: cannot read config file"), "{err}");

    // Levels: an `off` filter hides the fatal line, so who wins shows.
    let json = ["--log-format", "json"];
    let shown = |err: &str| err.contains("\"fatal\"");
    let (code, err) = fatal(&json, &[("RUST_LOG", "off")]);
    assert_eq!(code, Some(2));
    assert!(!shown(&err), "RUST_LOG applies without a flag: {err}");
    let (_, err) = fatal(
        &[&json[..], &["--log-level", "error"]].concat(),
        &[("RUST_LOG", "off")],
    );
    assert!(shown(&err), "--log-level wins over RUST_LOG: {err}");
    let (_, err) = fatal(
        &json,
        &[
            ("RUST_LOG", "off"),
            ("PULLSECRET_INJECTOR_LOG_LEVEL", "error"),
        ],
    );
    assert!(shown(&err), "our variable wins over RUST_LOG: {err}");
    let (_, err) = fatal(
        &[&json[..], &["--log-level", "error"]].concat(),
        &[("PULLSECRET_INJECTOR_LOG_LEVEL", "off")],
    );
    assert!(shown(&err), "the flag wins over our variable: {err}");
    let (_, err) = fatal(
        &[&json[..], &["--log-level", "off", "--log-level", "error"]].concat(),
        &[],
    );
    assert!(
        shown(&err),
        "a flag given twice takes its last value: {err}"
    );
}

#[test]
fn serve_refuses_an_invalid_config_with_exit_2_naming_every_field() {
    let config = config_file(
        "listen: nowhere\nmetricsListen: 127.0.0.1:99999\ntls: {certFile: /missing/tls.crt, keyFile: /missing/tls.key}\nsecrets:\n  - {name: UPPER, registries: [ghcr.io]}\n  - {name: dup, registries: [\"a b\"]}\n  - {name: dup, registries: [x.io]}\n",
    );
    let out = run(&["serve", "--config", config.path().to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    for expected in [
        "listen: \"nowhere\" is not an IP:port address",
        "metricsListen: \"127.0.0.1:99999\" is not an IP:port address",
        "secrets[0].name: \"UPPER\" is not a valid Secret name",
        "secrets[1].registries[0]: \"a b\": pattern contains whitespace",
        "secrets[2].name: duplicate name \"dup\", also at secrets[1]",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
}

#[test]
fn serve_refuses_missing_certificate_files_and_unknown_keys_with_exit_2() {
    let config =
        config_file("tls: {certFile: /missing/tls.crt, keyFile: /missing/tls.key}\nsecrets: []\n");
    let out = run(&["serve", "--config", config.path().to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("tls.certFile: file /missing/tls.crt does not exist"));
    let config = config_file("secrets: []\nlistne: 0.0.0.0:1\n");
    let out = run(&["serve", "--config", config.path().to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("listne"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_refuses_unusable_credential_providers_with_exit_2_naming_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    test_support::injector::certificates(dir.path());
    let kubelet = dir.path().join("providers.yaml");
    std::fs::write(
        &kubelet,
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: ecr-credential-provider\n    matchImages: [\"*.dkr.ecr.*.amazonaws.com\"]\n    defaultCacheDuration: 12h\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
    )
    .unwrap();
    let config = config_file(&format!(
        "tls: {{certFile: {0}/tls.crt, keyFile: {0}/tls.key}}\ncredentialProviders: {{configFile: {1}, binDir: {0}/plugins}}\nsecrets:\n  - name: ecr\n    provider: {{name: ecr-credential-provider, images: [ghcr.io/acme/app]}}\n  - name: gcr\n    provider: {{name: gcp, images: [gcr.io/p/app]}}\n",
        dir.path().display(),
        kubelet.display()
    ));
    let out = run(&["serve", "--config", config.path().to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for expected in [
        "secrets[0].provider.images[0]: \"ghcr.io/acme/app\" matches none of provider \"ecr-credential-provider\"'s matchImages",
        "credentialProviders.binDir: ",
        "/plugins/ecr-credential-provider is not an executable file",
        "secrets[1].provider.name: ",
        "has no provider \"gcp\"",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
}

#[test]
fn text_logs_written_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    test_support::injector::certificates(dir.path());
    let config = config_file(&format!(
        "listen: 127.0.0.1:0\nmetricsListen: 127.0.0.1:0\ntls:\n  certFile: {0}/tls.crt\n  keyFile: {0}/tls.key\nsecrets: []\n",
        dir.path().display()
    ));
    let mut child = Command::new(BIN)
        .args(["serve", "--log-format", "text", "--config"])
        .arg(config.path())
        .env_remove("RUST_LOG")
        .env_remove("PULLSECRET_INJECTOR_LOG_LEVEL")
        .env_remove("PULLSECRET_INJECTOR_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("serving"));
    let _ = child.kill();
    let _ = child.wait();
    let serving = serving.expect("a `serving` line before the process ended");
    assert!(
        serving.contains(" INFO ") && serving.contains("listen=127.0.0.1:"),
        "{serving:?}"
    );
    assert!(!serving.contains('\u{1b}'), "escape codes in {serving:?}");
}
