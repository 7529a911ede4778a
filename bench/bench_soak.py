"""Controller soak: RSS and open file descriptors over a long run of pushes, reconnect
storms and node churn (issue #14).  The short version is a test
(tests/integration/controller/test_soak.py); this one runs ``BENCH_SOAK_SECONDS``
(1800) with ``BENCH_SOAK_AGENTS`` (2000) simulated agents, pinned like
bench/bench_controller.py (controller and etcd on CPU 0, agents on CPU 1).

Each round: a push (every agent acks), then alternately a reconnect storm (every agent
stops and starts again at once, with its saved revision and directory) or node churn
(a tenth of the agents come back on new addresses: directory deltas);
``BENCH_SOAK_ROUNDS`` (``storm,churn``) picks other cycles (``push``: pushes only).  After every
round: the controller's RSS and open fds.  The first ``BENCH_SOAK_WARMUP`` (20 %) of the
rounds are the warm-up; printed: the samples, and after the warm-up the least-squares
slope (MB per hour, fds per hour) and the range.

``BENCH_SOAK_TRACEMALLOC=FILE`` runs the controller under tracemalloc (8 frames): at the
end of the warm-up and at the end of the run it writes the top allocation growth
between the two (by traceback) to FILE — how the growth seen in the figures was found.
Prints one JSON object (last line).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_controller as bc

SECONDS = float(os.environ.get("BENCH_SOAK_SECONDS", "1800"))
AGENTS = int(os.environ.get("BENCH_SOAK_AGENTS", "2000"))
WARMUP = float(os.environ.get("BENCH_SOAK_WARMUP", "0.2"))
TRACE = os.environ.get("BENCH_SOAK_TRACEMALLOC", "")
#: run the controller through the wrapper below (without tracemalloc when TRACE is
#: unset) and, at the end, ask glibc to return freed memory (malloc_trim): how much of
#: the RSS is memory freed but kept by the allocator rather than held
TRIM = os.environ.get("BENCH_SOAK_TRIM", "") == "1"
#: what a round does after its push: "storm,churn" (alternately, the default), "storm",
#: "churn", or "push" (nothing more): which of them the RSS growth comes with
ROUNDS = os.environ.get("BENCH_SOAK_ROUNDS", "storm,churn").split(",")

# the controller under tracemalloc: SIGUSR1 takes a snapshot; the first is the base,
# each later one appends the top growth against it to $SOAK_TRACE_OUT
_TRACED = """
import ctypes, gc, os, runpy, signal, sys, tracemalloc
if os.environ.get("SOAK_TRACE_OUT"):
    tracemalloc.start(8)
