"""IKE_SA_INIT flood against a responder: our agent's IkeDriver and strongSwan charon,
side by side in the same run, each in its own namespace (issue #16 "Hostile input",
issue #8).  Needs root (network namespaces, charon).

    .venv/bin/python bench/bench_flood.py [--rates 200,1000,5000] [--duration 15]
        [--after 60] [--handshakes 90] [--sources 50] [--modes plain,echo]
        [--responders ours,charon] [--match any|peer] [--workdir DIR]

About 11 minutes with the defaults (both modes, three rates).

Topology (one bridge, every role in its own namespace)::

    flooder  192.0.2.10/24 + 203.0.113.10-59 (the 50 flood sources, routed)
    legit    192.0.2.20/24   the legitimate initiator (our IkeDriver, own process)
    ours     192.0.2.1/24    our IkeDriver as responder (own process, RSS from /proc)
    charon   192.0.2.2/24    charon as responder (defaults, plus a connection)

charon runs with the strongswan.conf tests/support/charon.py writes (its plugins, a log
file at level 0, retransmission settings that only an initiator uses); none of its DoS
settings (cookie_threshold 30, cookie_threshold_ip 3, block_threshold 5, threads 16,
half_open_timeout 30 s) is changed.

The flooder is a small sender: one UDP socket bound to each source address, a pool of
pre-built IKE_SA_INIT requests each with a valid ECP-256 KE (RFC 7296 3.4, RFC 5903),
and for every request a fresh SPIi and nonce patched in; it paces itself to the target
rate and reports the rate it achieved, and what came back (cookies, full answers,
notifications).  Its requests never complete: it never sends IKE_AUTH.  Mode ``plain``:
it ignores the cookies it is sent; mode ``echo``: it resends each request with the
cookie it was given (RFC 7296 2.6; an attacker that owns its source addresses can), so
cookies no longer shed it and only the half-open and rate bounds do.

Both responders have one connection for the legitimate initiator that accepts any
remote address ("road warrior", so every flood request is a valid one for it and costs
a Diffie-Hellman when admitted; ``--match peer`` restricts it to the initiator's
address).  Proposal: AES-GCM-256, PRF-HMAC-SHA-256, ECP-256.  Meanwhile the legitimate
initiator makes ``--handshakes`` full handshakes (IKE_SA_INIT, with its cookie round
when asked, and IKE_AUTH with a PSK and the first CHILD SA) at a steady pace over the
flood, deletes each once it is up, and records each one's latency.

Per rate and per responder: half-open SAs (peak; ours ``IkeEndpoint.half_open``,
charon vici ``stats``), RSS idle → peak → ``--after`` s after the flood (and when it was
back within 10 % of idle), CPU during the flood, the legitimate handshakes (share
complete, share within 1 s, latency p50/p99), cookies sent, UDP receive drops
(``/proc/net/snmp`` of the responder's namespace) and, for ours, datagrams the driver's
queue dropped (agent/ike_driver.py ``QUEUE_LIMIT``).  To save time, one responder's
after-flood observation overlaps the other's flood (an idle responder needs no CPU).

Prints one JSON object as the last stdout line (a table on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import queue
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PSK = "flood-bench-psk-0123456789abcdef"
IKE_PROPOSAL = "aes256gcm16-prfsha256-ecp256"
ESP_PROPOSAL = "aes256gcm16"
ECP256 = 19  # RFC 5903
FLOODER = "192.0.2.10"
LEGIT = "192.0.2.20"
OURS = "192.0.2.1"
CHARON = "192.0.2.2"
FLOOD_NET = "203.0.113"
FLOOD_FIRST = 10
#: inner addresses of the legitimate CHILD SA (charon on the host kernel wants them
#: distinct from the IKE addresses: LAB-NOTES, strongSwan section)
LEGIT_INNER = "198.51.100.20"
OURS_INNER = "198.51.100.1"
CHARON_INNER = "198.51.100.2"
IKE_PORT = 500
#: IKE header fields (RFC 7296 3.1) and payload numbers (3.2) the flooder reads.
_HDR = 28
_NOTIFY = 41
_SA = 33
_COOKIE = 16390
_LATENCY_TARGET = 1.0
#: "back to idle": RSS within this factor of the idle RSS
_IDLE_SLACK = 1.10


def _now() -> float:
    return time.monotonic()


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ====================================================================== the flooder


def _request_pool(size: int) -> tuple[list[bytes], int]:
    """``size`` IKE_SA_INIT requests, each with its own valid ECP-256 KE; returns them
    and the offset of the 32-byte nonce (the same in all: same payload sizes)."""
    from ipsecd.ike import parse_ike_proposal
    from ipsecd.ike.codec import KePayload, Message, NoncePayload, SaPayload, build_message
    from ipsecd.ike.constants import ExchangeType, HeaderFlag, ProtocolId
    from ipsecd.ike.crypto import dh_generate
    from ipsecd.ike.negotiate import ZERO_SPI, wire_proposals

    props = wire_proposals((parse_ike_proposal(IKE_PROPOSAL),), ProtocolId.IKE, b"")
    marker = b"\xa5" * 32
    pool = []
    offset = -1
    for _ in range(size):
        ke = dh_generate(ECP256).public
        msg = Message(
            b"\x01" * 8,
            ZERO_SPI,
            ExchangeType.IKE_SA_INIT,
            int(HeaderFlag.INITIATOR),
            0,
            (SaPayload(props), KePayload(ECP256, ke), NoncePayload(marker)),
        )
        raw = build_message(msg)
        offset = raw.rindex(marker)
        pool.append(raw)
    return pool, offset


def _with_cookie(request: bytes, cookie: bytes) -> bytes:
    """The request again with N(COOKIE) as its first payload (RFC 7296 2.6, 3.10)."""
    notify = struct.pack("!BBHBBH", request[16], 0, 8 + len(cookie), 0, 0, _COOKIE) + cookie
    body = request[_HDR:]
    head = request[:16] + bytes([_NOTIFY]) + request[17:24]
    return head + struct.pack("!I", _HDR + len(notify) + len(body)) + notify + body


def _classify(reply: bytes) -> tuple[str, bytes]:
    """What a responder answered: ('cookie', data), ('answer', b''), ('notify:N', b'')."""
    if len(reply) < _HDR + 8 or reply[18] != 34:
        return "other", b""
    first = reply[16]
    if first == _SA:
        return "answer", b""
    if first == _NOTIFY:
        ntype = int.from_bytes(reply[_HDR + 6 : _HDR + 8], "big")
        if ntype == _COOKIE:
            plen = int.from_bytes(reply[_HDR + 2 : _HDR + 4], "big")
            return "cookie", reply[_HDR + 8 : _HDR + plen]
        return f"notify:{ntype}", b""
    return f"payload:{first}", b""


def run_flooder(args: argparse.Namespace) -> int:
    """Send ``rate`` IKE_SA_INIT requests/s for ``duration`` s from ``sources`` addresses."""
    pool, nonce_off = _request_pool(args.pool)
    socks = []
    sel = selectors.DefaultSelector()
    for i in range(args.sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((f"{FLOOD_NET}.{FLOOD_FIRST + i}", IKE_PORT))
        s.connect((args.target, IKE_PORT))
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, i)
    _emit({"ready": True})
    if sys.stdin.readline().strip() != "go":
        return 1
    replies: dict[str, int] = {}
    sent = send_errors = echoed = 0
    recent: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()
    rusage0 = os.times()
    t0 = _now()
    end = t0 + args.duration
    last_send = t0
    n_pool, n_socks = len(pool), len(socks)
    rate = float(args.rate)
    batch_cap = max(1, int(rate / 100))  # never more than 10 ms worth in one go
    while True:
        now = _now()
        if now >= end:
            break
        due = min(int((now - t0) * rate), sent + batch_cap)
        if due > sent:
            rnd = os.urandom(40 * (due - sent))
            for k in range(due - sent):
                buf = bytearray(pool[(sent + k) % n_pool])
                buf[0:8] = rnd[40 * k : 40 * k + 8]
                buf[0] |= 0x80  # never the zero SPI (RFC 7296 2.6)
                buf[nonce_off : nonce_off + 32] = rnd[40 * k + 8 : 40 * k + 40]
                idx = (sent + k) % n_socks
                data = bytes(buf)
                try:
                    socks[idx].send(data)
                except OSError:
                    send_errors += 1
                    continue
                if args.echo_cookies:
                    recent[data[:8]] = (idx, data)
                    if len(recent) > 65536:
                        recent.popitem(last=False)
            sent = due
            last_send = _now()
        # read whatever came back, sleep until the next send is due (at most 2 ms)
        wait = max(0.0, min(0.002, t0 + (sent + 1) / rate - _now()))
        for key, _ in sel.select(wait):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            for _ in range(256):
                try:
                    reply = sock.recv(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    replies["error"] = replies.get("error", 0) + 1
                    break
                kind, cookie = _classify(reply)
                replies[kind] = replies.get(kind, 0) + 1
                if kind == "cookie" and args.echo_cookies:
                    orig = recent.pop(reply[:8], None)
                    if orig is not None:
                        with contextlib.suppress(OSError):
                            socks[orig[0]].send(_with_cookie(orig[1], cookie))
                            echoed += 1
    elapsed = last_send - t0
    # late answers (bounded: 1 s)
    drain_end = _now() + 1.0
    while (left := drain_end - _now()) > 0:
        for key, _ in sel.select(left):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            with contextlib.suppress(OSError):
                kind, _c = _classify(sock.recv(2048))
                replies[kind] = replies.get(kind, 0) + 1
    rusage1 = os.times()
    for s in socks:
        s.close()
    cpu = (rusage1.user - rusage0.user) + (rusage1.system - rusage0.system)
    _emit(
        {
            "target_rate": args.rate,
            "sent": sent,
            "send_errors": send_errors,
            "seconds": round(elapsed, 3),
            "achieved_rate": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
            "cookie_echoes": echoed,
            "replies": replies,
            "flooder_cpu_pct": round(100 * cpu / max(elapsed, 1e-9), 1),
        }
    )
    return 0


# ====================================================================== our responder


def _ours_configs(match_any: bool) -> tuple[Any, Any]:
    """(initiator config, responder config) of the legitimate connection."""
    from ipsecd.ike import (
        ChildConfig,
        Identity,
        IkeConfig,
        parse_child_proposal,
        parse_ike_proposal,
    )
    from ipsecd.ike.config import selectors as ts

    def make(name: str, la: str, ra: str | None, li: str, ri: str, lt: str, rt: str) -> Any:
        return IkeConfig(
            name=name,
            local_id=Identity.parse(li),
            remote_id=Identity.parse(ri),
            psk=PSK.encode(),
            child=ChildConfig(
                local_ts=ts([lt + "/32"]),
                remote_ts=ts([rt + "/32"]),
                proposals=(parse_child_proposal(ESP_PROPOSAL),),
            ),
            ike_proposals=(parse_ike_proposal(IKE_PROPOSAL),),
            local_address=la,
            remote_address=ra,
        )

    ini = make("legit", LEGIT, OURS, "legit", "resp", LEGIT_INNER, OURS_INNER)
    resp = make("legit", OURS, None if match_any else LEGIT, "resp", "legit", OURS_INNER,
                LEGIT_INNER)  # fmt: skip
    return ini, resp


def run_responder(args: argparse.Namespace) -> int:
    """Our IkeDriver as responder in this process's namespace; a stats line every
    ``--every`` s on stdout; stops on 'quit' or end of stdin."""
    import asyncio
    import logging

    from agent.ike_driver import IkeDriver

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _ini, resp = _ours_configs(args.match == "any")

    async def main() -> None:
        async def discard(_batch: list[Any]) -> None:
            return None  # the agent would apply them to the kernel

        drv = IkeDriver([resp], ipv6=False, on_events=discard)
        await drv.start()
        ep = drv.endpoint
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_stdin() -> None:
            line = sys.stdin.readline()
            if not line or line.strip() == "quit":
                stop.set()

        loop.add_reader(sys.stdin.fileno(), on_stdin)
        peak = 0
        next_emit = _now()
        _emit({"ready": True})
        try:
            while not stop.is_set():
                peak = max(peak, ep.half_open)
                if _now() >= next_emit:
                    next_emit += args.every
                    _emit(
                        {
                            "t": _now(),
                            "half_open": ep.half_open,
                            "half_open_peak": peak,
                            "filed": len(ep._filed),
                            "lingering": len(ep._lingering),
                            "overruns": drv.overruns,
                            "stats": ep.stats.as_dict(),
                        }
                    )
                    peak = ep.half_open
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.02)
        finally:
            await drv.close()

    asyncio.run(main())
    return 0


# ====================================================================== legitimate initiator


def run_initiator(args: argparse.Namespace) -> int:
    """``count`` full handshakes at a steady pace over ``over`` s (after 'go'); one
    warm-up handshake first.  Prints the latencies (None: did not complete)."""
    import asyncio
    import logging

    from agent.ike_driver import IkeDriver
    from ipsecd.ike import ChildSaEstablished, IkeSaDeleted, IkeSaFailed
    from ipsecd.ike.config import selectors as ts_of

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    ini, _resp = _ours_configs(True)
    inner = CHARON_INNER if args.target == CHARON else OURS_INNER
    ini = dataclasses.replace(
        ini,
        remote_address=args.target,
        child=dataclasses.replace(ini.child, remote_ts=ts_of([inner + "/32"])),
    )

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started: dict[bytes, tuple[int, float]] = {}
        latencies: list[float | None] = [None] * args.count
        failures: dict[str, int] = {}
        done = asyncio.Event()
        outstanding = [0]
        warm = asyncio.Event()
        drv: IkeDriver

        async def on_events(batch: list[tuple[Any, Any]]) -> None:
            for sa, ev in batch:
                key = sa.spi_i
                if isinstance(ev, ChildSaEstablished) and key in started:
                    i, t0 = started.pop(key)
                    if i >= 0:
                        latencies[i] = time.perf_counter() - t0
                    else:
                        warm.set()
                    loop.call_soon(drv.delete, sa)
                    outstanding[0] -= 1
                elif isinstance(ev, IkeSaFailed | IkeSaDeleted) and key in started:
                    i, _t0 = started.pop(key)
                    reason = getattr(ev, "reason", "deleted")[:80]
                    failures[reason] = failures.get(reason, 0) + 1
                    outstanding[0] -= 1
                    if i < 0:
                        warm.set()
                if outstanding[0] == 0 and all_started[0]:
                    done.set()

        all_started = [False]
        drv = IkeDriver([ini], ipv6=False, on_events=on_events)
        async with drv:
            sa = drv.initiate("legit")
            started[sa.spi_i] = (-1, time.perf_counter())
            outstanding[0] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(warm.wait(), 20)
            _emit({"ready": warm.is_set()})
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.strip() != "go":
                return {}
            interval = args.over / args.count
            t0 = loop.time()
            for i in range(args.count):
                delay = t0 + i * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                sa = drv.initiate("legit")
                started[sa.spi_i] = (i, time.perf_counter())
                outstanding[0] += 1
            all_started[0] = True
            if outstanding[0] == 0:
                done.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), args.straggle)
            await asyncio.sleep(0.5)  # let the last deletes leave
        return {"latencies": latencies, "failures": failures}

    _emit(asyncio.run(main()))
    return 0


# ====================================================================== orchestration


class Child:
    """A helper process in a namespace, spoken to by JSON lines (reader thread)."""

    def __init__(self, ns: Any, argv: list[str], log: Path) -> None:
        self.log = log.open("wb")
        self.proc = ns.popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(raw))

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.flush()

    def recv(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(
                f"{what}: no answer within {timeout:g} s (exit {self.proc.poll()}); "
                f"see {self.log.name}"
            ) from None

    def stop(self) -> None:
        self.send("quit")
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.log.close()


def _rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _udp_counters(ns: Any) -> dict[str, int]:
    """Udp: line of /proc/net/snmp inside ``ns``."""
    out = ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
    rows = [ln.split()[1:] for ln in out if ln.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    return {k: int(v) for k, v in zip(rows[0], rows[1], strict=False)}


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _qemu_running() -> bool:
    return subprocess.run(["pgrep", "qemu"], capture_output=True, check=False).returncode == 0


@dataclass
class Responder:
    """One responder under test and its time series."""

    name: str
    ns: Any
    addr: str
    pid: int
    half_open_of: Callable[[], dict[str, Any] | None]
    stop: Callable[[], None]
    rss: list[tuple[float, int]] = field(default_factory=list)
    half_open: list[tuple[float, int]] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    def sample(self, every: float) -> None:
        next_t = _now()
        while not self.stopped.is_set():
            t = _now()
            rss = _rss_kb(self.pid)
            if rss is not None:
                self.rss.append((t, rss))
            info = self.half_open_of()
            if info is not None:
                self.half_open.append((info.pop("t", t), int(info["half_open_peak"])))
                self.extra.append({"t": t, **info})
            next_t += every
            self.stopped.wait(max(0.0, next_t - _now()))


def _start_ours(ns: Any, log: Path, match: str) -> Responder:
    me = str(Path(__file__).resolve())
    child = Child(ns, [sys.executable, me, "_responder", "--match", match, "--every", "0.2"], log)
    first = child.recv(30, "our responder start")
    if not first.get("ready"):
        raise RuntimeError(f"our responder did not start: {first}")
    latest: dict[str, Any] = {}

    def half_open() -> dict[str, Any] | None:
        got = None
        peak = 0
        while True:
            try:
                got = child.lines.get_nowait()
            except queue.Empty:
                break
            latest.update(got)
            peak = max(peak, int(got.get("half_open_peak", 0)))
        if got is None:
            return None
        return {**latest, "half_open_peak": peak}

    return Responder("ours", ns, OURS, child.pid, half_open, child.stop)


def _start_charon(ns: Any, work: Path, match: str) -> Responder:
    from tests.support.charon import Charon, Conn
    from tests.support.charon import Child as CChild

    charon = Charon(ns, work / "charon", log_levels={"default": 0})
    charon.start()
    try:
        remote = ("%any",) if match == "any" else (LEGIT,)
        child = CChild("legit", (CHARON_INNER + "/32",), (LEGIT_INNER + "/32",), (ESP_PROPOSAL,))
        charon.load(
            [Conn("legit", (CHARON,), remote, "resp", "legit", PSK, (IKE_PROPOSAL,), (child,))]
        )
    except BaseException:
        charon.stop()
        raise
    assert charon.proc is not None
    lock = threading.Lock()

    def half_open() -> dict[str, Any] | None:
        with lock:
            try:
                st = charon.stats()
            except Exception:
                return None
        ikesas = st.get("ikesas", {})
        workers = st.get("workers", {})
        return {
            "half_open_peak": int(ikesas.get("half-open", 0)),
            "ike_sas": int(ikesas.get("total", 0)),
            "workers_active": workers.get("active"),
            "queues": st.get("queues"),
        }

    return Responder("charon", ns, CHARON, charon.proc.pid, half_open, charon.stop)


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p * len(s)) - 1)]


@dataclass
class Window:
    """Times of one responder's flood."""

    idle_from: float
    start: float = 0.0
    end: float = 0.0
    after: float = 0.0
    cpu0: float = 0.0
    cpu1: float = 0.0
    udp0: dict[str, int] = field(default_factory=dict)
    udp1: dict[str, int] = field(default_factory=dict)
    flood: dict[str, Any] = field(default_factory=dict)
    legit: dict[str, Any] = field(default_factory=dict)
    load_start: str = ""
    load_end: str = ""


