//! The private registries and the images of the node tests, checked without a node: a push
//! needs credentials, an anonymous pull gets 401, neither registry lets the other one's user
//! in, the registry's log tells who pulled; the injector's image (`make image`) carries the
//! Dockerfile's config and serves as nonroot on a read-only root under runc; the test image's
//! entrypoint behaves.
//!
//! Needs `make registry-tools` (registry, crane, runc, sleeper) and `make build` (the release
//! binary the injector image is made from).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use test_support::images::{self, Image};
use test_support::registry::{self, Login, Registry};
use test_support::secrets;

fn manifest(registry: &Registry, login: Login<'_>, reference: &str) -> std::process::Output {
    registry
        .crane(login)
        .args(["manifest", reference])
        .output()
        .expect("running crane manifest")
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_push_with_credentials_is_pulled_back_and_logged_with_the_user() {
    let a = &registry::shared().a;
    let _log = a.logs_on_failure();

    let image = images::push_test_image(a, "owned", "v1");
    let pulled = manifest(a, Login::Own, &image.reference);
    assert!(
        pulled.status.success(),
        "pull as alice: {}",
        stderr(&pulled)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&pulled.stdout).expect("manifest is JSON");
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{manifest}"
    );

    let config = images::config(a, &image.reference);
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/sleeper"])
    );
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["pullsecret-injector test image owned:v1"])
    );

    let pulls = a.manifest_pulls("owned");
    assert!(
        pulls.iter().any(|r| r.method == "GET"
            && r.user.as_deref() == Some("alice")
            && r.reference.as_deref() == Some("v1")),
        "the log shows no GET of owned:v1 by alice: {pulls:#?}"
    );
    assert!(
        pulls.iter().all(|r| r.user.as_deref() == Some("alice")),
        "every manifest fetch of owned authenticated as alice: {pulls:#?}"
    );
}

#[test]
fn an_anonymous_pull_gets_401_and_the_registry_logs_it() {
    let a = &registry::shared().a;
    let _log = a.logs_on_failure();
    let image = images::push_test_image(a, "private", "v1");
    let before = a.unauthorized("private").len();

    let anonymous = manifest(a, Login::Anonymous, &image.reference);
    assert!(
        !anonymous.status.success(),
        "an anonymous pull of {} succeeded",
        image.reference
    );
    assert!(
        stderr(&anonymous).contains("UNAUTHORIZED"),
        "{}",
        stderr(&anonymous)
    );

    let refused = a.unauthorized("private");
    assert!(refused.len() > before, "no 401 for private logged");
    let last = refused.last().expect("a 401");
    assert_eq!(last.user, None);
    assert_eq!(
        last.auth_error.as_deref(),
        Some("invalid authorization credential")
    );
    assert!(
        a.manifest_pulls("private")
            .iter()
            .all(|r| r.user.as_deref() == Some("alice")),
        "only alice's pulls of private succeeded"
    );
}

#[test]
fn neither_registry_lets_the_other_registry_user_in() {
    let registries = registry::shared();
    let (a, b) = (&registries.a, &registries.b);
    let _logs = (a.logs_on_failure(), b.logs_on_failure());
    let on_b = images::push_test_image(b, "only-b", "v1");
    let on_a = images::push_test_image(a, "only-a", "v1");

    let alice_on_b = manifest(b, Login::As(a.user(), a.password()), &on_b.reference);
    assert!(!alice_on_b.status.success(), "alice pulled from B");
    let bob_on_a = manifest(a, Login::As(b.user(), b.password()), &on_a.reference);
    assert!(!bob_on_a.status.success(), "bob pulled from A");
    let wrong_password = manifest(b, Login::As(b.user(), "not-the-password"), &on_b.reference);
    assert!(
        !wrong_password.status.success(),
        "bob pulled with a wrong password"
    );
    let alice_push = b
        .crane(Login::As(a.user(), a.password()))
        .args(["copy", &on_b.reference, &b.image("only-b", "by-alice")])
        .output()
        .expect("running crane copy");
    assert!(!alice_push.status.success(), "alice pushed to B");

    for (registry, repository) in [(b, "only-b"), (a, "only-a")] {
        let refused = registry.unauthorized(repository);
        assert!(
            refused
                .iter()
                .any(|r| r.auth_error.as_deref() == Some("authentication failure")),
            "{} logged no authentication failure on {repository}: {refused:#?}",
            registry.name()
        );
        let users: BTreeSet<_> = registry
            .manifest_pulls(repository)
            .into_iter()
            .map(|r| r.user)
            .collect();
        assert_eq!(
            users,
            BTreeSet::from([Some(registry.user().to_string())]),
            "{repository} was fetched by its own user only"
        );
    }
    assert_eq!(
        b.requests()
            .iter()
            .filter(|r| r.reference.as_deref() == Some("by-alice") && r.status == Some(201))
            .count(),
        0,
        "no manifest by-alice was stored on B"
    );
}

