//! A real node beside the test control plane: containerd (runc, the CNI bridge), the kubelet
//! and kube-scheduler, started once per test binary and shared by its tests.
//!
//! The binaries come from `make node` (`tests/node/build.sh`) into `<repo>/.cache/node`.
//!
//! ```ignore
//! let node = node::shared();          // control plane + node, Ready
//! let _logs = node.logs_on_failure(); // node and control plane log tails if the test panics
//! let client = node.control_plane().client();
//! ```
//!
//! Network. The node claims a free number N in 20..=219 (tried from one its pid picks, so that
//! concurrent test binaries rarely collide) by creating the bridge
//! `psi-brN`, which holds two addresses: 10.201.N.1/24, the gateway of the pod network
//! 10.201.N.0/24, and 10.200.N.1/32, the ClusterIP of the `kubernetes` Service (the first
//! address of the service range 10.200.N.0/24), where kube-apiserver listens on port 443.
//! Pods reach the apiserver through their in-cluster configuration without kube-proxy: the
//! ClusterIP is a local address of the node, and the pods' one route (the service range via
//! the gateway) delivers to it. The apiserver calls webhooks at their pods' IPs
//! (`--enable-aggregator-routing`). The kubelet's node IP and listening address is the
//! gateway, so `logs` and `exec` stay on this machine. Nothing is routed anywhere else:
//! IP forwarding stays off, no firewall rule is added.
//!
//! Lifecycle. A reaper (`sh`, [`REAPER`]) is started first; its stdin is a pipe held by the
//! test process, through which it learns the servers' pids and the bridge. When the test
//! process exits for any reason (tests passed, a panic, SIGKILL), the pipe closes and the
//! reaper stops kube-scheduler, the kubelet and containerd, deletes every container with
//! runc while the shims still reap them, kills the shims, unmounts everything under the
//! node's directory (root file systems, volumes, network namespaces), deletes the bridge
//! (the veths went with the namespaces), removes the containers' cgroups, the CNI cache
//! entries and the kubelet's log links, keeps a copy of the pods' logs, and deletes the
//! directory. The last node of the machine to go also restores the kernel settings the
//! kubelet changes (`vm.overcommit_memory`, `kernel.panic`, `kernel.panic_on_oops`, …) and
//! removes the shared directories it created, as recorded by the first one in
//! [`MACHINE_STATE`]. Logs are kept beside the control plane's, in
//! `<repo>/target/controlplane-logs/<test-binary>-<pid>/`.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::api::Api;

use crate::controlplane::{self, ControlPlane};
use crate::logs::LogsOnFailure;
use crate::ports::free_ports;

/// The node's name (`--hostname-override`), also its `kubernetes.io/hostname` label.
pub const NODE_NAME: &str = "pullsecret-node";
/// The sandbox image `tests/node/build.sh` assembles (the registry tools' `sleeper`);
/// containerd pins it.
pub const PAUSE_IMAGE: &str = "localhost/pullsecret-injector-node/pause:1";
/// Where the first running node records the machine's settings, for the last one to restore.
pub const MACHINE_STATE: &str = "/run/pullsecret-injector-node.state";
/// The kernel settings the kubelet sets at start-up (`setupKernelTunables`), and IP forwarding.
const SYSCTLS: &str = "vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
     kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/ip_forward";
/// Shared directories the kubelet and the CNI library create if absent (children first); the
/// reaper adds the `k8s.io` cgroup of each hierarchy.
const SHARED_DIRS: &str = "/var/log/containers /var/lib/cni/results /var/lib/cni";
const BINARIES: [&str; 6] = [
    "kubelet",
    "kube-scheduler",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
];
const CNI_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];
/// Bridges are `psi-br<N>`, N in this range: 10.200.N.0/24 and 10.201.N.0/24 are then free
/// of each other and of the usual private networks' first blocks.
const NETWORK_NUMBERS: std::ops::RangeInclusive<u32> = 20..=219;
const START_TIMEOUT: Duration = Duration::from_secs(120);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Tears the node down when stdin closes; see the module documentation. Environment:
/// NODE_DIR, NODE_BIN, NODE_SOCK, MACHINE_STATE, SYSCTLS, SHARED_DIRS. Stdin lines:
/// `server <name> <pid>` (stopped in reverse order), `bridge <bridge> <CNI network name>`,
/// `logs <directory>` (where the pods' logs are copied before the node's directory goes).
pub const REAPER: &str = r#"
trap '' INT TERM HUP
log() { echo "[node-reaper $(date +%T.%N | cut -c1-12)] $*"; }

