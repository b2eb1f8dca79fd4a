//! A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)
//! for end-to-end tests, started once per test binary and shared by its tests.
//!
//! The binaries come from `make controlplane` (`tests/controlplane/build.sh`),
//! which builds pinned versions into `<repo>/.cache/controlplane/bin`.
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_test() {
//!     let cp = test_support::controlplane::shared();
//!     let _logs = cp.logs_on_failure(); // prints the servers' log tails if the test panics
//!     let client = cp.client();         // a fresh client for this test's runtime
//!     let ns = controlplane::namespace(&client, "my-test", &[]).await;
//!     // ...
//! }
//! ```
//!
//! Lifecycle: every server runs under a small `sh` wrapper whose stdin is a pipe
//! held open by the test process. When the test process exits for any reason
//! (tests passed, a test panicked, SIGKILL), the pipe closes and the wrapper
//! terminates its server by pid (SIGTERM, then SIGKILL after 1 s). The etcd
//! wrapper also removes the temporary state directory (certificates, etcd data).
//! Logs stay in `<repo>/target/controlplane-logs/<test-binary>-<pid>/`.

use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::marker::PhantomData;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::logs::LogsOnFailure;
use crate::pki::{self, CertifiedKey, TestCa};
use crate::ports::free_ports;

/// How long each start-up phase (etcd, kube-apiserver `/readyz`, the first
/// ServiceAccount from kube-controller-manager) may take.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Grace period between SIGTERM and SIGKILL when the test process goes away.
const STOP_GRACE_TENTHS: u32 = 10;
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// Runs `"$@"` and stops it when stdin (a pipe held by the test process) closes.
/// If `CONTROLPLANE_REMOVE_ON_EXIT` is set, that path is removed once the
/// server is gone.
const WRAPPER: &str = r#"
exec 3<&0 0</dev/null
"$@" 3<&- &
child=$!
echo "[controlplane] started $1 as pid $child (wrapper pid $$)"
(
    read -r _ <&3 || :
    kill -TERM "$child" 2>/dev/null
    i=0
    while kill -0 "$child" 2>/dev/null; do
        if [ "$i" -ge "$GRACE_TENTHS" ]; then kill -KILL "$child" 2>/dev/null; break; fi
        sleep 0.1
        i=$((i + 1))
    done
    if [ -n "$CONTROLPLANE_REMOVE_ON_EXIT" ]; then rm -rf -- "$CONTROLPLANE_REMOVE_ON_EXIT"; fi
) &
exec 3<&-
wait "$child"
status=$?
echo "[controlplane] $1 (pid $child) exited with status $status"
exit "$status"
"#;

/// How the control plane of a test binary differs from the default one. The node suite
/// ([`crate::node`]) and `make scale` change it. The node suite: its pods reach the apiserver
/// at the `kubernetes` Service's ClusterIP, and the apiserver reaches their webhook at a pod
/// IP.
#[derive(Clone, Debug)]
pub struct Options {
    /// kube-apiserver's address and port; `None`: 127.0.0.1 and a free port.
    pub listen: Option<std::net::SocketAddrV4>,
    /// `--service-cluster-ip-range`; its first address is the `kubernetes` Service's ClusterIP.
    pub service_cidr: String,
    /// More kube-apiserver flags (`--name=value`); one replaces a default flag of that name.
    pub apiserver_args: Vec<String>,
    /// No kube-controller-manager: no ServiceAccount and ConfigMap are made in each new
    /// namespace, so a benchmark that creates thousands of namespaces measures only its own
    /// traffic (`make scale`). Pods cannot be created (the ServiceAccount admission plugin
    /// waits for the namespace's `default` ServiceAccount).
    pub without_controller_manager: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: None,
            service_cidr: "10.0.0.0/24".to_string(),
            apiserver_args: Vec::new(),
            without_controller_manager: false,
        }
    }
}

