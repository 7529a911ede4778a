"""IKE_SA + first CHILD_SA setups per second: strongSwan charon ↔ charon (reference) and
our engine ↔ our engine, same proposals, same run.  Needs root (namespaces).

    .venv/bin/python bench/bench_ike.py [--count N] [--inflight K] [--proposal NAME]

Part A (reference): two charons (kernel-libipsec, host kernel) in two namespaces
joined by veth; setups are started through vici ``initiate`` from K threads (one vici
session each), ``reuse_ikesa = no`` so every initiate is a full IKE_SA_INIT + IKE_AUTH,
``unique = never``, cookie/block thresholds raised.  The rate is completed setups over
the wall time from the first initiate to the last completion.

Part B (``ours``): two of our ``IkeSa`` engines in one process, sans-I/O: the
datagrams of each setup are shuttled in memory between an initiator and a responder
made by ``IkeSa.accept``, one setup after the other (in-process there is nothing to
overlap); the rate is setups over the wall time of the loop.  Both sides run in this
one Python process on one core, whereas the two charons are multi-threaded C daemons
using both cores: ``ratio_ours_to_charon`` is ours ÷ charon's.

Part C (``ours_udp``): the same over real UDP sockets, two ``agent.ike_driver.IkeDriver``
instances (handshake only) in two namespaces, in one asyncio loop in this process, K
setups in flight; the rate is counted like part A.

Prints one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.charon import Charon, Child, Conn
from tests.support.netns import netns_pair

PSK = "bench-psk-0123456789abcdef"
#: name → (IKE proposal, ESP proposal), strongSwan spelling (our config parses it too).
PROPOSALS = {
    "gcm256-ecp384": ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
    "cbc256-sha256-modp2048": ("aes256-sha256-modp2048", "aes256-sha256"),
    "chacha20-x25519": ("chacha20poly1305-prfsha256-curve25519", "chacha20poly1305"),
    # the proposal LAB-NOTES measured charon with (GCM-256/ECP-256), for comparison
    "gcm256-ecp256": ("aes256gcm16-prfsha256-ecp256", "aes256gcm16"),
}
TUNING = {
    "threads": "64",
    "reuse_ikesa": "no",
    "cookie_threshold": "1000000",
    "cookie_threshold_ip": "1000000",
    "block_threshold": "1000000",
    "init_limit_half_open": "0",
    "ikesa_table_size": "1024",
    "ikesa_table_segments": "16",
}
QUIET = {"default": 0}


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


# -- part A: charon ↔ charon -----------------------------------------------------------


def _charon_once(name: str, count: int, inflight: int, work: Path) -> tuple[float, list[float]]:
    ike, esp = PROPOSALS[name]
    with netns_pair("iki-") as (a, b):
        a.run(["ip", "addr", "add", "198.51.100.1/32", "dev", "lo"])
        b.run(["ip", "addr", "add", "198.51.100.2/32", "dev", "lo"])
        with (
            Charon.started(a, work / "a", log_levels=QUIET, tuning=TUNING) as ca,
            Charon.started(b, work / "b", log_levels=QUIET, tuning=TUNING) as cb,
        ):
            for c, (la, ra, li, ri, lt, rt) in (
                (ca, ("192.0.2.1", "192.0.2.2", "a", "b", "198.51.100.1", "198.51.100.2")),
                (cb, ("192.0.2.2", "192.0.2.1", "b", "a", "198.51.100.2", "198.51.100.1")),
            ):
                child = Child("c", (lt,), (rt,), (esp,))
                c.load([Conn("bench", (la,), (ra,), li, ri, PSK, (ike,), (child,))])
            ca.initiate("c", ike="bench")  # warm-up: first use of every code path
            failures: list[str] = []
            latencies: list[float] = []
            todo = iter(range(count))
            lock = threading.Lock()

            def worker() -> None:
                while True:
                    with lock:
                        if next(todo, None) is None:
                            return
                    t0 = time.perf_counter()
                    try:
                        ca.initiate("c", ike="bench", timeout=20)
                    except Exception as exc:
                        with lock:
                            failures.append(str(exc)[:300])
                        continue
                    with lock:
                        latencies.append(time.perf_counter() - t0)

            threads = [threading.Thread(target=worker) for _ in range(inflight)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            elapsed = time.perf_counter() - t0
            if failures:
                raise RuntimeError(
                    f"charon {name}: {len(failures)} of {count} setups failed, first: {failures[0]}"
                )
            # Every initiate must have made its own IKE SA (reuse_ikesa = no).
            up = sum(1 for sa in ca.list_sas("bench") if sa.get("state") == "ESTABLISHED")
            if up != count + 1:
                raise RuntimeError(f"charon {name}: {up} IKE SAs up, expected {count + 1}")
    return elapsed, latencies


def bench_charon(count: int, inflight: int, proposals: list[str], work: Path) -> dict[str, Any]:
    """Fresh charons per proposal (teardown of hundreds of SAs is not what we measure)."""
    out: dict[str, Any] = {}
    for name in proposals:
        elapsed, latencies = _charon_once(name, count, inflight, work / name)
        out[name] = _figures(count, elapsed, latencies)
    return out


def _figures(count: int, elapsed: float, latencies: list[float]) -> dict[str, Any]:
    return {
        "setups": count,
        "seconds": round(elapsed, 3),
        "setups_per_s": _rate(count, elapsed),
        "median_latency_ms": round(statistics.median(latencies) * 1000, 2),
    }


# -- part B: our engine ↔ our engine ----------------------------------------------------


def _engine_configs(name: str) -> tuple[Any, Any]:
    from ipsecd.ike.config import (
        ChildConfig,
        Identity,
        IkeConfig,
        parse_child_proposal,
        parse_ike_proposal,
        selectors,
    )

    ike, esp = PROPOSALS[name]

    def make(la: str, ra: str, li: str, ri: str, lt: str, rt: str) -> IkeConfig:
        child = ChildConfig(
            local_ts=selectors([lt]),
            remote_ts=selectors([rt]),
            proposals=(parse_child_proposal(esp),),
        )
        return IkeConfig(
            name="bench",
            local_id=Identity.parse(li),
            remote_id=Identity.parse(ri),
            psk=PSK.encode(),
            child=child,
            ike_proposals=(parse_ike_proposal(ike),),
            local_address=la,
            remote_address=ra,
        )

    return (
        make("192.0.2.1", "192.0.2.2", "a", "b", "198.51.100.1/32", "198.51.100.2/32"),
        make("192.0.2.2", "192.0.2.1", "b", "a", "198.51.100.2/32", "198.51.100.1/32"),
    )


def _engine_pair(ini_cfg: Any, lookup: Any, now: float) -> None:
    """One IKE_SA + CHILD_SA setup between two engines, datagrams shuttled in memory."""
    from ipsecd.ike.events import ChildSaEstablished
    from ipsecd.ike.sa import IkeSa

    ini = IkeSa(
        ini_cfg, initiator=True, local_addr=("192.0.2.1", 500), remote_addr=("192.0.2.2", 500)
    )
    ini.initiate(now)
    resp = None
    for _ in range(8):  # IKE_SA_INIT and IKE_AUTH: two round trips
        sent = ini.datagrams_to_send(now)
        if not sent:
            break
        for data, (_ip, port) in sent:
            src = (ini.local_addr[0], ini.local_addr[1])
            if resp is None:
                resp = IkeSa.accept(lookup, data, ("192.0.2.2", port), src, now)
                if resp is None:
                    raise RuntimeError("our responder refused the IKE_SA_INIT request")
            else:
                resp.receive_datagram(data, src, now)
        assert resp is not None
        for data, _dst in resp.datagrams_to_send(now):
            ini.receive_datagram(data, (resp.local_addr[0], resp.local_addr[1]), now)
    for sa, role in ((ini, "initiator"), (resp, "responder")):
        events = []
        while sa is not None and (ev := sa.next_event()) is not None:
            events.append(ev)
        if not any(isinstance(e, ChildSaEstablished) for e in events):
            raise RuntimeError(f"our {role} did not establish the CHILD SA: {events}")


def bench_ours(count: int, proposals: list[str]) -> dict[str, Any]:
    """In-process, sans-I/O: both engines in this thread, one setup after the other."""
    from ipsecd.ike import lookup_by_address

    out: dict[str, Any] = {}
    for name in proposals:
        ini_cfg, resp_cfg = _engine_configs(name)
        lookup = lookup_by_address([resp_cfg])
        _engine_pair(ini_cfg, lookup, 0.0)  # warm-up
        latencies = []
        t0 = time.perf_counter()
        for i in range(count):
            t1 = time.perf_counter()
            _engine_pair(ini_cfg, lookup, float(i))
            latencies.append(time.perf_counter() - t1)
        out[name] = _figures(count, time.perf_counter() - t0, latencies)
    return out


async def _udp_once(name: str, count: int, inflight: int) -> tuple[float, list[float]]:
    import asyncio

    from agent.ike_driver import IkeDriver
    from ipsecd.ike import EndpointLimits
    from ipsecd.ike.events import ChildSaEstablished, IkeSaFailed

    ini_cfg, resp_cfg = _engine_configs(name)
    # one initiator address makes every setup: raise the per-source admission bounds
    # as part A raises charon's (cookie and block thresholds)
    big = 10**6
    limits = EndpointLimits(cookie_threshold=big, cookie_threshold_ip=big, block_threshold_ip=big,
                            max_half_open=big, init_burst=big, init_rate=float(big))  # fmt: skip
    with netns_pair("iki-") as (a, b):
        async with (
            IkeDriver([ini_cfg], netns=a.name, ipv6=False) as da,
            IkeDriver([resp_cfg], netns=b.name, ipv6=False, limits=limits) as db,
        ):
            started: dict[bytes, float] = {}
            latencies: list[float] = []
            done = asyncio.Event()
            failures: list[str] = []

            async def on_events(batch: list[tuple[Any, Any]]) -> None:
                for _sa, ev in batch:
                    if isinstance(ev, IkeSaFailed):
                        failures.append(ev.reason)
                        done.set()
                    elif isinstance(ev, ChildSaEstablished) and ev.ike_spi_i in started:
                        latencies.append(time.perf_counter() - started.pop(ev.ike_spi_i))
                        if len(latencies) == count:
                            done.set()
                        elif issued[0] < count:
                            start_one()

            issued = [0]

            def start_one() -> None:
                issued[0] += 1
                t = time.perf_counter()
                sa = da.initiate("bench")
                started[sa.spi_i] = t

            da.on_events = on_events

            async def on_responder_events(batch: list[tuple[Any, Any]]) -> None:
                for _sa, ev in batch:
                    if isinstance(ev, IkeSaFailed):
                        failures.append(ev.reason)
                        done.set()

            db.on_events = on_responder_events
            t0 = time.perf_counter()
            for _ in range(min(inflight, count)):
                start_one()
            await asyncio.wait_for(done.wait(), 600)
            elapsed = time.perf_counter() - t0
            if failures:
                raise RuntimeError(f"ours over UDP {name}: setup failed: {failures[0]}")
    return elapsed, latencies


def bench_ours_udp(count: int, inflight: int, proposals: list[str]) -> dict[str, Any]:
    import asyncio

    out: dict[str, Any] = {}
    for name in proposals:
        elapsed, latencies = asyncio.run(_udp_once(name, count, inflight))
        out[name] = _figures(count, elapsed, latencies)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200, help="setups per proposal and side")
    ap.add_argument("--inflight", type=int, default=8, help="setups in flight at once")
    ap.add_argument(
        "--proposal", action="append", choices=sorted(PROPOSALS), help="default: all of them"
    )
    args = ap.parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C: charon, tcpdump and the
    # namespaces are removed by the context managers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("error: bench_ike needs root (network namespaces for charon)", file=sys.stderr)
        return 1
    proposals = args.proposal or list(PROPOSALS)
    result: dict[str, Any] = {
        "unit": "IKE_SA + first CHILD_SA setups per second",
        "inflight": args.inflight,
    }
    with tempfile.TemporaryDirectory(prefix="iki-bench-") as tmp:
        result["charon"] = bench_charon(args.count, args.inflight, proposals, Path(tmp))
    result["ours"] = bench_ours(args.count, proposals)
    result["ours_udp"] = bench_ours_udp(args.count, args.inflight, proposals)

    def ratio(part: str, n: str) -> float:
        return round(result[part][n]["setups_per_s"] / result["charon"][n]["setups_per_s"], 3)

    result["ratio_ours_to_charon"] = {n: ratio("ours", n) for n in proposals}
    result["ratio_ours_udp_to_charon"] = {n: ratio("ours_udp", n) for n in proposals}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
