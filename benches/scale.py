#!/usr/bin/env python3
"""Turns one `make scale` run (target/scale/scale-<namespaces>.json, benches/scale.rs) into
target/scale/report.md (or DIR/report.md: scale.py DIR): convergence beside the floor, cost per namespace, requests by verb
from the apiserver's audit log, the second start and the hand-over, the source rotation, and
the targets of issue 16 checked. Prints the report too."""

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "target/scale"
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def verdict(ok):
    return "met" if ok else "**missed**"


def mib(kib):
    return kib / 1024


def secret_writes(requests):
    """Writes to Secrets (any answer): what a resync must not make."""
    return sum(n for key, n in requests["writes"].items()
               if key.split()[1] == "secrets")


def other_writes(requests):
    return {key: n for key, n in requests["writes"].items() if key.split()[1] != "secrets"}


def p99(window):
    """A window's p99, or why there is none: its reviews all failed."""
    if window["reviews"] == 0:
        return f"none ({window['errors']} errors)"
    errors = f", {window['errors']} errors" if window["errors"] else ""
    return f"{window['p99_ms']:.2f}{errors}"


def clean(window):
    return window["reviews"] > 0 and window["errors"] == 0


def verbs(requests):
    return ", ".join(f"{k} {v}" for k, v in sorted(requests["by_verb"].items(),
                                                    key=lambda kv: -kv[1]))


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    runs = sorted((json.loads(p.read_text()) for p in out.glob("scale-*.json")),
                  key=lambda r: r["namespaces"])
    if not runs:
        raise SystemExit(f"no scale-*.json in {out}: run make scale")
    lines = [f"# Replication at scale ({time.strftime('%Y-%m-%d %H:%M %Z')})", ""]
    rate = runs[0]["replication_rate_limit"]
    lines += [f"Replication rate limit: {rate['qps']:g} requests/s, burst {rate['burst']}. "
              f"User-Agents: {', '.join(runs[0]['injector_user_agents'])}.", ""]
    cpus = runs[0].get("cpus", {})
    lines += [(f"CPUs: etcd, kube-apiserver and the bench's copy tracker on "
               f"{cpus['control_plane']}; the injector, the admission load and the rest of the "
               f"bench on {cpus['bench_and_injector']} (SCALE_PIN=0: shared)."
               if cpus.get("pinned") else "CPUs: every process on every core (not pinned)."), ""]

    lines += ["## Convergence: the injector beside the floor", "",
              "| namespaces | copies | floor s (copies/s) | injector s from start | ratio "
              "| ready s | first copy s | injector CPU s | peak RSS MiB | RSS idle MiB "
              "| admission p99 idle / converging ms | load avg before |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        i, f = r["injector"], r["floor"]
        lines.append(
            f"| {r['namespaces']:,} | {r['copies_expected']:,} "
            f"| {f['seconds']:.1f} ({f['per_second']:.0f}) | {i['seconds_from_start']:.1f} "
            f"| {i['seconds_from_start'] / f['seconds']:.2f}x | {i.get('ready_seconds', 0):.2f} "
            f"| {i['first_copy_seconds']:.1f} "
            f"| {i['cpu_seconds']:.1f} | {mib(i['rss_peak_kib']):.1f} "
            f"| {mib(i['rss_after_idle_kib']):.1f} "
            f"| {p99(i['admission_idle'])} / {p99(i['admission_converging'])} "
            f"| {' '.join(i['loadavg_before'])} |")
    lines.append("")

    lines += ["## Cost per namespace", "",
              "| namespaces | injector s / 1,000 ns | floor s / 1,000 ns | CPU ms / ns "
              "| of which replication ms / ns "
              "| requests / opted-in ns | Secret writes / opted-in ns | RSS KiB / ns (peak) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        i, f = r["injector"], r["floor"]
        n, opted = r["namespaces"], r["opted_in"]
        lines.append(
            f"| {n:,} | {1000 * i['seconds_from_start'] / n:.2f} | {1000 * f['seconds'] / n:.2f} "
            f"| {1000 * i['cpu_seconds'] / n:.2f} | {1000 * i['cluster_cpu_seconds'] / n:.2f} "
            f"| {i['requests']['total'] / opted:.2f} "
            f"| {secret_writes(i['requests']) / opted:.2f} | {i['rss_peak_kib'] / n:.2f} |")
    lines.append("")

    lines += ["## Requests by verb (the apiserver's audit log, our User-Agents)", "",
              "| namespaces | phase | requests | by verb |", "|---:|---|---:|---|"]
    for r in runs:
        lines.append(f"| {r['namespaces']:,} | floor (bare client) | {r['floor']['requests']['total']} "
                     f"| {verbs(r['floor']['requests'])} |")
        lines.append(f"| {r['namespaces']:,} | injector converging | "
                     f"{r['injector']['requests']['total']} | {verbs(r['injector']['requests'])} |")
    lines.append("")

    handovers = [r for r in runs if "restart_and_handover" in r]
    for r in handovers:
        h = r["restart_and_handover"]
        lines += [f"## Second start and hand-over at {r['namespaces']:,} namespaces", "",
                  "| | Secret writes | other writes | requests | by verb | every namespace synced after |",
                  "|---|---:|---|---:|---|---:|"]
        for label, p in (("second start on the converged cluster", h["restart"]),
                         ("leader hand-over (standby takes the Lease)", h["handover"])):
            lines.append(
                f"| {label} | {secret_writes(p['requests'])} | {other_writes(p['requests']) or '–'} "
                f"| {p['requests']['total']} | {verbs(p['requests'])} "
                f"| {p['seconds_to_sync_every_namespace']:.1f} s |")
        lines += ["", f"New leader after {h['handover']['seconds_to_new_leader']:.1f} s "
                  f"(old leader: {h['handover']['old_leader_exit']}).", ""]

    rotations = [r for r in runs if "rotation" in r]
    for r in rotations:
        o = r["rotation"]
        rr = o["replication_rate"]
        lines += [f"## Source rotation at {r['namespaces']:,} namespaces", "",
                  f"The 3 sources got new bytes; every one of the {o['copies']:,} copies carried "
                  f"them after **{o['seconds']:.1f} s** ({o['per_second']:.0f} copies/s). "
                  f"The replication client sent {rr['requests']} requests over {rr['seconds']:.1f} s "
                  f"({rr['per_second']:.1f}/s), at most {rr['most_in_1s']} in any second and "
                  f"{rr['most_in_10s']} in any 10 s (limit: {o['rate_limit']['qps']:g}/s, burst "
                  f"{o['rate_limit']['burst']}). Requests: {verbs(o['requests'])}. Injector CPU "
                  f"{o['cpu_seconds']:.1f} s, peak RSS {mib(o['rss_peak_kib']):.1f} MiB. Admission "
                  f"p99 before / during: {p99(o['admission_before'])} / "
                  f"{p99(o['admission_rotating'])} ms.", ""]

    lines += ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    largest = runs[-1]
    i, f = largest["injector"], largest["floor"]
    ratio = i["seconds_from_start"] / f["seconds"]
    lines.append(f"| converge ≤ 1.5x the floor at {largest['namespaces']:,} namespaces "
                 f"| {i['seconds_from_start']:.1f} s vs {f['seconds']:.1f} s = {ratio:.2f}x "
                 f"| {verdict(ratio <= 1.5)} |")
    peak = mib(i["rss_peak_kib"])
    lines.append(f"| RSS < 150 MiB at {largest['namespaces']:,} namespaces "
                 f"| peak {peak:.1f} MiB | {verdict(peak < 150)} |")
    for r in runs:
        i = r["injector"]
        idle, busy = i["admission_idle"]["p99_ms"], i["admission_converging"]["p99_ms"]
        ok = clean(i["admission_idle"]) and clean(i["admission_converging"])
        lines.append(f"| admission p99 while converging ≤ 2x idle, {r['namespaces']:,} namespaces "
                     f"| {p99(i['admission_converging'])} vs {p99(i['admission_idle'])} ms = "
                     f"{busy / idle if idle else float('inf'):.2f}x "
                     f"| {verdict(ok and busy <= 2 * idle)} |")
    per = [r["injector"]["seconds_from_start"] / r["namespaces"] for r in runs]
    # Replication's CPU (the cluster thread): the whole process's also counts the admission
    # load's reviews, 100 a second for as long as convergence lasts, whatever the size.
    cpu = [r["injector"]["cluster_cpu_seconds"] / r["namespaces"] for r in runs]
    req = [r["injector"]["requests"]["total"] / r["opted_in"] for r in runs]
    for label, values, unit in (("time", per, "ms/ns"), ("replication CPU", cpu, "ms/ns"),
                                ("requests", req, "/opted-in ns")):
        scale = 1000 if unit == "ms/ns" else 1
        spread = max(values) / min(values) if min(values) > 0 else float("inf")
        lines.append(f"| cost per namespace flat ({label}) "
                     f"| {' → '.join(f'{v * scale:.2f}' for v in values)} {unit} "
                     f"(max/min {spread:.2f}) | {verdict(spread <= 1.25)} |")
    for r in handovers:
        h = r["restart_and_handover"]
        for label, p in (("second start", h["restart"]), ("hand-over", h["handover"])):
            n = secret_writes(p["requests"])
            lines.append(f"| zero Secret writes, {label} at {r['namespaces']:,} namespaces "
                         f"| {n} | {verdict(n == 0)} |")
    for r in rotations:
        o = r["rotation"]
        rr = o["replication_rate"]
        limit = o["rate_limit"]
        ok = rr["most_in_1s"] <= limit["qps"] + limit["burst"] and \
            rr["most_in_10s"] <= 10 * limit["qps"] + limit["burst"]
        lines.append(f"| rotation at {r['namespaces']:,}: the client-side limit holds "
                     f"| ≤ {rr['most_in_1s']} in 1 s, ≤ {rr['most_in_10s']} in 10 s "
                     f"(qps {limit['qps']:g}, burst {limit['burst']}) | {verdict(ok)} |")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print(text)
    print(f"written to {out / 'report.md'}")


if __name__ == "__main__":
    main()
