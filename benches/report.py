#!/usr/bin/env python3
"""Turns one `make bench` run into target/bench/report.md: target/bench/load.json (benches/
load.py), criterion's estimates (target/criterion, benches/core.rs) and
target/bench/apiserver.json (benches/apiserver.rs), with every injector figure beside the
floor's as a ratio, and the issue's targets checked. Prints the report too."""

import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "target/bench"
OURS = "pullsecret-injector"
FLOOR = "floor_server"


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def ms(v):
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def kib(v):
    return f"{v / 1024:.1f}"


def pairs(results, key):
    """Pairs each injector result with the floor's result for the same `key`."""
    floor = {key(r): r for r in results if r["server"] == FLOOR}
    return [(r, floor.get(key(r))) for r in results if r["server"] == OURS]


def machine():
    cpu = next((line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    mem = next(line.split(":", 1)[1].strip()
               for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores, {cpu}; {mem} RAM; Linux {platform.release()}; {rustc}; "
            f"commit {commit}{' with uncommitted src/ changes' if dirty else ''}")


def latency_table(load):
    lines = ["| fixture | req/resp bytes | rate/s | ours p50 | ours p99 | ours p99.9 | ours max "
             "| floor p50 | floor p99 | floor p99.9 | floor max | p99 ratio | p99.9 ratio "
             "| ours CPU µs/req | floor CPU µs/req | CPU ratio | errors ours/floor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fixtures = load["fixtures"]
    for ours, floor in pairs(load["latency"], lambda r: (r["fixture"], r["rate"])):
        f = fixtures[ours["fixture"]]
        lines.append(
            f"| {ours['fixture']} | {f['request_bytes']}/{f['response_bytes']} | {ours['rate']} "
            f"| {ms(ours['p50_ms'])} | {ms(ours['p99_ms'])} | {ms(ours['p999_ms'])} "
            f"| {ms(ours['max_ms'])} | {ms(floor['p50_ms'])} | {ms(floor['p99_ms'])} "
            f"| {ms(floor['p999_ms'])} | {ms(floor['max_ms'])} "
            f"| {ratio(ours['p99_ms'], floor['p99_ms'])} "
            f"| {ratio(ours['p999_ms'], floor['p999_ms'])} "
            f"| {ours['cpu_us_per_request']:.1f} | {floor['cpu_us_per_request']:.1f} "
            f"| {ratio(ours['cpu_us_per_request'], floor['cpu_us_per_request'])} "
            f"| {ours['errors']}/{floor['errors']} |")
    return "\n".join(lines)


def throughput_table(load):
    lines = ["| fixture | connections | ours req/s | floor req/s | ratio | ours CPU µs/req "
             "| floor CPU µs/req | ratio | server core busy ours/floor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ours, floor in pairs(load["throughput"], lambda r: r["fixture"]):
        conns = ours["flags"][ours["flags"].index("-c") + 1]
        lines.append(
            f"| {ours['fixture']} | {conns} | {ours['rps']:.0f} | {floor['rps']:.0f} "
            f"| {ratio(ours['rps'], floor['rps'])} | {ours['cpu_us_per_request']:.1f} "
            f"| {floor['cpu_us_per_request']:.1f} "
            f"| {ratio(ours['cpu_us_per_request'], floor['cpu_us_per_request'])} "
            f"| {ours['cpu_utilization']:.0%}/{floor['cpu_utilization']:.0%} |")
    return "\n".join(lines)


def handshake_table(load):
    by = {r["server"]: r for r in load["handshakes"]}
    ours, floor = by[OURS], by[FLOOR]
    keepalive = {r["server"]: r for r in load["throughput"] if r["fixture"] == "typical"}
    rows = ["| | ours | floor | ratio |", "|---|---:|---:|---:|",
            f"| new connections/s, oha `--disable-keepalive -c 16` (TLS 1.3, resumed "
            f"from oha's session cache, + one typical review each) "
            f"| {ours['rps']:.0f} | {floor['rps']:.0f} | {ratio(ours['rps'], floor['rps'])} |",
            f"| server CPU µs per connection "
            f"| {ours['cpu_us_per_request']:.1f} | {floor['cpu_us_per_request']:.1f} "
            f"| {ratio(ours['cpu_us_per_request'], floor['cpu_us_per_request'])} |"]
    if OURS in keepalive and FLOOR in keepalive:
        o = ours["cpu_us_per_request"] - keepalive[OURS]["cpu_us_per_request"]
        f = floor["cpu_us_per_request"] - keepalive[FLOOR]["cpu_us_per_request"]
        rows.append(f"| of which the connection (minus a keep-alive review) "
                    f"| {o:.1f} | {f:.1f} | {ratio(o, f)} |")
    rows.append(f"| p99 / max latency ms | {ms(ours['p99_ms'])} / {ms(ours['max_ms'])} "
                f"| {ms(floor['p99_ms'])} / {ms(floor['max_ms'])} | |")
    full = {r["server"]: r for r in load.get("full_handshakes", [])}
    if OURS in full and FLOOR in full:
        o, f = full[OURS], full[FLOOR]
        rows.append(f"| full handshakes/s, one at a time, no resumption (openssl s_time -new) "
                    f"| {o['rate']:.0f} | {f['rate']:.0f} | {ratio(o['rate'], f['rate'])} |")
        rows.append(f"| server CPU µs per full handshake "
                    f"| {o['cpu_us_per_handshake']:.1f} | {f['cpu_us_per_handshake']:.1f} "
                    f"| {ratio(o['cpu_us_per_handshake'], f['cpu_us_per_handshake'])} |")
    return "\n".join(rows)


def memory_table(load):
    by = {r["server"]: r for r in load["memory"]}
    ours, floor = by[OURS], by[FLOOR]
    rows = ["| MiB | ours | floor | ratio |", "|---|---:|---:|---:|"]
    for label, key in [("VmRSS idle (1 s after ready)", "idle_rss_kib"),
                       ("VmRSS after the requests", "rss_kib"),
                       ("VmHWM (peak) after the requests", "hwm_kib")]:
        rows.append(f"| {label} | {kib(ours[key])} | {kib(floor[key])} "
                    f"| {ratio(ours[key], floor[key])} |")
    rows.append(f"| requests (typical, keep-alive) / req/s | {ours['ok']} / {ours['rps']:.0f} "
                f"| {floor['ok']} / {floor['rps']:.0f} | |")
    return "\n".join(rows)


def criterion_estimates():
    """full_id -> median ns, from criterion's saved estimates."""
    found = {}
    for bench in (ROOT / "target/criterion").glob("**/new/benchmark.json"):
        estimates = bench.with_name("estimates.json")
        if not estimates.is_file():
            continue
        meta = json.loads(bench.read_text())
        found[meta["full_id"]] = json.loads(estimates.read_text())["median"]["point_estimate"]
    return found


def fmt_ns(ns):
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns / 1e6:.2f} ms"


def criterion_table(est):
    rows = ["| benchmark | median |", "|---|---:|"]
    rows += [f"| {name} | {fmt_ns(ns)} |" for name, ns in sorted(est.items())]
    return "\n".join(rows)


def apiserver_table(api):
    rows = ["| setup | p50 ms | p99 ms | mean ms | max ms |", "|---|---:|---:|---:|---:|"]
    rows += [f"| {s['name']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['mean_ms']:.2f} "
             f"| {s['max_ms']:.2f} |" for s in api["setups"]]
    by = {s["id"]: s for s in api["setups"]}
    rows += ["", "| added latency | p50 ms | p99 ms |", "|---|---:|---:|"]
    for label, a, b in [("allow-only webhook over no webhook", "allow-only", "none"),
                        ("patching allow-only webhook over allow-only", "allow-patch",
                         "allow-only"),
                        ("injector over no webhook", "ours", "none"),
                        ("injector over allow-only webhook", "ours", "allow-only"),
                        ("injector over patching allow-only webhook", "ours", "allow-patch")]:
        if a not in by or b not in by:
            continue
        rows.append(f"| {label} | {by[a]['p50_ms'] - by[b]['p50_ms']:+.2f} "
                    f"| {by[a]['p99_ms'] - by[b]['p99_ms']:+.2f} |")
    return "\n".join(rows)


def verdict(ok):
    return "met" if ok else "**missed**"


def targets(load, est, api):
    rows = ["| target | measured | verdict |", "|---|---|---|"]
    cpu_points = []
    if load and "throughput" in load:
        cpu_points += [("closed loop", o, f) for o, f in
                       pairs(load["throughput"], lambda r: r["fixture"])]
    if load and "latency" in load:
        cpu_points += [(f"{o['rate']:,} req/s", o, f) for o, f in
                       pairs(load["latency"], lambda r: (r["fixture"], r["rate"]))
                       if o["rate"] == 5000]
    for how, ours, floor in cpu_points:
        if ours["fixture"] in ("typical", "large"):
            r = ours["cpu_us_per_request"] / floor["cpu_us_per_request"]
            # Issue 16: at most 2.0x at the default `info` level, one log line per review.
            rows.append(f"| CPU per review ≤ 2.0x floor (log level info), {ours['fixture']}, "
                        f"{how} | {ours['cpu_us_per_request']:.1f} vs "
                        f"{floor['cpu_us_per_request']:.1f} µs = {r:.2f}x "
                        f"| {verdict(r <= 2.0)} |")
    if load and "latency" in load:
        for r in load["latency"]:
            if r["server"] != OURS:
                continue
            if r["rate"] == 1000:
                rows.append(f"| p99 ≤ 1 ms at 1,000 req/s, {r['fixture']} "
                            f"| {ms(r['p99_ms'])} ms | {verdict(r['p99_ms'] <= 1)} |")
            if r["rate"] == 5000:
                rows.append(f"| p99.9 ≤ 5 ms at 5,000 req/s, {r['fixture']} "
                            f"| {ms(r['p999_ms'])} ms | {verdict(r['p999_ms'] <= 5)} |")
        for r in load["latency"]:
            if r["server"] == OURS and r["fixture"] == "pathological":
                rows.append(f"| 1 MB pod answered < 10 ms, end to end at {r['rate']} req/s "
                            f"| p50 {ms(r['p50_ms'])}, p99 {ms(r['p99_ms'])} ms "
                            f"| {verdict(r['p99_ms'] < 10)} |")
        patch = load["fixtures"]["pathological"]["patch"]
        rows.append(f"| 1 MB pod gets a targeted patch | `{json.dumps(patch)}` "
                    f"| {verdict(len(patch) == 1)} |")
    review = est.get("review/pathological")
    if review:
        rows.append(f"| 1 MB pod decided < 10 ms (criterion, `admission::review`) "
                    f"| {fmt_ns(review)} | {verdict(review < 10e6)} |")
    if load and "memory" in load:
        ours = next(r for r in load["memory"] if r["server"] == OURS)
        rows.append(f"| idle RSS ≤ 20 MiB | {kib(ours['idle_rss_kib'])} MiB "
                    f"| {verdict(ours['idle_rss_kib'] <= 20 * 1024)} |")
        rows.append(f"| RSS after 1M requests ≤ 32 MiB | VmHWM {kib(ours['hwm_kib'])} MiB, "
                    f"VmRSS {kib(ours['rss_kib'])} MiB | {verdict(ours['hwm_kib'] <= 32 * 1024)} |")
    if api:
        by = {s["id"]: s for s in api["setups"]}
        for floor, label in [("allow-only", "allow-only webhook"),
                             ("allow-patch", "allow-only webhook sending the same patch")]:
            if floor not in by:
                continue
            added = by["ours"]["p99_ms"] - by[floor]["p99_ms"]
            rows.append(f"| pod create p99 ≤ 2 ms over the {label} "
                        f"| {added:+.2f} ms (p99 {by['ours']['p99_ms']:.2f} vs "
                        f"{by[floor]['p99_ms']:.2f}; p50 "
                        f"{by['ours']['p50_ms'] - by[floor]['p50_ms']:+.2f}) "
                        f"| {verdict(added <= 2)} |")
    ten = {n: est.get(f"match/ten-images/{shape}/1000") for n, shape in
           [("literal", "literal"), ("mixed", "mixed"), ("glob", "glob")]}
    for shape, ns in ten.items():
        if ns:
            rows.append(f"| 1,000 patterns x 10 images < 100 µs ({shape}) | {fmt_ns(ns)} "
                        f"| {verdict(ns < 100e3)} |")
    g10, g1000 = est.get("match/one-image/glob/10"), est.get("match/one-image/glob/1000")
    if g10 and g1000:
        rows.append(f"| matching grows at most linearly (glob, 10 → 1,000 patterns = 100x) "
                    f"| {fmt_ns(g10)} → {fmt_ns(g1000)} = {g1000 / g10:.0f}x "
                    f"| {verdict(g1000 / g10 <= 100 * 1.2)} |")
    return "\n".join(rows)


def main():
    load_path, api_path = OUT / "load.json", OUT / "apiserver.json"
    load = json.loads(load_path.read_text()) if load_path.is_file() else None
    api = json.loads(api_path.read_text()) if api_path.is_file() else None
    est = criterion_estimates()
    parts = [f"# Benchmark report ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
             f"Machine: {machine()}.", ""]
    if load:
        parts += [f"Load run: {load['started']}, {load['seconds']:.0f} s; load average before "
                  f"{' '.join(load['loadavg_before'])}, after {' '.join(load['loadavg_after'])}. "
                  "Server pinned to core 0, oha to core 1, loopback, TLS 1.3 (ECDSA P-256), "
                  "HTTP/1.1. Latencies in ms, from oha with latency correction at a fixed "
                  "rate; ratio = injector ÷ floor.", ""]
    parts += ["## Targets", "", targets(load, est, api), ""]
    if load and "latency" in load:
        parts += ["## Latency at fixed rates (keep-alive)", "", latency_table(load), ""]
    if load and "throughput" in load:
        parts += ["## Maximum throughput and CPU per request (closed loop)", "",
                  throughput_table(load), ""]
    if load and "handshakes" in load:
        parts += ["## New connections (`--disable-keepalive`)", "", handshake_table(load), ""]
    if load and "memory" in load:
        parts += ["## Memory (fresh process each)", "", memory_table(load), ""]
    if api:
        parts += [f"## Pod create through kube-apiserver ({api['creates']} creates per setup, "
                  "sequential, interleaved)", "", apiserver_table(api), ""]
    if est:
        parts += ["## Micro-benchmarks (criterion, median)", "", criterion_table(est), ""]
    text = "\n".join(parts)
    (OUT / "report.md").write_text(text)
    print(text)
    print(f"written to {OUT / 'report.md'}")


if __name__ == "__main__":
    main()
