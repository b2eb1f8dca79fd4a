#!/usr/bin/env python3
"""Where a server's CPU goes per request: runs the injector or the floor server pinned to core
0 under closed-loop oha load (core 1), records it with `perf record --call-graph dwarf`, and
attributes the samples to components (benches/perf_breakdown.py), scaled by the CPU per
request measured in the same run. Needs what `make bench` builds first.

  python3 benches/profile.py ours typical        # or: floor, any fixture name
"""

import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (benches/load.py: servers, oha, /proc accounting)

OHA = load.ROOT / ".cache/tools/oha-1.16.0/bin/oha"


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "ours"
    fixture = sys.argv[2] if len(sys.argv) > 2 else "typical"
    seconds = 8
    args = load.argparse.Namespace(
        oha=OHA, server=load.ROOT / "target/release/pullsecret-injector",
        floor=load.ROOT / "target/release/examples/floor_server", certs=load.OUT / "certs",
        server_cpu=0, load_cpu=1)
    ours = load.start_ours(args, 0)
    try:
        responses = load.capture_responses(ours)
    finally:
        ours.stop()
    server = (load.start_ours(args, 0) if which == "ours"
              else load.start_floor(args, 0, responses[fixture]["path"]))
    data = load.OUT / f"perf-{which}-{fixture}.data"
    try:
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-F", "1999", "--call-graph", "dwarf,32768",
             "-p", str(server.pid), "-o", str(data), "--", "sleep", str(seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = load.oha(args, server, fixture, ["-z", f"{seconds - 1}s", "-c", "16"], 120)
        perf.wait(timeout=60)
    finally:
        server.stop()
    print(f"{which} {fixture}: {r['rps']:.0f} req/s, {r['cpu_us_per_request']:.1f} µs CPU per "
          f"request while recorded (perf's own overhead included)")
    script = load.OUT / f"perf-{which}-{fixture}.txt"
    with open(script, "w") as out:
        subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym"], stdout=out,
                       stderr=subprocess.DEVNULL, check=True)
    subprocess.run([sys.executable, str(Path(__file__).with_name("perf_breakdown.py")),
                    str(script), str(r["cpu_us_per_request"])], check=True)


if __name__ == "__main__":
    main()
