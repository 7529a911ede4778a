"""Controller fan-out benchmark: N simulated agents (agent/stream.py) on ONE controller.

For N in (1000, 5000) (override with BENCH_CONTROLLER_AGENTS=1000,5000):

* a fresh ``ipsecd-controller`` process on a shared etcd (fresh key root per N);
* the agents run in separate worker processes (so the controller's RSS is its own),
  one gRPC channel + stream per agent, as real nodes would;
* push -> every agent has the revision and has sent its ack: p50/p99/max over all
  agents and pushes (wall clock, measured at the agents against the push start);
* controller RSS per connected agent = (RSS with N streams - RSS idle) / N.

Reference measured in the same run: etcd's own RSS per client+watch stream (M etcd3aio
clients, one watch each, in a separate process).  Prints one JSON object (last line).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PER_WORKER = int(os.environ.get("BENCH_CONTROLLER_PER_WORKER", "625"))
PUSHES = 5


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _policy(n: int) -> str:
    lines = [f"# bench revision {n}"]
    for i in range(20):
        lines.append(
            f"spdadd 10.{i}.{n % 250}.0/24 10.{i + 100}.{n % 250}.0/24 any -P out ipsec "
            "esp/tunnel/192.0.2.1-192.0.2.2/require;"
        )
    return "\n".join(lines) + "\n"


# -- worker: a process full of simulated agents ---------------------------------------------
async def _worker(controller: str, first: int, count: int) -> None:
    from agent.stream import (
        CHANNEL_OPTIONS,
        AgentIdentity,
        AgentStream,
        PolicyReceived,
        StreamConnected,
    )

    loop = asyncio.get_running_loop()
    connected: set[int] = set()
    got: dict[int, dict[int, float]] = {}
    reported: set[int] = set()
    streams: list[AgentStream] = []
    ready = asyncio.Event()

    def out(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def make_handler(i: int) -> Any:
        async def on_event(ev: Any) -> None:
            if isinstance(ev, PolicyReceived):
                await streams[i].ack(ev.revision)
                if ev.via_snapshot:
                    return
                per = got.setdefault(ev.revision, {})
                per[i] = time.time()
                if len(per) == count and ev.revision not in reported:
                    reported.add(ev.revision)
                    out({"rev": ev.revision, "times": list(per.values())})
            elif isinstance(ev, StreamConnected):
                connected.add(i)
                if len(connected) == count:
                    ready.set()

        return on_event

    for i in range(count):
        ident = AgentIdentity(
            node=f"bench-{first + i:05d}", addresses=(f"10.99.{i // 250}.{i % 250}",)
        )
        streams.append(
            AgentStream(
                [controller],
                ident,
                on_event=make_handler(i),
                idle_timeout=120.0,
                # one TCP connection per simulated agent, as real nodes have: without
                # this, grpc shares one subchannel among every channel of the process
                channel_options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)],
            )
        )
    tasks = []
    for i, s in enumerate(streams):
        tasks.append(asyncio.create_task(s.run()))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # do not SYN-flood the listener
    await ready.wait()
    out({"ready": count})
    await loop.run_in_executor(None, sys.stdin.read)  # until the coordinator closes stdin
    for s in streams:
        await s.close()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _etcd_watchers(url: str, count: int) -> None:
    from etcd3aio import Etcd3Client

    from controller.etcd_store import parse_endpoints

    clients = [Etcd3Client(parse_endpoints(url)) for _ in range(count)]
    created = 0
    done = asyncio.Event()

    async def watch(c: Any, i: int) -> None:
        nonlocal created
        await c.connect()
        async for _ in c.watch.watch(f"/bench-watch/{i}"):
            created += 1
            if created == count:
                done.set()

    tasks = [asyncio.create_task(watch(c, i)) for i, c in enumerate(clients)]
    await done.wait()
    sys.stdout.write(json.dumps({"ready": count}) + "\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for t in tasks:
        t.cancel()


# -- coordinator ------------------------------------------------------------------------------
def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _read_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {proc.pid} exited ({proc.poll()})")
        line = line.strip()
        if line.startswith("{"):
            return dict(json.loads(line))
    raise TimeoutError("worker did not answer")


def _stop(proc: subprocess.Popen[str]) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _free_port() -> int:
    from controller.embedded_etcd import free_port

    return free_port()


async def _push(address: str, n: int) -> float:
    import grpc.aio

    from ipsecd.v1 import policy_pb2, policy_pb2_grpc

    async with grpc.aio.insecure_channel(address) as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        t0 = time.time()
        resp = await stub.Push(policy_pb2.PushRequest(text=_policy(n), filename="bench.spd"))
        if not resp.accepted:
            raise RuntimeError(f"bench policy rejected: {resp.diagnostics[0].rendered}")
        return t0


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_size(etcd_url: str, n: int) -> dict[str, Any]:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    profile = os.environ.get("BENCH_CONTROLLER_PROFILE")  # cProfile output file, for digging
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    ctl = subprocess.Popen(
        [sys.executable, *prof, "-m", "controller.main", "--etcd", etcd_url, "--listen", address,
         "--key-root", f"/bench-{n}-{os.getpid()}/", "--ping-interval", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    workers: list[subprocess.Popen[str]] = []
    try:
        assert ctl.stdout is not None
        if "listening" not in ctl.stdout.readline():
            raise RuntimeError("controller did not start")
        ctl.stdout.close()
        asyncio.run(_push(address, 1))  # the stream state includes a current policy
        time.sleep(1.0)
        rss_idle = _rss(ctl.pid)
        t_connect = time.monotonic()
        sizes = [PER_WORKER] * (n // PER_WORKER) + ([n % PER_WORKER] if n % PER_WORKER else [])
        first = 0
        for size in sizes:
            workers.append(_spawn("--worker", address, str(first), str(size)))
            first += size
        for w in workers:
            _read_json(w, 600)
        connect_s = time.monotonic() - t_connect
        time.sleep(3.0)  # registry flush, directory, first pings
        rss_connected = _rss(ctl.pid)
        latencies: list[float] = []
        all_acked: list[float] = []
        cpu_ctl0 = _cpu_s(ctl.pid)
        cpu_workers0 = sum(_cpu_s(w.pid) for w in workers)
        t_pushes = time.monotonic()
        for r in range(2, 2 + PUSHES):
            t0 = asyncio.run(_push(address, r))
            times: list[float] = []
            for w in workers:
                msg = _read_json(w, 120)
                if msg.get("rev") != r:
                    raise RuntimeError(f"unexpected worker message for revision {msg.get('rev')}")
                times.extend(msg["times"])
            lat = [t - t0 for t in times]
            latencies.extend(lat)
            all_acked.append(max(lat))
        wall = time.monotonic() - t_pushes
        rss_after = _rss(ctl.pid)  # growth here would be per-message memory kept per stream
        cpu_ctl = _cpu_s(ctl.pid) - cpu_ctl0
        cpu_workers = sum(_cpu_s(w.pid) for w in workers) - cpu_workers0
        return {
            "agents": n,
            "worker_processes": len(workers),
            "connect_all_s": round(connect_s, 2),
            "pushes": PUSHES,
            "push_to_agent_ack_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "push_to_agent_ack_p99_ms": round(_pct(latencies, 0.99) * 1000, 1),
            "push_to_all_acked_max_ms": round(max(all_acked) * 1000, 1),
            "push_phase_wall_s": round(wall, 2),
            "push_phase_cpu_controller_s": round(cpu_ctl, 2),
            "push_phase_cpu_agent_workers_s": round(cpu_workers, 2),
            "controller_rss_idle_mb": round(rss_idle / 2**20, 1),
            "controller_rss_connected_mb": round(rss_connected / 2**20, 1),
            "controller_rss_per_agent_kb": round((rss_connected - rss_idle) / n / 1024, 1),
            "controller_rss_after_pushes_mb": round(rss_after / 2**20, 1),
        }
    finally:
        for w in workers:
            _stop(w)
        ctl.terminate()
        try:
            ctl.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ctl.kill()
            ctl.wait()


def etcd_reference(etcd: Any, m: int) -> dict[str, Any]:
    before = etcd.rss_bytes()
    proc = _spawn("--etcd-watchers", etcd.url, str(m))
    try:
        _read_json(proc, 300)
        time.sleep(1.0)
        after = etcd.rss_bytes()
    finally:
        _stop(proc)
    return {
        "etcd_clients_with_one_watch": m,
        "etcd_rss_per_client_watch_kb": round((after - before) / m / 1024, 1),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _raise_nofile()
        asyncio.run(_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--etcd-watchers":
        _raise_nofile()
        asyncio.run(_etcd_watchers(sys.argv[2], int(sys.argv[3])))
        return 0
    from controller.embedded_etcd import EtcdProcess

    nofile = _raise_nofile()  # inherited by the controller and the workers
    sizes = [int(x) for x in os.environ.get("BENCH_CONTROLLER_AGENTS", "1000,5000").split(",")]
    results: dict[str, Any] = {
        "nofile_limit": nofile,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0],  # the machine is shared: context
    }
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EtcdProcess(Path(tmp) / "etcd")
        etcd.start()
        try:
            results["reference"] = etcd_reference(etcd, 1000)
            results["runs"] = [run_size(etcd.url, n) for n in sizes]
        finally:
            etcd.stop()
    results["targets"] = {"agents": 5000, "p99_ms": 2000, "rss_per_agent_kb": 20}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
