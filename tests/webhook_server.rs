//! The webhook server as the apiserver sees it: the real binary, a real TLS stack, HTTP/1.1
//! keep-alive, real-world AdmissionReviews in, JSON patches out that apply to a valid Pod.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use test_support::client::{Response, TlsClient};
use test_support::controlplane::eventually;
use test_support::injector::{Injector, Instance, Options};
use test_support::metrics::metric;
use test_support::pki::{CertifiedKey, MountedSecret, TestCa, der};
use test_support::pods::secret_names;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::decode_patch;

const CONFIG: &str = r#"
limits:
  tlsHandshakeTimeoutSeconds: 1
  headerReadTimeoutSeconds: 1
secrets:
  - name: jmalloc
    registries: [docker.io/jmalloc]
  - name: k8s-gcr
    registries: [k8s.gcr.io]
  - name: init-only
    registries: [docker.io/library/init]
  - name: hub-nginx
    registries: [docker.io/library/nginx]
  - name: quay-debug
    registries: [quay.io/debug/]
"#;

const JSON: &str = "application/json";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/admission/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture"))
        .expect("fixture JSON");
    if value.get("request").is_some() {
        value
    } else {
        // The Kubewarden samples are bare AdmissionRequests: wrap them as the apiserver sends.
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": value})
    }
}

struct Harness {
    injector: Injector,
    client: TlsClient,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

fn start() -> Harness {
    let Instance {
        injector,
        ca_pem,
        dir,
    } = Instance::start(|dir| Injector::start(Options::new(CONFIG, dir)));
    Harness {
        injector,
        client: TlsClient::new(&ca_pem),
        ca_pem,
        _dir: dir,
    }
}

impl Harness {
    async fn review(&self, review: &Value) -> Response {
        self.client
            .post(
                self.injector.addr,
                "/mutate?timeout=10s",
                JSON,
                serde_json::to_vec(review).expect("encode"),
            )
            .await
    }

    /// Posts the review and returns (response review, the object after our patch).
    async fn mutate(&self, review: &Value) -> (Value, Value) {
        let response = self.review(review).await;
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let answer = response.json();
        let mut object = review["request"]["object"].clone();
        if let Some(patch) = decode_patch(&answer) {
            json_patch::patch(&mut object, &patch)
                .expect("our patch applies to the request object");
        }
        (answer, object)
    }
}

/// The patch as the API documents it: a base64 string (a Go `[]byte`) beside its patchType.
mod wire {
    use serde_json::Value;

    pub fn decode_patch(answer: &Value) -> Option<json_patch::Patch> {
        let response = &answer["response"];
        let patch = response.get("patch")?;
        assert_eq!(
            response["patchType"], "JSONPatch",
            "a patch needs patchType"
        );
        let text = patch.as_str().expect("the patch is a base64 string");
        let bytes: k8s_openapi::ByteString =
            serde_json::from_value(Value::from(text)).expect("the patch is valid base64");
        Some(serde_json::from_slice(&bytes.0).expect("patch is a JSON patch"))
    }
}

fn pull_secret_names(object: &Value) -> Vec<String> {
    let pod: Pod =
        serde_json::from_value(object.clone()).expect("the patched object is a valid Pod");
    assert!(pod.spec.is_some(), "the patched Pod has a spec");
    secret_names(&pod)
}

#[tokio::test]
async fn real_pod_create_gets_the_matching_secret_and_stays_a_valid_pod() {
    let h = start();
    let review = fixture("01_kube-rs_kube-core_admission_rs_pod_create_v1.json");
    let (answer, pod) = h.mutate(&review).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(
        answer["response"]["auditAnnotations"]["injected-secrets"],
        "jmalloc"
    );
    assert_eq!(pull_secret_names(&pod), ["jmalloc"]);
    let patch = decode_patch(&answer).expect("patch");
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "jmalloc"}]}])
    );
}

