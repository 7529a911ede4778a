"""Certificate-authenticated IKE handshakes per second: our engine and strongSwan charon
side by side, same CA, certificates and proposal, same run.  Needs root (namespaces).

    .venv/bin/python bench/bench_ike_certs.py [--count N] [--inflight K] [--case NAME]
    .venv/bin/python bench/bench_ike_certs.py --quick     # a smoke run, ~20 s

Each handshake is IKE_SA_INIT + IKE_AUTH (with the first CHILD SA), both sides signing
with an end-entity certificate issued by a test intermediate CA under a test root (the
chain is sent in CERT payloads and validated up to the root), for two key kinds:
ECDSA P-256 and RSA 3072 (the CAs use the same kind of key).  The certificates are
made for the real current time: charon checks them against its clock.

Part ``in_process``: two of our ``IkeSa`` engines in one process, sans-I/O, datagrams
shuttled in memory one setup after the other (as bench_ike.py part B), for each key
kind and, as the baseline of the same run, with a PSK.  ``profile``: the same loop
under cProfile, the time split into signing, verifying, path validation, DH, ... (the
top 5 by cumulative time) and the top 5 functions by own time.

Part ``udp``: over real UDP between two namespaces, N setups with K in flight, from
one initiator to (a) our responder and (b) charon, for both initiators:

* ``initiator_charon``: charon started through vici ``initiate`` from K threads, as
  bench_ike.py part A does (``reuse_ikesa = no``).  charon as initiator costs more CPU
  per setup than either responder (4-10 ms in our runs: its per-IKE_SA work and the
  control-log stream of each vici ``initiate``), so on a two-core machine these rows
  are bound by the initiator and their rate ratios stay near 1: compare
  ``cpu_ms_per_setup`` there.
* ``initiator_ours``: our ``IkeDriver`` in this process, K setups in flight (as
  bench_ike.py part C): one Python thread, cheaper per setup than charon's initiator.

Our responder is an ``IkeDriver`` in a process of its own (one core, as charon would
be free to use both), charon a daemon with kernel-libipsec (so, as in the interop
tests, it claims a NAT and IKE_AUTH goes over port 4500).  ``rsa3072-frag576`` is
RSA 3072 with a 576-byte fragment size on both sides (charon ``fragment_size``, ours
``IkeConfig.fragment_size``): IKE_AUTH travels in RFC 7383 fragments.  charon is set to
``rsa_pss = yes`` so that both implementations sign RSA with RSASSA-PSS.

Correctness is checked while measuring: every setup must end ESTABLISHED with the peer
authenticated by the expected scheme (our ``IkeSaEstablished.peer_auth``, charon's
"authentication of '...' with ... successful" log lines); otherwise the bench exits 1
saying why (with charon's log lines when charon is involved).  The rate is setups over
the wall time from the first initiate to the last completion; latencies are per setup;
``ratio_ours_to_charon`` is our responder's rate over charon's, same initiator.
``cpu_ms_per_setup`` is the CPU time (user + system) each side used per setup during
the timed run: our processes' ``process_time``, charon's from /proc (10 ms ticks); it
depends far less than the rates on what else runs on the machine (``loadavg_*``);
``responder_cpu_ours_over_charon`` compares the responders by it (above 1: ours costs
more).  charon's figure includes what its kernel-libipsec and vici do per setup.

Prints one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import json
import multiprocessing
import os
import platform
import pstats
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.charon import CHARON_BIN, SWANCTL_BIN, Charon
from tests.support.netns import netns_pair

IKE_PROPOSAL = "aes256gcm16-prfsha256-ecp256"  # bench_ike.py's gcm256-ecp256
ESP_PROPOSAL = "aes256gcm16"
PSK = "bench-psk-0123456789abcdef"
I_IP, R_IP = "192.0.2.1", "192.0.2.2"
I_INNER, R_INNER = "198.51.100.1", "198.51.100.2"
I_ID, R_ID = "initiator.bench", "responder.bench"
#: key kind → (tests.support.pki key name, our scheme name, charon's scheme name)
KINDS = {
    "ecdsa-p256": ("p256", "ecdsa-sha256", "ECDSA_WITH_SHA256_DER"),
    "rsa3072": ("rsa3072", "rsa-pss-sha256", "RSA_EMSA_PSS_SHA2_256_SALT_32"),
}
#: UDP case → (key kind, fragment size)
CASES = {
    "ecdsa-p256": ("ecdsa-p256", 1280),
    "rsa3072": ("rsa3072", 1280),
    "rsa3072-frag576": ("rsa3072", 576),
}
TUNING = {  # as bench_ike.py: every initiate a new IKE SA, no admission limits
    "threads": "64",
    "reuse_ikesa": "no",
    "cookie_threshold": "1000000",
    "cookie_threshold_ip": "1000000",
    "block_threshold": "1000000",
    "init_limit_half_open": "0",
    "ikesa_table_size": "1024",
    "ikesa_table_segments": "16",
    "rsa_pss": "yes",
}
#: "authentication of ..." lines are IKE level 1; nothing else is logged.
CHARON_LOG = {"default": 0, "ike": 1}
DAY = 86_400.0


class BenchError(RuntimeError):
    """A setup failed or was not what was expected: the bench exits 1 with this text."""


# -- the test PKI ----------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    """One key kind's PKI as PEM (picklable: it goes to the responder process)."""

    kind: str
    root: bytes
    inter: bytes
    ini_cert: bytes
    ini_key: bytes = field(repr=False)
    resp_cert: bytes = field(repr=False)
    resp_key: bytes = field(repr=False)


