//! Private image registries on loopback: the distribution registry (Debian's `docker-registry`
//! 2.8.2, installed by `make registry-tools`, i.e. `tests/registry/build.sh`) serving TLS from a
//! test CA, with htpasswd (bcrypt) authentication: anonymous requests and wrong credentials
//! get 401.
//!
//! ```ignore
//! let regs = registry::shared();          // A (user "alice") and B (user "bob"), one CA
//! let a = &regs.a;
//! let _logs = a.logs_on_failure();         // prints A's log tail if the test panics
//! a.host();                                // "127.0.0.1:PORT", as in image references
//! a.pull_secret("regcred");                // a kubernetes.io/dockerconfigjson Secret for A
//! a.crane(Login::Own).args(["manifest", &image]);   // crane, trusting the CA, logged in
//! a.manifest_pulls("app");                 // who fetched app's manifests (from A's log)
//! a.unauthorized("app");                   // the 401s on app
//! registry::write_containerd_hosts(&dir, &[&regs.a, &regs.b])?;  // containerd's config_path
//! ```
//!
//! Lifecycle: each registry runs under a small `sh` wrapper whose stdin is a pipe held by the
//! test process; when the process exits (also on panic or SIGKILL) the pipe closes, the wrapper
//! stops the registry and removes its state directory (storage, certificates, htpasswd). Logs
//! stay in `<repo>/target/registry-logs/<test-binary>-<pid>/<name>.log`.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;

use crate::logs::LogsOnFailure;
use crate::pki::TestCa;
use crate::secrets::{self, Credentials};

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// bcrypt's lowest cost: the registry checks the hash on every request, and at the usual
/// cost (10-12) that is 100-300 ms per request, per blob.
const BCRYPT_COST: u32 = 4;

/// Runs `"$@"` until stdin (a pipe held by the test process) closes, then stops it and removes
/// `$REGISTRY_STATE_DIR`.
const WRAPPER: &str = r#"
exec 3<&0 0</dev/null
"$@" 3<&- &
child=$!
echo "[registry] started $1 as pid $child (wrapper pid $$)"
(
    read -r _ <&3 || :
    kill -TERM "$child" 2>/dev/null
    i=0
    while kill -0 "$child" 2>/dev/null; do
        if [ "$i" -ge 20 ]; then kill -KILL "$child" 2>/dev/null; break; fi
        sleep 0.1
        i=$((i + 1))
    done
    rm -rf -- "$REGISTRY_STATE_DIR"
) &
exec 3<&-
wait "$child"
echo "[registry] $1 (pid $child) exited with status $?"
"#;

/// `<repo>/.cache/registry/bin/<name>`: `registry`, `crane`, `runc` or `sleeper`. Panics with
/// instructions when missing.
pub fn tool(name: &str) -> PathBuf {
    let path = crate::repo_root().join(".cache/registry/bin").join(name);
    assert!(
        path.is_file(),
        "{} not found: build the registry and image tools once with `make registry-tools` \
         (runs tests/registry/build.sh; needs Go and apt-get)",
        path.display()
    );
    path
}

/// The two registries of this test binary, started on first use.
pub struct Registries {
    /// User `alice`.
    pub a: Registry,
    /// User `bob`.
    pub b: Registry,
    pub ca: TestCa,
}

/// Registries A and B, each with its own user, both serving certificates from one test CA.
/// Started once per test binary; panics in every caller if they could not start.
pub fn shared() -> &'static Registries {
    static SHARED: OnceLock<Result<Registries, String>> = OnceLock::new();
    let started = SHARED.get_or_init(|| {
        let ca = TestCa::new("pullsecret-injector test registry CA");
        let a = Registry::start("registry-a", "alice", &ca)?;
        let b = Registry::start("registry-b", "bob", &ca)?;
        Ok(Registries { a, b, ca })
    });
    match started {
        Ok(registries) => registries,
        Err(e) => panic!("test registries did not start: {e}"),
    }
}

/// Who crane logs in as.
#[derive(Clone, Copy, Debug)]
pub enum Login<'a> {
    /// This registry's own user.
    Own,
    /// No credentials at all.
    Anonymous,
    /// Someone else's user and password (another registry's, or a wrong one).
    As(&'a str, &'a str),
}

/// One registry process with its user, certificate and log.
pub struct Registry {
    name: String,
    host: String,
    user: String,
    password: String,
    ca_pem: String,
    ca_file: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    /// Holds the wrapper's stdin: dropping the registry stops it.
    wrapper: Mutex<Child>,
    /// Wrappers of attempts that lost a port race: their stdin stays open as long as this
    /// registry lives, because closing it removes the state directory this one uses.
    _retired: Vec<Child>,
}