#[test]
fn the_dockerconfigjson_and_pull_secret_hold_the_registry_credentials() {
    let a = &registry::shared().a;
    let json: serde_json::Value =
        serde_json::from_str(&a.dockerconfigjson()).expect("dockerconfigjson is JSON");
    let entry = &json["auths"][a.host()];
    assert_eq!(entry["username"], a.user());
    assert_eq!(entry["password"], a.password());
    assert_eq!(
        entry["auth"],
        secrets::base64(format!("{}:{}", a.user(), a.password()).as_bytes())
    );
    assert_eq!(json["auths"].as_object().map(|o| o.len()), Some(1));

    let secret = a.pull_secret("regcred-a");
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let data = secret.data.expect("data");
    assert_eq!(
        data[".dockerconfigjson"].0,
        a.dockerconfigjson().into_bytes()
    );
}

#[test]
fn the_containerd_hosts_directory_names_each_registry_and_trusts_its_ca() {
    let registries = registry::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    registry::write_containerd_hosts(dir.path(), &[&registries.a, &registries.b])
        .expect("writing hosts");
    for registry in [&registries.a, &registries.b] {
        let host_dir = dir.path().join(registry.host());
        let toml = std::fs::read_to_string(host_dir.join("hosts.toml")).expect("hosts.toml");
        let ca = host_dir.join("ca.crt");
        assert_eq!(
            toml,
            format!(
                "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n",
                host = registry.host(),
                ca = ca.display()
            )
        );
        // The CA written there is the one that verifies the registry: crane trusting only it
        // gets through TLS to the registry's 401 (no credentials) rather than a TLS error.
        let output = Command::new(registry::tool("crane"))
            .args(["catalog", registry.host()])
            .env("SSL_CERT_FILE", &ca)
            .env("DOCKER_CONFIG", dir.path().join("no-credentials"))
            .output()
            .expect("running crane");
        assert!(
            stderr(&output).contains("UNAUTHORIZED"),
            "TLS with the hosts.toml CA: {}",
            stderr(&output)
        );
    }
}

// ---------------------------------------------------------------------------
// The injector's image
// ---------------------------------------------------------------------------

/// The injector image, pushed once to registry A by `image/build.sh`.
fn injector_image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let started = Instant::now();
        let image =
            images::push_injector_image(&registry::shared().a, "pullsecret-injector", "e2e");
        eprintln!(
            "injector image {} built and pushed in {:.1}s",
            image.pinned(),
            started.elapsed().as_secs_f64()
        );
        image
    })
}

/// The Dockerfile's final stage, as the instructions an image config is made of.
#[derive(Debug, Default)]
struct FinalStage {
    user: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    exposed: BTreeSet<String>,
    labels: BTreeMap<String, String>,
}

fn dockerfile_final_stage() -> FinalStage {
    let path = test_support::repo_root().join("Dockerfile");
    let text = std::fs::read_to_string(&path).expect("reading the Dockerfile");
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    let mut stage = FinalStage::default();
    for line in &lines[from + 1..] {
        let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let args = args.trim();
        match instruction {
            "USER" => stage.user = args.to_string(),
            "ENTRYPOINT" => stage.entrypoint = serde_json::from_str(args).expect("ENTRYPOINT"),
            "CMD" => stage.cmd = serde_json::from_str(args).expect("CMD"),
            "EXPOSE" => stage.exposed.extend(args.split_whitespace().map(|p| {
                if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                }
            })),
            "LABEL" => stage.labels.extend(label_pairs(args)),
            _ => {}
        }
    }
    stage
}

