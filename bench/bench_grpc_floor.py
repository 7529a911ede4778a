"""Reference for the controller's memory per agent: a bare grpc.aio server.

The same measure bench_controller.py uses (server RSS with N clients connected, each
holding one open bidirectional stream, minus idle RSS, divided by N), for a server that
does nothing but keep the stream: once with the async-iterator handler style, once
with ``context.read()`` (the style the controller uses).  It shows how much of the
controller's per-agent cost is gRPC's own.  Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc

WORKERS = 4
#: extra server channel args as JSON, e.g. '[["grpc.http2.bdp_probe", 0]]' (for experiments)
SERVER_OPTIONS = [tuple(o) for o in json.loads(os.environ.get("BENCH_GRPC_FLOOR_OPTIONS", "[]"))]
SIZES = [int(x) for x in os.environ.get("BENCH_GRPC_FLOOR_CLIENTS", "1000,5000").split(",")]


def _ident(b: bytes) -> bytes:
    return b


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


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

    fn = by_iterator if style == "iterator" else by_read
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
    port_q.put(port)
    deadline = time.monotonic() + 600
    while not done.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await server.stop(0)


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
    result["grpcio"] = grpc.__version__
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
