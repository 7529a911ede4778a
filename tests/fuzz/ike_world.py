"""The IKE world of the engine fuzz targets (fuzz_endpoint.py, fuzz_sealed.py).

* Reproducible runs: SPIs, nonces and jitter come from the endpoints' seeded
  ``random.Random`` (tests/unit/ike/pair.py); the Diffie-Hellman private values, which
  the engine takes from OpenSSL, come here from one seeded generator per side
  (:data:`DH`), so a recorded handshake replays byte for byte against a fresh endpoint
  and its encrypted requests still pass the integrity check.
* :class:`SidedPair`: the two endpoints of tests/unit/ike/pair.py, each drawing its
  key exchanges from its own generator.
* :class:`Monitor`: the invariants, checked after every input (docs/limits.md "IKE",
  docs/ike.md "States"): no exception, ``internal_errors == 0``, every IKE SA state
  change is a transition of ``ipsecd.ike.states.TRANSITIONS``, every bound of
  :class:`~ipsecd.ike.endpoint.EndpointLimits` held, bounded output per input, every
  datagram sent parses, no log line that fails to format or shows key material, and
  no parse that decodes more elements than it read bytes.

Importing this module changes the process for fuzzing (the DH source, a watch on
``IkeSa.state``, wrappers around the codec's parse functions): only the fuzz scripts
and their smoke test import it.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipsecd.ike import codec
from ipsecd.ike import crypto as ikecrypto
from ipsecd.ike.child import ChildSa
from ipsecd.ike.config import IkeConfig
from ipsecd.ike.constants import PayloadType
from ipsecd.ike.crypto import DhKeyPair
from ipsecd.ike.endpoint import EndpointLimits, IkeEndpoint
from ipsecd.ike.negotiate import NON_ESP_MARKER
from ipsecd.ike.sa import IkeSa, lookup_by_address
from ipsecd.ike.states import (
    CHILD_TRANSITIONS,
    END_STATES,
    ChildState,
    IkeState,
    is_allowed,
)
from tests.fuzz.common import Finding, known
from tests.unit.ike.harness import make_configs
from tests.unit.ike.pair import Pair

__all__ = [
    "DH",
    "FUZZ_LIMITS",
    "MONITOR",
    "Monitor",
    "SidedEndpoint",
    "SidedPair",
    "check_endpoint",
    "check_output",
    "check_sa",
    "child_states",
    "configs",
    "filed_sas",
    "seal_raw",
    "seal_raw_fragments",
    "sided",
    "weight",
]

Addr = tuple[str, int]
WAITING = frozenset(
    {
        IkeState.EXPECT_SA_INIT_RESPONSE,
        IkeState.EXPECT_AUTH_REQUEST,
        IkeState.EXPECT_AUTH_RESPONSE,
        IkeState.EXPECT_DELETE_RESPONSE,
    }
)
#: Small admission bounds, so that one fuzz input of a few datagrams can reach each of
#: them (the defaults are in the thousands).
FUZZ_LIMITS = EndpointLimits(
    cookie_threshold=4,
    cookie_threshold_ip=2,
    block_threshold_ip=3,
    max_half_open=6,
    init_burst=4,
    init_rate=2.0,
    rate_table=4,
    max_lingering=3,
    invalid_spi_rate=2.0,
)
#: Datagrams one received datagram may make an endpoint send: an answer, and a
#: request of its own that the answer unblocked (plus a retransmitted answer).
MAX_OUT_PER_DATAGRAM = 4
#: Largest datagram we send without fragmenting (docs/limits.md "IKE").
MAX_OUT_BYTES = 10_000
#: Tasks or CHILD SAs one IKE SA may hold: far above what any exchange makes.
MAX_QUEUE = 32
MAX_CHILDREN = 64
#: Plaintext of the peer's fragments one IKE SA may hold (RFC 7383 2.6): one message
#: per direction of at most 64 KiB (ipsecd/ike/fragments.py MAX_REASSEMBLED).
MAX_REASSEMBLY = 2 * 64 * 1024


# --------------------------------------------------------------------------- key exchange


class _DetDh:
    """Deterministic DH private values, one generator per side ("a", "b")."""

    def __init__(self) -> None:
        self.side = "b"
        self.rngs: dict[str, random.Random] = {}
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.rngs = {s: random.Random(f"ipsecd-fuzz-dh-{seed}-{s}") for s in ("a", "b")}

    @contextlib.contextmanager
    def on(self, side: str) -> Iterator[None]:
        old, self.side = self.side, side
        try:
            yield
        finally:
            self.side = old

    def generate(self, group: int) -> DhKeyPair:
        rng = self.rngs[self.side]
        for _ in range(64):
            value = bytearray(rng.randbytes(66 if group == 21 else 48 if group == 20 else 32))
            value[0] &= 0x7F  # below the order of every curve (RFC 5903 3)
            value[-1] |= 1
            try:
                # only the private value is chosen here; the key pair is the engine's
                return ikecrypto._dh_from_private(group, bytes(value))
            except ValueError:
                continue
        raise Finding(f"no DH private value for group {group}")


DH = _DetDh()
ikecrypto.dh_generate = DH.generate  # the tasks call it through the module


# --------------------------------------------------------------------------- the monitor


def weight(payloads: Sequence[codec.Payload]) -> int:
    """Decoded elements of a payload chain: payloads, proposals, transforms,
    attributes, traffic selectors, SPIs of Delete payloads.  Each takes at least one
    byte on the wire, so a parse that yields more elements than it read bytes did work
    that the input did not pay for (docs/limits.md "IKE": a bounded parse)."""
    n = 0
    for p in payloads:
        n += 1
        if isinstance(p, codec.SaPayload):
            for prop in p.proposals:
                n += 1
                for t in prop.transforms:
                    n += 1 + len(t.attributes)
        elif isinstance(p, codec.TsiPayload | codec.TsrPayload):
            n += len(p.selectors)
        elif isinstance(p, codec.DeletePayload):
            n += len(p.spis)
    return n


class _Capture(logging.Handler):
    def __init__(self, monitor: Monitor) -> None:
        super().__init__(logging.DEBUG)
        self.monitor = monitor

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception as exc:  # logging would only print it to stderr
            self.monitor.violation(f"log call {record.msg!r} does not format: {exc!r}")
            return
        self.monitor.log_lines.append(text)


class _WatchedState:
    """``IkeSa.state`` as a data descriptor: every assignment is checked against the
    transition table (docs/ike.md "States": states change only through the table)."""

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj.__dict__["_fuzz_state"]

    def __set__(self, obj: object, value: IkeState) -> None:
        old = obj.__dict__.get("_fuzz_state")
        if old is not None and old != value and not is_allowed(old, value):
            MONITOR.violation(f"IKE SA state {old.name} -> {value.name} is not in the table")
        obj.__dict__["_fuzz_state"] = value


def _child_reach() -> dict[ChildState, frozenset[ChildState]]:
    reach: dict[ChildState, set[ChildState]] = {s: {s} for s in ChildState}
    changed = True
    while changed:
        changed = False
        for (src, _), dst in CHILD_TRANSITIONS.items():
            for r in reach.values():
                if src in r and dst not in r:
                    r.add(dst)
                    changed = True
    return {s: frozenset(r) for s, r in reach.items()}


_CHILD_REACH = _child_reach()


@dataclass
class Monitor:
    """Collects violations while code under test runs; :meth:`raise_if_any` raises them."""

    violations: list[str] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    #: Secrets that must never appear in a log line (hex and repr forms).
    secrets: set[bytes] = field(default_factory=set)
    #: Known findings met (name, text), reported by raise_if_any after the violations.
    known: list[tuple[str, str]] = field(default_factory=list)

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def reset(self) -> None:
        self.violations.clear()
        self.known.clear()
        self.log_lines.clear()
        self.secrets.clear()

    def raise_if_any(self, where: str) -> None:
        if self.violations:
            first = self.violations[0]
            more = f" (and {len(self.violations) - 1} more)" if len(self.violations) > 1 else ""
            raise Finding(f"{where}: {first}{more}")
        if self.known:
            name, text = self.known[0]
            known(name, f"{where}: {text}")

    # ---------------------------------------------------------------- secrets in logs
    def add_secrets_of(self, sa: IkeSa) -> None:
        keys = sa.keys
        if keys is not None:
            for k in (keys.sk_d, keys.sk_pi, keys.sk_pr):
                self.secrets.add(k)
            for c in (keys.out_cipher, keys.in_cipher):
                self.secrets.add(c.encr_key)
                self.secrets.add(c.integ_key)
        psk = getattr(sa.config, "psk", b"")
        if isinstance(psk, bytes):
            self.secrets.add(psk)
        for child in sa.children:
            ev = child.event
            for name in (
                "inbound_encryption_key",
                "outbound_encryption_key",
                "inbound_integrity_key",
                "outbound_integrity_key",
            ):
                value = getattr(ev, name, b"")
                if isinstance(value, bytes):
                    self.secrets.add(value)

    def check_logs(self) -> None:
        secrets = [s for s in self.secrets if len(s) >= 8]
        if not secrets:
            return
        forms = [s.hex() for s in secrets] + [repr(s)[2:-1] for s in secrets]
        for line in self.log_lines:
            for form in forms:
                if form in line:
                    self.violation(f"key material in a log line: {line[:120]!r}...")
                    return


MONITOR = Monitor()
IkeSa.state = _WatchedState()  # type: ignore[assignment]
_log = logging.getLogger("ipsecd")
_log.addHandler(_Capture(MONITOR))
_log.setLevel(logging.DEBUG)
_log.propagate = False


def _weighed(fn: Callable[..., Any], size: Callable[..., int], what: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        payloads = result.payloads if isinstance(result, codec.Message) else result
        n, length = weight(payloads), size(*args)
        if n > max(length, 1):
            MONITOR.violation(f"{what} decoded {n} elements from {length} bytes")
        return result

    return wrapper


_handle_timer = IkeSa.handle_timer


def _checked_handle_timer(self: IkeSa, now: float) -> None:
    """IkeSa.handle_timer, then its promise to the endpoint's timer loop: what was due
    is done, the next timer is later (else IkeEndpoint.handle_timer never returns)."""
    _handle_timer(self, now)
    t = self.get_timer()
    if t is not None and t <= now:
        raise Finding(f"{self!r}: after handle_timer({now}) the next timer is {t}")


IkeSa.handle_timer = _checked_handle_timer  # type: ignore[method-assign]

codec.parse_message = _weighed(codec.parse_message, lambda data: len(data), "parse_message")
codec.parse_payloads = _weighed(
    codec.parse_payloads, lambda data, first, **_: len(data), "parse_payloads"
)


# --------------------------------------------------------------------------- endpoints


class SidedEndpoint(IkeEndpoint):
    """An endpoint whose key exchanges come from its side's generator in :data:`DH`."""

    side = "b"

    def receive_datagram(self, data: bytes, local: Addr, remote: Addr, now: float) -> IkeSa | None:
        with DH.on(self.side):
            return super().receive_datagram(data, local, remote, now)

    def handle_timer(self, now: float) -> None:
        with DH.on(self.side):
            super().handle_timer(now)

    def flush(self, now: float) -> None:
        with DH.on(self.side):
            super().flush(now)

    def initiate(self, config: IkeConfig, local_addr: Addr, remote_addr: Addr, now: float) -> IkeSa:
        with DH.on(self.side):
            return super().initiate(config, local_addr, remote_addr, now)


