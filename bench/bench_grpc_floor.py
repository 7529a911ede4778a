"""Reference for the controller's memory per agent: a bare grpc.aio server.

The same measure bench_controller.py uses (server RSS with N clients connected, each
holding one open bidirectional stream, minus idle RSS, divided by N), for a server that
does nothing but keep the stream: once with the async-iterator handler style, once
with ``context.read()`` (the style the controller uses).  It shows how much of the
controller's per-agent cost is gRPC's own.  Prints one JSON object.

:func:`fanout` is the reference for the controller's push -> ack: the same server
writes one pre-serialized message of the size of the benchmark's policy update to
every stream (one task per stream, as the controller's writers), each client reads it
and writes a small ack, and the server notes when each ack arrives.  Nothing else runs
in either process (no parsing, no registry, no metrics): the figure is grpc.aio's own
floor on these cores, measured in the same run as the controller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc

WORKERS = 4
#: extra server channel args as JSON, e.g. '[["grpc.http2.bdp_probe", 0]]' (for experiments)
SERVER_OPTIONS = [tuple(o) for o in json.loads(os.environ.get("BENCH_GRPC_FLOOR_OPTIONS", "[]"))]
#: the fan-out message: about the size of bench_controller.py's policy update
FANOUT_BYTES = 2048
SIZES = [int(x) for x in os.environ.get("BENCH_GRPC_FLOOR_CLIENTS", "1000,5000").split(",")]


def _ident(b: bytes) -> bytes:
    return b


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _bidi_server(fn: Any) -> tuple[Any, int]:
    """A started grpc.aio server with ``fn`` as its one bidi method (bytes in and out)
    on a free loopback port."""
    handler = grpc.method_handlers_generic_handler(
        "bench.Floor",
        {
            "Bidi": grpc.stream_stream_rpc_method_handler(
                fn, request_deserializer=_ident, response_serializer=_ident
            )
        },
    )
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _serve(style: str, port_q: Any, done: Any) -> None:
    async def by_iterator(request_iterator: Any, context: Any) -> Any:
        async for msg in request_iterator:
            yield msg

    async def by_read(request_iterator: Any, context: Any) -> None:
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            await context.write(msg)

    server, port = await _bidi_server(by_iterator if style == "iterator" else by_read)
    port_q.put(port)
    deadline = time.monotonic() + 600
    while not done.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await server.stop(0)


async def _fanout_serve(n: int, ctl_q: Any, out_q: Any) -> None:
    """The fan-out server: ``ctl_q`` says "push" (or "stop"); ``out_q`` gets the port,
    "ready" once ``n`` streams are open, then per push the ack delays (s) and the
    server's CPU seconds."""
    loop = asyncio.get_running_loop()
    contexts: list[Any] = []
    state: dict[str, Any] = {"t0": 0.0, "acks": []}
    all_acked = asyncio.Event()

    async def bidi(request_iterator: Any, context: Any) -> None:
        await context.read()  # hello
        await context.write(b"welcome")
        contexts.append(context)
        if len(contexts) == n:
            out_q.put("ready")
        while (await context.read()) is not grpc.aio.EOF:
            acks = state["acks"]
            acks.append(time.monotonic() - state["t0"])
            if len(acks) == n:
                all_acked.set()

    server, port = await _bidi_server(bidi)
    out_q.put(port)
    payload = os.urandom(FANOUT_BYTES)
    tasks: set[asyncio.Task[None]] = set()
    while True:
        cmd = await loop.run_in_executor(None, ctl_q.get)
        if cmd != "push":
            break
        all_acked.clear()
        state["acks"] = []
        cpu0 = time.process_time()
        state["t0"] = time.monotonic()
        lanes = int(os.environ.get("BENCH_FLOOR_LANES", "0"))
        if lanes:

            async def lane(part: list[Any]) -> None:
                for c in part:
                    await c.write(payload)

            for i in range(lanes):
                task = loop.create_task(lane(contexts[i::lanes]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        else:
            for context in contexts:
                task = loop.create_task(context.write(payload))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await asyncio.wait_for(all_acked.wait(), 120)
        out_q.put((state["acks"], time.process_time() - cpu0))
    await server.stop(0)


def _fanout_server_main(n: int, ctl_q: Any, out_q: Any, cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    if os.environ.get("BENCH_FLOOR_UVLOOP") == "1":
        import uvloop

        uvloop.install()
    th = os.environ.get("BENCH_FLOOR_GC")
    if th:
        import gc

        gc.set_threshold(*map(int, th.split(",")))
    asyncio.run(_fanout_serve(n, ctl_q, out_q))


async def _fanout_clients(port: int, n: int, ready_q: Any, done: Any) -> None:
    async def one(call: Any) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            while (await call.read()) is not grpc.aio.EOF:
                await call.write(b"ack")

    chans = []
    tasks = []
    for _ in range(n):  # one at a time, as bench_controller.py's workers connect
        ch = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        call = ch.stream_stream(
            "/bench.Floor/Bidi", request_serializer=_ident, response_deserializer=_ident
        )()
        await call.write(b"hello")
        await call.read()  # welcome
        tasks.append(asyncio.create_task(one(call)))
        chans.append(ch)
    ready_q.put(n)
    await asyncio.get_running_loop().run_in_executor(None, done.wait, 900)
    for ch in chans:
        await ch.close()


def _fanout_client_main(
    port: int, n: int, ready_q: Any, done: Any, cpus: set[int] | None = None
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    asyncio.run(_fanout_clients(port, n, ready_q, done))


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank below)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def fanout(
    n: int,
    pushes: int = 10,
    server_cpus: set[int] | None = None,
    client_cpus: set[int] | None = None,
    workers: int = 8,
) -> dict[str, float]:
    """Push -> ack over ``n`` bare grpc.aio streams (see the module docstring):
    p50/p99 of the ack delays over all pushes, the slowest stream per push (median),
    and CPU per push of the server and of the clients."""
    ctx = mp.get_context("spawn")
    ctl_q, out_q, ready_q, done = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    srv = ctx.Process(target=_fanout_server_main, args=(n, ctl_q, out_q, server_cpus))
    srv.start()
    clients: list[Any] = []
    try:
        port = out_q.get(timeout=60)
        sizes = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
        clients = [
            ctx.Process(target=_fanout_client_main, args=(port, k, ready_q, done, client_cpus))
            for k in sizes
        ]
        for p in clients:
            p.start()
        for _ in clients:
            ready_q.get(timeout=300)
        if out_q.get(timeout=300) != "ready":
            raise RuntimeError("fan-out server: streams did not open")
        time.sleep(2)
        delays: list[float] = []
        slowest: list[float] = []
        server_cpu = 0.0
        client_cpu0 = sum(cpu_s(p.pid) for p in clients)
        for _ in range(pushes):
            ctl_q.put("push")
            acks, cpu = out_q.get(timeout=180)
            delays.extend(acks)
            slowest.append(max(acks))
            server_cpu += cpu
            time.sleep(0.3)
        client_cpu = sum(cpu_s(p.pid) for p in clients) - client_cpu0
        return {
            "streams": n,
            "message_bytes": FANOUT_BYTES,
            "push_to_ack_p50_ms": round(statistics.median(delays) * 1000, 1),
            "push_to_ack_p99_ms": round(pct(delays, 0.99) * 1000, 1),
            "push_to_all_acked_p50_ms": round(statistics.median(slowest) * 1000, 1),
            "server_cpu_per_push_ms": round(server_cpu / pushes * 1000, 1),
            "clients_cpu_per_push_ms": round(client_cpu / pushes * 1000, 1),
        }
    finally:
        ctl_q.put("stop")
        done.set()
        for p in [*clients, srv]:
            p.join(30)
            if p.is_alive():
                p.kill()


def _server_main(style: str, port_q: Any, done: Any, cpus: set[int] | None = None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    asyncio.run(_serve(style, port_q, done))


async def _clients(port: int, n: int, ready_q: Any, done: Any) -> None:
    chans = []
    for _ in range(n):
        ch = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        call = ch.stream_stream(
            "/bench.Floor/Bidi", request_serializer=_ident, response_deserializer=_ident
        )()
        await call.write(b"x")
        await call.read()
        chans.append((ch, call))
    ready_q.put(n)
    deadline = time.monotonic() + 600
    while not done.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    for ch, _call in chans:
        await ch.close()


def _client_main(port: int, n: int, ready_q: Any, done: Any, cpus: set[int] | None = None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    asyncio.run(_clients(port, n, ready_q, done))


def measure(
    style: str, n: int, server_cpus: set[int] | None = None, client_cpus: set[int] | None = None
) -> float:
    """Server KB per client; ``server_cpus``/``client_cpus`` pin the processes (the
    controller benchmark runs it on the controller's core)."""
    ctx = mp.get_context("spawn")
    port_q, ready_q, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    srv = ctx.Process(target=_server_main, args=(style, port_q, done, server_cpus))
    srv.start()
    clients: list[Any] = []
    try:
        port = port_q.get(timeout=60)
        time.sleep(1)
        idle = _rss_kb(srv.pid)  # type: ignore[arg-type]
        clients = [
            ctx.Process(target=_client_main, args=(port, n // WORKERS, ready_q, done, client_cpus))
            for _ in range(WORKERS)
        ]
        for p in clients:
            p.start()
        for _ in clients:
            ready_q.get(timeout=300)
        time.sleep(2)
        connected = _rss_kb(srv.pid)  # type: ignore[arg-type]
        return round((connected - idle) / (n // WORKERS * WORKERS), 1)
    finally:
        done.set()
        for p in [*clients, srv]:
            p.join(30)
            if p.is_alive():
                p.kill()


def main() -> int:
    result: dict[str, Any] = {"unit": "server RSS KB per connected client with one open stream"}
    for style in ("iterator", "read"):
        result[style] = {str(n): measure(style, n) for n in SIZES}
    if os.environ.get("BENCH_GRPC_FLOOR_FANOUT", "1") != "0":
        two = (os.cpu_count() or 1) >= 2
        result["fanout"] = [
            fanout(n, 10, {0} if two else None, {1} if two else None) for n in SIZES
        ]
    result["grpcio"] = grpc.__version__
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