/// The bytes on the wire, as `jq -r .response.patch | base64 -d` reads them: in both review
/// versions the patch is one base64 string, never kube-core's array of numbers. The expected
/// strings are `base64 -w0` (coreutils) of the patch
/// `[{"op":"add","path":"/spec/imagePullSecrets","value":[{"name":"<secret>"}]}]`.
#[tokio::test]
async fn the_patch_on_the_wire_is_a_base64_string_in_v1_and_v1beta1() {
    let h = start();
    for (fixture_name, encoded) in [
        (
            "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
            "W3sib3AiOiJhZGQiLCJwYXRoIjoiL3NwZWMvaW1hZ2VQdWxsU2VjcmV0cyIsInZhbHVlIjpbeyJuYW1lIjoiam1hbGxvYyJ9XX1d",
        ),
        (
            "02_connctd-sqlbee_sting_test_go_pod_create_v1beta1_replicaset.json",
            "W3sib3AiOiJhZGQiLCJwYXRoIjoiL3NwZWMvaW1hZ2VQdWxsU2VjcmV0cyIsInZhbHVlIjpbeyJuYW1lIjoiazhzLWdjciJ9XX1d",
        ),
    ] {
        let response = h.review(&fixture(fixture_name)).await;
        assert_eq!(response.status, 200);
        let raw = std::str::from_utf8(&response.body).expect("UTF-8 answer");
        assert!(
            raw.contains(&format!(r#""patch":"{encoded}""#)),
            "{fixture_name}: no base64 patch in {raw}"
        );
        assert!(!raw.contains(r#""patch":["#), "{fixture_name}: {raw}");
        assert!(raw.contains(r#""patchType":"JSONPatch""#), "{raw}");
    }
}

#[tokio::test]
async fn v1beta1_review_is_answered_in_v1beta1_and_uses_the_request_namespace() {
    let h = start();
    let review = fixture("02_connctd-sqlbee_sting_test_go_pod_create_v1beta1_replicaset.json");
    let (answer, pod) = h.mutate(&review).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    assert_eq!(pull_secret_names(&pod), ["k8s-gcr"]);
    let line = h
        .injector
        .wait_for_log(Duration::from_secs(5), |l| {
            l["message"] == "admission reviewed"
        })
        .await;
    assert_eq!(line["namespace"], "default");
    assert_eq!(
        line["pod"],
        review["request"]["object"]["metadata"]["generateName"]
    );
}

#[tokio::test]
async fn init_container_images_are_matched() {
    let h = start();
    let review = fixture(
        "05_kubewarden-verify-image-signatures_pod_creation_with_init_container_admissionrequest.json",
    );
    let (_, pod) = h.mutate(&review).await;
    assert_eq!(pull_secret_names(&pod), ["init-only", "hub-nginx"]);
}

#[tokio::test]
async fn ephemeral_container_images_are_matched() {
    let h = start();
    let mut review = fixture("01_kube-rs_kube-core_admission_rs_pod_create_v1.json");
    review["request"]["object"]["spec"]["ephemeralContainers"] =
        json!([{"name": "debug", "image": "quay.io/debug/tools:latest"}]);
    let (_, pod) = h.mutate(&review).await;
    assert_eq!(pull_secret_names(&pod), ["jmalloc", "quay-debug"]);
}

#[tokio::test]
async fn tag_and_digest_do_not_change_which_secret_matches() {
    let h = start();
    let review = fixture(
        "06_kubewarden-verify-image-signatures_pod_creation_with_digest_admissionrequest.json",
    );
    let (_, pod) = h.mutate(&review).await;
    assert_eq!(pull_secret_names(&pod), ["hub-nginx"]);
}

#[tokio::test]
async fn existing_entries_are_kept_in_order_and_never_duplicated() {
    let h = start();
    let mut review = fixture("01_kube-rs_kube-core_admission_rs_pod_create_v1.json");
    let spec = &mut review["request"]["object"]["spec"];
    spec["imagePullSecrets"] = json!([{"name": "zzz"}, {"name": "jmalloc"}]);
    spec["containers"][0]["image"] = json!("k8s.gcr.io/echoserver:1.4");
    spec["initContainers"] = json!([{"name": "init", "image": "jmalloc/echo-server"}]);
    let (answer, pod) = h.mutate(&review).await;
    assert_eq!(pull_secret_names(&pod), ["zzz", "jmalloc", "k8s-gcr"]);
    let patch = decode_patch(&answer).expect("patch");
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([{"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": "k8s-gcr"}}])
    );
}

#[tokio::test]
async fn reinvocation_on_the_patched_pod_adds_nothing() {
    let h = start();
    let mut review = fixture(
        "05_kubewarden-verify-image-signatures_pod_creation_with_init_container_admissionrequest.json",
    );
    let (_, patched) = h.mutate(&review).await;
    review["request"]["object"] = patched;
    let (answer, pod) = h.mutate(&review).await;
    assert!(answer["response"].get("patch").is_none(), "{answer}");
    assert!(answer["response"].get("patchType").is_none(), "{answer}");
    assert_eq!(pull_secret_names(&pod), ["init-only", "hub-nginx"]);
}

#[tokio::test]
async fn pods_whose_images_match_nothing_get_no_patch() {
    let h = start();
    let mut review =
        fixture("04_kubewarden-trusted-repos-policy_pod_creation_admissionrequest.json");
    review["request"]["object"]["spec"]["containers"][0]["image"] = json!("quay.io/other/app:1");
    let (answer, _) = h.mutate(&review).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "{answer}");
    assert!(answer["response"].get("patchType").is_none(), "{answer}");
}

#[tokio::test]
async fn only_pod_create_is_mutated() {
    let h = start();
    let base = fixture("01_kube-rs_kube-core_admission_rs_pod_create_v1.json");
    let pod = base["request"]["object"].clone();
    let mut cases = Vec::new();
    for operation in ["UPDATE", "CONNECT"] {
        let mut r = base.clone();
        r["request"]["operation"] = json!(operation);
        r["request"]["oldObject"] = pod.clone();
        cases.push((operation.to_string(), r));
    }
    let mut delete = base.clone();
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["object"] = Value::Null;
    delete["request"]["oldObject"] = pod.clone();
    cases.push(("DELETE".into(), delete));
    let mut no_object = base.clone();
    no_object["request"]["object"] = Value::Null;
    cases.push(("CREATE without object".into(), no_object));
    let mut deployment = base.clone();
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["request"]["resource"] =
        json!({"group": "apps", "version": "v1", "resource": "deployments"});
    deployment["request"]["object"] = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c", "image": "jmalloc/x"}]}}}});
    cases.push(("a Deployment".into(), deployment));
    for (what, review) in cases {
        let (answer, _) = h.mutate(&review).await;
        assert_eq!(answer["response"]["allowed"], true, "{what}: {answer}");
        assert_eq!(
            answer["response"]["uid"], review["request"]["uid"],
            "{what}"
        );
        assert!(
            answer["response"].get("patch").is_none(),
            "{what}: {answer}"
        );
    }
}

#[tokio::test]
async fn opted_out_and_mirror_pods_are_left_alone() {
    let h = start();
    let base = fixture("01_kube-rs_kube-core_admission_rs_pod_create_v1.json");
    for (key, value) in [
        ("pullsecret-injector.io/inject", "false"),
        ("kubernetes.io/config.mirror", "abc"),
    ] {
        let mut review = base.clone();
        review["request"]["object"]["metadata"]["annotations"][key] = json!(value);
        let (answer, _) = h.mutate(&review).await;
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none(), "{key}: {answer}");
    }
    let mut opted_in = base.clone();
    opted_in["request"]["object"]["metadata"]["annotations"]["pullsecret-injector.io/inject"] =
        json!("true");
    let (_, pod) = h.mutate(&opted_in).await;
    assert_eq!(pull_secret_names(&pod), ["jmalloc"]);
}

#[tokio::test]
async fn dry_run_requests_get_the_same_patch() {
    let h = start();
    let mut review = fixture("01_kube-rs_kube-core_admission_rs_pod_create_v1.json");
    let (wet, _) = h.mutate(&review).await;
    review["request"]["dryRun"] = json!(true);
    let (dry, _) = h.mutate(&review).await;
    assert_eq!(wet["response"]["patch"], dry["response"]["patch"]);
    assert!(dry["response"].get("patch").is_some());
}

#[tokio::test]
async fn bad_bodies_get_400_naming_the_problem_and_the_server_keeps_serving() {
    let h = start();
    let mut conn = h.client.connect(h.injector.addr).await;
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let wrong_version =
        json!({"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview", "request": {}});
    let mut bad_pod = fixture("01_kube-rs_kube-core_admission_rs_pod_create_v1.json");
    bad_pod["request"]["object"]["spec"]["containers"] = json!("not a list");
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            b"{not json".to_vec(),
            "invalid_json",
            "body is not valid JSON",
        ),
        (
            b"{\"foo\": 1}".to_vec(),
            "not_admission_review",
            "body is not an AdmissionReview",
        ),
        (
            serde_json::to_vec(&no_request).unwrap(),
            "no_request",
            "AdmissionReview has no request",
        ),
        (
            serde_json::to_vec(&wrong_version).unwrap(),
            "not_admission_review",
            "admission.k8s.io/v2",
        ),
        (
            serde_json::to_vec(&bad_pod).unwrap(),
            "invalid_pod",
            "request.object is not a valid Pod",
        ),
    ];
    for (body, reason, message) in cases {
        let response = conn.post("/mutate", JSON, body).await;
        assert_eq!(response.status, 400);
        let error = response.json();
        assert_eq!(error["reason"], reason, "{error}");
        assert!(
            error["error"].as_str().unwrap().contains(message),
            "{error}"
        );
    }
    // Same connection, still serving.
    let good = fixture("01_kube-rs_kube-core_admission_rs_pod_create_v1.json");
    let response = conn
        .post("/mutate", JSON, serde_json::to_vec(&good).unwrap())
        .await;
    assert_eq!(response.status, 200);
    let metrics = h.injector.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "pullsecret_injector_bad_requests_total{reason=\"invalid_json\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn wrong_content_type_gets_415() {
    let h = start();
    let body = serde_json::to_vec(&fixture(
        "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
    ))
    .unwrap();
    let response = h
        .client
        .post(h.injector.addr, "/mutate", "text/plain", body.clone())
        .await;
    assert_eq!(response.status, 415);
    assert!(
        response.json()["error"]
            .as_str()
            .unwrap()
            .contains("text/plain")
    );
    let with_charset = h
        .client
        .post(
            h.injector.addr,
            "/mutate",
            "application/json; charset=utf-8",
            body,
        )
        .await;
    assert_eq!(with_charset.status, 200);
}

