"""Hypothesis fuzzing of the engine: any bytes, in any state, to either role.

Properties: ``receive_datagram`` / ``IkeSa.accept`` never raise; no internal error is
swallowed (``internal_errors`` stays 0); the state only moves along the transition
table; every waiting state has a timer (no hang); and the exchange then runs to a
settled end (established, deleted or failed) within a bounded number of steps.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.ike import (
    IkeSa,
    IkeState,
    codec,
    cookie_challenge,
    lookup_by_address,
    route_datagram,
)
from ipsecd.ike import auth as auth_module
from ipsecd.ike.constants import ExchangeType, HeaderFlag, NotifyType
from ipsecd.ike.negotiate import NON_ESP_MARKER
from ipsecd.ike.states import END_STATES, is_allowed
from ipsecd.ike.tasks import ike_auth

from .harness import I_ADDR, R_ADDR, Harness, make_configs

#: Examples per test; raise it locally to fuzz deeper (IPSECD_FUZZ_EXAMPLES=1000).
_EXAMPLES = int(os.environ.get("IPSECD_FUZZ_EXAMPLES", "40"))

FUZZ = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)

WAITING = {
    IkeState.EXPECT_SA_INIT_RESPONSE,
    IkeState.EXPECT_AUTH_REQUEST,
    IkeState.EXPECT_AUTH_RESPONSE,
    IkeState.EXPECT_DELETE_RESPONSE,
}


def _harness() -> Harness:
    ci, cr = make_configs(esp=("aes256-sha256",), ike=("aes128-sha256-ecp256",))
    return Harness(ci, [cr])


def _until(h: Harness, cond: Callable[[], bool]) -> Harness:
    for _ in range(100):
        if cond():
            return h
        assert h.step(), "harness stopped before reaching the wanted state"
    raise AssertionError("state not reached")


def at_state(name: str) -> Harness:
    h = _harness()
    h.start()
    if name == "i_expect_sa_init_response":
        return h
    if name == "r_expect_auth_request":
        return _until(h, lambda: h.responder is not None)
    if name == "i_expect_auth_response":
        return _until(h, lambda: h.initiator.state == IkeState.EXPECT_AUTH_RESPONSE)
    h.run_until_established()
    if name == "established":
        return h
    if name == "expect_delete_response":
        h.initiator.delete(h.now)
        h.flush()
        return h
    raise AssertionError(name)


STATES = [
    "i_expect_sa_init_response",
    "r_expect_auth_request",
    "i_expect_auth_response",
    "established",
    "expect_delete_response",
]


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    if cut is not None and buf:
        del buf[cut % len(buf) :]
    return bytes(buf)


def _check_and_settle(h: Harness, before: dict[str, IkeState]) -> None:
    engines = {"i": h.initiator, **({"r": h.responder} if h.responder is not None else {})}
    for who, sa in engines.items():
        assert sa.internal_errors == 0, f"{who}: internal error swallowed"
        old = before.get(who, IkeState.INITIAL)
        assert sa.state == old or is_allowed(old, sa.state), (old, sa.state)
        if sa.state in END_STATES:
            assert sa.get_timer() is None
        elif sa.state in WAITING:
            assert sa.get_timer() is not None, f"{who} waits in {sa.state.name} with no timer"
    # never hangs: the exchange settles within a bounded number of steps
    h.run(max_steps=3000)
    for sa in [h.initiator, *h.responders]:
        assert sa.internal_errors == 0
        assert sa.state in END_STATES or sa.state == IkeState.ESTABLISHED, sa.state
        if sa.state in END_STATES:
            assert sa.get_timer() is None


def _target(h: Harness, to: str) -> str:
    return "r" if to == "r" and h.responder is not None else "i"


@FUZZ
@given(
    state=st.sampled_from(STATES),
    to=st.sampled_from(["i", "r"]),
    data=st.binary(max_size=600),
    marker=st.booleans(),
)
def test_random_bytes_in_every_state(state: str, to: str, data: bytes, marker: bool) -> None:
    h = at_state(state)
    before = {"i": h.initiator.state}
    if h.responder is not None:
        before["r"] = h.responder.state
    h.inject((NON_ESP_MARKER if marker else b"") + data, to=_target(h, to))
    _check_and_settle(h, before)


@FUZZ
@given(
    state=st.sampled_from(STATES),
    to=st.sampled_from(["i", "r"]),
    pick=st.integers(min_value=0, max_value=20),
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.integers(0, 2000),
)
def test_mutated_genuine_datagrams(
    state: str, to: str, pick: int, edits: list[tuple[int, int]], cut: int | None
) -> None:
    """Bit-flipped and truncated copies of real messages: headers stay plausible, so
    these reach much deeper than random bytes (SPI match, message IDs, SK payload)."""
    h = at_state(state)
    assert h.wire, "no datagram recorded yet"
    before = {"i": h.initiator.state}
    if h.responder is not None:
        before["r"] = h.responder.state
    original = h.wire[pick % len(h.wire)].data
    h.inject(_mutate(original, edits, cut), to=_target(h, to))
    _check_and_settle(h, before)


@FUZZ
@given(data=st.binary(max_size=400))
def test_accept_never_raises_on_random_bytes(data: bytes) -> None:
    _, cr = make_configs()
    sa = IkeSa.accept(lookup_by_address([cr]), data, R_ADDR, I_ADDR, 0.0)
    assert sa is None or sa.internal_errors == 0
    reply = cookie_challenge(data, I_ADDR, b"secret")
    assert reply is None or route_datagram(reply) is not None


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.integers(28, 2000),
)
def test_accept_on_mutated_sa_init_requests(edits: list[tuple[int, int]], cut: int | None) -> None:
    h = _harness()
    h.start()
    mutated = _mutate(h.wire[0].data, edits, cut)
    reply = cookie_challenge(mutated, I_ADDR, b"secret")
    assert reply is None or route_datagram(reply) is not None
    sa = IkeSa.accept(lookup_by_address(h.responder_configs), mutated, R_ADDR, I_ADDR, 0.0)
    if sa is not None:
        assert sa.internal_errors == 0
        assert sa.state in END_STATES or sa.state == IkeState.EXPECT_AUTH_REQUEST
        assert (sa.get_timer() is None) == (sa.state in END_STATES)


# ---------------------------------------------------------------------------------------
# Structured fuzzing: well-formed, correctly encrypted requests with arbitrary payloads, so
# that the exchange handlers themselves (after the integrity check) see hostile content.

_ADDR4 = st.integers(0, 2**32 - 1).map(lambda n: ipaddress.IPv4Address(n))
_SELECTOR = st.builds(
    lambda a, b, proto, p1, p2: codec.TrafficSelector(proto, p1, p2, a, b),
    _ADDR4,
    _ADDR4,
    st.sampled_from([0, 1, 6, 17, 58, 255]),
    st.integers(0, 65535),
    st.integers(0, 65535),
)
_TRANSFORM = st.builds(
    codec.Transform.make,
    st.integers(1, 6),
    st.integers(0, 35),
    st.none() | st.sampled_from([128, 192, 256, 7]),
)
_PROPOSAL = st.builds(
    lambda num, proto, spi, ts: codec.Proposal(num, proto, spi, tuple(ts)),
    st.integers(1, 4),
    st.sampled_from([1, 2, 3, 9]),
    st.sampled_from([b"", b"\x00\x00\x00\x00", b"\x01\x02\x03\x04", b"\x05" * 8]),
    st.lists(_TRANSFORM, min_size=1, max_size=6),
)
_NOTIFY_TYPES = st.sampled_from(
    [
        NotifyType.AUTHENTICATION_FAILED,
        NotifyType.USE_TRANSPORT_MODE,
        NotifyType.INVALID_SYNTAX,
        NotifyType.TS_UNACCEPTABLE,
        NotifyType.NO_PROPOSAL_CHOSEN,
        NotifyType.INITIAL_CONTACT,
        NotifyType.NAT_DETECTION_SOURCE_IP,
        12345,
        60000,
    ]
)


def _delete(proto: int, size: int, count: int) -> codec.DeletePayload:
    return codec.DeletePayload(proto, size, tuple(bytes([i + 1]) * size for i in range(count)))


_PAYLOAD = st.one_of(
    st.builds(
        codec.IdiPayload, st.sampled_from([1, 2, 5, 11, 99]), st.binary(min_size=1, max_size=20)
    ),
    st.builds(codec.IdrPayload, st.sampled_from([1, 2, 11]), st.binary(min_size=1, max_size=20)),
    st.builds(
        codec.AuthPayload, st.sampled_from([1, 2, 14, 200]), st.binary(min_size=0, max_size=64)
    ),
    st.builds(lambda ps: codec.SaPayload(tuple(ps)), st.lists(_PROPOSAL, min_size=1, max_size=3)),
    st.builds(lambda s: codec.TsiPayload(tuple(s)), st.lists(_SELECTOR, max_size=3)),
    st.builds(lambda s: codec.TsrPayload(tuple(s)), st.lists(_SELECTOR, max_size=3)),
    st.builds(
        codec.NotifyPayload,
        _NOTIFY_TYPES,
        st.binary(min_size=0, max_size=8),
        st.sampled_from([0, 1, 3]),
        st.sampled_from([b"", b"\x01\x02\x03\x04"]),
    ),
    st.builds(
        _delete, st.sampled_from([0, 1, 2, 3, 7]), st.sampled_from([0, 4, 8]), st.integers(0, 3)
    ),
    st.builds(codec.NoncePayload, st.binary(min_size=16, max_size=40)),
    st.builds(codec.KePayload, st.sampled_from([19, 31]), st.binary(min_size=0, max_size=64)),
)


def _forge(
    h: Harness, sender: IkeSa, exchange: int, message_id: int, inner: list[codec.Payload]
) -> bytes:
    flags = HeaderFlag.INITIATOR if sender.initiator else HeaderFlag.NONE
    msg = codec.Message(sender.spi_i, sender.spi_r, exchange, int(flags), message_id)
    data = codec.encrypt_sk(msg, inner, sender.keys.out_cipher)  # type: ignore[union-attr]
    return (NON_ESP_MARKER + data) if sender.local_addr[1] == 4500 else data


@FUZZ
@given(
    inner=st.lists(_PAYLOAD, max_size=8),
    exchange=st.sampled_from(
        [ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA, ExchangeType.IKE_AUTH, 99]
    ),
    from_initiator=st.booleans(),
)
def test_authentic_requests_with_hostile_payloads(
    inner: list[codec.Payload], exchange: int, from_initiator: bool
) -> None:
    h = at_state("established")
    r = h.responder
    assert r is not None
    sender, receiver = (h.initiator, r) if from_initiator else (r, h.initiator)
    before = {"i": h.initiator.state, "r": r.state}
    message_id = receiver._cache.expected  # the receiver's next expected request
    h.inject(_forge(h, sender, exchange, message_id, inner), to="r" if from_initiator else "i")
    assert receiver.internal_errors == 0
    _check_and_settle(h, before)


@FUZZ
@given(
    inner=st.lists(_PAYLOAD, max_size=10),
    keep_genuine=st.booleans(),
    authenticate=st.booleans(),
)
def test_authentic_ike_auth_requests_with_hostile_payloads(
    inner: list[codec.Payload], keep_genuine: bool, authenticate: bool
) -> None:
    """A correctly protected IKE_AUTH request (as only the real initiator could send)
    whose content is arbitrary -- with a valid IDi/AUTH pair in front when
    ``authenticate``, so the CHILD SA negotiation sees the hostile rest: the responder
    answers or fails, never crashes."""
    h = at_state("i_expect_auth_response")
    r = h.responder
    assert r is not None and r.state == IkeState.EXPECT_AUTH_REQUEST
    if not keep_genuine:
        h.network.drop = lambda p: p.sender == "i"
    if authenticate:
        ini = h.initiator
        idi = codec.IdiPayload(ini.config.local_id.type, ini.config.local_id.data)
        octets = ike_auth._octets(ini, True, codec.payload_body(idi))
        auth = codec.AuthPayload(2, auth_module._psk_auth(ini, ini.config.psk, octets))
        inner = [idi, auth, *inner]
    before = {"i": h.initiator.state, "r": r.state}
    h.inject(_forge(h, h.initiator, ExchangeType.IKE_AUTH, 1, inner), to="r")
    assert r.internal_errors == 0
    _check_and_settle(h, before)
