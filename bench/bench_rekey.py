"""CHILD SA rekeys and IKE SA rekeys per second: strongSwan charon ↔ charon (reference)
and our engine ↔ our engine, same proposal, same run.  Needs root (namespaces).

    .venv/bin/python bench/bench_rekey.py [--count N]

Each side rekeys one established SA N times in a row, each rekey started when the
previous one completed (the old SA deleted):

* ``charon``: two charons (kernel-libipsec, host kernel) in two namespaces; vici
  ``rekey`` then the ``child-rekey`` / ``ike-rekey`` event that says it completed.
* ``ours``: two :class:`ipsecd.ike.IkeEndpoint` in this process, datagrams shuttled in
  memory (the engine's cost alone);
* ``ours_udp``: two ``agent.ike_driver.IkeDriver`` in two namespaces over real UDP.

The kernel side of a rekey (installing and removing states) is not in these figures:
the host kernel has no ESP (charon's libipsec keeps its SAs in userspace); the lab
test tests/kernel/test_agent_rekey.py measures rekeys with real ESP and traffic.
Prints one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.support.charon import Charon, Child, Conn
from tests.support.netns import netns_pair

PSK = "bench-psk-0123456789abcdef"
IKE, ESP = "aes256gcm16-prfsha256-ecp256", "aes256gcm16"  # bench_ike.py "gcm256-ecp256"
TUNING = {
    "threads": "16",
    "reuse_ikesa": "no",
    "cookie_threshold": "1000000",
    "block_threshold": "1000000",
}


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


# -- charon ------------------------------------------------------------------------------


def bench_charon(count: int, work: Path) -> dict[str, Any]:
    import vici

    with netns_pair("irk-") as (a, b):
        a.run(["ip", "addr", "add", "198.51.100.1/32", "dev", "lo"])
        b.run(["ip", "addr", "add", "198.51.100.2/32", "dev", "lo"])
        quiet = {"default": 0}
        with (
            Charon.started(a, work / "a", log_levels=quiet, tuning=TUNING) as ca,
            Charon.started(b, work / "b", log_levels=quiet, tuning=TUNING) as cb,
        ):
            for c, (la, ra, li, ri, lt, rt) in (
                (ca, ("192.0.2.1", "192.0.2.2", "a", "b", "198.51.100.1", "198.51.100.2")),
                (cb, ("192.0.2.2", "192.0.2.1", "b", "a", "198.51.100.2", "198.51.100.1")),
            ):
                child = Child("c", (lt,), (rt,), (ESP,))
                c.load([Conn("bench", (la,), (ra,), li, ri, PSK, (IKE,), (child,))])
            ca.initiate("c", ike="bench")
            out: dict[str, Any] = {}
            for kind, event in (("child", "child-rekey"), ("ike", "ike-rekey")):
                lsock = socket.socket(socket.AF_UNIX)
                lsock.connect(str(ca.vici_path))
                csock = socket.socket(socket.AF_UNIX)
                csock.connect(str(ca.vici_path))
                listener = vici.Session(lsock).listen([event], timeout=30)
                control = vici.Session(csock)
                target = {"child": "c"} if kind == "child" else {"ike": "bench", "reauth": "no"}
                control.rekey(target)  # warm-up
                next(listener)
                t0 = time.perf_counter()
                for _ in range(count):
                    control.rekey(target)
                    label, _ev = next(listener)
                    if label is None:
                        raise RuntimeError(f"charon: no {event} event within 30 s")
                elapsed = time.perf_counter() - t0
                listener.close()
                lsock.close()
                csock.close()
                out[kind] = {
                    "rekeys": count,
                    "seconds": round(elapsed, 3),
                    "per_s": _rate(count, elapsed),
                }
    return out


# -- ours -------------------------------------------------------------------------------


def _configs() -> tuple[Any, Any]:
    """The same connection as bench_ike.py (GCM-256/ECP-256, PSK)."""
    from bench_ike import _engine_configs

    return _engine_configs("gcm256-ecp256")


def bench_ours(count: int) -> dict[str, Any]:
    """Two endpoints in memory: the engine's work per rekey."""
    from ipsecd.ike import IkeEndpoint, lookup_by_address
    from ipsecd.ike.events import ChildSaDeleted, IkeSaDeleted

    ci, cr = _configs()
    a = IkeEndpoint(lookup_by_address([ci]))
    b = IkeEndpoint(lookup_by_address([cr]))
    where = {"192.0.2.1": a, "192.0.2.2": b}
    now = [0.0]
    seen: list[object] = []

    def shuttle() -> None:
        for _ in range(20):
            moved = False
            for ep in (a, b):
                for data, local, dest in ep.datagrams_to_send(now[0]):
                    where[dest[0]].receive_datagram(data, dest, local, now[0])
                    moved = True
                seen.extend(ev for _sa, ev in ep.events())
            if not moved:
                return

    sa = a.initiate(ci, ("192.0.2.1", 500), ("192.0.2.2", 500), now[0])
    shuttle()
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for _ in range(count):
        (live,) = a.sas
        live.rekey_child(live.children[0].inbound_spi, now[0])
        shuttle()
    elapsed = time.perf_counter() - t0
    deleted = sum(1 for e in seen if isinstance(e, ChildSaDeleted) and e.replaced)
    if deleted < 2 * count:
        raise RuntimeError(f"ours: {deleted} replaced CHILD SAs, expected {2 * count}")
    out["child"] = {"rekeys": count, "seconds": round(elapsed, 3), "per_s": _rate(count, elapsed)}
    seen.clear()
    t0 = time.perf_counter()
    for _ in range(count):
        (live,) = a.sas
        live.rekey_ike(now[0])
        shuttle()
    elapsed = time.perf_counter() - t0
    done = sum(1 for e in seen if isinstance(e, IkeSaDeleted) and e.rekeyed)
    if done < 2 * count:
        raise RuntimeError(f"ours: {done} rekeyed IKE SAs deleted, expected {2 * count}")
    out["ike"] = {"rekeys": count, "seconds": round(elapsed, 3), "per_s": _rate(count, elapsed)}
    del sa
    return out