def _flood_one(
    resp: Responder,
    flooder_ns: Any,
    legit_ns: Any,
    rate: int,
    mode: str,
    args: argparse.Namespace,
    work: Path,
    win: Window,
) -> None:
    me = str(Path(__file__).resolve())
    flood_argv = [
        sys.executable, me, "_flooder", "--target", resp.addr, "--rate", str(rate),
        "--duration", str(args.duration), "--sources", str(args.sources),
    ] + (["--echo-cookies"] if mode == "echo" else [])  # fmt: skip
    over = max(1.0, args.duration - 2.0)
    legit_argv = [
        sys.executable, me, "_initiator", "--target", resp.addr, "--count",
        str(args.handshakes), "--over", str(over), "--straggle", str(args.straggle),
    ]  # fmt: skip
    fl = Child(flooder_ns, flood_argv, work / f"flooder-{mode}-{resp.name}-{rate}.log")
    lg = Child(legit_ns, legit_argv, work / f"legit-{mode}-{resp.name}-{rate}.log")
    try:
        if not fl.recv(60, "flooder start").get("ready"):
            raise RuntimeError("flooder not ready")
        if not lg.recv(60, "legitimate initiator warm-up").get("ready"):
            raise RuntimeError(f"legitimate initiator: warm-up handshake with {resp.name} failed")
        win.udp0 = _udp_counters(resp.ns)
        win.load_start = _load()
        win.cpu0 = _cpu_s(resp.pid)
        win.start = _now()
        fl.send("go")
        time.sleep(1.0)  # the flood is on before the first legitimate handshake
        lg.send("go")
        win.flood = fl.recv(args.duration + 30, "flooder result")
        win.end = _now()
        win.cpu1 = _cpu_s(resp.pid)
        win.load_end = _load()
        win.legit = lg.recv(args.straggle + 30, "legitimate initiator result")
    finally:
        fl.stop()
        lg.stop()


