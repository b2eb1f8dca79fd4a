//! Runs the real `pullsecret-injector serve` binary with a generated config and certificate,
//! and reads its JSON logs and metrics.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::logs::LogsOnFailure;
use crate::pki::TestCa;

/// How long `serve` may take to bind its listeners and load its certificate.
const SERVING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long its watch caches may take to sync against the test control plane.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The secrets of examples/config.yaml, as an operator writes them: a config body for
/// [`Options::new`], to which a suite may append entries of its own.
pub const EXAMPLE_SECRETS: &str = r#"
secrets:
  - name: acme-ghcr
    registries: [ghcr.io/acme/, "*.azurecr.io", "registry.example.com:5000"]
  - name: corp
    registries: [docker.io/corp]
"#;

/// The binary cargo built for the test or benchmark that runs (cargo sets
/// `CARGO_BIN_EXE_<name>` while running them, since 1.94).
pub fn binary() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_pullsecret-injector")
        .map(PathBuf::from)
        .expect(
            "CARGO_BIN_EXE_pullsecret-injector is not set: run the suite with `cargo test` or \
             `cargo bench` (cargo 1.94 or later)",
        )
}

pub struct Injector {
    /// Behind a lock so that waiting needs only `&self`; std keeps the status once reaped.
    child: Mutex<Child>,
    pid: u32,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    logs: Logs,
    pub dir: PathBuf,
}

/// What to start: the config body below the listen and tls keys, the listen address
/// (`127.0.0.1:0` picks a free port), and the certificate directory.
pub struct Options<'a> {
    pub config: &'a str,
    pub listen: &'a str,
    /// `127.0.0.1:0` unless set.
    pub metrics_listen: &'a str,
    pub dir: &'a Path,
    pub env: Vec<(String, String)>,
    /// Serve `dir/tls.crt` and `dir/tls.key` (re-read every second); false when the config
    /// brings `certificates`.
    pub tls_files: bool,
    /// Cluster access through this kubeconfig (`$KUBECONFIG`).
    pub kubeconfig: Option<&'a Path>,
    /// Logs into `dir/injector.log` rather than memory: for runs that log 100k+ lines.
    pub log_to_file: bool,
}

impl<'a> Options<'a> {
    pub fn new(config: &'a str, dir: &'a Path) -> Self {
        Self {
            config,
            listen: "127.0.0.1:0",
            metrics_listen: "127.0.0.1:0",
            dir,
            env: Vec::new(),
            tls_files: true,
            kubeconfig: None,
            log_to_file: false,
        }
    }
}

/// Where the child's stderr goes.
#[derive(Clone)]
enum Logs {
    Memory(Arc<Mutex<Vec<String>>>),
    File(PathBuf),
}

impl Logs {
    fn lines(&self) -> Vec<String> {
        match self {
            Logs::Memory(lines) => lines.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            Logs::File(path) => std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect(),
        }
    }
}

/// A CA and a serving pair for localhost/127.0.0.1, written into `dir`.
pub fn certificates(dir: &Path) -> TestCa {
    let ca = TestCa::new("pullsecret-injector test CA");
    ca.serving("first", &["localhost", "127.0.0.1"])
        .write_to(dir);
    ca
}