#[tokio::test]
async fn an_announced_oversized_body_is_refused_without_being_read() {
    let h = start();
    let mut tls = h.client.tls(h.injector.addr).await.unwrap();
    // 8 MiB announced, nothing sent: the answer must come from the headers alone.
    tls.write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 8388608\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("answered before any body byte was sent")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("over the limit of 7340032 bytes"), "{head}");
}

/// A client that sends its body right after the headers is still sending when an early
/// refusal goes out. The server reads and discards the rest before closing (a lingering
/// close), so the kernel never resets the connection under the answer: every client reads
/// its 413 (announced 40 MiB) or 503 (no room in the body budget).
#[tokio::test]
async fn early_refusals_reach_clients_that_send_their_body_after_the_headers() {
    let config = CONFIG.replace(
        "limits:\n",
        "limits:\n  maxBodyBytes: 1048576\n  maxBufferedBodyBytes: 1048576\n  bodyReadTimeoutSeconds: 300\n",
    );
    let Instance {
        injector,
        ca_pem,
        dir: _dir,
    } = Instance::start(|dir| Injector::start(Options::new(&config, dir)));
    let client = TlsClient::new(&ca_pem);
    // Holds the whole body budget for the test: announces 1 MiB, sends one byte, waits.
    let mut holder = client.tls(injector.addr).await.expect("connect");
    holder
        .write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1048576\r\n\r\n{")
        .await
        .expect("holder's request");
    let tries = 100;
    for (announced, expected) in [(40u64 << 20, "413"), (1 << 20, "503")] {
        let mut answered = 0;
        let mut failures = Vec::new();
        for batch in 0..tries / 50 {
            let clients = (0..50).map(|i| {
                let client = client.clone();
                let addr = injector.addr;
                let sent = (64 + (batch * 50 + i) * 37 % 193) << 10;
                async move {
                    let mut tls = client.tls(addr).await.map_err(|e| e.to_string())?;
                    let head = format!(
                        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {announced}\r\n\r\n"
                    );
                    tls.write_all(head.as_bytes())
                        .await
                        .map_err(|e| format!("headers: {e}"))?;
                    tls.write_all(&vec![b' '; sent])
                        .await
                        .map_err(|e| format!("body of {sent} bytes: {e}"))?;
                    let mut answer = Vec::new();
                    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
                        .await
                        .map_err(|_| "no answer within 10 s".to_string())?
                        .map_err(|e| {
                            format!(
                                "after {} bytes of answer: {e}",
                                answer.len()
                            )
                        })?;
                    Ok::<_, String>(String::from_utf8_lossy(&answer).into_owned())
                }
            });
            for result in futures::future::join_all(clients).await {
                match result {
                    Ok(answer) if answer.starts_with(&format!("HTTP/1.1 {expected}")) => {
                        assert!(answer.contains("connection: close"), "{answer}");
                        answered += 1;
                    }
                    Ok(answer) => failures.push(format!("unexpected answer: {answer}")),
                    Err(e) => failures.push(e),
                }
            }
        }
        assert_eq!(
            answered, tries,
            "{expected}: {answered} of {tries} clients read the answer; the others: {failures:?}"
        );
    }
    drop(holder);
    // And the server goes on serving.
    let ok = client
        .post(
            injector.addr,
            "/mutate?timeout=10s",
            JSON,
            serde_json::to_vec(&fixture(
                "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
            ))
            .expect("encode"),
        )
        .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn a_body_over_the_limit_without_content_length_gets_413() {
    let h = start();
    let mut tls = h.client.tls(h.injector.addr).await.unwrap();
    tls.write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b' '; 1024 * 1024];
    let mut head = String::new();
    for _ in 0..8 {
        let header = format!("{:x}\r\n", chunk.len());
        if tls.write_all(header.as_bytes()).await.is_err()
            || tls.write_all(&chunk).await.is_err()
            || tls.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let mut buf = vec![0u8; 4096];
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        head = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    assert!(head.starts_with("HTTP/1.1 413"), "{head:?}");
}

#[tokio::test]
async fn wrong_method_gets_405_and_unknown_path_404() {
    let h = start();
    let mut conn = h.client.connect(h.injector.addr).await;
    let get = hyper::Request::get("/mutate")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = conn.send(get).await;
    assert_eq!(response.status, 405);
    assert!(response.json()["error"].as_str().unwrap().contains("POST"));
    let response = conn.post("/validate", JSON, "{}").await;
    assert_eq!(response.status, 404);
    assert!(
        response.json()["error"]
            .as_str()
            .unwrap()
            .contains("/validate")
    );
}

#[tokio::test]
async fn requests_share_one_keep_alive_connection() {
    let h = start();
    let body = serde_json::to_vec(&fixture(
        "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
    ))
    .unwrap();
    let mut conn = h.client.connect(h.injector.addr).await;
    for _ in 0..5 {
        let response = conn.post("/mutate?timeout=10s", JSON, body.clone()).await;
        assert_eq!(response.status, 200);
        assert!(
            response
                .headers
                .get("connection")
                .is_none_or(|v| v != "close")
        );
    }
    assert!(conn.is_open());
    let metrics = h.injector.metrics().await;
    assert_eq!(
        metric(&metrics, "pullsecret_injector_open_connections"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "pullsecret_injector_admissions_total{operation=\"CREATE\",result=\"patched\"}"
        ),
        5.0
    );
}

#[tokio::test]
async fn only_http1_is_offered_so_the_apiserver_spreads_reviews_over_replicas() {
    let h = start();
    let stream = h.client.tls(h.injector.addr).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let h2_only = TlsClient::with_alpn(&h.ca_pem, vec![b"h2".to_vec()]);
    assert!(
        h2_only.tls(h.injector.addr).await.is_err(),
        "an h2-only client must not get a connection"
    );
    let body = serde_json::to_vec(&fixture(
        "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
    ))
    .unwrap();
    assert_eq!(
        h.client
            .post(h.injector.addr, "/mutate", JSON, body)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn failed_handshakes_and_silent_clients_are_dropped_without_affecting_others() {
    let h = start();
    let addr = h.injector.addr;
    // Garbage instead of a ClientHello.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    // A TCP client that never starts TLS, and a TLS client that never sends its headers.
    let mut silent_tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut silent_tls = h.client.tls(addr).await.unwrap();

    let body = serde_json::to_vec(&fixture(
        "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
    ))
    .unwrap();
    let response = h.client.post(addr, "/mutate", JSON, body).await;
    assert_eq!(response.status, 200);

    let closed = |n: std::io::Result<usize>| matches!(n, Ok(0) | Err(_));
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent_tcp.read(&mut buf)).await;
    assert!(n.is_ok_and(closed), "silent TCP client was not dropped");
    let n = tokio::time::timeout(Duration::from_secs(5), silent_tls.read(&mut buf)).await;
    assert!(
        n.is_ok_and(closed),
        "TLS client without headers was not dropped"
    );
    let n = tokio::time::timeout(Duration::from_secs(5), garbage.read(&mut buf)).await;
    assert!(n.is_ok(), "garbage client was not answered or dropped");
    let metrics = h.injector.metrics().await;
    assert!(
        metric(&metrics, "pullsecret_injector_tls_handshake_failures_total") >= 2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn certificates_are_reloaded_on_symlink_swap_and_a_broken_pair_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("rotation CA");
    let first = ca.serving("first", &["localhost"]);
    let mut mounted = MountedSecret::new(dir.path(), &first);
    // Long enough that the kept-alive connection below is not closed as idle meanwhile.
    let config = CONFIG.replace(
        "headerReadTimeoutSeconds: 1",
        "headerReadTimeoutSeconds: 60",
    );
    let h = Injector::start(Options::new(&config, dir.path()));
    let client = TlsClient::new(&ca.cert_pem);
    assert_eq!(
        client.peer_certificate(h.addr).await.unwrap(),
        der(&first.cert_pem)
    );
    let body = serde_json::to_vec(&fixture(
        "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
    ))
    .unwrap();
    let mut kept_alive = client.connect(h.addr).await;
    assert_eq!(
        kept_alive.post("/mutate", JSON, body.clone()).await.status,
        200
    );

    let second = ca.serving("second", &["localhost"]);
    mounted.rotate(&second);
    eventually(
        "the new certificate to be served",
        Duration::from_secs(10),
        || async {
            match client.peer_certificate(h.addr).await {
                Ok(served) if served == der(&second.cert_pem) => Ok(()),
                Ok(_) => Err("still the old certificate".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    // The connection opened before the rotation keeps working.
    assert_eq!(
        kept_alive.post("/mutate", JSON, body.clone()).await.status,
        200
    );

    // A key that does not belong to the certificate: refused, the good pair stays.
    let third = ca.serving("third", &["localhost"]);
    let broken = CertifiedKey {
        cert_pem: third.cert_pem.clone(),
        key_pem: first.key_pem.clone(),
    };
    mounted.rotate(&broken);
    let waiting = h;
    let line = waiting
        .wait_for_log(Duration::from_secs(10), |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("new certificate not loaded"))
        })
        .await;
    assert!(
        line["error"].as_str().unwrap().contains("does not match"),
        "{line}"
    );
    assert_eq!(
        client.peer_certificate(waiting.addr).await.unwrap(),
        der(&second.cert_pem)
    );
    let metrics = waiting.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "pullsecret_injector_certificate_reloads_total{result=\"success\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "pullsecret_injector_certificate_reloads_total{result=\"error\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn sigterm_answers_in_flight_requests_with_connection_close_and_exits_zero() {
    let h = start();
    let body = serde_json::to_vec(&fixture(
        "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
    ))
    .unwrap();
    let mut tls = h.client.tls(h.injector.addr).await.unwrap();
    let head = format!(
        "POST /mutate?timeout=10s HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body[..100]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    h.injector.signal("TERM");
    h.injector
        .wait_for_log(Duration::from_secs(5), |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("draining"))
        })
        .await;
    tls.write_all(&body[100..]).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response))
        .await
        .expect("the in-flight request is answered and the connection closed")
        .ok();
    let text = String::from_utf8_lossy(&response).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    let status = h.injector.wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}

/// A client reuses its pooled keep-alive connection right after SIGTERM, as the apiserver
/// does with a terminating webhook pod whatever the endpoints say: the request is answered,
/// with `Connection: close`, instead of meeting a closed connection (a refused pod under
/// `failurePolicy: Fail`).
#[tokio::test]
async fn a_keep_alive_connection_reused_while_draining_is_answered_then_closed() {
    let h = start();
    let body = serde_json::to_vec(&fixture(
        "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
    ))
    .unwrap();
    let mut connection = h.client.connect(h.injector.addr).await;
    let first = connection
        .post("/mutate?timeout=10s", JSON, body.clone())
        .await;
    assert_eq!(first.status, 200);
    assert!(
        first.headers.get("connection").is_none(),
        "{:?}",
        first.headers
    );

    h.injector.signal("TERM");
    h.injector
        .wait_for_log(Duration::from_secs(5), |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("draining"))
        })
        .await;
    let second = connection.post("/mutate?timeout=10s", JSON, body).await;
    assert_eq!(second.status, 200);
    assert_eq!(
        second.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let status = h.injector.wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(!connection.is_open(), "closed after the answer");
}

#[tokio::test]
async fn every_admission_is_logged_as_one_json_line_with_the_fields_operators_need() {
    let h = start();
    let review = fixture("01_kube-rs_kube-core_admission_rs_pod_create_v1.json");
    h.mutate(&review).await;
    let line = h
        .injector
        .wait_for_log(Duration::from_secs(5), |l| {
            l["message"] == "admission reviewed"
        })
        .await;
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["uid"], review["request"]["uid"]);
    assert_eq!(line["namespace"], "colin-coder");
    assert_eq!(line["pod"], "echo-pod");
    assert_eq!(line["operation"], "CREATE");
    assert_eq!(line["injected"], "jmalloc");
    assert!(line["duration_us"].as_u64().is_some(), "{line}");
    assert_eq!(line["http_version"], "HTTP/1.1");
    assert_eq!(line["timeout"], "10s");
    let count = h
        .injector
        .json_logs()
        .iter()
        .filter(|l| l["message"] == "admission reviewed")
        .count();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn metrics_and_probes_are_served_on_the_plain_listener() {
    let h = start();
    h.mutate(&fixture(
        "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
    ))
    .await;
    let metrics = h.injector.metrics().await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "pullsecret_injector_injected_secrets_total{secret=\"jmalloc\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &metrics,
            "pullsecret_injector_admission_duration_seconds_count"
        ) >= 1.0
    );
    for path in ["/healthz", "/readyz"] {
        let mut tcp = tokio::net::TcpStream::connect(h.injector.admin)
            .await
            .unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
    }
    let mut conn = h.client.connect(h.injector.addr).await;
    let ready = hyper::Request::get("/readyz")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(conn.send(ready).await.status, 200);
}

// ---------------------------------------------------------------------------------------
// what an operator sees (issue 13 §4, §6, §9)
// ---------------------------------------------------------------------------------------

/// GET `path` on the plain listener at `addr`.
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    out
}