def make_material(kind: str, now: float) -> Material:
    """Root → intermediate → two end entities (initiator, responder), valid around
    ``now`` (the real time), all keys of ``kind``."""
    from tests.support import pki

    key = KINDS[kind][0]
    root = pki.ca(
        f"Bench Root {kind}", key=key, not_before=now - 30 * DAY, not_after=now + 3650 * DAY
    )
    inter = pki.ca(
        f"Bench Intermediate {kind}",
        issuer=root,
        key=key,
        path_len=0,
        not_before=now - 30 * DAY,
        not_after=now + 3650 * DAY,
    )
    ee = {
        ident: pki.end_entity(
            inter, ident, key=key, dns=(ident,), not_before=now - DAY, not_after=now + 365 * DAY
        )
        for ident in (I_ID, R_ID)
    }
    return Material(
        kind, root.pem, inter.pem, ee[I_ID].pem, ee[I_ID].key_pem, ee[R_ID].pem, ee[R_ID].key_pem
    )


def engine_config(
    mat: Material | None, *, initiator: bool, fragment_size: int = 1280, psk: bool = False
) -> Any:
    """Our IkeConfig for one side; ``psk``: the PSK baseline (no certificates)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from ipsecd.ike.auth import Trust
    from ipsecd.ike.config import (
        ChildConfig,
        Identity,
        IkeConfig,
        parse_child_proposal,
        parse_ike_proposal,
        selectors,
    )
    from ipsecd.ike.pki import LocalCredentials, TrustStore

    me, peer = (I_ID, R_ID) if initiator else (R_ID, I_ID)
    la, ra = (I_IP, R_IP) if initiator else (R_IP, I_IP)
    lt, rt = (I_INNER, R_INNER) if initiator else (R_INNER, I_INNER)
    auth: dict[str, Any] = {"psk": PSK.encode()}
    if not psk:
        assert mat is not None
        cert, key = (mat.ini_cert, mat.ini_key) if initiator else (mat.resp_cert, mat.resp_key)
        chain = (x509.load_pem_x509_certificate(cert), x509.load_pem_x509_certificate(mat.inter))
        anchor = x509.load_pem_x509_certificate(mat.root)
        auth = {
            "psk": b"",
            "credentials": LocalCredentials(chain, load_pem_private_key(key, None)),  # type: ignore[arg-type]
            "trust": Trust(TrustStore((anchor,))),
        }
    return IkeConfig(
        name="bench",
        local_id=Identity.parse(me),
        remote_id=Identity.parse(peer),
        child=ChildConfig(
            local_ts=selectors([f"{lt}/32"]),
            remote_ts=selectors([f"{rt}/32"]),
            proposals=(parse_child_proposal(ESP_PROPOSAL),),
        ),
        ike_proposals=(parse_ike_proposal(IKE_PROPOSAL),),
        local_address=la,
        remote_address=ra,
        fragment_size=fragment_size,
        **auth,
    )


# -- figures ---------------------------------------------------------------------------


def _figures(count: int, elapsed: float, latencies: list[float]) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in latencies)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    return {
        "setups": count,
        "seconds": round(elapsed, 3),
        "setups_per_s": round(count / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_latency_ms": round(statistics.median(ms), 2),
        "p99_latency_ms": round(p99, 2),
    }


def _ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> float:
    return round(float(ours["setups_per_s"]) / float(theirs["setups_per_s"]), 3)


# -- part 1: in process ------------------------------------------------------------------


def _engine_pair(ini_cfg: Any, lookup: Any, now: float, expect: str) -> None:
    """One setup between two engines, datagrams shuttled in memory; both sides must be
    ESTABLISHED with the peer authenticated by ``expect``."""
    from ipsecd.ike import IkeSaEstablished, IkeState
    from ipsecd.ike.events import ChildSaEstablished, IkeSaFailed
    from ipsecd.ike.sa import IkeSa

    ini = IkeSa(ini_cfg, initiator=True, local_addr=(I_IP, 500), remote_addr=(R_IP, 500))
    ini.initiate(now)
    resp = None
    for _ in range(64):  # two round trips, more datagrams when fragmented
        sent = ini.datagrams_to_send(now)
        if not sent:
            break
        for data, (_ip, port) in sent:
            if resp is None:
                resp = IkeSa.accept(lookup, data, (R_IP, port), (I_IP, port), now)
                if resp is None:
                    raise BenchError("our responder refused the IKE_SA_INIT request")
            else:
                resp.receive_datagram(data, (I_IP, port), now)
        assert resp is not None
        for data, (_ip, port) in resp.datagrams_to_send(now):
            ini.receive_datagram(data, (R_IP, port), now)
    for sa, role in ((ini, "initiator"), (resp, "responder")):
        events = []
        while sa is not None and (ev := sa.next_event()) is not None:
            events.append(ev)
        failed = [e.reason for e in events if isinstance(e, IkeSaFailed)]
        up = [e for e in events if isinstance(e, IkeSaEstablished)]
        if failed or not up or sa is None or sa.state != IkeState.ESTABLISHED:
            raise BenchError(f"in process: our {role} did not establish: {failed or events}")
        if up[0].peer_auth != expect:
            raise BenchError(
                f"in process: our {role} authenticated its peer with {up[0].peer_auth!r}, "
                f"expected {expect!r}"
            )
        if not any(isinstance(e, ChildSaEstablished) for e in events):
            raise BenchError(f"in process: our {role} did not establish the CHILD SA")


def _in_process_setup(mat: Material | None) -> tuple[Any, Any, str]:
    from ipsecd.ike import lookup_by_address

    psk = mat is None
    ini = engine_config(mat, initiator=True, psk=psk)
    resp = engine_config(mat, initiator=False, psk=psk)
    return ini, lookup_by_address([resp]), "psk" if psk else KINDS[mat.kind][1]  # type: ignore[union-attr]


def bench_in_process(count: int, materials: dict[str, Material]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, mat in [("psk", None), *materials.items()]:
        ini, lookup, expect = _in_process_setup(mat)
        _engine_pair(ini, lookup, 0.0, expect)  # warm-up
        latencies = []
        t0 = time.perf_counter()
        for i in range(count):
            t1 = time.perf_counter()
            _engine_pair(ini, lookup, float(i), expect)
            latencies.append(time.perf_counter() - t1)
        out[name] = _figures(count, time.perf_counter() - t0, latencies)
    for name in materials:
        out[name]["ratio_to_psk"] = _ratio(out[name], out["psk"])
    return out


#: (what, module path suffix, function name): cumulative time of these is "where the
#: time goes"; nested ones (a verify inside a validate) are counted in both.
CATEGORIES = (
    ("signing (signature.sign)", "ipsecd/ike/signature.py", "sign"),
    ("verifying AUTH (signature.verify)", "ipsecd/ike/signature.py", "verify"),
    ("path validation (TrustStore.validate)", "ipsecd/ike/pki.py", "validate"),
    (
        "  of which certificate signatures (pki._verify_signature)",
        "ipsecd/ike/pki.py",
        "_verify_signature",
    ),
    # the text naming a certificate in messages, built even when nothing fails
    ("  of which naming certificates (pki.describe)", "ipsecd/ike/pki.py", "describe"),
    ("DH key generation (crypto.dh_generate)", "ipsecd/ike/crypto.py", "dh_generate"),
    ("DH shared secret (DhKeyPair.shared_secret)", "ipsecd/ike/crypto.py", "shared_secret"),
    ("CERT parsing (pki.load_der_certificate)", "ipsecd/ike/pki.py", "load_der_certificate"),
    ("identity check (pki.check_identity)", "ipsecd/ike/pki.py", "check_identity"),
    ("key derivation (crypto.derive_ike_keys)", "ipsecd/ike/crypto.py", "derive_ike_keys"),
    ("SK encrypt (SkCipher.seal)", "ipsecd/ike/crypto.py", "seal"),
    ("SK decrypt (SkCipher.open)", "ipsecd/ike/crypto.py", "open"),
    ("message parsing (codec.parse_message)", "ipsecd/ike/codec.py", "parse_message"),
)


def _where(filename: str) -> str:
    parts = Path(filename).parts
    for anchor in ("ipsecd", "cryptography", "agent", "tests"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) :])
    return filename if filename.startswith("<") else Path(filename).name


def bench_profile(count: int, materials: dict[str, Material]) -> dict[str, Any]:
    """``count`` setups per key kind under cProfile: the share of each category of
    :data:`CATEGORIES` (cumulative, top 5) and the top 5 functions by own time.  The
    profiler slows Python code more than C code: shares are indicative."""
    out: dict[str, Any] = {
        "note": "both engines of each setup; CPU time under cProfile (which slows Python "
        "more than C); categories are cumulative and nest ('of which')"
    }
    for name, mat in materials.items():
        ini, lookup, expect = _in_process_setup(mat)
        _engine_pair(ini, lookup, 0.0, expect)
        prof = cProfile.Profile(time.process_time)  # CPU time: preemption not counted
        prof.enable()
        for i in range(count):
            _engine_pair(ini, lookup, float(i), expect)
        prof.disable()
        raw: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        total = sum(tt for (_cc, _nc, tt, _ct, _callers) in raw.values())
        cats = []
        for what, path, func in CATEGORIES:
            ct = sum(
                v[3] for (fn, _line, fname), v in raw.items() if fname == func and fn.endswith(path)
            )
            cats.append(
                {
                    "what": what.strip(),
                    "ms_per_setup": round(ct / count * 1000, 3),
                    "share": round(ct / total, 3),
                }
            )
        cats.sort(key=lambda c: -c["ms_per_setup"])
        own = sorted(raw.items(), key=lambda kv: -kv[1][2])[:5]
        out[name] = {
            "setups": count,
            "profiled_ms_per_setup": round(total / count * 1000, 3),
            "top": cats[:5],
            "own_time_top": [
                {
                    "function": f"{_where(fn)}:{line}({fname})",
                    "calls_per_setup": round(v[1] / count, 1),
                    "ms_per_setup": round(v[2] / count * 1000, 3),
                    "share": round(v[2] / total, 3),
                }
                for (fn, line, fname), v in own
            ],
        }
    return out


# -- part 2: over UDP -------------------------------------------------------------------


def _big_limits() -> Any:
    from ipsecd.ike import EndpointLimits

    big = 10**6
    return EndpointLimits(
        cookie_threshold=big,
        cookie_threshold_ip=big,
        block_threshold_ip=big,
        max_half_open=big,
        init_burst=big,
        init_rate=float(big),
    )


@dataclass
class Tally:
    """What one of our drivers saw: setups up, how the peer authenticated, failures,
    and the datagrams (UDP payload sizes) it sent and received."""

    established: int = 0
    schemes: Counter[str] = field(default_factory=Counter)
    subjects: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    max_sent: int = 0
    received: int = 0
    max_received: int = 0

    def count_datagrams(self, drv: Any) -> None:
        """Wrap the driver's send and the endpoint's receive (bench-side counting)."""
        send, receive = drv._send, drv.endpoint.receive_datagram

        def counted_send(data: bytes, *a: Any) -> None:
            self.sent += 1
            self.max_sent = max(self.max_sent, len(data))
            send(data, *a)

        def counted_receive(data: bytes, *a: Any) -> Any:
            self.received += 1
            self.max_received = max(self.max_received, len(data))
            return receive(data, *a)

        drv._send = counted_send
        drv.endpoint.receive_datagram = counted_receive

    def note(self, batch: list[tuple[Any, Any]]) -> list[Any]:
        from ipsecd.ike.events import IkeSaEstablished, IkeSaFailed

        for _sa, ev in batch:
            if isinstance(ev, IkeSaFailed):
                self.failures.append(ev.reason)
            elif isinstance(ev, IkeSaEstablished):
                self.established += 1
                self.schemes[ev.peer_auth] += 1
                self.subjects[ev.peer_certificate] += 1
        return [ev for _sa, ev in batch]

    def as_dict(self) -> dict[str, Any]:
        return {
            "established": self.established,
            "schemes": dict(self.schemes),
            "subjects": dict(self.subjects),
            "failures": self.failures[:5],
            "datagrams_sent": self.sent,
            "max_sent_bytes": self.max_sent,
            "datagrams_received": self.received,
            "max_received_bytes": self.max_received,
        }


def _responder_main(conn: Any, mat: Material, netns: str, fragment_size: int) -> None:
    """Entry of the responder process: our IkeDriver in ``netns`` until told to stop;
    then it sends back its :class:`Tally` as a dict, with the CPU time it used since
    it was told "mark"."""
    try:
        tally, cpu = asyncio.run(_serve(conn, mat, netns, fragment_size))
        conn.send(("done", {**tally.as_dict(), "cpu_s": round(cpu, 4)}))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


async def _serve(conn: Any, mat: Material, netns: str, fragment_size: int) -> tuple[Tally, float]:
    from agent.ike_driver import IkeDriver

    cfg = engine_config(mat, initiator=False, fragment_size=fragment_size)
    tally = Tally()
    stop = asyncio.Event()
    mark = [time.process_time()]

    def on_message() -> None:
        if conn.recv() == "mark":
            mark[0] = time.process_time()
        else:
            stop.set()

    asyncio.get_running_loop().add_reader(conn.fileno(), on_message)
    async with IkeDriver([cfg], netns=netns, ipv6=False, limits=_big_limits()) as drv:
        tally.count_datagrams(drv)

        async def on_events(batch: list[tuple[Any, Any]]) -> None:
            tally.note(batch)

        drv.on_events = on_events
        conn.send(("ready", ""))
        await stop.wait()
        cpu = time.process_time() - mark[0]
    return tally, cpu


class OurResponder:
    """Our responder in a process of its own (its own interpreter and core)."""

    def __init__(self, mat: Material, netns: str, fragment_size: int) -> None:
        self.result: dict[str, Any] | None = None
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_responder_main, args=(child, mat, netns, fragment_size), daemon=True
        )
        self.proc.start()
        child.close()
        if not self.conn.poll(60):
            self.proc.kill()
            raise BenchError("our responder process did not start within 60 s")
        what, text = self.conn.recv()
        if what != "ready":
            raise BenchError(f"our responder process failed to start: {text}")

    def mark(self) -> None:
        """Start counting CPU time here."""
        self.conn.send("mark")

    def finish(self) -> dict[str, Any]:
        """Stop it and return its :class:`Tally` (once; later calls return the same)."""
        if self.result is not None:
            return self.result
        self.conn.send("stop")
        if not self.conn.poll(30):
            self.proc.kill()
            raise BenchError("our responder process did not answer within 30 s")
        what, result = self.conn.recv()
        self.proc.join(10)
        if what != "done":
            raise BenchError(f"our responder process failed: {result}")
        self.result = result
        return result  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def _render(tree: dict[str, Any], depth: int = 0) -> str:
    pad = "    " * depth
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out.append(f"{pad}{key} {{\n{_render(value, depth + 1)}{pad}}}\n")
        else:
            out.append(f"{pad}{key} = {value}\n")
    return "".join(out)


def charon_load(charon: Charon, mat: Material, *, initiator: bool) -> None:
    """Write a swanctl directory (swanctl.conf, x509/, x509ca/, private/) for charon's
    side and load it with ``swanctl --load-all``."""
    base = charon.workdir / "swanctl"
    for sub in ("x509", "x509ca", "private"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    cert, key = (mat.ini_cert, mat.ini_key) if initiator else (mat.resp_cert, mat.resp_key)
    (base / "x509" / "me.pem").write_bytes(cert)
    (base / "x509ca" / "root.pem").write_bytes(mat.root)
    (base / "x509ca" / "intermediate.pem").write_bytes(mat.inter)
    fd = os.open(base / "private" / "me.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    me, peer = (I_ID, R_ID) if initiator else (R_ID, I_ID)
    la, ra = (I_IP, R_IP) if initiator else (R_IP, I_IP)
    lt, rt = (I_INNER, R_INNER) if initiator else (R_INNER, I_INNER)
    conf = {
        "connections": {
            "bench": {
                "version": 2,
                "local_addrs": la,
                "remote_addrs": ra,
                "proposals": IKE_PROPOSAL,
                "unique": "never",
                "rekey_time": 0,
                "fragmentation": "yes",
                "local": {"auth": "pubkey", "certs": "me.pem", "id": me},
                "remote": {"auth": "pubkey", "id": peer, "cacerts": "root.pem"},
                "children": {
                    "c": {
                        "local_ts": f"{lt}/32",
                        "remote_ts": f"{rt}/32",
                        "esp_proposals": ESP_PROPOSAL,
                        "mode": "tunnel",
                        "start_action": "none",
                        "rekey_time": 0,
                    }
                },
            }
        }
    }
    (base / "swanctl.conf").write_text(_render(conf))
    env = dict(os.environ, STRONGSWAN_CONF=str(charon.conf_path), SWANCTL_DIR=str(base))
    proc = subprocess.run(
        [SWANCTL_BIN, "--load-all", "--noprompt", "--uri", charon.uri],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0 or "successfully loaded 1 connections" not in proc.stdout:
        raise BenchError(
            f"swanctl --load-all for charon ({'initiator' if initiator else 'responder'}) "
            f"failed ({proc.returncode}): {proc.stdout.strip()} {proc.stderr.strip()}"
        )


AUTH_LINE = re.compile(r"authentication of '([^']*)' with (\S+) successful")
TROUBLE = re.compile(
    r"fail|error|invalid|unable|no trusted|not found|constraint|refus|reject|no \w+ found|"
    r"retransmit|giving up",
    re.IGNORECASE,
)


def charon_trouble(charon: Charon, lines: int = 15) -> str:
    """charon's log lines that say what went wrong (the last ``lines`` of them)."""
    bad = [ln for ln in charon.log_text().splitlines() if TROUBLE.search(ln)]
    return "\n".join(bad[-lines:]) or charon.log_tail(lines)


