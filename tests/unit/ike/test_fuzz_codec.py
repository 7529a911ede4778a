"""Hypothesis fuzzing of the IKEv2 parser.

Property: for any input, ``parse_message`` returns a Message or raises an IkeError
subclass -- never IndexError, struct.error, ValueError or anything else, and never
hangs (every loop in the parser advances by at least 4 bytes).  When it returns a
Message, building and re-parsing it gives the same value.

Inputs: raw random bytes; random bodies behind a valid header (so the payload parsers
are reached); and mutations (byte changes, truncations, length-field fixes) of valid
messages, including the strongSwan captures.  Example counts are bounded so the whole
file runs in a few seconds.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.ike.codec import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    FragmentCollector,
    IdiPayload,
    IdrPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Proposal,
    RawTrafficSelector,
    SaPayload,
    SkfPayload,
    SkPayload,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TsiPayload,
    TsrPayload,
    UnknownPayload,
    VendorIdPayload,
    build_message,
    decrypt_sk,
    encrypt_sk,
    parse_message,
    parse_payloads,
)
from ipsecd.ike.constants import EncrId, ExchangeType, HeaderFlag, IntegId, PayloadType
from ipsecd.ike.crypto import SkCipher
from ipsecd.ike.errors import IkeError

from .test_codec import _INNER, _all_payloads, _msg

CAPTURES = Path(__file__).resolve().parents[2] / "data" / "ike" / "captures"
FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

_SEEDS: list[bytes] = [
    build_message(_msg(_all_payloads())),
    build_message(_msg(_INNER)),
    *(p.read_bytes() for p in sorted(CAPTURES.glob("*.bin"))),
]
_PAYLOAD_TYPES = [int(t) for t in PayloadType] + [1, 99, 128, 200, 255]


def _check(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except IkeError as exc:
        # error texts name places and numbers, never echo raw (possibly secret) bytes
        text = str(exc)
        assert "\\x" not in text and "b'" not in text and len(text) < 300, text
        return
    assert isinstance(msg, Message)
    again = build_message(msg)
    assert parse_message(again) == msg


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@FUZZ
@given(
    next_payload=st.sampled_from(_PAYLOAD_TYPES),
    body=st.binary(max_size=400),
    flags=st.integers(0, 255),
    version=st.sampled_from([0x20, 0x21, 0x2F, 0x10, 0x30]),
)
def test_random_payloads_behind_valid_header(
    next_payload: int, body: bytes, flags: int, version: int
) -> None:
    header = bytes(16) + bytes((next_payload, version, 34, flags)) + bytes(4)
    _check(header + struct.pack("!I", 28 + len(body)) + body)


@FUZZ
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 1 << 16)),
    fix_length=st.booleans(),
)
def test_mutated_valid_messages(
    seed: bytes, edits: list[tuple[int, int]], cut: int | None, fix_length: bool
) -> None:
    data = bytearray(seed)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    if fix_length and len(data) >= 28:
        # keep the header consistent so the mutation reaches the payload parsers
        data[24:28] = struct.pack("!I", len(data))
    _check(bytes(data))


@FUZZ
@given(first=st.sampled_from(_PAYLOAD_TYPES), chain=st.binary(max_size=300))
def test_random_inner_chains(first: int, chain: bytes) -> None:
    try:
        payloads = parse_payloads(chain, first)
    except IkeError:
        return
    assert isinstance(payloads, tuple)


_CIPHER = SkCipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, bytes(16), bytes(32))
_AEAD = SkCipher(EncrId.CHACHA20_POLY1305, None, IntegId.NONE, bytes(36), b"")


@settings(max_examples=150, deadline=None, database=None)
@given(
    body=st.binary(max_size=200),
    first=st.sampled_from(_PAYLOAD_TYPES),
    aead=st.booleans(),
)
def test_decrypt_sk_of_garbage_is_typed(body: bytes, first: int, aead: bool) -> None:
    cipher = _AEAD if aead else _CIPHER
    chain = bytes((first, 0)) + struct.pack("!H", 4 + len(body)) + body
    header = bytes(16) + bytes((PayloadType.SK, 0x20, 35, 0x08)) + bytes(4)
    data = header + struct.pack("!I", 28 + len(chain)) + chain
    try:
        msg = parse_message(data)
        decrypt_sk(data, msg, cipher)
    except IkeError:
        return


@settings(max_examples=150, deadline=None, database=None)
@given(plaintext=st.binary(max_size=200), first=st.sampled_from(_PAYLOAD_TYPES))
def test_authentic_garbage_plaintext_is_typed(plaintext: bytes, first: int) -> None:
    """Even correctly encrypted messages may carry nonsense inside: still typed errors."""
    header = _msg(exchange_type=ExchangeType.IKE_AUTH, flags=HeaderFlag.INITIATOR)
    data = encrypt_sk(header, (), _AEAD)
    # swap in our own plaintext: seal it by hand with the SK header pointing at `first`
    prefix_len = 28 + 4
    body_len = _AEAD.sealed_length(len(plaintext))
    total = prefix_len + body_len
    prefix = bytearray(data[:prefix_len])
    prefix[24:28] = struct.pack("!I", total)
    prefix[28] = first
    prefix[30:32] = struct.pack("!H", 4 + body_len)
    forged = bytes(prefix) + _AEAD.seal(bytes(prefix), plaintext)
    try:
        msg = parse_message(forged)
        decrypt_sk(forged, msg, _AEAD)
    except IkeError:
        return


@settings(max_examples=100, deadline=None, database=None)
@given(
    frags=st.lists(
        st.tuples(st.integers(1, 5), st.integers(1, 5), st.binary(max_size=40)), max_size=8
    ),
    first=st.sampled_from(_PAYLOAD_TYPES),
)
def test_fragment_collector_never_crashes(frags: list[tuple[int, int, bytes]], first: int) -> None:
    collector = FragmentCollector()
    for number, total, chunk in frags:
        if number > total:
            continue
        try:
            collector.add(SkfPayload(first if number == 1 else 0, number, total, b""), chunk)
        except IkeError:
            collector.reset()


# --------------------------------------------------------------------------- structured

_u8 = st.integers(0, 255)
_u16 = st.integers(0, 0xFFFF)
_attr = st.one_of(
    st.builds(TransformAttribute, st.integers(0, 0x7FFF), _u16),
    st.builds(TransformAttribute, st.integers(0, 0x7FFF), st.binary(max_size=12)),
)
_transform = st.builds(Transform, _u8, _u16, st.lists(_attr, max_size=3).map(tuple))
_proposal = st.builds(
    Proposal, _u8, _u8, st.binary(max_size=8), st.lists(_transform, max_size=5).map(tuple)
)
_crit = st.booleans()
_selector = st.one_of(
    st.builds(TrafficSelector, _u8, _u16, _u16, st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.builds(TrafficSelector, _u8, _u16, _u16, st.ip_addresses(v=6), st.ip_addresses(v=6)),
    st.builds(
        RawTrafficSelector,
        _u8.filter(lambda t: t not in (7, 8)),
        _u8,
        st.binary(max_size=20),
    ),
)


@st.composite
def _delete(draw: st.DrawFn) -> DeletePayload:
    size = draw(st.integers(0, 8))
    # RFC 7296 3.11: SPI Size 0 (IKE) carries no SPIs (tests/unit/ike/test_fuzz_findings.py)
    spis = draw(st.lists(st.binary(min_size=size, max_size=size), max_size=4 if size else 0))
    return DeletePayload(draw(_u8), size, tuple(spis), critical=draw(_crit))


# types kept raw: not NONE, not one the codec decodes, not SK/SKF
_undecoded = _u8.filter(lambda t: t != 0 and not (33 <= t <= 46 or t == 53))
_plain_payload = st.one_of(
    st.builds(SaPayload, st.lists(_proposal, min_size=1, max_size=3).map(tuple), critical=_crit),
    st.builds(KePayload, _u16, st.binary(max_size=64), critical=_crit),
    st.builds(IdiPayload, _u8, st.binary(max_size=32), critical=_crit),
    st.builds(IdrPayload, _u8, st.binary(max_size=32), critical=_crit),
    st.builds(CertPayload, _u8, st.binary(max_size=32), critical=_crit),
    st.builds(CertReqPayload, _u8, st.binary(max_size=32), critical=_crit),
    st.builds(AuthPayload, _u8, st.binary(max_size=32), critical=_crit),
    st.builds(NoncePayload, st.binary(min_size=16, max_size=64), critical=_crit),
    st.builds(
        NotifyPayload,
        _u16,
        st.binary(max_size=24),
        _u8,
        st.binary(max_size=8),
        critical=_crit,
    ),
    _delete(),
    st.builds(VendorIdPayload, st.binary(max_size=24), critical=_crit),
    st.builds(TsiPayload, st.lists(_selector, max_size=3).map(tuple), critical=_crit),
    st.builds(TsrPayload, st.lists(_selector, max_size=3).map(tuple), critical=_crit),
    st.builds(UnknownPayload, _undecoded, st.binary(max_size=24)),
)
_encrypted = st.one_of(
    st.builds(SkPayload, _u8, st.binary(max_size=48), critical=_crit),
    st.integers(1, 6).flatmap(
        lambda total: st.builds(
            SkfPayload,
            _u8,
            st.integers(1, total),
            st.just(total),
            st.binary(max_size=48),
            critical=_crit,
        )
    ),
)


@st.composite
def _messages(draw: st.DrawFn) -> Message:
    payloads = draw(st.lists(_plain_payload, max_size=6))
    if draw(st.booleans()):
        payloads.append(draw(_encrypted))
    return Message(
        spi_i=draw(st.binary(min_size=8, max_size=8)),
        spi_r=draw(st.binary(min_size=8, max_size=8)),
        exchange_type=draw(_u8),
        flags=draw(_u8),
        message_id=draw(st.integers(0, 0xFFFFFFFF)),
        payloads=tuple(payloads),
        minor_version=draw(st.integers(0, 15)),
    )


@settings(max_examples=200, deadline=None, database=None)
@given(_messages())
def test_any_message_value_roundtrips(msg: Message) -> None:
    data = build_message(msg)
    assert parse_message(data) == msg
    assert build_message(parse_message(data)) == data