def _figures(resp: Responder, win: Window, args: argparse.Namespace) -> dict[str, Any]:
    idle = [r for t, r in resp.rss if win.idle_from <= t < win.start]
    idle_kb = statistics.median(idle) if idle else None
    during = [r for t, r in resp.rss if win.start <= t <= win.after]
    after = [r for t, r in resp.rss if t <= win.after]
    peak_kb = max(during) if during else None
    after_kb = after[-1] if after else None
    mid = [r for t, r in resp.rss if t <= win.end + args.after / 2]
    mid_kb = mid[-1] if mid else None
    end_kb = next((r for t, r in resp.rss if t >= win.end), None)
    back = None
    if idle_kb is not None:
        for t, r in resp.rss:
            if t >= win.end and r <= idle_kb * _IDLE_SLACK:
                back = round(t - win.end, 1)
                break
            if t > win.after:
                break
    ho_flood = [h for t, h in resp.half_open if win.start <= t <= win.end + 1.0]
    ho_after = [h for t, h in resp.half_open if t <= win.after]
    lat = win.legit.get("latencies", [])
    ok = [x for x in lat if x is not None]
    n = len(lat) or 1
    fl = win.flood
    replies = fl.get("replies", {})
    out: dict[str, Any] = {
        "load_at_flood_start": win.load_start,
        "load_at_flood_end": win.load_end,
        "flood_achieved_per_s": fl.get("achieved_rate"),
        "flood_sent": fl.get("sent"),
        "flooder_cpu_pct": fl.get("flooder_cpu_pct"),
        "half_open_peak": max(ho_flood) if ho_flood else None,
        "half_open_after": ho_after[-1] if ho_after else None,
        "rss_idle_mb": _mb(idle_kb),
        "rss_peak_mb": _mb(peak_kb),
        "rss_flood_end_mb": _mb(end_kb),
        "rss_half_after_mb": _mb(mid_kb),
        "rss_after_mb": _mb(after_kb),
        "rss_peak_over_idle": round(peak_kb / idle_kb, 2) if peak_kb and idle_kb else None,
        "rss_back_within_10pct_s": back,
        "cpu_pct_during_flood": round(
            100 * (win.cpu1 - win.cpu0) / max(win.end - win.start, 1e-9), 1
        ),
        "legit_handshakes": len(lat),
        "legit_completed_pct": round(100 * len(ok) / n, 1),
        "legit_within_1s_pct": round(100 * sum(1 for x in ok if x <= _LATENCY_TARGET) / n, 1),
        "legit_p50_ms": _ms(_pct(ok, 0.50)),
        "legit_p99_ms": _ms(_pct(ok, 0.99)),
        "legit_max_ms": _ms(max(ok) if ok else None),
        "legit_failures": win.legit.get("failures", {}),
        "cookies_to_flooder": replies.get("cookie", 0),
        "answers_to_flooder": replies.get("answer", 0),
        "flooder_replies": replies,
        "cookie_echoes": fl.get("cookie_echoes", 0),
        "udp_rcvbuf_errors": _delta(win, "RcvbufErrors"),
        "udp_in_errors": _delta(win, "InErrors"),
        "udp_in_datagrams": _delta(win, "InDatagrams"),
    }
    if resp.name == "ours":
        stats0 = next((e for e in resp.extra if e["t"] >= win.start), None)
        stats1 = next((e for e in reversed(resp.extra) if e["t"] <= win.after), None)
        if stats0 and stats1:
            s0, s1 = stats0.get("stats", {}), stats1.get("stats", {})
            d = {k: s1.get(k, 0) - s0.get(k, 0) for k in s1}
            out["cookies_sent"] = d.get("cookies_sent")
            out["endpoint"] = d
            out["driver_queue_drops"] = stats1.get("overruns", 0) - stats0.get("overruns", 0)
            out["sas_filed_peak"] = max(
                (e.get("filed", 0) for e in resp.extra if win.start <= e["t"] <= win.after),
                default=None,
            )
            out["sas_filed_after"] = stats1.get("filed")
    else:
        # charon's vici stats do not count cookies: what reached the flooder
        out["cookies_sent"] = replies.get("cookie", 0)
        out["ike_sas_peak"] = max(
            (e.get("ike_sas", 0) for e in resp.extra if win.start <= e["t"] <= win.after),
            default=None,
        )
    return out


