"""Fuzz target: the fuzz bytes are the inner payload chain of an SK payload sealed with
the real keys of an IKE SA, so every input passes the integrity check (RFC 7296 3.14)
and reaches the exchange handlers.

    python tests/fuzz/fuzz_sealed.py [libFuzzer options] [CORPUS_DIR ...]

Input: ``[scenario][target][exchange][mode][first payload][message ID][inner chain...]``.

* scenario: a snapshot of two endpoints (tests/unit/ike/pair.py) in one of the states
  of :data:`SCENARIOS`: half-open responder, established, during a CHILD SA rekey or an
  IKE SA rekey started by either side, both rekeying the IKE SA at once, the old IKE
  SA of a rekey waiting for its Delete, deleting a CHILD SA or the IKE SA; with the
  AEAD suite, and some with AES-CBC + HMAC, CHILD SAs with PFS and NAT-T on port 4500.
* target: side ``a`` (original initiator) or ``b`` and which of its IKE SAs.
* exchange (IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL, IKE_SA_INIT, others), whether
  the chain goes in one SK payload or in 1 to 8 SKF fragments (RFC 7383), in order or
  reversed with a duplicate, and mode:
  request or response, the message ID (the one the target expects, the one of its
  outstanding request, the previous one, or the byte that follows), the I flag right
  or wrong, port 4500 or not, sent twice (retransmission), then whether the two
  endpoints run on for 5 s (the exchanges in flight complete) and then for 10 min
  (retransmissions, give-up, expiry).

Seeds: every SK-protected message of the real runs behind the scenarios, decrypted,
aimed at every scenario and both sides.  The invariants are those of
tests/fuzz/ike_world.py, on both endpoints.
"""

from __future__ import annotations

import copy
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.common import Finding, instrumented, run

with instrumented("ipsecd"):
    from ipsecd.ike import codec
    from ipsecd.ike.constants import ExchangeType
    from ipsecd.ike.crypto import SkCipher
    from ipsecd.ike.sa import IkeSa
    from ipsecd.ike.states import ChildState, IkeState
    from tests.fuzz import ike_world as w

__all__ = ["SCENARIOS", "fuzz_one", "seeds"]

EXCHANGES = (
    ExchangeType.IKE_AUTH,
    ExchangeType.CREATE_CHILD_SA,
    ExchangeType.INFORMATIONAL,
    ExchangeType.IKE_SA_INIT,
    ExchangeType.IKE_AUTH,
    ExchangeType.CREATE_CHILD_SA,
    ExchangeType.INFORMATIONAL,
    0,  # the byte after the message ID byte: any exchange type
)
SEED = 11
HEADER = 6


@dataclass
class Snapshot:
    pair: w.SidedPair
    dh: dict[str, random.Random]


def _up(kind: str) -> w.SidedPair:
    ci, cr = w.configs(kind)
    p = w.SidedPair([ci], [cr], seed=SEED)
    p.initiate("a", ci)
    p.run_for(5)
    return p


def _only(p: w.SidedPair, who: str) -> IkeSa:
    (sa,) = p.sas(who)
    return sa


def _half_open(kind: str) -> w.SidedPair:
    ci, cr = w.configs(kind)
    p = w.SidedPair([ci], [cr], seed=SEED)
    p.initiate("a", ci)
    for _ in range(20):
        (a,) = p.ep["a"].sas
        if a.state == IkeState.EXPECT_AUTH_RESPONSE:
            return p  # the IKE_AUTH request is in flight
        p.step(p.now + 1.0)
    raise Finding("no half-open state")


def _started(kind: str, who: str, action: str) -> w.SidedPair:
    p = _up(kind)
    sa = _only(p, who)
    with p.on(who):
        if action == "rekey_child":
            sa.rekey_child(sa.children[0].inbound_spi, p.now)
        elif action == "rekey_ike":
            sa.rekey_ike(p.now)
        elif action == "close_child":
            sa.close_child(sa.children[0].inbound_spi, p.now)
        elif action == "delete":
            sa.delete(p.now)
        p.flush()
    return p


def _collision() -> w.SidedPair:
    p = _up("gcm")
    for who in ("a", "b"):
        with p.on(who):
            _only(p, who).rekey_ike(p.now)
            p.flush()
    return p


def _rekeyed() -> w.SidedPair:
    """a rekeyed the IKE SA; b answered: b's old SA is REKEYED, a's Delete in flight."""
    p = _started("gcm", "a", "rekey_ike")
    for _ in range(20):
        if any(sa.state == IkeState.REKEYED for sa in p.ep["b"].sas) and any(
            sa.state == IkeState.EXPECT_DELETE_RESPONSE for sa in p.ep["a"].sas
        ):
            return p
        p.step(p.now + 1.0)
    raise Finding("no rekeyed state")


SCENARIOS: tuple[tuple[str, Callable[[], w.SidedPair]], ...] = (
    ("half-open", lambda: _half_open("gcm")),
    ("established", lambda: _up("gcm")),
    ("child-rekey-by-a", lambda: _started("gcm", "a", "rekey_child")),
    ("child-rekey-by-b", lambda: _started("gcm", "b", "rekey_child")),
    ("ike-rekey-by-a", lambda: _started("gcm", "a", "rekey_ike")),
    ("ike-rekey-by-b", lambda: _started("gcm", "b", "rekey_ike")),
    ("ike-rekey-collision", _collision),
    ("ike-rekeyed", _rekeyed),
    ("child-delete", lambda: _started("gcm", "a", "close_child")),
    ("ike-delete", lambda: _started("gcm", "b", "delete")),
    ("half-open-cbc", lambda: _half_open("cbc")),
    ("established-cbc", lambda: _up("cbc")),
    ("child-rekey-pfs-cbc", lambda: _started("cbc", "b", "rekey_child")),
    ("ike-rekey-cbc", lambda: _started("cbc", "a", "rekey_ike")),
)
_snapshots: list[Snapshot] = []


