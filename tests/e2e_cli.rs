//! `match` and `mutate` read source secrets through `--kubeconfig`, for entries whose
//! patterns are their sources' `auths` keys: with the token of the chart's ServiceAccount, as
//! `kubectl exec` into the injector's pod would, which may read those sources by name only.

use std::process::Command;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use test_support::access::ChartAccess;
use test_support::controlplane;
use test_support::injector;
use test_support::secrets::secret;

#[tokio::test]
async fn match_reads_patterns_from_the_source_through_kubeconfig() {
    let cp = controlplane::shared();
    let _logs = cp.logs_on_failure();
    let client = cp.client();
    let ns = controlplane::namespace(&client, "cli-sources", &[]).await;
    let auths = r#"{"auths":{"registry.example.com:5000":{"auth":"dXNlcjpodW50ZXIy"}}}"#;
    let source = secret(
        "regcred-source",
        "kubernetes.io/dockerconfigjson",
        &[(".dockerconfigjson", auths.as_bytes())],
    );
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &source)
        .await
        .expect("create source");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let config_text = format!(
        "namespace: {ns}\nleaderElection: {{leaseName: cli-sources}}\n\
         secrets:\n  - name: regcred\n    source: {{name: regcred-source}}\n"
    );
    std::fs::write(&config, &config_text).unwrap();
    let access = ChartAccess::for_config(&client, &config_text, dir.path()).await;
    let kubeconfig = access.kubeconfig.display().to_string();
    let run_with = |extra: &[&str], env_kubeconfig: Option<&str>| {
        let mut command = Command::new(injector::binary());
        command
            .args(["match", "--config"])
            .arg(&config)
            .args(extra)
            .args(["registry.example.com:5000/team/app:1", "ghcr.io/other/app"])
            // Not inside a cluster: no in-cluster configuration to fall back to.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG");
        if let Some(path) = env_kubeconfig {
            command.env("KUBECONFIG", path);
        }
        let out = command.output().expect("run match");
        assert_eq!(
            out.status.code(),
            Some(1),
            "ghcr.io/other/app matches no secret: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |extra: &[&str]| run_with(extra, None);
    let (report, notes) = run(&["--kubeconfig", &kubeconfig]);
    assert!(
        report.contains("registry.example.com:5000/team/app\n  secret \"regcred\": pattern \"registry.example.com:5000\""),
        "{report}\n{notes}"
    );
    assert!(
        report.contains(
            "ghcr.io/other/app\n  normalized: ghcr.io/other/app\n  no configured secret matches"
        ),
        "{report}"
    );
    assert!(
        !report.contains("hunter2") && !notes.contains("dXNlcjpodW50ZXIy"),
        "secret data leaked"
    );
    // $KUBECONFIG when there is no flag: the same report.
    let (from_env, _) = run_with(&[], Some(&kubeconfig));
    assert_eq!(from_env, report);
    let (report, notes) = run(&[]);
    assert!(
        notes.contains("regcred take their patterns from source secrets; pass --kubeconfig"),
        "{notes}"
    );
    assert!(!report.contains("secret \"regcred\""), "{report}");
}
