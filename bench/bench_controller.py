"""Controller fan-out benchmark: N simulated agents (agent/stream.py) on ONE controller.

For N in (1000, 5000) (override with BENCH_CONTROLLER_AGENTS=1000,5000):

* a fresh ``ipsecd-controller`` process on a shared etcd (fresh key root per N),
  plaintext (``--insecure``: the figures are the fan-out's, not TLS's);
* the agents run in separate worker processes (so the controller's RSS is its own),
  one gRPC channel + stream per agent, as real nodes would;
* push -> every agent has the revision and has sent its ack: p50/p99/max over all
  agents and pushes (wall clock, measured at the agents against the push start);
* controller RSS per connected agent = (RSS with N streams - RSS idle) / N.

Reference measured in the same run: etcd's own RSS per client+watch stream (M etcd3aio
clients, one watch each, in a separate process).

Scenario "slow" (issue #16): one agent stream that never reads among
``BENCH_CONTROLLER_SLOW_AGENTS`` (500) that do.  After 5 warm-up pushes, three phases of
``SLOW_PUSHES`` (20) revisions of ``BENCH_CONTROLLER_SLOW_POLICY_KB`` (256) KiB each —
enough that the slow stream stops taking them (gRPC first buffers a few MiB at the
agent): without the slow agent (the reference, same controller, same run), with it, and
after the controller has dropped it.  Per phase: push -> ack p50/p99 of the readers and
controller RSS; whether the slow stream was dropped (``--stream-drain-timeout``) and how
much the slow agent itself grew (where gRPC buffers what it does not read).  The slow
agent keeps sending status reports, so only the drain check can find it.
``BENCH_CONTROLLER_SLOW_DRAIN`` is the controller's ``--stream-drain-timeout`` (5 s; 0
never drops, for comparison: the third phase then runs with the slow stream still held).

``BENCH_CONTROLLER_SCENARIOS`` (default ``fanout,slow``) picks the scenarios.  Prints one
JSON object (last line).
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
SLOW_AGENTS = int(os.environ.get("BENCH_CONTROLLER_SLOW_AGENTS", "500"))
SLOW_POLICY_KB = int(os.environ.get("BENCH_CONTROLLER_SLOW_POLICY_KB", "256"))
SLOW_PUSHES = 20
# --stream-drain-timeout of the slow scenario's controller (0: never drop, to compare)
SLOW_DRAIN_TIMEOUT = float(os.environ.get("BENCH_CONTROLLER_SLOW_DRAIN", "5"))
SLOW_PING_INTERVAL = 2.0  # the drain check runs once per ping interval per stream


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


def _big_policy(n: int, kib: int) -> str:
    """A valid policy of about ``kib`` KiB (one /32 rule per line, distinct per ``n``)."""
    lines = [f"# bench revision {n}"]
    size, i = 0, 0
    while size < kib * 1024:
        line = (
            f"spdadd 10.{i % 250}.{i // 250 % 250}.{n % 250}/32 10.{i % 250 + 1}.0.0/16 any "
            "-P out ipsec esp/tunnel/192.0.2.1-192.0.2.2/require;"
        )
        lines.append(line)
        size += len(line) + 1
        i += 1
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


async def _push(address: str, n: int, kib: int = 0) -> float:
    import grpc.aio

    from controller.limits import client_channel_options
    from ipsecd.v1 import policy_pb2, policy_pb2_grpc

    text = _big_policy(n, kib) if kib else _policy(n)
    async with grpc.aio.insecure_channel(address, options=client_channel_options()) as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        t0 = time.time()
        resp = await stub.Push(policy_pb2.PushRequest(text=text, filename="bench.spd"))
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
         "--key-root", f"/bench-{n}-{os.getpid()}/", "--ping-interval", "10", "--insecure"],
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


async def _slow_agent(controller: str) -> None:
    """One stream that never reads (real agent channel options) and reports its status
    every second; prints its own RSS when stdin closes."""
    import grpc.aio

    from agent.stream import CHANNEL_OPTIONS
    from ipsecd.v1 import agent_pb2, agent_pb2_grpc, types_pb2

    async with grpc.aio.insecure_channel(controller, options=CHANNEL_OPTIONS) as ch:
        call = agent_pb2_grpc.AgentServiceStub(ch).Connect()
        hello = agent_pb2.Hello(node="bench-slow", addresses=["10.98.0.1"])
        await call.write(agent_pb2.AgentMessage(hello=hello))
        status = agent_pb2.AgentMessage(status=types_pb2.NodeStatus(health=types_pb2.HEALTH_OK))

        async def talk() -> None:
            while True:
                await asyncio.sleep(1.0)
                await call.write(status)

        talker = asyncio.create_task(talk())
        await asyncio.sleep(0.5)
        sys.stdout.write(json.dumps({"ready": 1, "rss_kb": _rss(os.getpid()) // 1024}) + "\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        talker.cancel()
        sys.stdout.write(json.dumps({"rss_kb": _rss(os.getpid()) // 1024}) + "\n")
        sys.stdout.flush()
        call.cancel()


def _push_phase(address: str, workers: list[subprocess.Popen[str]], revs: list[int]) -> list[float]:
    """Push ``revs`` one after the other; push -> ack latencies of every reader (s)."""
    latencies: list[float] = []
    for r in revs:
        t0 = asyncio.run(_push(address, r, SLOW_POLICY_KB))
        for w in workers:
            msg = _read_json(w, 300)
            if msg.get("rev") != r:
                raise RuntimeError(f"unexpected worker message for revision {msg.get('rev')}")
            latencies.extend(t - t0 for t in msg["times"])
    return latencies


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "push_to_agent_ack_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "push_to_agent_ack_p99_ms": round(_pct(latencies, 0.99) * 1000, 1),
        "push_to_agent_ack_max_ms": round(max(latencies) * 1000, 1),
    }


def _list_nodes(address: str) -> dict[str, bool]:
    import grpc.aio

    from ipsecd.v1 import status_pb2, status_pb2_grpc

    async def go() -> dict[str, bool]:
        async with grpc.aio.insecure_channel(address) as ch:
            resp = await status_pb2_grpc.StatusServiceStub(ch).ListNodes(
                status_pb2.ListNodesRequest(), timeout=30
            )
            return {n.name: n.connected for n in resp.nodes}

    return asyncio.run(go())


def run_slow(etcd_url: str, n: int) -> dict[str, Any]:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # noqa: SIM115 - closed below
    ctl = subprocess.Popen(
        [sys.executable, "-m", "controller.main", "--etcd", etcd_url, "--listen", address,
         "--key-root", f"/bench-slow-{os.getpid()}/", "--ping-interval", str(SLOW_PING_INTERVAL),
         "--stream-drain-timeout", str(SLOW_DRAIN_TIMEOUT), "--insecure"],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
    )  # fmt: skip
    workers: list[subprocess.Popen[str]] = []
    slow: subprocess.Popen[str] | None = None
    try:
        assert ctl.stdout is not None
        if "listening" not in ctl.stdout.readline():
            raise RuntimeError("controller did not start")
        ctl.stdout.close()
        asyncio.run(_push(address, 1, SLOW_POLICY_KB))
        sizes = [PER_WORKER] * (n // PER_WORKER) + ([n % PER_WORKER] if n % PER_WORKER else [])
        first = 0
        for size in sizes:
            workers.append(_spawn("--worker", address, str(first), str(size)))
            first += size
        for w in workers:
            _read_json(w, 600)
        time.sleep(3.0)
        revs = iter(range(2, 2 + 5 + 3 * SLOW_PUSHES))

        def phase(count: int) -> list[float]:
            return _push_phase(address, workers, [next(revs) for _ in range(count)])

        phase(5)  # warm-up: the first pushes grow the allocator's pools
        rss_a0 = _rss(ctl.pid)
        without = phase(SLOW_PUSHES)
        rss_a1 = _rss(ctl.pid)
        slow = _spawn("--slow-agent", address)
        slow_rss0_kb = int(_read_json(slow, 60)["rss_kb"])
        time.sleep(2.0)
        rss_b0 = _rss(ctl.pid)
        t_b = time.monotonic()
        with_slow = phase(SLOW_PUSHES)
        phase_b_s = time.monotonic() - t_b
        rss_b1 = _rss(ctl.pid)
        time.sleep(SLOW_DRAIN_TIMEOUT + SLOW_PING_INTERVAL + 1.0)  # let the drain check act
        rss_b2 = _rss(ctl.pid)
        nodes = _list_nodes(address)
        after_drop = phase(SLOW_PUSHES)
        rss_c1 = _rss(ctl.pid)
        log.seek(0)
        drops = sum("dropping its stream" in line for line in log)
        assert slow.stdin is not None
        slow.stdin.close()
        slow_rss_kb = int(_read_json(slow, 60)["rss_kb"])
        return {
            "agents_reading": n,
            "pushes_per_phase": SLOW_PUSHES,
            "policy_kb": SLOW_POLICY_KB,
            "stream_drain_timeout_s": SLOW_DRAIN_TIMEOUT,
            "reference_without_slow_agent": {
                **_summary(without),
                "controller_rss_before_mb": round(rss_a0 / 2**20, 1),
                "controller_rss_after_mb": round(rss_a1 / 2**20, 1),
            },
            "with_one_slow_agent": {
                **_summary(with_slow),
                "phase_wall_s": round(phase_b_s, 2),
                "controller_rss_before_mb": round(rss_b0 / 2**20, 1),
                "controller_rss_after_mb": round(rss_b1 / 2**20, 1),
                "controller_rss_after_drop_check_mb": round(rss_b2 / 2**20, 1),
                "slow_stream_dropped": drops > 0,
                "slow_node_still_connected": nodes.get("bench-slow"),
                # what gRPC buffered in the slow agent before the controller's writes
                # stopped being taken
                "slow_agent_rss_growth_mb": round((slow_rss_kb - slow_rss0_kb) / 1024, 1),
            },
            "after_the_drop": {
                **_summary(after_drop),
                "controller_rss_after_mb": round(rss_c1 / 2**20, 1),
            },
        }
    finally:
        if slow is not None:
            _stop(slow)
        for w in workers:
            _stop(w)
        ctl.terminate()
        try:
            ctl.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ctl.kill()
            ctl.wait()
        log.close()


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
    if len(sys.argv) > 1 and sys.argv[1] == "--slow-agent":
        asyncio.run(_slow_agent(sys.argv[2]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--etcd-watchers":
        _raise_nofile()
        asyncio.run(_etcd_watchers(sys.argv[2], int(sys.argv[3])))
        return 0
    from controller.embedded_etcd import EtcdProcess

    nofile = _raise_nofile()  # inherited by the controller and the workers
    sizes = [int(x) for x in os.environ.get("BENCH_CONTROLLER_AGENTS", "1000,5000").split(",")]
    scenarios = set(os.environ.get("BENCH_CONTROLLER_SCENARIOS", "fanout,slow").split(","))
    results: dict[str, Any] = {
        "nofile_limit": nofile,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0],  # the machine is shared: context
    }
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EtcdProcess(Path(tmp) / "etcd")
        etcd.start()
        try:
            if "fanout" in scenarios:
                results["reference"] = etcd_reference(etcd, 1000)
                results["runs"] = [run_size(etcd.url, n) for n in sizes]
            if "slow" in scenarios:
                results["slow_agent"] = run_slow(etcd.url, SLOW_AGENTS)
        finally:
            etcd.stop()
    results["loadavg_1m_at_end"] = os.getloadavg()[0]
    results["targets"] = {"agents": 5000, "p99_ms": 2000, "rss_per_agent_kb": 20}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