def sided(
    side: str, configs: Sequence[IkeConfig], seed: int, limits: EndpointLimits | None
) -> SidedEndpoint:
    ep = SidedEndpoint(lookup_by_address(configs), rng=random.Random(seed), limits=limits)
    ep.side = side
    return ep


class SidedPair(Pair):
    """tests/unit/ike/pair.py's Pair with :class:`SidedEndpoint` s.  ``with p.on("a"):``
    around direct calls on a side's SAs (``rekey_ike``, ``delete``...)."""

    def __init__(
        self,
        configs_a: list[IkeConfig],
        configs_b: list[IkeConfig],
        *,
        seed: int = 7,
        limits: EndpointLimits | None = None,
    ) -> None:
        DH.reset(seed)
        super().__init__(configs_a, configs_b, seed=seed, limits=limits)
        self.ep = {
            "a": sided("a", configs_a, seed, limits),
            "b": sided("b", configs_b, seed + 1, limits),
        }

    def on(self, side: str) -> contextlib.AbstractContextManager[None]:
        return DH.on(side)

    def clone(self) -> SidedPair:
        """A deep copy that works: the endpoints file their SAs by ``id()``, which a
        copy changes, so their tables are filed again under the copies' ids."""
        memo: dict[int, Any] = {}
        new: SidedPair = copy.deepcopy(self, memo)
        for ep in new.ep.values():
            ep._filed = {id(f.sa): f for f in ep._filed.values()}
            ep._dirty = {id(sa): sa for sa in ep._dirty.values()}
            ep._heap = [(t, seq, id(memo[key]) if key in memo else key) for t, seq, key in ep._heap]
        return new

    def run_for(self, seconds: float, max_steps: int = 3000) -> None:
        """Simulated time passes; an exchange that never ends is a finding."""
        try:
            self.advance(seconds, max_steps=max_steps)
        except AssertionError as exc:
            if "too many steps" in str(exc):
                raise Finding(f"no quiet within {max_steps} steps of {seconds} s") from None
            raise