def _delta(win: Window, key: str) -> int | None:
    if key not in win.udp0 or key not in win.udp1:
        return None
    return win.udp1[key] - win.udp0[key]


def _mb(kb: float | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 1)


@contextlib.contextmanager
def _topology(prefix: str, sources: int) -> Iterator[dict[str, Any]]:
    from tests.support.netns import netns_star

    with netns_star(
        prefix, [[f"{FLOODER}/24"], [f"{LEGIT}/24"], [f"{OURS}/24"], [f"{CHARON}/24"]]
    ) as (_switch, (fl, lg, ours, ch)):
        for i in range(sources):
            fl.run(["ip", "addr", "add", f"{FLOOD_NET}.{FLOOD_FIRST + i}/32", "dev", "veth0"])
        for ns in (ours, ch, lg):
            ns.run(["ip", "route", "add", f"{FLOOD_NET}.0/24", "via", FLOODER])
        lg.run(["ip", "addr", "add", f"{LEGIT_INNER}/32", "dev", "lo"])
        ch.run(["ip", "addr", "add", f"{CHARON_INNER}/32", "dev", "lo"])
        ours.run(["ip", "addr", "add", f"{OURS_INNER}/32", "dev", "lo"])
        yield {"flooder": fl, "legit": lg, "ours": ours, "charon": ch}


