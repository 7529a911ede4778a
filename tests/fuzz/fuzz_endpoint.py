"""Fuzz target: datagrams from the network into a responder's ``IkeEndpoint``.

    python tests/fuzz/fuzz_endpoint.py [libFuzzer options] [CORPUS_DIR ...]

An input is a sequence of up to 16 records ``[ctl][length: 2 bytes][datagram]``; each
datagram reaches a fresh responder endpoint (``receive_datagram``) from one of four
source addresses, on port 500 or 4500, after a clock step that ``ctl`` chooses (from
10 ms to past the linger time, with the due timers run).  The admission bounds are
small (``FUZZ_LIMITS``) so that a few datagrams reach each of them.

Seeds: the datagrams the initiator of a real run sent (IKE_SA_INIT, IKE_AUTH, CHILD SA
rekey, liveness, IKE SA rekey, Delete), with the AEAD and the CBC suite, NAT-T or not.
Key exchanges are reproducible (tests/fuzz/ike_world.py), so the recorded encrypted
requests replay against the fresh endpoint and pass its integrity check; mutations of
their headers and of the clear IKE_SA_INIT reach every routing and admission path.

Invariants (tests/fuzz/ike_world.py): nothing raises, no internal error, state changes
only through the table, every EndpointLimits bound, bounded and parseable output, no
key material in logs, bounded parse work.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.common import Finding, instrumented, run

with instrumented("ipsecd"):
    from ipsecd.ike.config import IkeConfig
    from ipsecd.ike.endpoint import IkeEndpoint
    from tests.fuzz import ike_world as w

__all__ = ["fuzz_one", "recorded_runs", "seeds"]

RESPONDER: tuple[str, int] = ("198.51.100.1", 500)
SOURCES = ("192.0.2.1", "192.0.2.77", "203.0.113.9", "198.51.100.200")
STEPS = (0.01, 0.01, 0.5, 1.0, 5.0, 31.0, 61.0, 301.0)
MAX_RECORDS = 16
SEED = 7


def _responder_configs() -> list[IkeConfig]:
    return [w.configs("gcm")[1], w.configs("cbc")[1]]


def _initiator_config(kind: str) -> IkeConfig:
    return w.configs(kind)[0]


def recorded_runs() -> list[list[tuple[int, bytes]]]:
    """Per configuration kind, the (ctl, datagram) records of everything the initiator
    sent in a run where it started every exchange (so the responder only answers, and
    a fresh responder given the same datagrams answers the same)."""
    runs = []
    for kind in ("gcm", "cbc"):
        ci = _initiator_config(kind)
        p = w.SidedPair([ci], _responder_configs(), seed=SEED, limits=w.FUZZ_LIMITS)
        p.initiate("a", ci)
        p.run_for(5)
        for action in ("rekey_child", "liveness", "rekey_ike", "rekey_child", "close", "delete"):
            (sa,) = p.sas("a")
            with p.on("a"):
                if action == "rekey_child":
                    sa.rekey_child(sa.children[0].inbound_spi, p.now)
                elif action == "liveness":
                    sa.check_liveness(p.now)
                elif action == "rekey_ike":
                    sa.rekey_ike(p.now)
                elif action == "close":
                    sa.close_child(sa.children[0].inbound_spi, p.now)
                else:
                    sa.delete(p.now)
                p.flush()
            p.run_for(5)
        records = []
        for wire in p.wire:
            if wire.sender == "a":
                ctl = 0x04 if wire.dst[1] == 4500 else 0x00
                records.append((ctl, wire.data))
        runs.append(records)
    return runs


def encode(records: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((ctl,)) + len(d).to_bytes(2, "big") + d for ctl, d in records)


def decode(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    off = 0
    while off + 3 <= len(data) and len(out) < MAX_RECORDS:
        ctl = data[off]
        n = int.from_bytes(data[off + 1 : off + 3], "big")
        out.append((ctl, data[off + 3 : off + 3 + n]))
        off += 3 + n
    return out


def seeds() -> list[bytes]:
    out = []
    for records in recorded_runs():
        out.append(encode(records))
        out.append(encode(records[:1]))
        out.append(encode(records[:2]))
        # the same IKE_SA_INIT from several addresses, then time passes: cookies, blocks
        first = records[0][1]
        out.append(encode([(i % 4, first) for i in range(8)] + [(0x38, first)]))
    return out


def _run_timers(ep: IkeEndpoint, now: float) -> None:
    for _ in range(256):
        t = ep.get_timer()
        if t is None or t > now:
            return
        ep.handle_timer(now)
    raise Finding("timers still due after 256 rounds")


def fuzz_one(data: bytes) -> None:
    monitor = w.MONITOR
    monitor.reset()
    w.DH.reset(SEED)
    ep = w.sided("b", _responder_configs(), SEED + 1, w.FUZZ_LIMITS)
    now = 1000.0
    for i, (ctl, datagram) in enumerate(decode(data)):
        now += STEPS[(ctl >> 3) & 7]
        before = w.child_states(w.filed_sas(ep))
        if ctl & 0x40:
            ep.handle_timer(now)
        _run_timers(ep, now)
        port = 4500 if ctl & 0x04 else 500
        local = (RESPONDER[0], port)
        remote = (SOURCES[ctl & 3], port)
        ep.receive_datagram(datagram, local, remote, now)
        out = [(d, local[1]) for d, local, _ in ep.datagrams_to_send(now)]
        for _ in ep.events():
            pass
        w.check_output(out, 1)
        w.check_endpoint(ep, before)
        monitor.raise_if_any(f"datagram #{i + 1}")
    # everything that waits must end or be forgotten: half-open expiry, give-up, linger
    for _ in range(8):
        now += 120.0
        _run_timers(ep, now)
        for _ in ep.events():
            pass
        w.check_output([(d, local[1]) for d, local, _ in ep.datagrams_to_send(now)], 64)
        w.check_endpoint(ep)
    if ep.half_open:
        monitor.violation(f"{ep.half_open} half-open SAs left after 16 minutes")
    monitor.check_logs()
    monitor.raise_if_any("after the input")


if __name__ == "__main__":
    run("endpoint", fuzz_one, seeds, max_len=8192)