async def _ours_udp(count: int) -> dict[str, Any]:
    from agent.ike_driver import IkeDriver
    from ipsecd.ike.events import ChildSaDeleted, ChildSaEstablished, IkeSaDeleted

    ci, cr = _configs()
    out: dict[str, Any] = {}
    with netns_pair("irk-") as (na, nb):
        done = asyncio.Event()
        counts = {"child": 0, "ike": 0, "up": 0}

        async def on_events(batch: list[tuple[Any, Any]]) -> None:
            for _sa, ev in batch:
                if isinstance(ev, ChildSaEstablished):
                    counts["up"] += 1
                elif isinstance(ev, ChildSaDeleted) and ev.replaced:
                    counts["child"] += 1
                elif isinstance(ev, IkeSaDeleted) and ev.rekeyed:
                    counts["ike"] += 1
                else:
                    continue
                done.set()

        async def until(key: str, n: int) -> None:
            while counts[key] < n:
                done.clear()
                await asyncio.wait_for(done.wait(), 30)

        async with (
            IkeDriver([ci], netns=na.name, ipv6=False, on_events=on_events) as da,
            IkeDriver([cr], netns=nb.name, ipv6=False) as _db,
        ):
            da.initiate("bench")
            await until("up", 1)
            for kind in ("child", "ike"):
                t0 = time.perf_counter()
                for i in range(count):
                    (live,) = da.sas
                    if kind == "child":
                        live.rekey_child(live.children[0].inbound_spi, da.clock())
                    else:
                        live.rekey_ike(da.clock())
                    da.nudge()
                    await until(kind, i + 1)
                elapsed = time.perf_counter() - t0
                out[kind] = {
                    "rekeys": count,
                    "seconds": round(elapsed, 3),
                    "per_s": _rate(count, elapsed),
                }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200, help="rekeys of each kind and side")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("error: bench_rekey needs root (network namespaces)", file=sys.stderr)
        return 1
    result: dict[str, Any] = {
        "unit": "rekeys per second, one SA rekeyed in a row",
        "proposal": f"{IKE} / {ESP}",
    }
    with tempfile.TemporaryDirectory(prefix="irk-bench-") as tmp:
        result["charon"] = bench_charon(args.count, Path(tmp))
    result["ours"] = bench_ours(args.count)
    result["ours_udp"] = asyncio.run(_ours_udp(args.count))
    result["ratio_ours_udp_to_charon"] = {
        k: round(result["ours_udp"][k]["per_s"] / result["charon"][k]["per_s"], 2)
        for k in ("child", "ike")
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