if [ ! -e "$MACHINE_STATE" ]; then
    tmp="$MACHINE_STATE.$$"
    {
        for k in $SYSCTLS; do echo "sysctl $k $(cat "/proc/sys/$k")"; done
        # runc puts containers under <hierarchy>/k8s.io/<id> (containerd's namespace).
        cgroups="$(grep -E ' - cgroup2? ' /proc/self/mountinfo | awk '{ print $5 "/k8s.io" }')"
        for d in $SHARED_DIRS $cgroups; do [ -e "$d" ] || echo "absent $d"; done
    } >"$tmp"
    if ln "$tmp" "$MACHINE_STATE" 2>/dev/null; then
        log "recorded the machine's settings in $MACHINE_STATE:"
        cat "$MACHINE_STATE"
    fi
    rm -f "$tmp"
fi
: >"$NODE_DIR/reaper.ready"

servers=""
bridge=""
net=""
logs=""
while read -r what name value; do
    case "$what" in
    server) servers="$name:$value $servers" ;;
    bridge) bridge="$name" net="$value" ;;
    logs) logs="$name" ;;
    esac
done
log "the test process is gone: tearing down the node in $NODE_DIR"

# The servers, last started first, each only if that pid still runs the binary started.
for s in $servers; do
    name="${s%%:*}"
    pid="${s#*:}"
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$NODE_BIN/$name" ] || continue
    kill -TERM "$pid" 2>/dev/null
    i=0
    while [ -e "/proc/$pid" ] && [ "$i" -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null
    log "stopped $name (pid $pid)"
done

# Every sandbox and container id the node holds state of: for their cgroups and CNI cache
# entries, which outlive a container deleted by force.
ids="$(ls "$NODE_DIR"/runc/*/ "$NODE_DIR"/containerd/root/io.containerd.grpc.v1.cri/sandboxes \
    "$NODE_DIR"/containerd/root/io.containerd.grpc.v1.cri/containers \
    "$NODE_DIR"/containerd/state/io.containerd.runtime.v2.task/k8s.io 2>/dev/null |
    grep -E '^[0-9a-f]{64}$' | sort -u)"
# The containers, while their shims still reap them (twice: with containerd gone no new one
# is asked for, but one a shim was creating may have appeared meanwhile); then the shims.
for pass in 1 2; do
    for root in "$NODE_DIR"/runc/*; do
        [ -d "$root" ] || continue
        for id in $("$NODE_BIN/runc" --root "$root" list -q 2>/dev/null); do
            "$NODE_BIN/runc" --root "$root" delete --force "$id" && log "deleted container $id"
        done
    done
    sleep 0.2
done
for p in /proc/[0-9]*; do
    case "$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" in
    *"-address $NODE_SOCK "*) kill -KILL "${p#/proc/}" 2>/dev/null && log "killed shim ${p#/proc/}" ;;
    esac
done

# Mounts under the node's directory, deepest first, until none is left.
pass=0
while [ "$pass" -lt 5 ]; do
    mounts="$(awk -v d="$NODE_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)"
    [ -n "$mounts" ] || break
    for m in $mounts; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    log "unmounted $(echo "$mounts" | wc -l) mount(s)"
    pass=$((pass + 1))
done

# With their namespaces gone, the veths go; then the bridge.
if [ -n "$bridge" ]; then
    i=0
    while [ -n "$(ip -o link show master "$bridge" 2>/dev/null)" ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    for veth in $(ip -o link show master "$bridge" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
        ip link del "$veth" && log "deleted $veth"
    done
    ip link del "$bridge" 2>/dev/null && log "deleted bridge $bridge"
fi

[ -z "$net" ] || rm -f /var/lib/cni/results/"$net"-*
for id in $ids; do
    rm -f /var/lib/cni/results/*-"$id"-*
    for cgroup in /sys/fs/cgroup/*/k8s.io/"$id" /sys/fs/cgroup/k8s.io/"$id"; do
        i=0
        while [ -d "$cgroup" ] && ! rmdir "$cgroup" 2>/dev/null && [ "$i" -lt 20 ]; do
            sleep 0.1
            i=$((i + 1))
        done
    done