def check_charon_auth(charon: Charon, peer: str, scheme: str, count: int, role: str) -> None:
    """charon authenticated ``peer`` ``count`` times, always with ``scheme``."""
    lines = [ln for ln in charon.log_text().splitlines() if AUTH_LINE.search(ln)]
    seen = Counter(m[2] for ln in lines if (m := AUTH_LINE.search(ln)) and m[1] == peer)
    if seen != Counter({scheme: count}):
        raise BenchError(
            f"charon ({role}) authenticated {peer!r} {dict(seen)} times, expected "
            f"{scheme} x {count}; charon's log:\n{charon_trouble(charon)}\n" + "\n".join(lines[-2:])
        )


def charon_cpu(charon: Charon) -> float:
    """CPU seconds (user + system, all threads) charon has used so far (/proc)."""
    assert charon.proc is not None
    stat = Path(f"/proc/{charon.proc.pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One UDP measurement: initiator and responder kinds for one case."""

    case: str
    initiator: str  # "ours" | "charon"
    responder: str
    count: int
    inflight: int
    work: Path

    @property
    def kind(self) -> str:
        return CASES[self.case][0]

    @property
    def fragment_size(self) -> int:
        return CASES[self.case][1]

    @property
    def label(self) -> str:
        return f"{self.case}: {self.initiator} initiator → {self.responder} responder"


class ResponderSide:
    """The responder of a run, ours (a process) or charon, seen by the initiator code:
    ``mark()`` when the timed run starts, ``collect()`` when it ends (while the
    initiator still runs: a stopping charon deletes its SAs, which is not measured)."""

    def __init__(self, ours: OurResponder | None, charon: Charon | None) -> None:
        self.ours, self.charon = ours, charon
        self.tally: dict[str, Any] | None = None
        self.cpu_s = 0.0
        self._cpu0 = 0.0

    def mark(self) -> None:
        if self.ours is not None:
            self.ours.mark()
        elif self.charon is not None:
            self._cpu0 = charon_cpu(self.charon)

    def collect(self) -> None:
        if self.ours is not None:
            self.tally = self.ours.finish()
            self.cpu_s = self.tally["cpu_s"]
        elif self.charon is not None:
            self.cpu_s = charon_cpu(self.charon) - self._cpu0

    def trouble(self) -> str:
        """For an error message: why the responder refused (its log or its failures)."""
        if self.charon is not None:
            return f"; charon's log:\n{charon_trouble(self.charon)}"
        if self.ours is not None:
            try:
                self.collect()
            except BenchError as exc:
                return f"; our responder: {exc}"
            failures = self.tally["failures"] if self.tally else []
            return f"; our responder: {failures[0]}" if failures else ""
        return ""


def run_udp(run: Run, mat: Material) -> dict[str, Any]:
    """Namespaces, the responder, the initiator; the figures and what was checked."""
    tuning = dict(TUNING, fragment_size=str(run.fragment_size))
    with netns_pair("ikc-") as (a, b):
        a.run(["ip", "addr", "add", f"{I_INNER}/32", "dev", "lo"])
        b.run(["ip", "addr", "add", f"{R_INNER}/32", "dev", "lo"])
        ours: OurResponder | None = None
        theirs: Charon | None = None
        try:
            if run.responder == "ours":
                ours = OurResponder(mat, b.name, run.fragment_size)
            else:
                theirs = Charon(b, run.work / "responder", log_levels=CHARON_LOG, tuning=tuning)
                theirs.start()
                charon_load(theirs, mat, initiator=False)
            side = ResponderSide(ours, theirs)
            if run.initiator == "ours":
                figures, checks = asyncio.run(_ours_initiate(run, mat, a.name, side))
            else:
                figures, checks = _charon_initiate(run, mat, a, side, tuning)
            expected = run.count + 1  # the warm-up too
            if ours is not None:
                tally = ours.finish()
                checks["responder"] = tally
                _check_tally(run, tally, expected, "responder", side)
            if theirs is not None:
                check_charon_auth(theirs, I_ID, KINDS[run.kind][2], expected, "responder")
                checks["responder"] = {"established": expected, "checked": "charon log"}
            figures["cpu_ms_per_setup"]["responder"] = round(side.cpu_s / run.count * 1000, 3)
            if run.fragment_size < 1280:
                _check_fragmented(run, checks)
        finally:
            if ours is not None:
                ours.kill()
            if theirs is not None:
                theirs.stop()
    figures["checks"] = checks
    return figures


def _check_tally(
    run: Run, tally: dict[str, Any], expected: int, role: str, side: ResponderSide
) -> None:
    scheme = KINDS[run.kind][1]
    peer = R_ID if role == "initiator" else I_ID
    if (
        tally["failures"]
        or tally["established"] != expected
        or tally["schemes"] != {scheme: expected}
    ):
        raise BenchError(
            f"{run.label}: our {role} established {tally['established']} of {expected}, "
            f"peer authenticated by {tally['schemes']} (expected {scheme}), failures: "
            f"{tally['failures']}{side.trouble()}"
        )
    if not all(f"CN={peer}" in s for s in tally["subjects"]):
        raise BenchError(f"{run.label}: our {role} saw peer certificates {tally['subjects']}")


def _check_fragmented(run: Run, checks: dict[str, Any]) -> None:
    """With fragment_size 576 every datagram our side sent or received fits 576 bytes
    with IPv4 and UDP headers (28), and IKE_AUTH needed more than one each way (so
    charon's fragments are checked where ours is the peer; charon ↔ charon has the same
    configuration, its datagrams are not counted)."""
    for role in ("initiator", "responder"):
        t = checks.get(role, {})
        if "max_sent_bytes" not in t:
            continue  # charon's side
        per_setup = (t["datagrams_sent"] + t["datagrams_received"]) / max(1, t["established"])
        t["datagrams_per_setup"] = round(per_setup, 1)
        if max(t["max_sent_bytes"], t["max_received_bytes"]) + 28 > run.fragment_size:
            raise BenchError(f"{run.label}: a datagram over {run.fragment_size} bytes: {t}")
        if per_setup <= 4:
            raise BenchError(f"{run.label}: IKE_AUTH was not fragmented: {t}")


async def _ours_initiate(
    run: Run, mat: Material, netns: str, side: ResponderSide
) -> tuple[dict[str, Any], dict[str, Any]]:
    from agent.ike_driver import IkeDriver
    from ipsecd.ike.events import ChildSaEstablished, IkeSaFailed

    cfg = engine_config(mat, initiator=True, fragment_size=run.fragment_size)
    tally = Tally()
    async with IkeDriver([cfg], netns=netns, ipv6=False) as drv:
        tally.count_datagrams(drv)
        started: dict[bytes, float] = {}
        latencies: list[float] = []
        done = asyncio.Event()
        issued = [0]
        target = [1]  # the warm-up first

        def start_one() -> None:
            issued[0] += 1
            t = time.perf_counter()
            started[drv.initiate("bench").spi_i] = t

        async def on_events(batch: list[tuple[Any, Any]]) -> None:
            for ev in tally.note(batch):
                if isinstance(ev, IkeSaFailed):
                    done.set()
                elif isinstance(ev, ChildSaEstablished) and ev.ike_spi_i in started:
                    latencies.append(time.perf_counter() - started.pop(ev.ike_spi_i))
                    if len(latencies) == target[0]:
                        done.set()
                    elif issued[0] < target[0]:
                        start_one()

        drv.on_events = on_events
        stall = 30 + run.count * 0.5

        async def wait(what: str) -> None:
            try:
                await asyncio.wait_for(done.wait(), stall)
            except TimeoutError:
                tally.failures.append(f"{what}: {len(latencies)} setups done after {stall:.0f} s")
            if tally.failures:
                raise BenchError(f"{run.label}: {tally.failures[0]}{side.trouble()}")

        start_one()
        await wait("warm-up")
        latencies.clear()
        done.clear()
        issued[0], target[0] = 0, run.count
        side.mark()
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(min(run.inflight, run.count)):
            start_one()
        await wait("timed run")
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await asyncio.to_thread(side.collect)
    stats = tally.as_dict()
    _check_tally(run, stats, run.count + 1, "initiator", side)
    figures = _figures(run.count, elapsed, latencies)
    figures["cpu_ms_per_setup"] = {"initiator": round(cpu / run.count * 1000, 3)}
    return figures, {"initiator": stats}


def _charon_initiate(
    run: Run, mat: Material, ns: Any, side: ResponderSide, tuning: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    with Charon.started(ns, run.work / "initiator", log_levels=CHARON_LOG, tuning=tuning) as ca:
        charon_load(ca, mat, initiator=True)

        def fail(text: str) -> BenchError:
            return BenchError(
                f"{run.label}: {text}\ninitiating charon's log:\n{charon_trouble(ca)}"
                f"{side.trouble()}"
            )

        try:
            ca.initiate("c", ike="bench", timeout=20)  # warm-up
        except Exception as exc:
            raise fail(f"warm-up setup failed: {str(exc).splitlines()[0]}") from None
        failures: list[str] = []
        latencies: list[float] = []
        todo = iter(range(run.count))
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    if failures or next(todo, None) is None:
                        return
                t0 = time.perf_counter()
                try:
                    ca.initiate("c", ike="bench", timeout=20)
                except Exception as exc:
                    with lock:
                        failures.append(str(exc).splitlines()[0][:300])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=worker) for _ in range(run.inflight)]
        side.mark()
        cpu0, t0 = charon_cpu(ca), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        elapsed, cpu = time.perf_counter() - t0, charon_cpu(ca) - cpu0
        side.collect()
        if failures:
            raise fail(f"{len(failures)} setups failed, first: {failures[0]}")
        expected = run.count + 1
        up = sum(1 for sa in ca.list_sas("bench") if sa.get("state") == "ESTABLISHED")
        if up != expected:
            raise fail(f"{up} IKE SAs up at charon, expected {expected}")
        check_charon_auth(ca, R_ID, KINDS[run.kind][2], expected, "initiator")
    figures = _figures(run.count, elapsed, latencies)
    figures["cpu_ms_per_setup"] = {"initiator": round(cpu / run.count * 1000, 3)}
    return figures, {"initiator": {"established": expected, "checked": "charon list-sas and log"}}