def snapshots() -> list[Snapshot]:
    if not _snapshots:
        for _, build in SCENARIOS:
            pair = build()
            _snapshots.append(Snapshot(pair, copy.deepcopy(w.DH.rngs)))
    return _snapshots


def _targets(p: w.SidedPair, who: str) -> list[IkeSa]:
    """A side's IKE SAs that have keys, oldest first."""
    sas = [f.sa for f in p.ep[who]._filed.values() if f.sa.keys is not None]
    return sorted(sas, key=lambda sa: sa.created_at or 0.0)


def _message_id(sa: IkeSa, mode: int, raw: int) -> int:
    choice = (mode >> 1) & 3
    if choice == 0:
        return sa._cache.expected
    if choice == 1:
        out = sa._window.outstanding
        return out.message_id if out is not None else max(sa._window.next_id - 1, 0)
    if choice == 2:
        return max(sa._cache.expected - 1, 0)
    return raw


def _all_sas(p: w.SidedPair) -> list[IkeSa]:
    return [f.sa for ep in p.ep.values() for f in ep._filed.values()]


def _check(p: w.SidedPair, before: dict[int, ChildState] | None, where: str) -> None:
    for ep in p.ep.values():
        w.check_endpoint(ep, before)
    w.MONITOR.raise_if_any(where)


def fuzz_one(data: bytes) -> None:
    if len(data) < HEADER:
        return
    monitor = w.MONITOR
    monitor.reset()
    snaps = snapshots()
    snap = snaps[data[0] % len(snaps)]
    p = snap.pair.clone()
    w.DH.rngs = copy.deepcopy(snap.dh)
    who = "ab"[data[1] & 1]
    targets = _targets(p, who)
    if not targets:
        return
    sa = targets[(data[1] >> 1) % len(targets)]
    mode = data[3]
    exchange = EXCHANGES[data[2] & 7] or data[5]
    response = bool(mode & 1)
    mid = _message_id(sa, mode, data[5])
    right_role = sa.initiator == bool(mode & 0x08)
    chain = data[HEADER:]
    if data[2] & 0x08:  # RFC 7383: the chain in 1..8 SKF fragments, maybe reversed
        datagrams = w.seal_raw_fragments(
            sa,
            exchange=exchange,
            response=response,
            message_id=mid,
            first=data[4],
            plaintext=chain,
            initiator_flag=right_role,
            count=1 + ((data[2] >> 4) & 7),
        )
        if data[2] & 0x80:
            datagrams = [*reversed(datagrams), datagrams[-1]]
    else:
        datagrams = [
            w.seal_raw(
                sa,
                exchange=exchange,
                response=response,
                message_id=mid,
                first=data[4],
                plaintext=chain,
                initiator_flag=right_role,
            )
        ]
    if mode & 0x10:  # as if the peer had moved to port 4500 (RFC 7296 2.23)
        datagrams = [d if d.startswith(bytes(4)) else bytes(4) + d for d in datagrams]
    before = w.child_states(_all_sas(p))
    sent = len(p.wire)
    for datagram in datagrams * (2 if mode & 0x20 else 1):
        local = (sa.local_addr[0], 4500 if datagram.startswith(bytes(4)) else sa.local_addr[1])
        p.ep[who].receive_datagram(datagram, local, sa.remote_addr, p.now)
        p.flush()
    out = [(x.data, x.src[1]) for x in p.wire[sent:] if x.sender == who]
    w.check_output(out, 2 * len(datagrams))
    _check(p, before, "after the message")
    if mode & 0x40:
        p.run_for(5.0)
        _check(p, None, "after 5 s")
    if mode & 0x80:
        p.run_for(600.0)
        _check(p, None, "after 10 min")
    monitor.check_logs()
    monitor.raise_if_any("logs")


def _recorded_inner() -> list[tuple[int, bool, int, bytes]]:
    """(exchange, response, first payload, plaintext) of every SK message of the runs
    behind the scenarios, taken as they are sealed."""
    out: list[tuple[int, bool, int, bytes]] = []
    real = codec.encrypt_sk

    def spy(
        msg: codec.Message,
        inner: Sequence[codec.Payload],
        cipher: SkCipher,
        *,
        iv: bytes | None = None,
    ) -> bytes:
        first, plain = codec.build_payloads(inner)
        out.append((msg.exchange_type, msg.is_response, first, plain))
        return real(msg, inner, cipher, iv=iv)

    codec.encrypt_sk = spy
    try:
        for _, build in SCENARIOS:
            p = build()
            p.run_for(30.0)
    finally:
        codec.encrypt_sk = real
    unique = {(e, r, f, x) for e, r, f, x in out}
    return sorted(unique)


def seeds() -> list[bytes]:
    inner = _recorded_inner()
    out = []
    for index in range(len(SCENARIOS)):
        for side in (0, 1):
            for exchange, response, first, plain in inner:
                code = next((i for i, e in enumerate(EXCHANGES[:4]) if e == exchange), 7)
                mode = (0x03 if response else 0x00) | 0x40
                head = bytes((index, side, code, mode, first, exchange))
                out.append(head + plain)
    return out


if __name__ == "__main__":
    run("sealed", fuzz_one, seeds, max_len=4096)