done
if [ -n "$logs" ] && [ -d "$NODE_DIR/pod-logs" ]; then
    cp -r "$NODE_DIR/pod-logs" "$logs/pod-logs" && log "kept the pods' logs in $logs/pod-logs"
fi
for link in /var/log/containers/*.log; do
    case "$(readlink "$link" 2>/dev/null)" in "$NODE_DIR"/*) rm -f "$link" ;; esac
done
if awk -v d="$NODE_DIR/" 'index($5, d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    log "mounts are left under $NODE_DIR: not deleting it"
else
    rm -rf --one-file-system "$NODE_DIR" && log "deleted $NODE_DIR"
fi

# The last node of the machine restores what the first one recorded.
if ! ip -o link show type bridge | grep -q ': psi-br[0-9]*:'; then
    if [ -f "$MACHINE_STATE" ]; then
        while read -r kind key value; do
            case "$kind" in
            sysctl)
                now="$(cat "/proc/sys/$key")"
                if [ "$now" != "$value" ]; then
                    echo "$value" >"/proc/sys/$key" && log "restored $key to $value (was $now)"
                fi
                ;;
            absent) rmdir "$key" 2>/dev/null && log "removed $key" ;;
            esac
        done <"$MACHINE_STATE"
        rm -f "$MACHINE_STATE"
    fi
fi
log "done"
"#;

/// The node of this test binary.
pub struct Node {
    cp: &'static ControlPlane,
    network: Network,
    dir: PathBuf,
    log_dir: PathBuf,
    bin_dir: PathBuf,
    containerd_socket: PathBuf,
    servers: Mutex<Vec<Server>>,
    reaper: Mutex<Reaper>,
}

/// The addresses of a node's network, from its number N.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub number: u32,
    pub bridge: String,
    /// 10.201.N.1: the pods' gateway, the node's IP, where the kubelet listens.
    pub gateway: Ipv4Addr,
    /// 10.201.N.0/24.
    pub pod_cidr: String,
    /// 10.200.N.1: the `kubernetes` Service's ClusterIP, where kube-apiserver listens.
    pub cluster_ip: Ipv4Addr,
    /// 10.200.N.0/24.
    pub service_cidr: String,
}

impl Network {
    pub fn new(number: u32) -> Self {
        let n = u8::try_from(number).expect("network number below 256");
        Self {
            number,
            bridge: format!("psi-br{number}"),
            gateway: Ipv4Addr::new(10, 201, n, 1),
            pod_cidr: format!("10.201.{n}.0/24"),
            cluster_ip: Ipv4Addr::new(10, 200, n, 1),
            service_cidr: format!("10.200.{n}.0/24"),
        }
    }

    /// The CNI network's name, also the prefix of its entries in libcni's cache.
    pub fn cni_name(&self) -> String {
        format!("psi-node-{}", self.number)
    }
}

/// One server (containerd, the kubelet, kube-scheduler).
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

struct Reaper {
    child: Child,
    /// Closing it starts the teardown.
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Reaper {
    fn tell(&mut self, line: &str) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or("the node is being torn down".to_string())?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("telling the node's reaper {line:?}: {e}"))
    }
}

/// Starts the control plane and the node on first use (blocking, a minute or so) and returns
/// it. Panics, in every test that calls it, if they could not be started; the message
/// includes the log tails.
pub fn shared() -> &'static Node {
    static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
    let started = NODE.get_or_init(|| {
        check_binaries();
        std::thread::spawn(start)
            .join()
            .unwrap_or_else(|panic| Err(panic_message(&*panic)))
    });
    match started {
        Ok(node) => node,
        Err(e) => panic!("test node did not start: {e}"),
    }
}

/// `<repo>/.cache/node`.
pub fn cache_dir() -> PathBuf {
    crate::repo_root().join(".cache/node")
}

fn check_binaries() {
    let cache = cache_dir();
    let mut missing: Vec<PathBuf> = BINARIES.iter().map(|b| cache.join("bin").join(b)).collect();
    missing.extend(CNI_PLUGINS.iter().map(|p| cache.join("cni").join(p)));
    missing.push(cache.join("images/pause.tar"));
    missing.retain(|path| !path.is_file());
    if !missing.is_empty() {
        panic!(
            "{} not found: the node tests need the pinned node parts; build them once with \
             `make node` (runs tests/node/build.sh, needs Go and apt-get)",
            missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

impl Node {
    pub fn control_plane(&self) -> &'static ControlPlane {
        self.cp
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The node's state directory (containerd's root and state, the kubelet's root, logs of
    /// pods); deleted at teardown.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Imports an image archive (OCI layout or docker-archive, as `ctr images import` reads)
    /// into the kubelet's image store.
    pub fn import_image(&self, archive: &Path) -> Result<(), String> {
        self.ctr(&["images", "import", &archive.display().to_string()])
            .map(|_| ())
    }

    /// containerd's registry hosts configuration directory (`<host:port>/hosts.toml`), read
    /// at each pull.
    pub fn registry_config_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// Runs `ctr -n k8s.io <args>` against the node's containerd and returns its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        ctr(&self.bin_dir, &self.containerd_socket, args)
    }

    /// The host pid of a running container (`containerd://<id>` or `<id>`), from runc's state.
    pub fn container_pid(&self, container_id: &str) -> Result<u32, String> {
        let id = container_id.trim_start_matches("containerd://");
        let root = self.dir.join("runc/k8s.io");
        let out = Command::new(self.bin_dir.join("runc"))
            .arg("--root")
            .arg(&root)
            .args(["state", id])
            .output()
            .map_err(|e| format!("running runc: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "runc state {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let state: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("runc state {id}: {e}"))?;
        state["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|pid| *pid > 0)
            .ok_or_else(|| format!("runc state {id} has no pid: {state}"))
    }

    /// Runs `program args...` in the network namespace of a running container (`nsenter`),
    /// and returns its exit status and output (stdout, then stderr).
    pub fn in_network_of(
        &self,
        container_id: &str,
        program: &str,
        args: &[&str],
    ) -> Result<(bool, String), String> {
        let pid = self.container_pid(container_id)?;
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .arg("--")
            .arg(program)
            .args(args)
            .output()
            .map_err(|e| format!("running nsenter: {e}"))?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// Fails if a server of the node or of the control plane has exited.
    pub fn check_running(&self) -> Result<(), String> {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        check_running(&mut servers)?;
        self.cp.check_running()
    }

    /// The last `lines` lines of the node's logs (containerd, kubelet, kube-scheduler).
    pub fn log_tails(&self, lines: usize) -> String {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        tails(servers.iter().map(|s| s.log.as_path()), lines)
    }

    /// The last `lines` lines of the logs of every container of the pods in `namespace`
    /// (the kubelet's files under `podLogsDir`; kept in the log directory after teardown).
    pub fn pod_log_tails(&self, namespace: &str, lines: usize) -> String {
        let root = self.dir.join("pod-logs");
        let mut logs: Vec<PathBuf> = fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|pod| {
                pod.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{namespace}_"))
            })
            .flat_map(|pod| fs::read_dir(pod.path()).into_iter().flatten().flatten())
            .flat_map(|container| {
                fs::read_dir(container.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|log| log.path())
            .collect();
        logs.sort();
        tails(logs.iter().map(PathBuf::as_path), lines)
    }

    /// A guard that prints the node's and the control plane's log tails to stderr if it is
    /// dropped during a panic.
    pub fn logs_on_failure(&self) -> LogsOnFailure<'_> {
        LogsOnFailure::new("node", move || {
            format!(
                "(full logs in {})\n{}\n==== control plane logs ====\n{}",
                self.log_dir.display(),
                self.log_tails(60),
                self.cp.log_tails(30)
            )
        })
    }

    /// Tears the node down now, as at process exit, and waits until the reaper is done
    /// (for `make demo` and the cleanup test). The node cannot be used afterwards.
    pub fn stop(&self) -> Result<String, String> {
        let mut reaper = self.reaper.lock().unwrap_or_else(|e| e.into_inner());
        drop(reaper.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match reaper.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                Ok(None) => return Err("the node's reaper did not finish in 120 s".into()),
                Err(e) => return Err(format!("waiting for the node's reaper: {e}")),
            }
        }
        fs::read_to_string(&reaper.log)
            .map_err(|e| format!("reading {}: {e}", reaper.log.display()))
    }
}

// ---------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------

fn start() -> Result<Node, String> {
    let started_at = Instant::now();
    let cache = cache_dir();
    // Canonical: the reaper compares it with /proc/<pid>/exe before it stops a server.
    let bin_dir = fs::canonicalize(cache.join("bin"))
        .map_err(|e| format!("resolving {}: {e}", cache.join("bin").display()))?;
    // Short: containerd's shim socket directory must stay within 42 characters.
    let dir = tempfile::Builder::new()
        .prefix("psi-node-")
        .tempdir_in("/tmp")
        .map_err(|e| format!("creating the node's directory: {e}"))?
        .keep();
    let mut reaper = spawn_reaper(&dir, &bin_dir)?;
    let network = claim_network(&mut reaper)?;

    let cp = controlplane::shared_with(|| control_plane_options(&network));
    let log_dir = cp.log_dir().to_path_buf();
    // The reaper logged to the node directory until the control plane's log directory existed.
    let reaper_log = log_dir.join("node-reaper.log");
    let _ = fs::rename(&reaper.log, &reaper_log);
    reaper.log = reaper_log;
    reaper.tell(&format!("logs {}", log_dir.display()))?;

    let layout = Layout::new(&dir, &cache);
    layout.create()?;
    write_file(&layout.ca_file, cp.ca_pem())?;
    let credentials = cp.client_certificate(&format!("system:node:{NODE_NAME}"), "system:nodes");
    write_file(&layout.kubelet_cert, &credentials.cert_pem)?;
    write_file(&layout.kubelet_key, &credentials.key_pem)?;
    write_file(
        &layout.kubelet_kubeconfig,
        &kubeconfig(
            cp.apiserver_url(),
            &layout.ca_file,
            &layout.kubelet_cert,
            &layout.kubelet_key,
        ),
    )?;
    write_file(&layout.containerd_config, &containerd_config(&layout))?;
    write_file(
        &layout.cni_conf_dir.join("10-psi-node.conflist"),
        &cni_config(&layout, &network),
    )?;
    let [kubelet_port, healthz_port, scheduler_port] = free_ports();
    write_file(
        &layout.kubelet_config,
        &kubelet_config(&layout, &network, kubelet_port, healthz_port),
    )?;

    let mut servers = Vec::new();
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        bin_dir.display()
    );
    spawn(
        &mut servers,
        &mut reaper,
        "containerd",
        &bin_dir,
        &log_dir,
        &[
            "--config".into(),
            layout.containerd_config.display().to_string(),
        ],
        &path,
    )?;
    wait_until(&mut servers, "containerd to answer", || {
        ctr(&bin_dir, &layout.containerd_socket, &["version"]).map(|_| ())
    })?;
    ctr(
        &bin_dir,
        &layout.containerd_socket,
        &[
            "images",
            "import",
            &cache.join("images/pause.tar").display().to_string(),
        ],
    )?;

    spawn(
        &mut servers,
        &mut reaper,
        "kubelet",
        &bin_dir,
        &log_dir,
        &[
            format!("--config={}", layout.kubelet_config.display()),
            format!("--kubeconfig={}", layout.kubelet_kubeconfig.display()),
            format!("--root-dir={}", layout.kubelet_root.display()),
            format!("--cert-dir={}", layout.kubelet_root.join("pki").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={}", network.gateway),
            "--v=2".into(),
        ],
        &path,
    )?;
    let kcfg = cp.kubeconfig_path().display().to_string();
    spawn(
        &mut servers,
        &mut reaper,
        "kube-scheduler",
        &bin_dir,
        &log_dir,
        &[
            format!("--kubeconfig={kcfg}"),
            format!("--authentication-kubeconfig={kcfg}"),
            format!("--authorization-kubeconfig={kcfg}"),
            "--authentication-skip-lookup=true".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={scheduler_port}"),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ],
        &path,
    )?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let config = cp.config();
    wait_until(
        &mut servers,
        &format!("node {NODE_NAME} to be Ready and schedulable"),
        || {
            rt.block_on(async {
                let client = kube::Client::try_from(config.clone()).map_err(|e| e.to_string())?;
                let nodes = Api::<NodeObject>::all(client);
                let node = tokio::time::timeout(Duration::from_secs(5), nodes.get_opt(NODE_NAME))
                    .await
                    .map_err(|_| "request timed out".to_string())?
                    .map_err(|e| e.to_string())?
                    .ok_or("not registered yet")?;
                schedulable(&node)
            })
        },
    )?;

    eprintln!(
        "node: {NODE_NAME} Ready in {:.1}s (bridge {}, pods {}, apiserver {}:443; logs: {})",
        started_at.elapsed().as_secs_f64(),
        network.bridge,
        network.pod_cidr,
        network.cluster_ip,
        log_dir.display()
    );
    Ok(Node {
        cp,
        network,
        dir,
        log_dir,
        bin_dir,
        containerd_socket: layout.containerd_socket,
        servers: Mutex::new(servers),
        reaper: Mutex::new(reaper),
    })
}

/// Ok when the node is Ready and carries no NoSchedule or NoExecute taint (the node lifecycle
/// controller lifts `not-ready` a moment after Ready).
fn schedulable(node: &NodeObject) -> Result<(), String> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()));
    match ready {
        Some((status, _)) if status == "True" => {}
        Some((status, message)) => return Err(format!("Ready={status}: {message}")),
        None => return Err("no Ready condition yet".into()),
    }
    let taints: Vec<String> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect();
    if taints.is_empty() {
        Ok(())
    } else {
        Err(format!("tainted {taints:?}"))
    }
}

fn control_plane_options(network: &Network) -> controlplane::Options {
    controlplane::Options {
        listen: Some(SocketAddrV4::new(network.cluster_ip, 443)),
        service_cidr: network.service_cidr.clone(),
        apiserver_args: vec![
            // Webhooks are called at their pods' IPs: there is no kube-proxy.
            "--enable-aggregator-routing=true".into(),
            // The kubelet's credentials are a node's: the Node authorizer grants what it needs.
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy".into(),
            // `logs` and `exec`: dial the node's IP (its hostname resolves nowhere).
            "--kubelet-preferred-address-types=InternalIP".into(),
        ],
        ..controlplane::Options::default()
    }
}

/// Paths of one node, all under its directory.
struct Layout {
    cni_bin_dir: PathBuf,
    runc: PathBuf,
    containerd_config: PathBuf,
    containerd_root: PathBuf,
    containerd_state: PathBuf,
    containerd_socket: PathBuf,
    shim_socket_dir: PathBuf,
    runc_root: PathBuf,
    cni_conf_dir: PathBuf,
    cni_ipam_dir: PathBuf,
    registry_config_dir: PathBuf,
    kubelet_root: PathBuf,
    kubelet_config: PathBuf,
    kubelet_kubeconfig: PathBuf,
    kubelet_cert: PathBuf,
    kubelet_key: PathBuf,
    pod_logs_dir: PathBuf,
    volume_plugin_dir: PathBuf,
    ca_file: PathBuf,
}

impl Layout {
    fn new(dir: &Path, cache: &Path) -> Self {
        let d = |p: &str| dir.join(p);
        Self {
            cni_bin_dir: cache.join("cni"),
            runc: cache.join("bin/runc"),
            containerd_config: d("containerd.toml"),
            containerd_root: d("containerd/root"),
            containerd_state: d("containerd/state"),
            containerd_socket: d("containerd.sock"),
            shim_socket_dir: d("s"),
            runc_root: d("runc"),
            cni_conf_dir: d("cni/conf"),
            cni_ipam_dir: d("cni/ipam"),
            registry_config_dir: d("certs.d"),
            kubelet_root: d("kubelet"),
            kubelet_config: d("kubelet.yaml"),
            kubelet_kubeconfig: d("kubelet.kubeconfig"),
            kubelet_cert: d("kubelet-client.crt"),
            kubelet_key: d("kubelet-client.key"),
            pod_logs_dir: d("pod-logs"),
            volume_plugin_dir: d("volume-plugins"),
            ca_file: d("ca.crt"),
        }
    }

    fn create(&self) -> Result<(), String> {
        for dir in [
            &self.containerd_root,
            &self.containerd_state,
            &self.shim_socket_dir,
            &self.runc_root,
            &self.cni_conf_dir,
            &self.cni_ipam_dir,
            &self.registry_config_dir,
            &self.kubelet_root,
            &self.pod_logs_dir,
            &self.volume_plugin_dir,
        ] {
            fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        Ok(())
    }
}

/// containerd's configuration: everything under the node's directory, the CRI plugin with
/// runc from the cache, the CNI bridge, the locally built sandbox image, and only the plugins
/// the node uses.
fn containerd_config(layout: &Layout) -> String {
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"
# Plugins that would look outside the node's directory or are not needed.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "{shim_sockets}"

[plugins."io.containerd.cri.v1.runtime"]
  # This machine denies lowering oom_score_adj: without it every sandbox fails to start.
  restrict_oom_score_adj = true
  # Network namespaces under the node's directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{runc_root}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
    max_conf_num = 1

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{registry_config}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        root = layout.containerd_root.display(),
        state = layout.containerd_state.display(),
        socket = layout.containerd_socket.display(),
        shim_sockets = layout.shim_socket_dir.display(),
        runc = layout.runc.display(),
        runc_root = layout.runc_root.display(),
        cni_bin = layout.cni_bin_dir.display(),
        cni_conf = layout.cni_conf_dir.display(),
        pause = PAUSE_IMAGE,
        registry_config = layout.registry_config_dir.display(),
    )
}

/// The pod network: a bridge the harness made (it holds the gateway, so the plugin neither
/// adds an address nor turns IP forwarding on), addresses from host-local, and one route,
/// to the service range, where the apiserver is.
fn cni_config(layout: &Layout, network: &Network) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network.cni_name(),
        "plugins": [{
            "type": "bridge",
            "bridge": network.bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": layout.cni_ipam_dir,
                "ranges": [[{"subnet": network.pod_cidr, "gateway": network.gateway.to_string()}]],
                "routes": [{"dst": network.service_cidr}],
            },
        }],
    })
    .to_string()
}

/// The kubelet's configuration for this machine (cgroup v1, no swap check, nothing outside
/// the node's directory, no firewall rules) and the node's own addresses.
fn kubelet_config(layout: &Layout, network: &Network, port: u16, healthz_port: u16) -> String {
    let socket = format!("unix://{}", layout.containerd_socket.display());
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 only; the kubelet refuses it unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
# No kubepods/QoS hierarchy to create and enforce on a shared test machine.
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
# Pods get no resolv.conf from the host: nothing in the tests resolves names.
resolvConf: ""
# Never touch the machine's firewall (KUBE-FIREWALL and friends).
makeIPTablesUtilChains: false
containerRuntimeEndpoint: {socket}
imageServiceEndpoint: {socket}
podLogsDir: {pod_logs}
volumePluginDir: {volume_plugins}
address: {address}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
registerNode: true
serializeImagePulls: false
# The machine's disk is shared with builds and may be 90 % full: never evict the tests' pods
# or delete their images for it (the defaults evict below 10 % free and collect images above
# 85 % used).
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1Gi
  imagefs.available: 1Gi
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
"#,
        pod_logs = layout.pod_logs_dir.display(),
        volume_plugins = layout.volume_plugin_dir.display(),
        address = network.gateway,
        ca = layout.ca_file.display(),
    )
}

fn kubeconfig(url: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: node
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: test
  context:
    cluster: test
    user: node
current-context: test
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// Starts the reaper with its log in the node's directory (moved next to the control
/// plane's logs later) and waits until it has recorded the machine's settings.
fn spawn_reaper(dir: &Path, bin_dir: &Path) -> Result<Reaper, String> {
    let log = dir.join("node-reaper.log");
    let out = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(REAPER)
        .arg("node-reaper")
        .env("NODE_DIR", dir)
        .env("NODE_BIN", bin_dir)
        .env("NODE_SOCK", dir.join("containerd.sock"))
        .env("MACHINE_STATE", MACHINE_STATE)
        .env("SYSCTLS", SYSCTLS)
        .env("SHARED_DIRS", SHARED_DIRS)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting the node's reaper via sh: {e}"))?;
    let stdin = child.stdin.take();
    let ready = dir.join("reaper.ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            return Err(format!(
                "the node's reaper did not start: {}",
                fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Reaper { child, stdin, log })
}

/// Claims the first free network number by creating its bridge (atomic: a concurrent test
/// binary gets "File exists" and moves on), tells the reaper, and gives the bridge its two
/// addresses.
fn claim_network(reaper: &mut Reaper) -> Result<Network, String> {
    let span = NETWORK_NUMBERS.end() - NETWORK_NUMBERS.start() + 1;
    let first = std::process::id() % span;
    for i in 0..span {
        let network = Network::new(NETWORK_NUMBERS.start() + (first + i) % span);
        let out = Command::new("ip")
            .args(["link", "add", &network.bridge, "type", "bridge"])
            .output()
            .map_err(|e| format!("running ip: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("File exists") {
                continue;
            }
            return Err(format!(
                "ip link add {} type bridge: {stderr}",
                network.bridge
            ));
        }
        reaper.tell(&format!("bridge {} {}", network.bridge, network.cni_name()))?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", network.gateway),
            "dev",
            &network.bridge,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/32", network.cluster_ip),
            "dev",
            &network.bridge,
        ])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        return Ok(network);
    }
    Err(format!(
        "no free network: bridges psi-br{NETWORK_NUMBERS:?} all exist"
    ))
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ctr(bin_dir: &Path, socket: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin_dir.join("ctr"))
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .map_err(|e| format!("running ctr: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ctr {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Starts `bin_dir/name args...` logging to `log_dir/name.log`, and tells the reaper its pid.
fn spawn(
    servers: &mut Vec<Server>,
    reaper: &mut Reaper,
    name: &'static str,
    bin_dir: &Path,
    log_dir: &Path,
    args: &[String],
    path: &str,
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
    let child = Command::new(bin_dir.join(name))
        .args(args)
        .env("PATH", path)
        // Registries and the apiserver are on this machine: never through a proxy.
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {name}: {e}"))?;
    let pid = child.id();
    servers.push(Server { name, child, log });
    reaper.tell(&format!("server {name} {pid}"))
}

fn check_running(servers: &mut [Server]) -> Result<(), String> {
    let exited = servers.iter_mut().find_map(|s| match s.child.try_wait() {
        Ok(Some(status)) => Some(format!("{} exited ({status})", s.name)),
        _ => None,
    });
    match exited {
        Some(what) => Err(format!(
            "{what}\n{}",
            tails(servers.iter().map(|s| s.log.as_path()), 40)
        )),
        None => Ok(()),
    }
}

fn wait_until(
    servers: &mut [Server],
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        check_running(servers).map_err(|e| format!("waiting for {what}: {e}"))?;
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {START_TIMEOUT:?} waiting for {what}; last error: {last}\n{}",
                tails(servers.iter().map(|s| s.log.as_path()), 40)
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn tails<'a>(logs: impl Iterator<Item = &'a Path>, lines: usize) -> String {
    let mut out = String::new();
    for log in logs {
        let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read: {e})"));
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        out.push_str(&format!(
            "---- {} (last {} lines) ----\n",
            log.display(),
            all.len() - from
        ));
        for line in &all[from..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
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
        .unwrap_or_else(|| "panic while starting the node".to_string())
}