/// `k="v w" k2=v2` -> [(k, "v w"), (k2, v2)].
fn label_pairs(args: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = args.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').expect("closing quote in LABEL");
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(char::is_whitespace).unwrap_or((after, "")),
        };
        pairs.push((key.trim().to_string(), value.to_string()));
        rest = next.trim_start();
    }
    pairs
}

#[test]
fn the_injector_image_has_the_dockerfile_config() {
    let a = &registry::shared().a;
    let _log = a.logs_on_failure();
    let image = injector_image();
    let config = images::config(a, &image.reference);
    let stage = dockerfile_final_stage();

    // What the chart and the Dockerfile promise, spelled out.
    assert_eq!(stage.user, "65532:65532");
    assert_eq!(stage.entrypoint, ["/pullsecret-injector"]);
    assert_eq!(
        stage.exposed,
        BTreeSet::from(["8443/tcp".to_string(), "8080/tcp".to_string()])
    );
    assert_eq!(stage.labels.len(), 4, "{:?}", stage.labels);

    let c = &config["config"];
    assert_eq!(c["User"], stage.user);
    assert_eq!(c["Entrypoint"], serde_json::json!(stage.entrypoint));
    assert_eq!(c["Cmd"], serde_json::json!(stage.cmd));
    let exposed: BTreeSet<String> = c["ExposedPorts"]
        .as_object()
        .expect("ExposedPorts")
        .keys()
        .cloned()
        .collect();
    assert_eq!(exposed, stage.exposed);
    let labels: BTreeMap<String, String> =
        serde_json::from_value(c["Labels"].clone()).expect("Labels");
    assert_eq!(labels, stage.labels);
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");

    let manifest = manifest(a, Login::Own, &image.pinned());
    assert!(manifest.status.success(), "{}", stderr(&manifest));
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout).expect("JSON");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 2, "base and app layers: {manifest}");
    let size: u64 = layers
        .iter()
        .chain([&manifest["config"]])
        .map(|d| d["size"].as_u64().expect("size"))
        .sum();
    eprintln!(
        "injector image: {size} bytes compressed ({:.1} MiB)",
        size as f64 / 1048576.0
    );
}

#[test]
fn the_injector_image_is_reproducible() {
    let a = &registry::shared().a;
    let first = injector_image();
    let again = images::push_injector_image(a, "pullsecret-injector", "e2e-again");
    assert_eq!(
        first.digest, again.digest,
        "two builds of the same binary gave different images"
    );
}

/// The status code of `GET path` on a plain-HTTP server, or an error.
fn http_status(addr: &str, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {response:?}"))
}

/// A container run by runc from a bundle; deleted (killed first) on drop.
struct Container {
    runc: PathBuf,
    state: PathBuf,
    id: String,
    run: Child,
}

impl Container {
    fn runc(&self) -> Command {
        let mut command = Command::new(&self.runc);
        command.arg("--root").arg(&self.state);
        command
    }

    fn pid(&self) -> Result<u32, String> {
        let output = self
            .runc()
            .args(["state", &self.id])
            .output()
            .map_err(|e| e.to_string())?;
        let state: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
        state["pid"]
            .as_u64()
            .filter(|pid| *pid > 0)
            .map(|pid| pid as u32)
            .ok_or_else(|| format!("no pid in {state}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.runc().args(["delete", "--force", &self.id]).status();
        let _ = self.run.kill();
        let _ = self.run.wait();
    }
}

/// Deletes the containers that a killed run of this suite left running: their id ends in the
/// pid of a test process that is gone. (A panic deletes them through [`Container`]'s drop.)
fn remove_orphan_containers(runc: &Path, state: &Path) {
    let Ok(output) = Command::new(runc)
        .arg("--root")
        .arg(state)
        .args(["list", "--quiet"])
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&output.stdout).lines() {
        let owner = id
            .rsplit_once('-')
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = Command::new(runc)
                .arg("--root")
                .arg(state)
                .args(["delete", "--force", id])
                .status();
        }
    }
}