/// A Pod review built from its parts.
fn pod_review(uid: &str, operation: &str, annotations: Value, image: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team",
            "operation": operation,
            "userInfo": {"username": "someone"},
            "object": {
                "metadata": {"name": uid, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        }
    })
}

#[tokio::test]
async fn one_listener_on_the_unspecified_ipv6_address_serves_ipv6_and_ipv4() {
    let Instance {
        injector,
        ca_pem,
        dir: _dir,
    } = Instance::start(|dir| {
        Injector::start(Options {
            listen: "[::]:0",
            metrics_listen: "[::]:0",
            ..Options::new(CONFIG, dir)
        })
    });
    assert!(
        injector.addr.ip().is_unspecified() && injector.addr.is_ipv6(),
        "{}",
        injector.addr
    );
    let client = TlsClient::new(&ca_pem);
    let review = fixture("01_kube-rs_kube-core_admission_rs_pod_create_v1.json");
    for host in ["::1", "127.0.0.1"] {
        let ip: std::net::IpAddr = host.parse().expect("address");
        let webhook = std::net::SocketAddr::new(ip, injector.addr.port());
        let response = client
            .post(
                webhook,
                "/mutate",
                JSON,
                serde_json::to_vec(&review).expect("encode"),
            )
            .await;
        assert_eq!(response.status, 200, "{host}");
        let patch = decode_patch(&response.json()).expect("a patch");
        assert!(!patch.0.is_empty(), "{host}");
        let admin = std::net::SocketAddr::new(ip, injector.admin.port());
        let metrics = admin_get(admin, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{host}: {metrics}");
        println!("served over {host}: /mutate 200 with a patch, /metrics 200");
    }
    let metrics = admin_get(injector.admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "pullsecret_injector_admissions_total{operation=\"CREATE\",result=\"patched\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn every_pod_left_alone_is_logged_and_counted_with_its_reason() {
    let h = start();
    let cases = [
        (
            "opted-out",
            "CREATE",
            json!({"pullsecret-injector.io/inject": "false"}),
            "docker.io/jmalloc/echo",
            "opted_out",
        ),
        (
            "mirror",
            "CREATE",
            json!({"kubernetes.io/config.mirror": "abc"}),
            "docker.io/jmalloc/echo",
            "mirror_pod",
        ),
        (
            "update",
            "UPDATE",
            json!({}),
            "docker.io/jmalloc/echo",
            "not_pod_create",
        ),
        (
            "no-match",
            "CREATE",
            json!({}),
            "quay.io/other/app",
            "no_match",
        ),
    ];
    for (uid, operation, annotations, image, _) in &cases {
        let (answer, _) = h
            .mutate(&pod_review(uid, operation, annotations.clone(), image))
            .await;
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none(), "{uid}: {answer}");
    }
    let (patched, _) = h
        .mutate(&pod_review(
            "patched",
            "CREATE",
            json!({}),
            "docker.io/jmalloc/echo",
        ))
        .await;
    assert!(decode_patch(&patched).is_some());
    let metrics = h.injector.metrics().await;
    for (uid, _, _, _, reason) in &cases {
        let line = h
            .injector
            .wait_for_log(Duration::from_secs(5), |l| {
                l["message"] == "admission reviewed" && l["uid"] == *uid
            })
            .await;
        assert_eq!(line["result"], "skipped", "{line}");
        assert_eq!(line["reason"], *reason, "{line}");
        assert_eq!(
            metric(
                &metrics,
                &format!("pullsecret_injector_skipped_admissions_total{{reason=\"{reason}\"}}")
            ),
            1.0,
            "{reason}"
        );
    }
    let line = h
        .injector
        .wait_for_log(Duration::from_secs(5), |l| {
            l["message"] == "admission reviewed" && l["uid"] == "patched"
        })
        .await;
    assert_eq!(line["result"], "patched");
    assert_eq!(line["reason"], "", "a patched pod has no skip reason");
}

#[tokio::test]
async fn metrics_carry_the_version_the_certificate_expiry_process_figures_and_30_s_buckets() {
    let h = start();
    h.mutate(&fixture(
        "01_kube-rs_kube-core_admission_rs_pod_create_v1.json",
    ))
    .await;
    let metrics = h.injector.metrics().await;
    let build = format!(
        "pullsecret_injector_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&metrics, &build), 1.0, "{metrics}");

    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(h.injector.dir.join("tls.crt")).expect("served certificate");
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).expect("PEM");
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
    let not_after = cert.validity().not_after.timestamp() as f64;
    assert_eq!(
        metric(
            &metrics,
            "pullsecret_injector_certificate_expiry_timestamp_seconds"
        ),
        not_after
    );

    assert_eq!(
        metric(
            &metrics,
            "pullsecret_injector_admission_duration_seconds_bucket{le=\"30.0\"}"
        ),
        1.0,
        "the last bucket before +Inf is the 30 s webhook timeout"
    );
    // CPU time comes in 10 ms ticks: a young, idle process may have none yet.
    assert!(
        metrics.contains("\nprocess_cpu_seconds_total "),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "process_resident_memory_bytes") > 1e6,
        "{metrics}"
    );
    assert!(metric(&metrics, "process_open_fds") >= 5.0, "{metrics}");
    assert!(metric(&metrics, "process_max_fds") >= 5.0, "{metrics}");
    println!(
        "rss {} B, open fds {}, cpu {} s",
        metric(&metrics, "process_resident_memory_bytes"),
        metric(&metrics, "process_open_fds"),
        metric(&metrics, "process_cpu_seconds_total")
    );
}