/// The shared control plane of this test binary.
pub struct ControlPlane {
    url: String,
    ca_pem: String,
    kubeconfig: PathBuf,
    config: kube::Config,
    log_dir: PathBuf,
    bin_dir: PathBuf,
    procs: Mutex<Vec<Proc>>,
    /// Failed first attempts (port clash), kept so that their wrappers, like
    /// the others, only see EOF at process exit: the etcd wrapper then removes
    /// the state directory, which the running servers use.
    _retired: Vec<Proc>,
    /// kube-apiserver's command line, to start it again on the same port (fault tests).
    apiserver_args: Vec<String>,
    controller_manager_args: Vec<String>,
    /// Servers stopped on purpose (fault tests), kept like `retired`.
    stopped: Mutex<Vec<Proc>>,
    /// The CA that signed every certificate, to sign more (a kubelet's client certificate).
    ca: TestCa,
}

/// One server under its wrapper. Dropping it closes the wrapper's stdin,
/// which stops the server.
struct Proc {
    name: &'static str,
    wrapper: Child,
    log: PathBuf,
}

/// Starts the control plane on first use (blocking, up to a few minutes on a
/// cold machine) and returns it. Panics, in every test that calls it, if it
/// could not be started; the message includes the servers' log tails.
pub fn shared() -> &'static ControlPlane {
    shared_with(Options::default)
}

/// [`shared`], started with the given options if it is not running yet (the first caller
/// in a test binary decides; a binary should always ask with the same options).
pub fn shared_with(options: impl FnOnce() -> Options) -> &'static ControlPlane {
    static CP: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    let started = CP.get_or_init(|| {
        for name in BINARIES {
            binary(name);
        }
        let options = options();
        // Own thread: the start-up uses a private tokio runtime, which cannot
        // be entered from within the calling test's runtime.
        std::thread::spawn(move || start(&options))
            .join()
            .unwrap_or_else(|panic| Err(panic_message(&*panic)))
    });
    match started {
        Ok(cp) => cp,
        Err(e) => panic!("test control plane did not start: {e}"),
    }
}

/// `<repo>/.cache/controlplane/bin`.
fn bin_dir() -> PathBuf {
    crate::repo_root().join(".cache/controlplane/bin")
}

/// Path of a binary built by `make controlplane` (`etcd`, `kube-apiserver`,
/// `kube-controller-manager`, `helm`). Panics with instructions if missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} not found: the end-to-end tests need the pinned control plane binaries; \
             build them once with `make controlplane` (runs tests/controlplane/build.sh, needs Go)",
            path.display()
        );
    }
    path
}

