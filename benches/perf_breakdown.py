#!/usr/bin/env python3
"""Attributes perf samples to the server's components by the frames on their stacks, first
rule that matches wins (kernel socket work, then ours and the libraries'). Input: the output
of `perf script -F ip,sym` on a `perf record --call-graph dwarf` profile (benches/profile.py).

  perf_breakdown.py PERF_SCRIPT_OUTPUT [CPU_US_PER_REQUEST]
"""

import collections
import sys

KERNEL = [
    ("kernel: TCP send (incl. waking the reader)", {"tcp_sendmsg", "tcp_sendmsg_locked", "sock_sendmsg", "do_writev", "sock_write_iter"}),
    ("kernel: TCP receive", {"tcp_recvmsg", "sock_recvmsg", "sock_read_iter", "tcp_recvmsg_locked"}),
    ("kernel: write log line (/dev/null)", {"write_null", "ksys_write"}),
    ("kernel: epoll/futex/scheduling", {"do_epoll_wait", "ep_poll", "futex_wait", "futex_wake", "do_futex", "__schedule", "schedule"}),
    ("kernel: accept/other syscalls", {"do_syscall_64"}),
]
RULES = [
    ("logging (tracing-subscriber fmt)", lambda h, f: h.startswith(("tracing_subscriber", "tracing_core", "tracing::"))),
    ("decode the request (serde_json into kube's AdmissionRequest<PodView>)", lambda h, f: "serde_json::de" in h or "Deserialize" in h or "serde_json::read" in h or h.startswith(("pullsecret_injector::admission::decode", "pullsecret_injector::admission::object_meta_view")) or "visit_map" in h or "visit_seq" in h),
    ("drop the decoded review", lambda h, f: h.startswith("core::ptr::drop_in_place") and any(k in f for k in ("k8s_openapi", "kube_core", "pullsecret_injector::admission", "serde_json::value", "BTreeMap"))),
    ("encode the response (serde_json)", lambda h, f: "serde_json::ser" in h or "Serialize" in h),
    ("metrics (prometheus-client)", lambda h, f: h.startswith(("prometheus_client", "pullsecret_injector::metrics"))),
    ("decision: images, matching, patch", lambda h, f: h.startswith(("pullsecret_injector::admission", "pullsecret_injector::matching", "pullsecret_injector::image", "pullsecret_injector::patch", "json_patch"))),
    ("TLS records (rustls, ring AES-GCM)", lambda h, f: h.startswith(("rustls::", "tokio_rustls::", "ring_core_", "ring::"))),
    ("server handler (server.rs: body, log fields, response)", lambda h, f: "pullsecret_injector::server" in h and "serve_tls" not in h),
    ("axum/tower", lambda h, f: "axum::" in h or "axum_core::" in h or h.startswith("tower")),
    ("HTTP/1 (hyper)", lambda h, f: h.startswith(("hyper::", "hyper_util::", "httparse", "http::"))),
    ("tokio runtime", lambda h, f: h.startswith(("tokio::", "mio::"))),
]

def head(frame):
    f = frame.lstrip("<")
    i = f.find("<")
    return f if i < 0 else f[:i]

def classify(stack):
    names = set(stack)
    for name, syms in KERNEL[:-1]:
        if names & syms: return name
    heads = [(head(f), f) for f in stack]
    for name, rule in RULES:
        if any(rule(h, f) for h, f in heads): return name
    if names & KERNEL[-1][1]: return KERNEL[-1][0]
    return "other"


def stacks(path):
    """The samples of `perf script -F ip,sym` output, each a list of symbols, leaf first."""
    stack = []
    with open(path, errors="replace") as lines:
        for line in lines:
            line = line.strip()
            if not line:
                if stack:
                    yield stack
                stack = []
                continue
            parts = line.split(None, 1)
            stack.append(parts[1] if len(parts) > 1 else parts[0])
    if stack:
        yield stack


def main():
    counts = collections.Counter()
    for stack in stacks(sys.argv[1]):
        counts[classify(stack)] += 1
    total = sum(counts.values())
    us = float(sys.argv[2]) if len(sys.argv) > 2 else None
    for name, n in counts.most_common():
        print(f"{n / total:6.1%}  {f'{us * n / total:6.1f} µs  ' if us else ''}{name}")
    print(f"samples {total}")


if __name__ == "__main__":
    main()