def configs(kind: str = "gcm") -> tuple[IkeConfig, IkeConfig]:
    """The initiator's and responder's configuration of a fuzz world.  ``gcm``: AEAD
    IKE SA over X25519; ``cbc``: AES-CBC + HMAC over ECP-256, CHILD SAs with PFS,
    UDP-encapsulated (NAT-T on port 4500)."""
    if kind == "gcm":
        return make_configs(ike=("aes128gcm16-prfsha256-x25519",), esp=("aes128gcm16",))
    if kind == "cbc":
        ci, cr = make_configs(
            ike=("aes128-sha256-ecp256",), esp=("aes128-sha256-ecp256", "aes128gcm16")
        )
        import dataclasses

        return dataclasses.replace(ci, force_encapsulation=True), cr
    raise ValueError(kind)


# --------------------------------------------------------------------------- checks


def check_output(datagrams: Sequence[tuple[bytes, int]], received: int) -> None:
    """What an endpoint sent, as (datagram, source port), because of ``received``
    datagrams."""
    if len(datagrams) > MAX_OUT_PER_DATAGRAM * max(received, 1):
        MONITOR.violation(f"{len(datagrams)} datagrams sent for {received} received")
    for data, port in datagrams:
        if data == b"\xff":  # NAT keepalive, RFC 3948 2.3
            continue
        if len(data) > MAX_OUT_BYTES:
            MONITOR.violation(f"sent a {len(data)}-byte datagram")
        if port == 4500 and not data.startswith(NON_ESP_MARKER):
            MONITOR.violation("sent an IKE message on port 4500 without the non-ESP marker")
        # RFC 3948 2.2: the marker precedes IKE on port 4500 only (an SPI may begin
        # with four zero bytes on port 500)
        body = data[4:] if port == 4500 else data
        try:
            codec.parse_message(body)
        except Exception as exc:
            MONITOR.violation(f"sent a datagram that does not parse: {exc!r}")