impl ControlPlane {
    /// A new client with admin (system:masters) credentials, bound to the
    /// calling test's tokio runtime. Must be called inside a runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config.clone())
            .expect("building kube client for the test control plane")
    }

    /// The admin client configuration.
    pub fn config(&self) -> kube::Config {
        self.config.clone()
    }

    /// A kubeconfig file with admin credentials (for `KUBECONFIG=...`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>` (or the address of [`Options::listen`]).
    pub fn apiserver_url(&self) -> &str {
        &self.url
    }

    /// A client certificate for `common_name` in `organization`, from the control plane's
    /// CA: the apiserver authenticates it as that user in that group.
    pub fn client_certificate(&self, common_name: &str, organization: &str) -> CertifiedKey {
        self.ca.client(common_name, organization)
    }

    /// PEM of the CA that signed the apiserver's serving certificate and the
    /// admin client certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Directory with `etcd.log`, `kube-apiserver.log`, `kube-controller-manager.log`.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The last `lines` lines of each server's log, with headers.
    pub fn log_tails(&self, lines: usize) -> String {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        tails(&procs, lines)
    }

    /// The running servers' names and pids (etcd, kube-apiserver, and the controller manager
    /// when there is one): `make scale` pins them to a core of their own.
    pub fn server_pids(&self) -> Vec<(&'static str, u32)> {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.iter().map(|p| (p.name, server_pid(p))).collect()
    }

    /// Fails if a server has exited.
    pub fn check_running(&self) -> Result<(), String> {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        check_running(&mut procs)
    }

    /// A guard that prints the servers' log tails to stderr (shown by the test
    /// harness with the failing test's output) if it is dropped during a panic.
    pub fn logs_on_failure(&self) -> LogsOnFailure<'_> {
        let what = format!("control plane (full logs in {})", self.log_dir.display());
        LogsOnFailure::new(&what, move || self.log_tails(40))
    }

    // -----------------------------------------------------------------------
    // Faults (tests/e2e_faults.rs). They break this test binary's control plane for every
    // test in it: a binary that uses them must run its tests one at a time.
    // -----------------------------------------------------------------------

    /// Kills kube-apiserver with SIGKILL and waits until it is gone. etcd keeps the data; the
    /// returned guard starts it again (same port, same flags) with [`Stopped::start`], or, if
    /// the test panics first, on drop.
    pub fn kill_apiserver(&self) -> Stopped<'_> {
        self.stop_server("kube-apiserver", "KILL");
        Stopped {
            cp: self,
            started: false,
        }
    }

    /// Sends `signal` to server `name` and waits until it has exited.
    fn stop_server(&self, name: &str, signal_name: &str) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let at = procs
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} is running"));
        let mut proc = procs.remove(at);
        drop(procs);
        signal(server_pid(&proc), signal_name);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(proc.wrapper.try_wait(), Ok(Some(_))) {
            assert!(Instant::now() < deadline, "{name} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(proc);
    }

    /// Starts kube-apiserver again with its original flags (same port, same etcd) and waits
    /// for `/readyz`.
    fn restart_apiserver(&self) -> Result<(), String> {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        spawn(
            &mut procs,
            "kube-apiserver",
            &self.bin_dir,
            &self.log_dir,
            &self.apiserver_args,
            None,
        )?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        wait_until_async(
            &rt,
            &mut procs,
            "kube-apiserver /readyz after a restart",
            || apiserver_ready(self.config.clone()),
        )
    }

    /// Makes the whole control plane work again after a fault, for the next test: restarts
    /// kube-controller-manager, whose watches may otherwise sit in a backoff of up to half a
    /// minute after an apiserver restart, and waits until a new namespace gets its `default`
    /// ServiceAccount.
    pub async fn wait_recovered(&self) {
        let started = Instant::now();
        self.stop_server("kube-controller-manager", "TERM");
        {
            let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            spawn(
                &mut procs,
                "kube-controller-manager",
                &self.bin_dir,
                &self.log_dir,
                &self.controller_manager_args,
                None,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let client = self.client();
        let probe = create_namespace(&client, NamespaceName::Generated("recovered-"), &[]).await;
        wait_default_service_account(&client, &probe, START_TIMEOUT).await;
        eprintln!(
            "controlplane: recovered in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Freezes etcd (SIGSTOP): every apiserver request that reaches storage waits. The guard
    /// thaws it (SIGCONT) on [`Paused::resume`] or on drop.
    pub fn pause_etcd(&self) -> Paused<'_> {
        let pid = {
            let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            let etcd = procs
                .iter()
                .find(|p| p.name == "etcd")
                .expect("etcd is running");
            server_pid(etcd)
        };
        signal(pid, "STOP");
        Paused {
            _cp: PhantomData,
            pid,
            resumed: false,
        }
    }
}

/// kube-apiserver killed by [`ControlPlane::kill_apiserver`].
pub struct Stopped<'a> {
    cp: &'a ControlPlane,
    started: bool,
}

impl Stopped<'_> {
    /// Starts it again and waits until it is ready. Blocking: call it from
    /// `spawn_blocking` in an async test.
    pub fn start(mut self) {
        self.started = true;
        if let Err(e) = self.cp.restart_apiserver() {
            panic!("kube-apiserver did not start again: {e}");
        }
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if !self.started {
            let _ = self.cp.restart_apiserver();
        }
    }
}

/// etcd frozen by [`ControlPlane::pause_etcd`].
pub struct Paused<'a> {
    /// Ties the guard to the control plane, whose etcd it thaws.
    _cp: PhantomData<&'a ControlPlane>,
    pid: u32,
    resumed: bool,
}

impl Paused<'_> {
    pub fn resume(mut self) {
        self.resumed = true;
        signal(self.pid, "CONT");
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        if !self.resumed {
            signal(self.pid, "CONT");
        }
    }
}