signal.signal(signal.SIGUSR2, lambda *_: ctypes.CDLL("libc.so.6").malloc_trim(0))
base = []
def dump(signum, frame):
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    if not base:
        base.append(snap)
        return
    lines = [f"== growth since the warm-up, gc counts {gc.get_count()}, "
             f"objects {len(gc.get_objects())}"]
    for stat in snap.compare_to(base[0], "traceback")[:25]:
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB {stat.count_diff:+d} blocks")
        lines.extend("    " + line for line in stat.traceback.format()[-8:])
    with open(os.environ["SOAK_TRACE_OUT"], "a") as out:
        out.write("\\n".join(lines) + "\\n")
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["ipsecd-controller", *sys.argv[1:]]
runpy.run_module("controller.main", run_name="__main__")
"""


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _slope_per_hour(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return (
        0.0
        if not den
        else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 3600
    )


def _start(etcd_url: str, address: str) -> subprocess.Popen[str]:
    if not TRACE and not TRIM:
        return bc._start_controller(etcd_url, address, f"/soak-{os.getpid()}/")
    ctl = subprocess.Popen(
        [sys.executable, "-c", _TRACED, "--etcd", etcd_url, "--listen", address,
         "--key-root", f"/soak-{os.getpid()}/", "--ping-interval", "10", "--insecure"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=bc.TREE,
        env={**bc._env(), "SOAK_TRACE_OUT": TRACE} if TRACE else bc._env(),
        preexec_fn=bc._pin(bc.CTL_CPUS),
    )  # fmt: skip
    assert ctl.stdout is not None
    if "listening" not in ctl.stdout.readline():
        raise RuntimeError("controller did not start")
    ctl.stdout.close()
    return ctl


def soak(etcd_url: str) -> dict[str, Any]:
    address = f"127.0.0.1:{bc._free_port()}"
    ctl = _start(etcd_url, address)
    workers: list[subprocess.Popen[str]] = []
    try:
        asyncio.run(bc._push(address, 1))
        sizes = [bc.PER_WORKER] * (AGENTS // bc.PER_WORKER)
        if AGENTS % bc.PER_WORKER:
            sizes.append(AGENTS % bc.PER_WORKER)
        first = 0
        for size in sizes:
            workers.append(bc._spawn("--worker", address, str(first), str(size)))
            first += size
        for w in workers:
            bc._read_json(w, 600, "ready")
        t0 = time.monotonic()
        samples: list[dict[str, Any]] = []
        rev = 1
        traced_base = False
        while time.monotonic() - t0 < SECONDS:
            rev += 1
            asyncio.run(bc._push(address, rev))
            for w in workers:
                bc._read_json(w, 300, "rev")
            kind = ROUNDS[rev % len(ROUNDS)]
            if kind == "storm":  # every agent at once, resuming
                bc._tell(workers, [f"restart 0 {size} 0" for size in sizes])
            elif kind == "churn":  # a tenth of the nodes on new addresses
                lo = (rev // 2) % 10
                bc._tell(workers, [f"restart {lo * size // 10} {size // 10} 1" for size in sizes])
            if kind != "push":
                for w in workers:
                    bc._read_json(w, 600, "restarted")
            time.sleep(2.5)  # registry flush and directory interval: the round settles
            t = time.monotonic() - t0
            samples.append(
                {"t_s": round(t, 1), "rev": rev, "rss_mb": round(bc._rss(ctl.pid) / 2**20, 1),
                 "fds": _fds(ctl.pid)}
            )  # fmt: skip
            if TRACE and not traced_base and t >= WARMUP * SECONDS:
                ctl.send_signal(signal.SIGUSR1)
                traced_base = True
        if TRACE:  # the comparison takes a while under tracemalloc: wait for it
            size = Path(TRACE).stat().st_size if Path(TRACE).exists() else 0
            ctl.send_signal(signal.SIGUSR1)
            for _ in range(600):
                if Path(TRACE).exists() and Path(TRACE).stat().st_size > size:
                    time.sleep(2.0)
                    break
                time.sleep(0.5)
        trim: dict[str, float] = {}
        if TRIM:
            trim["rss_before_mb"] = round(bc._rss(ctl.pid) / 2**20, 1)
            ctl.send_signal(signal.SIGUSR2)
            time.sleep(3.0)
            trim["rss_after_malloc_trim_mb"] = round(bc._rss(ctl.pid) / 2**20, 1)
        steady = [s for s in samples if s["t_s"] >= WARMUP * SECONDS] or samples
        xs = [float(s["t_s"]) for s in steady]
        rss = [float(s["rss_mb"]) for s in steady]
        fds = [float(s["fds"]) for s in steady]
        return {
            "agents": AGENTS,
            "seconds": SECONDS,
            "round_cycle": ROUNDS,
            "rounds": len(samples),
            "after_warmup": {
                "rss_mb_min_max": [min(rss), max(rss)],
                "rss_mb_per_hour_slope": round(_slope_per_hour(xs, rss), 1),
                "fds_min_max": [min(fds), max(fds)],
                "fds_per_hour_slope": round(_slope_per_hour(xs, fds), 1),
            },
            "malloc_trim": trim,
            "samples": samples,
        }
    finally:
        for w in workers:
            bc._stop(w)
        bc._end(ctl)


def main() -> int:
    from controller.embedded_etcd import EtcdProcess

    bc._raise_nofile()
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EtcdProcess(Path(tmp) / "etcd")
        mine = os.sched_getaffinity(0)
        if bc.CTL_CPUS is not None:
            os.sched_setaffinity(0, bc.CTL_CPUS)
        try:
            etcd.start()
        finally:
            os.sched_setaffinity(0, bc.AGENT_CPUS or mine)
        try:
            result = soak(etcd.url)
        finally:
            etcd.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