impl Injector {
    /// Writes the config into `dir/config.yaml`, starts `serve` with JSON logs and waits for
    /// its `serving` line, which says where it listens.
    pub fn start(options: Options<'_>) -> Self {
        let dir = options.dir.to_path_buf();
        let cert_file = dir.join("tls.crt");
        let key_file = dir.join("tls.key");
        let tls = if options.tls_files {
            format!(
                "tls:\n  certFile: {}\n  keyFile: {}\n  reloadIntervalSeconds: 1\n",
                cert_file.display(),
                key_file.display()
            )
        } else {
            String::new()
        };
        // Quoted: `[::]:0` unquoted is a YAML flow sequence.
        let config = format!(
            "listen: \"{}\"\nmetricsListen: \"{}\"\n{tls}{}",
            options.listen, options.metrics_listen, options.config
        );
        let config_file = dir.join("config.yaml");
        std::fs::write(&config_file, config).expect("write config");
        let mut command = Command::new(binary());
        command
            .args(["serve", "--config"])
            .arg(&config_file)
            .args(["--log-format", "json"])
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(kubeconfig) = options.kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        let logs = if options.log_to_file {
            let path = dir.join("injector.log");
            command.stderr(std::fs::File::create(&path).expect("create the log file"));
            Logs::File(path)
        } else {
            command.stderr(Stdio::piped());
            Logs::Memory(Arc::new(Mutex::new(Vec::new())))
        };
        let mut child = command.spawn().expect("spawn pullsecret-injector");
        if let (Logs::Memory(lines), Some(stderr)) = (&logs, child.stderr.take()) {
            let sink = Arc::clone(lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let mut injector = Self {
            pid: child.id(),
            child: Mutex::new(child),
            addr: "0.0.0.0:0".parse().expect("addr"),
            admin: "0.0.0.0:0".parse().expect("addr"),
            logs,
            dir,
        };
        let deadline = Instant::now() + SERVING_TIMEOUT;
        let serving = loop {
            if let Some(line) = injector.find_log(|l| l["message"] == "serving") {
                break line;
            }
            injector.assert_waiting(deadline, "its `serving` line");
            std::thread::sleep(POLL_INTERVAL);
        };
        let field = |name: &str| -> SocketAddr {
            serving[name]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("serving log line lacks {name}: {serving}"))
        };
        injector.addr = field("listen");
        injector.admin = field("metrics_listen");
        injector
    }

    /// Waits for a JSON log line that satisfies `predicate`; panics with the logs on timeout
    /// or when the process exits first.
    pub async fn wait_for_log(
        &self,
        timeout: Duration,
        predicate: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.find_log(&predicate) {
                return found;
            }
            self.assert_waiting(deadline, &format!("a log line ({timeout:?})"));
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until its watch caches have synced (cluster access only).
    pub async fn wait_synced(&self) {
        self.wait_for_log(SYNC_TIMEOUT, |l| l["message"] == "caches synced")
            .await;
    }

    /// Waits until it holds the Lease and replicates.
    pub async fn wait_leader(&self, timeout: Duration) {
        self.wait_for_log(timeout, |l| {
            l["message"] == "became the leader; replicating"
        })
        .await;
    }

    /// Panics, with the logs, if the process has exited or the deadline has passed.
    fn assert_waiting(&self, deadline: Instant, what: &str) {
        if let Some(status) = self.exit_status() {
            panic!(
                "injector exited with {status} while waiting for {what}; logs:\n{}",
                self.logs().join("\n")
            );
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; logs:\n{}",
                self.logs().join("\n")
            );
        }
    }

    /// The first JSON log line that satisfies `predicate`.
    pub fn find_log(&self, predicate: impl Fn(&Value) -> bool) -> Option<Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .find(|l| predicate(l))
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lines()
    }

    pub fn json_logs(&self) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit status, once the process has exited.
    fn exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().expect("try_wait")
    }

    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(30))
    }

    /// Waits for the process to exit.
    pub fn wait(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "injector did not exit within {timeout:?}"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The URL of the injector's `/mutate` endpoint.
    pub fn mutate_url(&self) -> String {
        mutate_url(self.addr.port())
    }

    /// A guard that prints the injector's logs to stderr if it is dropped during a panic.
    /// It holds the logs, not the injector: the injector can be stopped or moved while the
    /// guard lives.
    pub fn logs_on_failure(&self) -> LogsOnFailure<'static> {
        let logs = self.logs.clone();
        LogsOnFailure::new("injector", move || logs.lines().join("\n"))
    }

    /// Sends SIGTERM and asserts that the injector exits successfully (with its logs in the
    /// message if not).
    pub fn stop_cleanly(self) {
        let logs = self.logs().join("\n");
        let status = self.stop();
        assert!(status.success(), "exit status {status}; logs:\n{logs}");
    }

    /// Prometheus text from the plain metrics listener.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await
    }

    /// The whole HTTP/1.1 answer (status line, headers, body) of the plain admin listener
    /// to `GET path`.
    pub async fn admin_get(&self, path: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("admin connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        tcp.read_to_string(&mut out)
            .await
            .unwrap_or_else(|e| panic!("read {path}: {e}"));
        out
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let mut child = self.child();
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The URL of the `/mutate` endpoint of an injector listening on 127.0.0.1:`port`.
pub fn mutate_url(port: u16) -> String {
    format!("https://127.0.0.1:{port}/mutate")
}

/// An injector with a CA and a certificate directory of its own. The directory outlives the
/// injector, so that it can be restarted with the same certificate.
pub struct Instance {
    pub injector: Injector,
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
}

impl Instance {
    /// Writes a CA and a serving pair (see [`certificates`]) into a new directory, and starts
    /// an injector there with `start`.
    pub fn start(start: impl FnOnce(&Path) -> Injector) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = certificates(dir.path());
        let injector = start(dir.path());
        Self {
            injector,
            ca_pem: ca.cert_pem,
            dir,
        }
    }

    /// `serve` with `config`, talking to the cluster through `kubeconfig`, with extra
    /// environment `env`; returns once its caches have synced.
    pub async fn replicator(config: &str, kubeconfig: &Path, env: &[(&str, &str)]) -> Self {
        let instance = Self::start(|dir| {
            Injector::start(Options {
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                kubeconfig: Some(kubeconfig),
                ..Options::new(config, dir)
            })
        });
        instance.injector.wait_synced().await;
        instance
    }

    pub fn url(&self) -> String {
        self.injector.mutate_url()
    }
}
