#!/usr/bin/env python3
"""The load half of `make bench` (benches/run.sh runs it after building): the injector and the
floor server (examples/floor_server.rs) side by side on loopback, each pinned to one core with
the load generator (oha) pinned to the other. Writes target/bench/load.json, which
benches/report.py turns into the markdown table.

Phases, each bounded in requests and time:
  latency     fixed rate (oha -q, --latency-correction), HTTP/1.1 keep-alive, every fixture
  throughput  closed loop (oha -c N, no rate): max requests/s and server CPU per request
              (utime+stime from /proc/<pid>/stat, divided by the responses)
  handshakes  closed loop with --disable-keepalive: one TLS handshake per request
  memory      a fresh process each: VmRSS idle, then VmRSS and VmHWM after a million requests

The floor answers every request with the injector's own response for that fixture (captured
first), so both send the same bytes. Ports come from binding 127.0.0.1:0 and releasing it just
before the server binds it; a clash fails the start, and the run stops with a message.
"""

import argparse
import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "target/bench"
FIXTURES = OUT / "fixtures"
RUN = OUT / "run"
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
# Fixtures that must come back patched; the others must come back allowed and unpatched.
PATCHED = ["minimal", "typical", "large", "pathological"]
NOOP = ["noop-present", "noop-nomatch"]
NORMAL = ["minimal", "typical", "large", "noop-present", "noop-nomatch"]


def log(message):
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_us(pid):
    """utime + stime of the whole process (all its threads), in microseconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * TICK_US


def vm_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class Server:
    """A server process pinned to one core."""

    def __init__(self, name, argv, cpu, port, ca):
        self.name = name
        self.port = port
        self.ca = ca
        self.proc = subprocess.Popen(["taskset", "-c", str(cpu), *argv],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.wait_ready()

    @property
    def pid(self):
        return self.proc.pid

    def context(self):
        return ssl.create_default_context(cafile=str(self.ca))

    def connection(self):
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(),
                                           timeout=30)

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited with {self.proc.returncode} while starting "
                         f"(port {self.port} taken? run again)")
            try:
                conn = self.connection()
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        sys.exit(f"{self.name} did not answer on 127.0.0.1:{self.port} within {timeout} s")

    def post(self, body):
        conn = self.connection()
        conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        if response.status != 200:
            sys.exit(f"{self.name}: POST /mutate answered {response.status}: {data[:300]!r}")
        return data

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_ours(args, cpu):
    port = free_port()
    argv = [str(args.server), "serve", "--config", str(ROOT / "examples/config.yaml"),
            "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{free_port()}",
            "--tls-cert-file", str(args.certs / "tls.crt"),
            "--tls-key-file", str(args.certs / "tls.key")]
    return Server("pullsecret-injector", argv, cpu, port, args.certs / "ca.crt")


def start_floor(args, cpu, response):
    port = free_port()
    argv = [str(args.floor), "--listen", f"127.0.0.1:{port}",
            "--cert", str(args.certs / "tls.crt"), "--key", str(args.certs / "tls.key"),
            "--response", str(response)]
    return Server("floor_server", argv, cpu, port, args.certs / "ca.crt")


def decode_patch(field):
    """kube-core writes the patch bytes as a JSON array of numbers (Go's decoder takes that
    for a []byte as well as the usual base64 string)."""
    raw = bytes(field) if isinstance(field, list) else base64.b64decode(field)
    return json.loads(raw)


def capture_responses(ours):
    """The injector's answer per fixture: checked, and kept for the floor to replay."""
    responses = {}
    (RUN / "responses").mkdir(parents=True, exist_ok=True)
    for name in PATCHED + NOOP:
        body = (FIXTURES / f"{name}.json").read_bytes()
        data = ours.post(body)
        review = json.loads(data)["response"]
        if not review.get("allowed"):
            sys.exit(f"{name}: the injector did not allow the pod: {review}")
        patch = decode_patch(review["patch"]) if "patch" in review else None
        if name in PATCHED:
            if not patch or len(patch) != 1 or patch[0]["path"] != "/spec/imagePullSecrets":
                sys.exit(f"{name}: expected one add of /spec/imagePullSecrets, got {patch}")
        elif patch is not None:
            sys.exit(f"{name}: expected no patch, got {patch}")
        path = RUN / "responses" / f"{name}.json"
        path.write_bytes(data)
        responses[name] = {"path": path, "request_bytes": len(body), "response_bytes": len(data),
                           "patch": patch}
    return responses