def bench_udp(
    cases: list[str], count: int, inflight: int, work: Path, materials: dict[str, Material]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case in cases:
        per: dict[str, Any] = {}
        for initiator in ("charon", "ours"):
            row: dict[str, Any] = {}
            for responder in ("ours", "charon"):
                run = Run(
                    case,
                    initiator,
                    responder,
                    count,
                    inflight,
                    work / f"{case}-{initiator}-{responder}",
                )
                print(f"# {run.label}", file=sys.stderr, flush=True)
                row[f"responder_{responder}"] = run_udp(run, materials[run.kind])
            row["ratio_ours_to_charon"] = _ratio(row["responder_ours"], row["responder_charon"])
            cpu = [
                row[f"responder_{r}"]["cpu_ms_per_setup"]["responder"] for r in ("ours", "charon")
            ]
            # CPU per setup of our responder over charon's: above 1, ours costs more
            row["responder_cpu_ours_over_charon"] = round(cpu[0] / cpu[1], 3) if cpu[1] else None
            per[f"initiator_{initiator}"] = row
        out[case] = per
    return out


# -- main -------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = subprocess.run(
        [CHARON_BIN, "--version"], capture_output=True, text=True, check=False, timeout=10
    ).stdout.strip()
    system_openssl = subprocess.run(
        ["openssl", "version"], capture_output=True, text=True, check=False, timeout=10
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        # ours signs with cryptography's OpenSSL, charon with the system's libcrypto: RSA
        # signing speed differs between OpenSSL versions
        "openssl_ours": backend.openssl_version_text(),
        "openssl_charon": system_openssl or "unknown",
        "charon": version.splitlines()[-1] if version else "unknown",
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpu": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200, help="UDP setups per measurement")
    ap.add_argument("--inflight", type=int, default=8, help="UDP setups in flight at once")
    ap.add_argument("--in-process", type=int, default=300, help="in-process setups per kind")
    ap.add_argument("--profile", type=int, default=100, help="setups profiled per kind")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    ap.add_argument("--quick", action="store_true", help="few setups (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.count, args.in_process, args.profile = 30, 50, 20
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C: charons, the responder process
    # and the namespaces are removed by the context managers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("error: bench_ike_certs needs root (network namespaces)", file=sys.stderr)
        return 1
    for path in (CHARON_BIN, SWANCTL_BIN):
        if not Path(path).exists():
            print(f"error: {path} missing (make deps installs strongSwan)", file=sys.stderr)
            return 1
    cases = args.case or list(CASES)
    now = time.time()
    materials = {kind: make_material(kind, now) for kind in KINDS}
    result: dict[str, Any] = {
        "unit": "IKE_SA_INIT + IKE_AUTH (certificates, first CHILD SA) setups per second",
        "ike_proposal": IKE_PROPOSAL,
        "esp_proposal": ESP_PROPOSAL,
        "pki": "root CA → intermediate CA → end entity, keys of the case's kind; "
        "chain sent in CERT, validated to the root",
        "inflight": args.inflight,
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # other work on this machine shows here (the figures are wall-clock rates)
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        result["in_process"] = bench_in_process(args.in_process, materials)
        result["profile"] = bench_profile(args.profile, materials)
        with tempfile.TemporaryDirectory(prefix="ikc-bench-") as tmp:
            result["udp"] = bench_udp(cases, args.count, args.inflight, Path(tmp), materials)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result["environment"] = environment()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