impl Registry {
    /// Starts a registry named `name` (its realm, log file and certificate CN) on a free port
    /// of 127.0.0.1, with one htpasswd user `user` and a random password, serving a
    /// certificate for 127.0.0.1 and localhost signed by `ca`.
    pub fn start(name: &str, user: &str, ca: &TestCa) -> Result<Registry, String> {
        let log_dir = log_dir()?;
        let state_dir = tempfile::Builder::new()
            .prefix(&format!("pullsecret-{name}-"))
            .tempdir()
            .map_err(|e| format!("creating a state directory: {e}"))?
            .keep();
        let password = random_hex(16)?;
        let hash = bcrypt::hash(&password, BCRYPT_COST).map_err(|e| format!("bcrypt: {e}"))?;
        let (cert, key) = ca
            .serving(name, &["127.0.0.1", "localhost"])
            .write_to(&state_dir);
        let ca_file = state_dir.join("ca.crt");
        write(&ca_file, &ca.cert_pem)?;
        write(&state_dir.join("htpasswd"), &format!("{user}:{hash}\n"))?;
        let log = log_dir.join(format!("{name}.log"));

        let mut last_error = String::new();
        let mut retired = Vec::new();
        for _attempt in 0..5 {
            let port = crate::ports::free_port();
            let host = format!("127.0.0.1:{port}");
            let config = state_dir.join("config.yml");
            write(
                &config,
                &registry_config(name, &host, &state_dir, &cert, &key),
            )?;
            let wrapper = spawn(&config, &state_dir, &log)?;
            let registry = Registry {
                name: name.to_string(),
                host,
                user: user.to_string(),
                password: password.clone(),
                ca_pem: ca.cert_pem.clone(),
                ca_file: ca_file.clone(),
                state_dir: state_dir.clone(),
                log: log.clone(),
                wrapper: Mutex::new(wrapper),
                _retired: Vec::new(),
            };
            match registry.wait_listening() {
                Ok(()) => {
                    registry.write_docker_configs()?;
                    return Ok(Registry {
                        _retired: retired,
                        ..registry
                    });
                }
                // Another process took the port between free_port() and the registry's bind.
                Err(e) if e.contains("address already in use") => {
                    last_error = e;
                    retired.push(
                        registry
                            .wrapper
                            .into_inner()
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error)
    }

    /// The htpasswd file (bcrypt) the registry checks logins against. The registry re-reads
    /// it when it changes, so replacing it (write a temporary file, rename it over) changes
    /// who may log in, as rotating a credential does.
    pub fn htpasswd_path(&self) -> PathBuf {
        self.state_dir.join("htpasswd")
    }

    /// The registry's name (its htpasswd realm).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `127.0.0.1:PORT`: the registry part of image references, and the key of its
    /// credentials in a dockerconfigjson.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `host()/repository:tag`.
    pub fn image(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.host)
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// PEM of the CA that signed the registry's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA PEM as a file (for containerd's hosts.toml, `SSL_CERT_FILE`, curl's `--cacert`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// `{"auths":{"<host>":{"username":…,"password":…,"auth":base64(user:password)}}}`, the
    /// `.dockerconfigjson` of a pull secret for this registry.
    pub fn dockerconfigjson(&self) -> String {
        String::from_utf8_lossy(&self.credentials().dockerconfigjson()).into_owned()
    }

    /// The registry's user as [`Credentials`], for the dockerconfigjson helpers of
    /// [`crate::secrets`].
    pub fn credentials(&self) -> Credentials {
        Credentials::new(&self.host, &self.user, &self.password)
    }

    /// A `kubernetes.io/dockerconfigjson` Secret `name` holding [`Self::dockerconfigjson`].
    pub fn pull_secret(&self, name: &str) -> Secret {
        secrets::pull_secret(name, self.dockerconfigjson().as_bytes())
    }

    /// crane (from `make registry-tools`) trusting this registry's CA and logged in as `login`
    /// (through its own `DOCKER_CONFIG`); add the subcommand and its arguments.
    pub fn crane(&self, login: Login<'_>) -> Command {
        let mut crane = Command::new(tool("crane"));
        crane.envs(self.client_env(login)).stdin(Stdio::null());
        crane
    }

    /// The environment that makes crane (or any go-containerregistry or Docker CLI client)
    /// trust this registry and log in as `login`: `DOCKER_CONFIG` and `SSL_CERT_FILE`.
    pub fn client_env(&self, login: Login<'_>) -> [(&'static str, PathBuf); 2] {
        let config_dir = match login {
            Login::Own => self.state_dir.join("docker-own"),
            Login::Anonymous => self.state_dir.join("docker-anonymous"),
            Login::As(user, password) => {
                let dir = self.state_dir.join(format!("docker-as-{user}"));
                fs::create_dir_all(&dir)
                    .and_then(|()| {
                        fs::write(
                            dir.join("config.json"),
                            Credentials::new(&self.host, user, password).dockerconfigjson(),
                        )
                    })
                    .unwrap_or_else(|e| panic!("writing {}: {e}", dir.display()));
                dir
            }
        };
        [
            ("DOCKER_CONFIG", config_dir),
            ("SSL_CERT_FILE", self.ca_file.clone()),
        ]
    }

    /// A directory for files that live as long as the registry (removed with its state).
    pub(super) fn scratch_dir(&self) -> PathBuf {
        let dir = self.state_dir.join("scratch");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dir
    }

    /// Path of the registry's log (logrus text at debug level, plus an access log).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log as it is now.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Every request in the log so far, in order, with who made it and how it ended.
    pub fn requests(&self) -> Vec<Request> {
        requests(&self.log())
    }

    /// The successful manifest fetches (HEAD or GET, status 200) of `repository`: an image
    /// pull, with the user it authenticated as in [`Request::user`].
    pub fn manifest_pulls(&self, repository: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.manifest && r.status == Some(200) && r.repository.as_deref() == Some(repository)
            })
            .collect()
    }