def oha(args, server, fixture, flags, timeout):
    """One oha run against `server`; returns its summary with the server's CPU time."""
    url = f"https://127.0.0.1:{server.port}/mutate"
    cmd = ["taskset", "-c", str(args.load_cpu), str(args.oha), "--no-tui", "--worker-threads", "1",
           "--output-format", "json", "--cacert", str(server.ca), "--http-version", "1.1",
           "-m", "POST", "-T", "application/json", "-D", str(FIXTURES / f"{fixture}.json"),
           "--wait-ongoing-requests-after-deadline", *flags, url]
    before = cpu_us(server.pid)
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"oha did not finish within {timeout} s: {' '.join(cmd)}")
    wall = time.monotonic() - started
    cpu = cpu_us(server.pid) - before
    if done.returncode != 0:
        sys.exit(f"oha failed ({done.returncode}): {done.stderr[-2000:]}\n{' '.join(cmd)}")
    result = json.loads(done.stdout)
    codes = {str(k): v for k, v in result.get("statusCodeDistribution", {}).items()}
    ok = codes.get("200", 0)
    errors = sum(v for k, v in codes.items() if k != "200") + sum(
        result.get("errorDistribution", {}).values())
    percentiles = result["latencyPercentiles"]
    summary = result["summary"]
    return {
        "server": server.name, "fixture": fixture, "flags": flags,
        "ok": ok, "errors": errors, "error_kinds": result.get("errorDistribution", {}),
        "seconds": summary["total"], "wall_seconds": wall,
        "rps": ok / summary["total"] if summary["total"] else 0.0,
        "p50_ms": percentiles["p50"] * 1e3, "p99_ms": percentiles["p99"] * 1e3,
        "percentiles_ms": {k: v * 1e3 for k, v in percentiles.items() if v is not None},
        "p999_ms": percentiles["p99.9"] * 1e3, "max_ms": summary["slowest"] * 1e3,
        "cpu_us": cpu, "cpu_us_per_request": cpu / ok if ok else None,
        "cpu_utilization": cpu / 1e6 / wall,
    }


def show(r):
    log(f"  {r['server']:<20} {r['fixture']:<13} {' '.join(r['flags']):<42} "
        f"{r['rps']:>8.0f}/s  p50 {r['p50_ms']:.3f}  p99 {r['p99_ms']:.3f}  "
        f"p99.9 {r['p999_ms']:.3f}  max {r['max_ms']:.3f} ms  "
        f"cpu {r['cpu_us_per_request'] or 0:.1f} us/req  errors {r['errors']}")
    return r


def latency_phase(args, ours, responses):
    results = []
    plan = [(f, args.rates) for f in NORMAL] + [("pathological", args.pathological_rates)]
    for fixture, rates in plan:
        floor = start_floor(args, args.server_cpu, responses[fixture]["path"])
        try:
            for rate in rates:
                flags = ["-q", str(rate), "--latency-correction", "-z", f"{args.duration}s",
                         "-c", str(args.connections)]
                for server in (ours, floor):
                    r = show(oha(args, server, fixture, flags, args.duration * 3 + 60))
                    r["rate"] = rate
                    results.append(r)
        finally:
            floor.stop()
    return results


def throughput_phase(args, ours, responses):
    results = []
    for fixture in NORMAL + ["pathological"]:
        conns = args.closed_connections if fixture != "pathological" else 4
        flags = ["-z", f"{args.throughput_duration}s", "-c", str(conns)]
        floor = start_floor(args, args.server_cpu, responses[fixture]["path"])
        try:
            for server in (ours, floor):
                results.append(show(oha(args, server, fixture, flags,
                                        args.throughput_duration * 3 + 60)))
        finally:
            floor.stop()
    return results


def full_handshakes(args, server):
    """Full TLS 1.3 handshakes, one at a time, no resumption and no request (openssl s_time
    -new): what a client without a session cache, like the apiserver's, costs the server."""
    cmd = ["taskset", "-c", str(args.load_cpu), "openssl", "s_time", "-connect",
           f"127.0.0.1:{server.port}", "-new", "-time", str(args.throughput_duration),
           "-CAfile", str(server.ca)]
    before = cpu_us(server.pid)
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=args.throughput_duration * 3 + 30)
    wall = time.monotonic() - started
    cpu = cpu_us(server.pid) - before
    count = next((int(line.split()[0]) for line in done.stdout.splitlines()
                  if "connections in" in line and "real seconds" in line), 0)
    if done.returncode != 0 or not count:
        sys.exit(f"openssl s_time failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")
    r = {"server": server.name, "handshakes": count, "seconds": wall, "rate": count / wall,
         "cpu_us_per_handshake": cpu / count}
    log(f"  {server.name:<20} full handshakes (openssl s_time -new): {r['rate']:.0f}/s, "
        f"{r['cpu_us_per_handshake']:.1f} us CPU each")
    return r