/// The server's pid, from the wrapper's "started <binary> as pid N (wrapper pid W)" line.
fn server_pid(proc: &Proc) -> u32 {
    let wrapper = proc.wrapper.id();
    let log = fs::read_to_string(&proc.log).unwrap_or_default();
    let marker = format!("(wrapper pid {wrapper})");
    log.lines()
        .rev()
        .filter(|line| line.starts_with("[controlplane] started") && line.ends_with(&marker))
        .find_map(|line| {
            line.split(" as pid ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no pid for {} (wrapper {wrapper}) in its log", proc.name))
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// How a namespace is named: exactly, or `<prefix><random>` by the apiserver (generateName).
pub enum NamespaceName<'a> {
    Exact(&'a str),
    Generated(&'a str),
}

/// Creates a namespace with `labels` and returns its name at once: before
/// kube-controller-manager has made its `default` ServiceAccount, which pods wait for (see
/// [`namespace`]). For tests that race what happens right after a namespace appears.
pub async fn create_namespace(
    client: &kube::Client,
    name: NamespaceName<'_>,
    labels: &[(&str, &str)],
) -> String {
    let (exact, prefix) = match name {
        NamespaceName::Exact(name) => (Some(name.to_string()), None),
        NamespaceName::Generated(prefix) => (None, Some(prefix.to_string())),
    };
    let what = exact.clone().or(prefix.clone()).unwrap_or_default();
    let ns = Namespace {
        metadata: ObjectMeta {
            name: exact,
            generate_name: prefix,
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {what}: {e}"))
        .metadata
        .name
        .expect("created namespace has a name")
}

/// Creates a namespace named `<prefix>-<random>` with the given labels, waits
/// until its `default` ServiceAccount exists (so pods can be admitted at once)
/// and returns its name.
pub async fn namespace(client: &kube::Client, prefix: &str, labels: &[(&str, &str)]) -> String {
    let generated = format!("{prefix}-");
    let name = create_namespace(client, NamespaceName::Generated(&generated), labels).await;
    wait_default_service_account(client, &name, Duration::from_secs(30)).await;
    name
}

/// Waits until kube-controller-manager has made the `default` ServiceAccount of `namespace`.
async fn wait_default_service_account(client: &kube::Client, namespace: &str, timeout: Duration) {
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    eventually(
        &format!("ServiceAccount {namespace}/default"),
        timeout,
        || async {
            match sas.get_opt("default").await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("not found yet".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

/// Runs `cleanup` with an admin client of the shared control plane on a thread and runtime of
/// its own, and waits for it: for `Drop`, which may run inside a test's runtime or after it
/// panicked.
pub fn cleanup<F, Fut>(cleanup: F)
where
    F: FnOnce(kube::Client) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let config = shared().config();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(client) = kube::Client::try_from(config) {
                cleanup(client).await;
            }
        });
    })
    .join();
}

/// Sets label `key` of `namespace` to `value`, or removes it (`None`).
pub async fn set_label(client: &kube::Client, namespace: &str, key: &str, value: Option<&str>) {
    let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("labelling namespace {namespace}: {e}"));
}

/// Polls `check` every 200 ms until it returns `Ok`, and panics after
/// `timeout` with `what` and the last error.
pub async fn eventually<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last error: {e}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

// ---------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------

fn start(options: &Options) -> Result<ControlPlane, String> {
    let started_at = Instant::now();
    let bin_dir = bin_dir();
    for name in BINARIES {
        binary(name);
    }
    let log_dir = prepare_log_dir()?;
    // Removed by the etcd wrapper once the test process has exited; until etcd
    // is started, the TempDir guard removes it on error.
    let state = tempfile::Builder::new()
        .prefix("pullsecret-controlplane-")
        .tempdir()
        .map_err(|e| format!("creating temporary directory: {e}"))?;
    let dir = state.path().to_path_buf();
    let listen_ip = options
        .listen
        .map_or_else(|| "127.0.0.1".to_string(), |addr| addr.ip().to_string());
    let pki = Pki::generate(&dir, &listen_ip)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let mut procs = Vec::new();
    let mut retired = Vec::new();

    // etcd
    let state_dir = state.keep();
    let mut etcd_port = 0;
    for attempt in 1..=2 {
        let [client_port, peer_port] = free_ports();
        let data = state_dir.join(format!("etcd-data-{attempt}"));
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let args = vec![
            "--name=test".to_string(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=test={peer_url}"),
            "--initial-cluster-state=new".to_string(),
            "--unsafe-no-fsync".to_string(),
            "--log-level=warn".to_string(),
        ];
        spawn(
            &mut procs,
            "etcd",
            &bin_dir,
            &log_dir,
            &args,
            Some(&state_dir),
        )?;
        match wait_until(&mut procs, "etcd to accept connections", || {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], client_port)),
                Duration::from_secs(1),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        }) {
            Ok(()) => {
                etcd_port = client_port;
                break;
            }
            Err(e) if attempt == 1 && port_clash(&procs) => retry(&mut procs, &mut retired, e),
            Err(e) => return Err(e),
        }
    }

    // kube-apiserver
    let kubeconfig = log_dir.join("kubeconfig");
    let mut started = None;
    for attempt in 1..=2 {
        let port = match options.listen {
            Some(addr) => addr.port(),
            None => free_ports::<1>()[0],
        };
        let url = format!("https://{listen_ip}:{port}");
        write_kubeconfig(&kubeconfig, &url, &pki)?;
        let p = |f: &str| pki.dir.join(f).display().to_string();
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--secure-port={port}"),
            format!("--bind-address={listen_ip}"),
            format!("--advertise-address={listen_ip}"),
            // The endpoints of the `kubernetes` Service may not be loopback
            // addresses: don't maintain them (nothing in the tests uses them).
            "--endpoint-reconciler-type=none".to_string(),
            format!("--cert-dir={}", state_dir.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            // For `logs` and `exec` on a test node's kubelet (crate::node).
            format!("--kubelet-client-certificate={}", p("admin.crt")),
            format!("--kubelet-client-key={}", p("admin.key")),
            format!("--service-account-issuer={SA_ISSUER}"),
            format!("--api-audiences={SA_ISSUER}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--authorization-mode=RBAC".to_string(),
            // ValidatingAdmissionPolicy is on by default since 1.30; named so that the
            // chart's Secret policy is enforced whatever the defaults become.
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy".to_string(),
            format!("--service-cluster-ip-range={}", options.service_cidr),
            "--profiling=false".to_string(),
            "--v=1".to_string(),
        ];
        // Repeating a list flag would add to the default list, not replace it.
        let flag_name = |arg: &str| arg.split('=').next().unwrap_or_default().to_string();
        args.retain(|arg| {
            !options
                .apiserver_args
                .iter()
                .any(|extra| flag_name(extra) == flag_name(arg))
        });
        args.extend(options.apiserver_args.iter().cloned());
        spawn(
            &mut procs,
            "kube-apiserver",
            &bin_dir,
            &log_dir,
            &args,
            None,
        )?;
        let config = rt.block_on(load_config(&kubeconfig))?;
        let ready = wait_until_async(&rt, &mut procs, "kube-apiserver /readyz", || {
            apiserver_ready(config.clone())
        });
        match ready {
            Ok(()) => {
                started = Some((url, config, args));
                break;
            }
            Err(e) if attempt == 1 && port_clash(&procs) => retry(&mut procs, &mut retired, e),
            Err(e) => return Err(e),
        }
    }
    let (url, config, apiserver_args) = started.expect("kube-apiserver started or returned");

    // kube-controller-manager
    let mut controller_manager_args = Vec::new();
    let attempts = if options.without_controller_manager {
        0
    } else {
        2
    };
    for attempt in 1..=attempts {
        let [port] = free_ports();
        let p = |f: &str| pki.dir.join(f).display().to_string();
        let kcfg = kubeconfig.display().to_string();
        let args = vec![
            format!("--kubeconfig={kcfg}"),
            format!("--authentication-kubeconfig={kcfg}"),
            // There is no front proxy: don't look up its CA in the cluster.
            "--authentication-skip-lookup=true".to_string(),
            format!("--authorization-kubeconfig={kcfg}"),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", state_dir.join("kcm-certs").display()),
            // Its default, /usr/libexec/kubernetes/..., would be created on the machine.
            format!(
                "--flex-volume-plugin-dir={}",
                state_dir.join("flexvolume").display()
            ),
            "--controllers=*".to_string(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            "--use-service-account-credentials=false".to_string(),
            "--leader-elect=false".to_string(),
            "--profiling=false".to_string(),
            "--v=1".to_string(),
        ];
        spawn(
            &mut procs,
            "kube-controller-manager",
            &bin_dir,
            &log_dir,
            &args,
            None,
        )?;
        let ready = wait_until_async(
            &rt,
            &mut procs,
            "ServiceAccount default/default (kube-controller-manager)",
            || {
                let config = config.clone();
                async move {
                    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
                    let sas = Api::<ServiceAccount>::namespaced(client, "default");
                    match tokio::time::timeout(Duration::from_secs(5), sas.get_opt("default")).await
                    {
                        Ok(Ok(Some(_))) => Ok(()),
                        Ok(Ok(None)) => Err("not created yet".to_string()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("request timed out".to_string()),
                    }
                }
            },
        );
        match ready {
            Ok(()) => {
                controller_manager_args = args;
                break;
            }
            Err(e) if attempt == 1 && port_clash(&procs) => retry(&mut procs, &mut retired, e),
            Err(e) => return Err(e),
        }
    }

    eprintln!(
        "controlplane: ready in {:.1}s at {url} (logs: {})",
        started_at.elapsed().as_secs_f64(),
        log_dir.display()
    );
    Ok(ControlPlane {
        url,
        ca_pem: pki.ca_pem.clone(),
        kubeconfig,
        config,
        log_dir,
        bin_dir,
        procs: Mutex::new(procs),
        _retired: retired,
        apiserver_args,
        controller_manager_args,
        stopped: Mutex::new(Vec::new()),
        ca: pki.ca,
    })
}

/// Whether kube-apiserver answers `/readyz` with `ok` (within 5 s).
async fn apiserver_ready(config: kube::Config) -> Result<(), String> {
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let req = hyper::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
        Ok(Ok(body)) => Err(body),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("request timed out".to_string()),
    }
}

async fn load_config(kubeconfig: &Path) -> Result<kube::Config, String> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("loading {}: {e}", kubeconfig.display()))
}

/// Starts `bin_dir/name args...` under the wrapper, logging to `log_dir/name.log`.
fn spawn(
    procs: &mut Vec<Proc>,
    name: &'static str,
    bin_dir: &Path,
    log_dir: &Path,
    args: &[String],
    remove_on_exit: Option<&Path>,
) -> Result<(), String> {
    let log = log_dir.join(format!("{name}.log"));
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("controlplane-wrapper")
        .arg(bin_dir.join(name))
        .args(args)
        .env("GRACE_TENTHS", STOP_GRACE_TENTHS.to_string())
        .env_remove("CONTROLPLANE_REMOVE_ON_EXIT")
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err);
    // The apiserver calls the test's webhooks on 127.0.0.1.
    crate::loopback_only(&mut cmd);
    if let Some(path) = remove_on_exit {
        cmd.env("CONTROLPLANE_REMOVE_ON_EXIT", path);
    }
    let wrapper = cmd
        .spawn()
        .map_err(|e| format!("starting {name} via sh: {e}"))?;
    procs.push(Proc { name, wrapper, log });
    Ok(())
}

