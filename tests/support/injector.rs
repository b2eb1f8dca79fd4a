//! Runs the real `pullsecret-injector serve` binary with a generated config and certificate,
//! and reads its JSON logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pki::TestCa;

pub const BIN: &str = env!("CARGO_BIN_EXE_pullsecret-injector");

pub struct Injector {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
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
    /// Serve `dir/tls.crt` and `dir/tls.key`; false when the config brings `certificates`.
    pub tls_files: bool,
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
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config_file)
            .args(["--log-format", "json"])
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pullsecret-injector");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        let mut injector = Self {
            child: Some(child),
            addr: "0.0.0.0:0".parse().expect("addr"),
            admin: "0.0.0.0:0".parse().expect("addr"),
            cert_file,
            key_file,
            logs,
            dir,
        };
        let serving = injector.wait_for_log(Duration::from_secs(20), |l| {
            l.get("message").and_then(|m| m.as_str()) == Some("serving")
        });
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
    pub fn wait_for_log(
        &mut self,
        timeout: Duration,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.json_logs().into_iter().find(|l| predicate(l)) {
                return found;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "injector exited with {status}; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for a log line; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(30))
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running child");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "injector did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL of the injector's `/mutate` endpoint.
    pub fn mutate_url(&self) -> String {
        mutate_url(self.addr.port())
    }

    /// A guard that prints the injector's logs to stderr if it is dropped during a panic.
    /// It holds the log buffer, not the injector: the injector can be stopped or moved while
    /// the guard lives.
    pub fn logs_on_failure(&self) -> LogsOnFailure {
        LogsOnFailure {
            name: String::new(),
            logs: Arc::clone(&self.logs),
        }
    }

    /// Sends SIGTERM and asserts that the injector exits successfully (with its logs in the
    /// message if not).
    pub fn stop_cleanly(self) {
        let logs = self.logs().join("\n");
        let status = self.stop();
        assert!(status.success(), "exit status {status}; logs:\n{logs}");
    }

    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("admin connect");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("read metrics");
        out
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of a metric line (`name{labels} value`) in Prometheus text, or 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// See [`Injector::logs_on_failure`].
pub struct LogsOnFailure {
    name: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl LogsOnFailure {
    /// Names the injector in the header (for tests that run several).
    pub fn named(mut self, name: &str) -> Self {
        self.name = format!(" {name}");
        self
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("==== injector{} logs ====\n{}", self.name, logs.join("\n"));
        }
    }
}

/// The URL of the `/mutate` endpoint of an injector listening on 127.0.0.1:`port`.
pub fn mutate_url(port: u16) -> String {
    format!("https://127.0.0.1:{port}/mutate")
}

/// A port that nothing listens on (bound, read and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
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

    pub fn url(&self) -> String {
        self.injector.mutate_url()
    }
}