def handshake_phase(args, ours, responses):
    flags = ["--disable-keepalive", "-z", f"{args.throughput_duration}s",
             "-c", str(args.closed_connections)]
    floor = start_floor(args, args.server_cpu, responses["typical"]["path"])
    try:
        with_request = [show(oha(args, server, "typical", flags,
                                 args.throughput_duration * 3 + 60)) for server in (ours, floor)]
        full = [full_handshakes(args, server) for server in (ours, floor)]
        return with_request, full
    finally:
        floor.stop()


def memory_phase(args, responses):
    results = []
    for start in (lambda: start_ours(args, args.server_cpu),
                  lambda: start_floor(args, args.server_cpu, responses["typical"]["path"])):
        server = start()
        try:
            time.sleep(1)
            idle = vm_kib(server.pid, "VmRSS")
            log(f"  {server.name}: idle VmRSS {idle / 1024:.1f} MiB; "
                f"{args.million} requests (typical, -c {args.closed_connections})")
            flags = ["-n", str(args.million), "-c", str(args.closed_connections)]
            r = show(oha(args, server, "typical", flags, args.million_timeout))
            r.update(idle_rss_kib=idle, rss_kib=vm_kib(server.pid, "VmRSS"),
                     hwm_kib=vm_kib(server.pid, "VmHWM"))
            log(f"  {server.name}: after: VmRSS {r['rss_kib'] / 1024:.1f} MiB, "
                f"VmHWM {r['hwm_kib'] / 1024:.1f} MiB")
            results.append(r)
        finally:
            server.stop()
    return results


def loadavg():
    return Path("/proc/loadavg").read_text().split()[:3]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--oha", type=Path, required=True)
    parser.add_argument("--server", type=Path, default=ROOT / "target/release/pullsecret-injector")
    parser.add_argument("--floor", type=Path, default=ROOT / "target/release/examples/floor_server")
    parser.add_argument("--certs", type=Path, default=OUT / "certs")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--duration", type=int, default=10, help="seconds per fixed-rate point")
    parser.add_argument("--throughput-duration", type=int, default=5,
                        help="seconds per closed-loop point")
    parser.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")],
                        default=[100, 1000, 5000])
    parser.add_argument("--pathological-rates", type=lambda s: [int(x) for x in s.split(",")],
                        default=[10, 100])
    parser.add_argument("--connections", type=int, default=8, help="for the fixed rates")
    parser.add_argument("--closed-connections", type=int, default=16)
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--million-timeout", type=int, default=400)
    parser.add_argument("--phases", default="latency,throughput,handshakes,memory")
    args = parser.parse_args()
    phases = args.phases.split(",")

    started = time.monotonic()
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_before": loadavg(),
              "args": {k: str(v) for k, v in vars(args).items()}}
    ours = start_ours(args, args.server_cpu)
    try:
        log(f"pullsecret-injector pid {ours.pid} on core {args.server_cpu}, "
            f"oha on core {args.load_cpu}")
        responses = capture_responses(ours)
        report["fixtures"] = {name: {k: v for k, v in r.items() if k != "path"}
                              for name, r in responses.items()}
        if "latency" in phases:
            log("latency at fixed rates (keep-alive, latency correction)")
            report["latency"] = latency_phase(args, ours, responses)
        if "throughput" in phases:
            log("maximum throughput (closed loop) and CPU per request")
            report["throughput"] = throughput_phase(args, ours, responses)
        if "handshakes" in phases:
            log("new connections (--disable-keepalive)")
            report["handshakes"], report["full_handshakes"] = handshake_phase(args, ours,
                                                                               responses)
    finally:
        ours.stop()
    if "memory" in phases:
        log("memory: idle, and after a million requests")
        report["memory"] = memory_phase(args, responses)
    report["loadavg_after"] = loadavg()
    report["seconds"] = time.monotonic() - started
    (OUT / "load.json").write_text(json.dumps(report, indent=1, default=str))
    log(f"done in {report['seconds']:.0f} s: {OUT / 'load.json'}")


if __name__ == "__main__":
    main()