fn check_running(procs: &mut [Proc]) -> Result<(), String> {
    let exited = procs.iter_mut().find_map(|p| match p.wrapper.try_wait() {
        Ok(Some(status)) => Some(format!("{} exited ({status})", p.name)),
        _ => None,
    });
    match exited {
        Some(what) => Err(format!("{what}\n{}", tails(procs, 40))),
        None => Ok(()),
    }
}

/// Moves the last started server, which lost a port race, out of `procs`.
fn retry(procs: &mut Vec<Proc>, retired: &mut Vec<Proc>, error: String) {
    let failed = procs.pop().expect("a server was started");
    eprintln!(
        "controlplane: {} lost a port race, starting it again: {error}",
        failed.name
    );
    retired.push(failed);
}

/// Whether the last started server exited because its port was taken.
fn port_clash(procs: &[Proc]) -> bool {
    procs
        .last()
        .and_then(|p| fs::read_to_string(&p.log).ok())
        .is_some_and(|log| log.contains("address already in use"))
}

fn wait_until(
    procs: &mut [Proc],
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        check_running(procs).map_err(|e| format!("waiting for {what}: {e}"))?;
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {START_TIMEOUT:?} waiting for {what}; last error: {last}\n{}",
                tails(procs, 40)
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn wait_until_async<F, Fut>(
    rt: &tokio::runtime::Runtime,
    procs: &mut [Proc],
    what: &str,
    mut check: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    wait_until(procs, what, || rt.block_on(check()))
}

fn tails(procs: &[Proc], lines: usize) -> String {
    let mut seen = Vec::new();
    let mut out = String::new();
    for p in procs {
        if seen.contains(&p.log) {
            continue; // a retried server appends to the same log
        }
        seen.push(p.log.clone());
        let text = fs::read_to_string(&p.log).unwrap_or_else(|e| format!("(cannot read: {e})"));
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        out.push_str(&format!(
            "---- {} (last {} lines) ----\n",
            p.log.display(),
            all.len() - from
        ));
        for line in &all[from..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `<repo>/target/controlplane-logs/<test-binary>-<pid>`, created empty.
/// Old directories of the same test binary whose process is gone are pruned,
/// keeping the newest few.
fn prepare_log_dir() -> Result<PathBuf, String> {
    const KEEP: usize = 4;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let stem = exe
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("test")
        .to_string();
    // Cargo names test binaries `<name>-<16 hex digits>`.
    let name = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem,
    };
    let root = crate::repo_root().join("target/controlplane-logs");
    fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;

    let mut old: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&root)
        .map_err(|e| format!("reading {}: {e}", root.display()))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let file_name = entry.file_name().into_string().ok()?;
            let pid = file_name
                .strip_prefix(&name)?
                .strip_prefix('-')?
                .parse::<u32>()
                .ok()?;
            let alive = Path::new(&format!("/proc/{pid}")).exists();
            let modified = entry.metadata().and_then(|m| m.modified()).ok()?;
            (!alive).then(|| (modified, entry.path()))
        })
        .collect();
    old.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    for (_, path) in old.iter().skip(KEEP - 1) {
        let _ = fs::remove_dir_all(path);
    }

    let dir = root.join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

fn write_kubeconfig(path: &Path, url: &str, pki: &Pki) -> Result<(), String> {
    let p = |f: &str| pki.dir.join(f).display().to_string();
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: test
  context:
    cluster: test
    user: admin
    namespace: default
current-context: test
",
        ca = p("ca.crt"),
        cert = p("admin.crt"),
        key = p("admin.key"),
    );
    write_file(path, &text)
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic while starting the control plane".to_string())
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// Files written to `dir`: ca.{crt,key}, apiserver.{crt,key}, admin.{crt,key}
/// (CN=admin, O=system:masters), sa.{key,pub} (service-account token signing).
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca: TestCa,
}

impl Pki {
    /// `listen_ip`: the apiserver's address, besides the usual names of the `kubernetes` Service.
    fn generate(dir: &Path, listen_ip: &str) -> Result<Pki, String> {
        let ca = TestCa::new("pullsecret-injector test CA");
        let mut names = vec![
            "127.0.0.1",
            "localhost",
            "10.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        if !names.contains(&listen_ip) {
            names.push(listen_ip);
        }
        let apiserver = ca.serving("kube-apiserver", &names);
        let admin = ca.client("admin", "system:masters");
        let (sa_key, sa_pub) = pki::signing_key();
        for (file, text) in [
            ("ca.crt", ca.cert_pem.as_str()),
            ("ca.key", ca.key_pem.as_str()),
            ("apiserver.crt", apiserver.cert_pem.as_str()),
            ("apiserver.key", apiserver.key_pem.as_str()),
            ("admin.crt", admin.cert_pem.as_str()),
            ("admin.key", admin.key_pem.as_str()),
            ("sa.key", sa_key.as_str()),
            ("sa.pub", sa_pub.as_str()),
        ] {
            write_file(&dir.join(file), text)?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_pem: ca.cert_pem.clone(),
            ca,
        })
    }
}
