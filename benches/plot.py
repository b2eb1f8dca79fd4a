#!/usr/bin/env python3
"""The benchmarks' pictures, drawn from the JSON a run wrote (matplotlib, pinned in
benches/plot-requirements.txt, installed by `make plot-tools` into .cache/tools/):

  plot.py latency target/bench/load.json OUT.png     # ours vs the floor, latency by percentile
  plot.py scale target/scale OUT.png                 # convergence time and memory vs namespaces
  plot.py race target/bench/peers.json OUT.png       # the race, per tool
  plot.py race COMPARISON.md OUT.png                 # the same, from the race table a
                                                     # document records (a run not at hand)

benches/run.sh, benches/scale.sh and tests/peers/run.sh call it after their reports, into
target/; the pictures in docs/plots/ are copies of those of the runs the documents report.
"""

import json
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: E402

OURS = "pullsecret-injector"
FLOOR = "floor_server"
OURS_COLOR = "#1f6feb"
FLOOR_COLOR = "#8b949e"
PERCENTILES = ["p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99"]


def save(fig, out):
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # No timestamps in the file: the same run gives the same bytes.
    fig.savefig(out, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print(f"plot written to {out}")


def nines(p):
    """p50 -> 2 (1 / (1 - 0.5)), p99 -> 100: percentiles spread out on a log axis."""
    q = float(p[1:]) / 100
    return 1 / (1 - q)


def latency(load_path, out):
    load = json.loads(Path(load_path).read_text())
    points = [r for r in load.get("latency", []) if r.get("percentiles_ms")]
    shown = [(f, rate) for f in ("typical", "large") for rate in (1000, 5000)
             if any(r["fixture"] == f and r["rate"] == rate for r in points)]
    if not shown:
        sys.exit("plot latency: no latency phase with percentiles in " + str(load_path))
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.8), sharey=True,
                             squeeze=False)
    for ax, (fixture, rate) in zip(axes[0], shown):
        for server, color, label in ((OURS, OURS_COLOR, "pullsecret-injector"),
                                     (FLOOR, FLOOR_COLOR, "floor (same transport, no work)")):
            r = next((r for r in points if r["server"] == server and r["fixture"] == fixture
                      and r["rate"] == rate), None)
            if not r:
                continue
            keys = [k for k in PERCENTILES if k in r["percentiles_ms"]]
            ax.plot([nines(k) for k in keys], [r["percentiles_ms"][k] for k in keys],
                    marker="o", color=color, label=label)
        size = load["fixtures"][fixture]["request_bytes"] / 1000
        ax.set_title(f"{fixture} ({size:.1f} KB), {rate:,} reviews/s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # p75 and p95 sit too close to their neighbours on a log axis to be labelled.
        ticks = [nines(k) for k in PERCENTILES if k not in ("p75", "p95")]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda x, _: next((k for k in PERCENTILES if abs(nines(k) - x) < 1e-6), "")))
        ax.xaxis.set_minor_locator(FixedLocator([]))
        ax.set_xlabel("percentile")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("latency, ms (oha, latency-corrected)")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Latency by percentile, keep-alive, one core each ({load['started']})",
                 fontsize=10)
    save(fig, out)


def scale(directory, out):
    runs = sorted((json.loads(p.read_text()) for p in Path(directory).glob("scale-*.json")),
                  key=lambda r: r["namespaces"])
    if not runs:
        sys.exit(f"plot scale: no scale-*.json in {directory}")
    n = [r["namespaces"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.plot(n, [r["injector"]["seconds_from_start"] for r in runs], marker="o",
              color=OURS_COLOR, label="pullsecret-injector, from its start")
    left.plot(n, [r["floor"]["seconds"] for r in runs], marker="s", color=FLOOR_COLOR,
              label="floor: a bare client creating the same copies")
    left.plot(n, [1.5 * r["floor"]["seconds"] for r in runs], linestyle=":",
              color=FLOOR_COLOR, label="1.5x the floor (target)")
    rate = runs[0]["replication_rate_limit"]
    left.plot(n, [max(r["copies_expected"] - rate["burst"], 0) / rate["qps"] for r in runs],
              linestyle="--", color="#cf222e",
              label=f"the rate limit alone ({rate['qps']:g}/s, burst {rate['burst']})")
    left.set_xlabel("namespaces (half opted in, 3 copies each)")
    left.set_ylabel("seconds until every copy exists")
    left.set_title("Convergence")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    right.plot(n, [r["injector"]["rss_peak_kib"] / 1024 for r in runs], marker="o",
               color=OURS_COLOR, label="peak RSS while converging")
    right.plot(n, [r["injector"]["rss_after_idle_kib"] / 1024 for r in runs], marker="^",
               color="#54aeff", label="RSS once idle")
    right.axhline(150, linestyle=":", color="#cf222e", label="150 MiB (target)")
    right.set_xlabel("namespaces")
    right.set_ylabel("MiB")
    right.set_ylim(bottom=0)
    right.set_title("Injector memory")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle("Replication at scale, one run (make scale)", fontsize=10)
    save(fig, out)


def race_table(markdown):
    """The race rows of COMPARISON.md's table ("## 1. The race"): tool, Pods without a usable
    pull secret (n/runs), no reference, reference to a Secret created after the Pod."""
    section = markdown.split("## 1. The race", 1)[-1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or "/" not in cells[1]:
            continue
        failed, runs = cells[1].split("/")
        if not (failed.isdigit() and runs.isdigit()):
            continue
        rows.append({"tool": cells[0], "runs": int(runs), "no_reference": int(cells[2]),
                     "missing_at_creation": int(cells[3])})
    if not rows:
        sys.exit("plot race: no race table in the document")
    return rows


def race(peers_path, out):
    if str(peers_path).endswith(".md"):
        rows = race_table(Path(peers_path).read_text())
        peers = {"title": f"The race, per tool (the make peers run {Path(peers_path).name} records)"}
    else:
        peers = json.loads(Path(peers_path).read_text())
        rows = [r for r in peers["race"] if not r.get("skipped")]
    names = [r["tool"] for r in rows]
    no_reference = [r["no_reference"] for r in rows]
    later = [r["missing_at_creation"] for r in rows]
    usable = [r["runs"] - a - b for r, a, b in zip(rows, no_reference, later)]
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.7 * len(rows)))
    y = range(len(rows))
    ax.barh(y, usable, color="#2da44e", label="pod refers to a Secret that existed")
    ax.barh(y, later, left=usable, color="#d4a72c",
            label="pod refers to a Secret created after it")
    ax.barh(y, no_reference, left=[a + b for a, b in zip(usable, later)], color="#cf222e",
            label="pod has no reference (never gets one)")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"pods, of {rows[0]['runs']} races (a namespace, then at once a pod)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.set_title(peers.get("title", "The race, per tool (make peers)"), fontsize=10)
    save(fig, out)


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("latency", "scale", "race"):
        sys.exit(__doc__)
    {"latency": latency, "scale": scale, "race": race}[sys.argv[1]](sys.argv[2], sys.argv[3])


if __name__ == "__main__":
    main()