#[test]
fn the_injector_image_serves_as_nonroot_on_a_read_only_root() {
    let a = &registry::shared().a;
    let _log = a.logs_on_failure();
    let image = injector_image();
    let config = images::config(a, &image.reference);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    images::unpack(a, &image.pinned(), &rootfs);

    // The chart's mounts: the config and the serving certificate, read-only.
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).expect("mkdir");
    let ca = test_support::pki::TestCa::new("image test CA");
    ca.serving("injector", &["127.0.0.1"]).write_to(&etc);
    let [webhook, admin] = test_support::ports::free_ports();
    std::fs::write(
        etc.join("config.yaml"),
        format!(
            "listen: 127.0.0.1:{webhook}\nmetricsListen: 127.0.0.1:{admin}\ntls:\n  certFile: /etc/pullsecret-injector/tls.crt\n  keyFile: /etc/pullsecret-injector/tls.key\nsecrets:\n  - name: regcred\n    registries: [\"{}\"]\n",
            a.host()
        ),
    )
    .expect("config");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // The image's own config decides who runs what; the rest is a locked-down pod: read-only
    // root, no capabilities, no new privileges, the host's network (loopback only here).
    let runc = registry::tool("runc");
    let spec = Command::new(&runc)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .expect("runc spec");
    assert!(spec.success());
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).expect("spec")).expect("spec JSON");
    let user = config["config"]["User"].as_str().expect("User");
    let (uid, gid) = user.split_once(':').expect("USER is uid:gid");
    let args: Vec<serde_json::Value> = [&config["config"]["Entrypoint"], &config["config"]["Cmd"]]
        .into_iter()
        .flat_map(|a| a.as_array().cloned().unwrap_or_default())
        .collect();
    let process = &mut spec["process"];
    process["terminal"] = false.into();
    process["args"] = args.into();
    process["user"] = serde_json::json!({
        "uid": uid.parse::<u32>().expect("uid"),
        "gid": gid.parse::<u32>().expect("gid"),
    });
    process["noNewPrivileges"] = true.into();
    process["capabilities"] = serde_json::json!({
        "bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []
    });
    spec["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
    spec["hostname"] = "injector".into();
    let namespaces = spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces");
    namespaces.retain(|ns| ns["type"] != "network");
    spec["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(serde_json::json!({
            "destination": "/etc/pullsecret-injector",
            "type": "bind",
            "source": etc,
            "options": ["rbind", "ro"],
        }));
    std::fs::write(&spec_path, spec.to_string()).expect("writing the spec");

    let state = test_support::repo_root().join("target/image-runc");
    remove_orphan_containers(&runc, &state);
    let id = format!("pullsecret-injector-image-{}", std::process::id());
    let log = dir.path().join("container.log");
    let out = std::fs::File::create(&log).expect("log");
    let run = Command::new(&runc)
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("runc run");
    let mut container = Container {
        runc: runc.clone(),
        state,
        id,
        run,
    };
    let container_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let admin_addr = format!("127.0.0.1:{admin}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http_status(&admin_addr, "/readyz") == Ok(200) {
            break;
        }
        if let Ok(Some(status)) = container.run.try_wait() {
            panic!(
                "the container exited ({status}) before it was ready:\n{}",
                container_log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 30 s:\n{}",
            container_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let pid = container.pid().expect("container pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    assert_eq!(
        uids.split_whitespace().collect::<Vec<_>>(),
        ["65532"; 4],
        "the entrypoint runs as 65532"
    );
    let gids = status
        .lines()
        .find_map(|l| l.strip_prefix("Gid:"))
        .expect("Gid line");
    assert_eq!(gids.split_whitespace().collect::<Vec<_>>(), ["65532"; 4]);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert!(exe.ends_with("pullsecret-injector"), "{}", exe.display());
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root_mount = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("a mount at /");
    let options = root_mount.split_whitespace().nth(5).expect("mount options");
    assert!(
        options.split(',').any(|o| o == "ro"),
        "root is read-only: {root_mount}"
    );

    // The webhook port serves TLS with the mounted certificate.
    assert!(
        TcpStream::connect(("127.0.0.1", webhook)).is_ok(),
        "webhook port {webhook} is not listening"
    );

    // SIGTERM, as the kubelet sends it: a clean exit.
    let kill = container
        .runc()
        .args(["kill", &container.id, "TERM"])
        .status()
        .expect("runc kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = container.run.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        exit.success(),
        "exit after SIGTERM: {exit}\n{}",
        container_log()
    );
}

// ---------------------------------------------------------------------------
// The sleeper (the node's pause image is assembled by `make node`; e2e_node runs it)
// ---------------------------------------------------------------------------

#[test]
fn the_sleeper_prints_its_arguments_and_exits_0_on_sigterm() {
    let mut sleeper = Command::new(registry::tool("sleeper"))
        .args(["hello", "from", "A"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sleeper");
    let mut line = String::new();
    BufReader::new(sleeper.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("a line");
    assert_eq!(line, "hello from A\n");
    assert_eq!(sleeper.try_wait().expect("wait"), None, "it keeps running");
    let killed = Command::new("kill")
        .args(["-TERM", &sleeper.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = sleeper.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 5 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

// ---------------------------------------------------------------------------
// The log reader, on lines the registry wrote
// ---------------------------------------------------------------------------

#[test]
fn the_log_reader_finds_the_user_of_a_pull_and_the_reason_of_a_401() {
    let log = r#"time="2026-11-28T04:12:14.728791723Z" level=warning msg="error authorizing context: basic authentication challenge for realm \"test-a\": invalid authorization credential" go.version=go1.19.8 http.request.host="127.0.0.1:15555" http.request.id=f281854f http.request.method=GET http.request.remoteaddr="127.0.0.1:48958" http.request.uri=/v2/app/manifests/v1 http.request.useragent="crane/v0.22.1 go-containerregistry/v0.22.1" vars.name=app vars.reference=v1
127.0.0.1 - - [28/Nov/2026:04:12:14 +0000] "GET /v2/app/manifests/v1 HTTP/2.0" 401 146 "" "crane/v0.22.1 go-containerregistry/v0.22.1"
time="2026-11-28T04:12:15.1Z" level=warning msg="error authorizing context: basic authentication challenge for realm \"test-b\": authentication failure" go.version=go1.19.8 http.request.id=0caaf66c http.request.method=HEAD http.request.uri=/v2/app/manifests/v1 vars.name=app vars.reference=v1
time="2026-11-28T04:12:30.038240095Z" level=debug msg=GetImageManifest auth.user.name=alice go.version=go1.19.8 http.request.host="127.0.0.1:15555" http.request.id=542cec72 http.request.method=GET http.request.remoteaddr="127.0.0.1:41908" http.request.uri=/v2/app/manifests/v1 http.request.useragent="crane/v0.22.1 go-containerregistry/v0.22.1" vars.name=app vars.reference=v1
time="2026-11-28T04:12:30.03854885Z" level=debug msg="filesystem.GetContent(\"/docker/registry/v2/repositories/app/_manifests/tags/v1/current/link\")" auth.user.name=alice go.version=go1.19.8 http.request.id=542cec72 http.request.method=GET http.request.uri=/v2/app/manifests/v1
time="2026-11-28T04:12:30.039Z" level=info msg="response completed" go.version=go1.19.8 http.request.id=542cec72 http.request.method=GET http.request.uri=/v2/app/manifests/v1 http.response.contenttype=application/vnd.oci.image.manifest.v1+json http.response.status=200 http.response.written=404
time="2026-11-28T04:12:31Z" level=info msg="listening on 127.0.0.1:15555, tls" go.version=go1.19.8"#;
    let requests = registry::requests(log);
    assert_eq!(
        requests,
        vec![
            registry::Request {
                id: "f281854f".into(),
                method: "GET".into(),
                uri: "/v2/app/manifests/v1".into(),
                repository: Some("app".into()),
                reference: Some("v1".into()),
                user: None,
                status: Some(401),
                auth_error: Some("invalid authorization credential".into()),
                manifest: false,
            },
            registry::Request {
                id: "0caaf66c".into(),
                method: "HEAD".into(),
                uri: "/v2/app/manifests/v1".into(),
                repository: Some("app".into()),
                reference: Some("v1".into()),
                user: None,
                status: Some(401),
                auth_error: Some("authentication failure".into()),
                manifest: false,
            },
            registry::Request {
                id: "542cec72".into(),
                method: "GET".into(),
                uri: "/v2/app/manifests/v1".into(),
                repository: Some("app".into()),
                reference: Some("v1".into()),
                user: Some("alice".into()),
                status: Some(200),
                auth_error: None,
                manifest: true,
            },
        ]
    );
}