def _wait_for_quiet(limit: float) -> float:
    """Wait (at most ``limit`` s) while a kernel-lab VM runs; seconds waited."""
    t0 = _now()
    while _qemu_running() and _now() - t0 < limit:
        time.sleep(5)
    return round(_now() - t0, 1)


def run_rate(
    rate: int, mode: str, topo: dict[str, Any], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Fresh responders, each flooded in turn (see the module doc)."""
    waited = _wait_for_quiet(args.wait_qemu)
    out: dict[str, Any] = {
        "waited_for_qemu_s": waited,
        "qemu_running": _qemu_running(),
        "load_at_start": _load(),
    }
    responders: list[Responder] = []
    threads: list[threading.Thread] = []
    wins: dict[str, Window] = {}
    try:
        for name in args.responders:
            if name == "ours":
                r = _start_ours(topo["ours"], work / f"ours-{mode}-{rate}.log", args.match)
            else:
                r = _start_charon(topo["charon"], work / f"{mode}-{rate}", args.match)
            responders.append(r)
            th = threading.Thread(target=r.sample, args=(0.1,), daemon=True)
            th.start()
            threads.append(th)
        idle_from = _now() + 1.0
        time.sleep(args.settle)
        for r in responders:
            win = Window(idle_from)
            wins[r.name] = win
            _flood_one(r, topo["flooder"], topo["legit"], rate, mode, args, work, win)
            win.after = win.end + args.after
        last = max(w.after for w in wins.values())
        while (left := last - _now()) > 0:
            time.sleep(min(left, 1.0))
        for r in responders:
            wins[r.name].udp1 = _udp_counters(r.ns)
    finally:
        for r in responders:
            r.stopped.set()
        for th in threads:
            th.join(5)
        for r in responders:
            r.stop()
    for r in responders:
        out[r.name] = _figures(r, wins[r.name], args)
    out["load_at_end"] = _load()
    return out


def _table(result: dict[str, Any]) -> str:
    cols = [
        ("flood/s", "flood_achieved_per_s"),
        ("half-open pk", "half_open_peak"),
        ("RSS idle", "rss_idle_mb"),
        ("peak", "rss_peak_mb"),
        ("+after", "rss_after_mb"),
        ("back s", "rss_back_within_10pct_s"),
        ("CPU %", "cpu_pct_during_flood"),
        ("legit ok %", "legit_completed_pct"),
        ("<=1s %", "legit_within_1s_pct"),
        ("p50 ms", "legit_p50_ms"),
        ("p99 ms", "legit_p99_ms"),
        ("cookies", "cookies_sent"),
        ("rcvbuf drops", "udp_rcvbuf_errors"),
        ("queue drops", "driver_queue_drops"),
    ]
    lines = ["mode  rate   resp    " + " | ".join(c for c, _ in cols) + " | load"]
    for mode, rates in result["modes"].items():
        for rate, per in rates.items():
            for name in ("ours", "charon"):
                if name not in per:
                    continue
                f = per[name]
                cells = " | ".join(str(f.get(k, "-")) for _, k in cols)
                load = f.get("load_at_flood_end")
                lines.append(f"{mode:<5} {rate:>6} {name:<7} {cells} | {load}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = argv[0] if argv and argv[0].startswith("_") else None
    if sub is not None:
        argv = argv[1:]
    ap.add_argument("--rates", default="200,1000,5000", help="flood rates, requests/s")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of flood")
    ap.add_argument("--after", type=float, default=60.0, help="seconds observed after")
    ap.add_argument("--settle", type=float, default=4.0, help="idle seconds before floods")
    ap.add_argument("--handshakes", type=int, default=90)
    ap.add_argument("--sources", type=int, default=50, help="flood source addresses (≤ 200)")
    ap.add_argument("--straggle", type=float, default=20.0, help="wait for late handshakes")
    ap.add_argument(
        "--modes",
        default="plain,echo",
        help="plain: the flooder ignores cookies; echo: it returns them (RFC 7296 2.6)",
    )
    ap.add_argument("--echo-cookies", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--match", choices=("any", "peer"), default="any")
    ap.add_argument("--responders", default="ours,charon")
    ap.add_argument("--workdir", help="keep logs here (default: a temporary folder)")
    ap.add_argument("--wait-qemu", type=float, default=300.0, help="wait this long for no VM")
    # helper processes
    ap.add_argument("--target", default=OURS)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--count", type=int, default=90)
    ap.add_argument("--over", type=float, default=18.0)
    ap.add_argument("--every", type=float, default=0.2)
    args = ap.parse_args(argv)
    if sub == "_flooder":
        return run_flooder(args)
    if sub == "_responder":
        return run_responder(args)
    if sub == "_initiator":
        return run_initiator(args)
    if sub is not None:
        ap.error(f"unknown helper {sub}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("error: bench_flood needs root (network namespaces, charon)", file=sys.stderr)
        return 1
    if not 1 <= args.sources <= 200:
        ap.error("--sources must be 1..200")
    args.responders = [r for r in args.responders.split(",") if r]
    rates = [int(r) for r in args.rates.split(",") if r]
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"plain", "echo"}:
        ap.error("--modes: plain and/or echo")
    result: dict[str, Any] = {
        "unit": "per rate and responder; RSS in MiB, CPU in % of one core",
        "duration_s": args.duration,
        "after_s": args.after,
        "handshakes": args.handshakes,
        "sources": args.sources,
        "match": args.match,
        "proposal": IKE_PROPOSAL,
        "cpus": os.cpu_count(),
        "modes": {},
    }
    with (
        tempfile.TemporaryDirectory(prefix="ifl-bench-") as tmp_dir,
        _topology("ifl-", args.sources) as topo,
    ):
        work = Path(args.workdir or tmp_dir)
        work.mkdir(parents=True, exist_ok=True)
        for mode in modes:
            per_rate = result["modes"].setdefault(mode, {})
            for rate in rates:
                print(f"# {mode} flood {rate}/s (load {_load()})", file=sys.stderr, flush=True)
                per_rate[str(rate)] = run_rate(rate, mode, topo, args, work)
    print(_table(result), file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