def check_sa(sa: IkeSa, children_before: dict[int, ChildState] | None = None) -> None:
    if sa.internal_errors:
        MONITOR.violation(f"{sa!r}: {sa.internal_errors} internal error(s) swallowed")
    if len(sa._queue) > MAX_QUEUE or len(sa._deferred) > MAX_QUEUE:
        MONITOR.violation(f"{sa!r}: {len(sa._queue)} queued, {len(sa._deferred)} deferred tasks")
    held = getattr(getattr(sa, "reassembly", None), "held", 0)
    if held > MAX_REASSEMBLY:
        MONITOR.violation(f"{sa!r}: {held} bytes of fragments held")
    if len(sa._children) > MAX_CHILDREN:
        MONITOR.violation(f"{sa!r}: {len(sa._children)} CHILD SAs")
    if sa.state in END_STATES:
        if sa.get_timer() is not None:
            MONITOR.violation(f"{sa!r} ended but has a timer")
    elif sa.state in WAITING and sa.get_timer() is None:
        MONITOR.violation(f"{sa!r} waits in {sa.state.name} with no timer")
    if children_before:
        for child in sa._children.values():
            old = children_before.get(id(child))
            if old is not None and child.state not in _CHILD_REACH[old]:
                MONITOR.violation(f"CHILD SA went {old.name} -> {child.state.name}")


def child_states(sas: Sequence[IkeSa]) -> dict[int, ChildState]:
    out: dict[int, ChildState] = {}
    for sa in sas:
        for child in sa._children.values():
            assert isinstance(child, ChildSa)
            out[id(child)] = child.state
    return out