    /// The requests on `repository` answered 401 (no credentials, or wrong ones: see
    /// [`Request::auth_error`]). A client that sends credentials only when challenged
    /// (containerd does, per pull) leaves one 401 without credentials before its authenticated
    /// requests: a refused pull is a 401 with no [`Self::manifest_pulls`] after it.
    pub fn unauthorized(&self, repository: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == Some(401) && r.repository.as_deref() == Some(repository))
            .collect()
    }

    /// A guard that prints the log's tail to stderr if the test panics while it lives.
    pub fn logs_on_failure(&self) -> LogsOnFailure<'_> {
        LogsOnFailure::new("registry", || {
            format!(
                "(full log in {})\n{}",
                self.log.display(),
                self.log_tail(40)
            )
        })
        .named(&self.name)
    }

    /// Fails if the registry process has exited.
    pub fn check_running(&self) -> Result<(), String> {
        let mut wrapper = self.wrapper.lock().unwrap_or_else(|e| e.into_inner());
        match wrapper.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                self.log_tail(20)
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    fn wait_listening(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let ready = format!("listening on {}, tls", self.host);
        loop {
            let log = self.log();
            if log.contains(&ready) && TcpStream::connect(&self.host).is_ok() {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not listen on {} within {START_TIMEOUT:?}; log tail:\n{}",
                    self.name,
                    self.host,
                    self.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Docker config directories for [`Login::Own`] and [`Login::Anonymous`].
    fn write_docker_configs(&self) -> Result<(), String> {
        for (dir, json) in [
            ("docker-own", self.dockerconfigjson()),
            ("docker-anonymous", r#"{"auths":{}}"#.to_string()),
        ] {
            let dir = self.state_dir.join(dir);
            fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            write(&dir.join("config.json"), &json)?;
        }
        Ok(())
    }
}

/// Writes containerd's registry host configuration into `dir` (the CRI plugin's
/// `registry.config_path`): for each registry `<dir>/<host:port>/hosts.toml`, pointing at
/// `https://<host:port>` and trusting the registry's CA, copied next to it as `ca.crt`.
/// Credentials are not part of it: the kubelet passes them from the pod's pull secrets.
pub fn write_containerd_hosts(dir: &Path, registries: &[&Registry]) -> std::io::Result<()> {
    for registry in registries {
        let host_dir = dir.join(registry.host());
        fs::create_dir_all(&host_dir)?;
        let ca = host_dir.join("ca.crt");
        fs::write(&ca, registry.ca_pem())?;
        fs::write(
            host_dir.join("hosts.toml"),
            containerd_hosts_toml(registry.host(), &ca),
        )?;
    }
    Ok(())
}

/// The hosts.toml of one registry served at `https://<host>` with its CA in `ca_file`.
pub fn containerd_hosts_toml(host: &str, ca_file: &Path) -> String {
    format!(
        "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
        ca_file.display()
    )
}

// ---------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------

/// One HTTP request as the registry logged it, put together from the lines that share its
/// `http.request.id`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub id: String,
    pub method: String,
    pub uri: String,
    /// `vars.name`: the repository of a `/v2/<repository>/…` route.
    pub repository: Option<String>,
    /// `vars.reference`: the tag or digest of a manifest request.
    pub reference: Option<String>,
    /// `auth.user.name`: the htpasswd user the request authenticated as.
    pub user: Option<String>,
    /// `http.response.status`, or 401 when authorization failed.
    pub status: Option<u16>,
    /// Why authorization failed: `invalid authorization credential` (none sent) or
    /// `authentication failure` (wrong user or password).
    pub auth_error: Option<String>,
    /// The manifest handler ran (`msg=GetImageManifest`): a HEAD or GET of a manifest.
    pub manifest: bool,
}

/// The requests in a registry log, in the order they started.
pub fn requests(log: &str) -> Vec<Request> {
    let mut order = Vec::new();
    let mut by_id: BTreeMap<String, Request> = BTreeMap::new();
    for fields in log.lines().filter_map(logrus_fields) {
        let Some(id) = fields.get("http.request.id") else {
            continue;
        };
        let request = by_id.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            Request {
                id: id.clone(),
                ..Request::default()
            }
        });
        let set = |slot: &mut Option<String>, key: &str| {
            if let Some(value) = fields.get(key) {
                *slot = Some(value.clone());
            }
        };
        set(&mut request.repository, "vars.name");
        set(&mut request.reference, "vars.reference");
        set(&mut request.user, "auth.user.name");
        if let Some(method) = fields.get("http.request.method") {
            request.method = method.clone();
        }
        if let Some(uri) = fields.get("http.request.uri") {
            request.uri = uri.clone();
        }
        if let Some(status) = fields.get("http.response.status") {
            request.status = status.parse().ok();
        }
        let msg = fields.get("msg").map(String::as_str).unwrap_or_default();
        if msg == "GetImageManifest" {
            request.manifest = true;
        }
        if let Some(reason) = msg.strip_prefix("error authorizing context: ") {
            request.status = Some(401);
            request.auth_error = Some(
                reason
                    .rsplit_once(": ")
                    .map_or(reason, |(_, why)| why)
                    .to_string(),
            );
        }
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}

/// The `key=value` fields of one logrus text line (`time="…" level=info msg="…" a.b=c`);
/// `None` for other lines (the access log, the wrapper's).
fn logrus_fields(line: &str) -> Option<BTreeMap<String, String>> {
    if !line.starts_with("time=") {
        return None;
    }
    let mut fields = BTreeMap::new();
    let mut rest = line;
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        fields.insert(key.to_string(), value);
        rest = next;
    }
    Some(fields)
}

// ---------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------

fn registry_config(name: &str, host: &str, state_dir: &Path, cert: &Path, key: &Path) -> String {
    // Debug level: only there does the log name the user of a successful request
    // (`auth.user.name` on `msg=GetImageManifest`); info level names it on errors only.
    format!(
        "version: 0.1
log:
  level: debug
  formatter: text
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: {host}
  secret: {name}-upload-state
  tls:
    certificate: {cert}
    key: {key}
auth:
  htpasswd:
    realm: {name}
    path: {htpasswd}
",
        data = state_dir.join("data").display(),
        cert = cert.display(),
        key = key.display(),
        htpasswd = state_dir.join("htpasswd").display(),
    )
}

fn spawn(config: &Path, state_dir: &Path, log: &Path) -> Result<Child, String> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    Command::new("sh")
        .arg("-c")
        .arg(WRAPPER)
        .arg("registry-wrapper")
        .arg(tool("registry"))
        .arg("serve")
        .arg(config)
        .env("REGISTRY_STATE_DIR", state_dir)
        // The registry takes any REGISTRY_* variable as a config override.
        .env_remove("REGISTRY_HTTP_ADDR")
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting the registry wrapper: {e}"))
}

/// `<repo>/target/registry-logs/<test-binary>-<pid>`, created once per process. Directories
/// of processes that are gone are removed.
fn log_dir() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = crate::repo_root().join("target/registry-logs");
        fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        if let Ok(entries) = fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name
                    .rsplit_once('-')
                    .and_then(|(_, pid)| pid.parse::<u32>().ok());
                if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let stem = exe.file_stem().and_then(|s| s.to_str()).unwrap_or("test");
        // Cargo names test binaries `<name>-<16 hex digits>`.
        let name = stem.rsplit_once('-').map_or(stem, |(name, _)| name);
        let dir = root.join(format!("{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(dir)
    })
    .clone()
}

fn random_hex(bytes: usize) -> Result<String, String> {
    use ring::rand::SecureRandom as _;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| "no randomness for a password".to_string())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}
