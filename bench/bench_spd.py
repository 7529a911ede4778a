"""SPD benchmark: parse + validate + compile a 10,000-rule SPD for one node of 1,000.

Prints one JSON object (last line): median CPU seconds (``time.process_time``) of each
phase over RUNS runs, the total against the 1 s target, the wall-clock total, the load
average (the development machines are shared: wall time inflates under load, CPU time
much less), the CPU of one full ``gc.collect()`` right after the phases (they pause
the cyclic collector, so part of its work is deferred to it), and a reference
measured in the same run (parsing the same number of IP addresses with the stdlib
``ipaddress`` module) so figures from different machines and moments can be compared.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipsecd.spd import NodeInfo, compile_node, load_text
from ipsecd.spd.errors import Sink
from ipsecd.spd.parser import parse
from ipsecd.spd.validate import validate

RUNS = 5
N_NODES = 1000
N_SPDADD = 9000
N_RULES = 990
N_CONNECTIONS = 10
TARGET_S = 1.0


def node_addr(i: int) -> str:
    return f"10.1.{i // 250}.{i % 250 + 1}"


def make_directory() -> list[NodeInfo]:
    roles = ("worker", "db", "edge", "cache")
    return [
        NodeInfo(
            f"n{i:04d}",
            (ipaddress.ip_address(node_addr(i)), ipaddress.ip_address(f"fd00:1::{i + 1:x}")),
            {"role": roles[i % 4], "zone": f"z{i % 3}"},
        )
        for i in range(N_NODES)
    ]


def make_spd() -> str:
    lines = [
        "defaults { policy discard; esp_trans_deflev require; dfbit copy; ecn on; }",
        "proposal ike strong aes256gcm16-prfsha384-ecp384, aes256-sha256-modp3072;",
        "proposal esp strong aes256gcm16, aes256-sha256;",
        "nodes workers label role=worker;",
        "nodes dbs label role=db;",
        "nodes edges label role=edge;",
        "nodes caches label role=cache;",
        "nodes zone0 label zone=z0;",
    ]
    conns = [
        "connection mesh { between all and all; ike strong; esp strong; }",
        "connection db { between workers and dbs; traffic tcp port 5432; mode tunnel; "
        "auth psk secret:db; }",
    ]
    groups = ("workers", "dbs", "edges", "caches", "zone0")
    for i in range(N_CONNECTIONS - len(conns)):
        a, b = groups[i % 5], groups[(i + 1) % 5]
        conns.append(f"connection c{i} {{ between {a} and {b}; traffic udp port {7000 + i}; }}")
    lines += conns
    for i in range(N_RULES):
        kind = "bypass" if i % 3 else "discard"
        lines.append(
            f"{kind} tcp from 172.16.{i // 200}.{i % 200}/32 to 172.17.0.0/16 port "
            f"{1000 + i} dir out;"
        )
    for i in range(N_SPDADD):
        a, b = (
            f"10.{64 + i // 4000}.{(i // 250) % 16}.{i % 250 + 1}",
            f"10.200.{i // 250}.{i % 250}",
        )
        if i % 3 == 0:
            pol = f"ipsec esp/tunnel/{node_addr(i % N_NODES)}-192.0.2.{i % 250 + 1}/require"
        elif i % 3 == 1:
            pol = "ipsec esp/transport//unique:" + str(i % 32767 + 1)
        else:
            pol = "none"
        lines.append(f"spdadd {a}/32[{1024 + i % 5000}] {b}/32[any] tcp -P out {pol};")
    return "\n".join(lines) + "\n"


WALL: list[float] = []


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    w0, t0 = time.perf_counter(), time.process_time()
    result = fn()
    WALL.append(time.perf_counter() - w0)
    return time.process_time() - t0, result


def _loop_reference() -> float:
    """CPU seconds of a plain 5-million-step Python loop: compare it between runs to
    see how slow or busy the host was when the other figures were taken."""
    t0 = time.process_time()
    total = 0
    for i in range(5_000_000):
        total += i
    return time.process_time() - t0


def main() -> int:
    text = make_spd()
    directory = make_directory()
    node = directory[1]
    parse_t, validate_t, load_t, compile_t, ref_t, gc_t = [], [], [], [], [], []
    config = None
    addresses = [node_addr(i % N_NODES) for i in range(2 * N_SPDADD)]
    wall_totals = []
    for _ in range(RUNS):
        sink = Sink()
        t, builder = timed(lambda s=sink: parse(text, "bench.spd", s))
        parse_t.append(t)
        t, _ = timed(lambda b=builder, s=sink: validate(b, s))  # type: ignore[misc]
        validate_t.append(t)
        t, policy = timed(lambda: load_text(text, "bench.spd"))
        load_t.append(t)
        t, config = timed(lambda p=policy: compile_node(p, node, directory))  # type: ignore[misc]
        compile_t.append(t)
        wall_totals.append(WALL[-2] + WALL[-1])
        # the phases pause the cyclic collector; a full collection right after them
        # shows what that deferred (not a part of total_s, paid once, not per burst)
        t, _ = timed(gc.collect)
        gc_t.append(t)
        t, _ = timed(lambda: [ipaddress.ip_address(a) for a in addresses])
        ref_t.append(t)
    med = statistics.median
    total = med(load_t) + med(compile_t)
    assert config is not None
    result = {
        "rules": N_SPDADD + N_RULES + N_CONNECTIONS,
        "nodes": N_NODES,
        "spd_bytes": len(text),
        "parse_s": round(med(parse_t), 4),
        "validate_s": round(med(validate_t), 4),
        "load_s (parse+validate)": round(med(load_t), 4),
        "compile_one_node_s": round(med(compile_t), 4),
        "total_s": round(total, 4),
        "full_gc_collect_after_s": round(med(gc_t), 4),
        "total_wall_s": round(med(wall_totals), 4),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "target_s": TARGET_S,
        "within_target": total <= TARGET_S,
        "node_policies": len(config.policies),  # type: ignore[attr-defined]
        "node_connections": len(config.connections),  # type: ignore[attr-defined]
        # per-node overlap findings of the compiler (docs/spd.md section 9): 0 expected
        "node_findings": len(config.diagnostics),  # type: ignore[attr-defined]
        "reference_ipaddress_parse_18k_s": round(med(ref_t), 4),
        "reference_python_loop_5m_s": round(_loop_reference(), 4),
        "runs": RUNS,
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