def check_endpoint(ep: IkeEndpoint, children_before: dict[int, ChildState] | None = None) -> None:
    """The admission bounds of ``ep.limits`` and the consistency of its tables."""
    lim = ep.limits
    half = ep._half_open
    if len(half) > lim.max_half_open:
        MONITOR.violation(f"{len(half)} half-open SAs, max_half_open is {lim.max_half_open}")
    per_ip = collections.Counter(ip for ip, _ in half)
    if dict(per_ip) != ep._half_open_ip:
        MONITOR.violation(f"half-open count per address {ep._half_open_ip} != table {per_ip}")
    for ip, n in per_ip.items():
        if n > lim.block_threshold_ip:
            MONITOR.violation(
                f"{n} half-open SAs from {ip}, block_threshold_ip is {lim.block_threshold_ip}"
            )
    if len(ep._lingering) > lim.max_lingering:
        MONITOR.violation(f"{len(ep._lingering)} lingering SAs, max is {lim.max_lingering}")
    if len(ep._init_limiter.buckets) > lim.rate_table:
        MONITOR.violation(f"{len(ep._init_limiter.buckets)} rate buckets > {lim.rate_table}")
    filed = {id(f.sa) for f in ep._filed.values()}
    for spi, sa in ep._by_spi.items():
        if id(sa) not in filed:
            MONITOR.violation(f"SPI {spi.hex()} routes to an SA the endpoint forgot")
    for sa in half.values():
        if id(sa) not in filed or sa.state != IkeState.EXPECT_AUTH_REQUEST:
            MONITOR.violation(f"half-open table holds {sa!r}")
    lingering = {id(sa) for _, sa in ep._lingering}
    for f in ep._filed.values():
        if f.sa.state in END_STATES and id(f.sa) not in lingering:
            MONITOR.violation(f"{f.sa!r} ended, is filed, but does not linger")
        check_sa(f.sa, children_before)
        MONITOR.add_secrets_of(f.sa)


def filed_sas(ep: IkeEndpoint) -> list[IkeSa]:
    return [f.sa for f in ep._filed.values()]


def seal_raw(
    sa: IkeSa,
    *,
    exchange: int,
    response: bool,
    message_id: int,
    first: int,
    plaintext: bytes,
    initiator_flag: bool,
) -> bytes:
    """A datagram for ``sa`` carrying ``plaintext`` as the inner chain of its SK payload,
    sealed with the keys the peer would use (RFC 7296 3.14): authentic to ``sa``."""
    assert sa.keys is not None
    cipher = sa.keys.in_cipher
    flags = (0x08 if initiator_flag else 0) | (0x20 if response else 0)
    body_len = cipher.sealed_length(len(plaintext))
    total = 28 + 4 + body_len
    header = (
        sa.spi_i
        + sa.spi_r
        + bytes((PayloadType.SK, 0x20, exchange & 0xFF, flags))
        + (message_id & 0xFFFFFFFF).to_bytes(4, "big")
        + total.to_bytes(4, "big")
    )
    prefix = header + bytes((first & 0xFF, 0)) + (4 + body_len).to_bytes(2, "big")
    data = prefix + cipher.seal(prefix, plaintext)
    return NON_ESP_MARKER + data if sa.local_addr[1] == 4500 else data


def seal_raw_fragments(
    sa: IkeSa,
    *,
    exchange: int,
    response: bool,
    message_id: int,
    first: int,
    plaintext: bytes,
    initiator_flag: bool,
    count: int,
) -> list[bytes]:
    """``plaintext`` split into ``count`` SKF fragments (RFC 7383 2.5), each sealed with
    the keys the peer would use; in order."""
    assert sa.keys is not None
    cipher = sa.keys.in_cipher
    flags = (0x08 if initiator_flag else 0) | (0x20 if response else 0)
    size = -(-len(plaintext) // count) if plaintext else 0
    chunks = [plaintext[i * size : (i + 1) * size] for i in range(count)]
    out = []
    for number, chunk in enumerate(chunks, start=1):
        body_len = cipher.sealed_length(len(chunk))
        skf_len = 4 + 4 + body_len
        header = (
            sa.spi_i
            + sa.spi_r
            + bytes((PayloadType.SKF, 0x20, exchange & 0xFF, flags))
            + (message_id & 0xFFFFFFFF).to_bytes(4, "big")
            + (28 + skf_len).to_bytes(4, "big")
        )
        following = first & 0xFF if number == 1 else 0
        prefix = (
            header
            + bytes((following, 0))
            + skf_len.to_bytes(2, "big")
            + number.to_bytes(2, "big")
            + count.to_bytes(2, "big")
        )
        data = prefix + cipher.seal(prefix, chunk)
        out.append(NON_ESP_MARKER + data if sa.local_addr[1] == 4500 else data)
    return out
