"""Round trips through encode → pyroute2 decode → model, and event/error parsing."""

from __future__ import annotations

import socket
import struct

import pytest

from ipsecd.xfrm import codec, wire
from ipsecd.xfrm.consts import (
    Action,
    DefaultAction,
    Dir,
    EncapType,
    Mode,
    MsgType,
    Proto,
    StateFlag,
)
from ipsecd.xfrm.errors import XfrmUnsupported
from ipsecd.xfrm.model import (
    AcquireRequested,
    Auth,
    DefaultPolicy,
    DfBit,
    Encap,
    Level,
    Lifetime,
    MappingChanged,
    Mark,
    Policy,
    PolicyExpired,
    Selector,
    State,
    StateExpired,
    Template,
    address,
    aes_cbc,
    aes_gcm,
    chacha20_poly1305,
    hmac_sha2,
)

A4, B4 = address("192.0.2.1"), address("192.0.2.2")
A6, B6 = address("fd00::1"), address("fd00::2")

POLICIES = [
    Policy(Selector.of("192.0.2.0/24", "198.51.100.0/24"), Dir.IN, Action.BLOCK, 0x8000),
    Policy(
        Selector.of("fd00::/64", "fd00:1::/48", 17, None, 53),
        Dir.FWD,
        priority=0x8002,
        templates=(Template(Proto.ESP, Mode.TUNNEL, A6, B6, reqid=0x49500001, level=Level.UNIQUE),),
        if_id=7,
    ),
    Policy(
        Selector.of("192.0.2.1", "192.0.2.2", 1, 8, 0),
        Dir.OUT,
        priority=0x8003,
        templates=(Template(Proto.ESP), Template(Proto.AH, level=Level.USE)),
        mark=Mark(1),
        lifetime=Lifetime(soft_add_seconds=10, hard_add_seconds=20, hard_use_seconds=5),
    ),
]


@pytest.mark.parametrize("policy", POLICIES, ids=["block-in", "v6-tunnel-unique", "bundle"])
def test_policy_round_trip(policy: Policy) -> None:
    for update in (False, True):
        data = codec.encode_policy(policy, 3, update=update)
        kind = struct.unpack_from("=H", data, 4)[0]
        assert kind == (MsgType.UPDPOLICY if update else MsgType.NEWPOLICY)
        assert codec.decode_policy(codec.decode_body(kind, data, 0)) == policy


def test_blocking_policy_refuses_templates() -> None:
    p = Policy(
        Selector.of("0.0.0.0/0", "0.0.0.0/0"), Dir.OUT, Action.BLOCK, templates=(Template(),)
    )
    with pytest.raises(ValueError, match="blocking"):
        codec.encode_policy(p, 1)


KEY_GCM = bytes(range(20))
STATES = [
    State(A4, B4, 0x1000, aead=aes_gcm(KEY_GCM), reqid=0x49500001),
    State(
        A6,
        B6,
        0x1001,
        mode=Mode.TUNNEL,
        aead=chacha20_poly1305(bytes(36)),
        replay_window=128,
        esn=True,
        ecn=False,
        decap_dscp=True,
        dfbit=DfBit.CLEAR,
    ),
    State(
        A4,
        B4,
        0x1002,
        crypt=aes_cbc(b"k" * 32),
        auth=hmac_sha2(256, b"a" * 32),
        encap=Encap(EncapType.ESPINUDP, 4500, 4501),
        lifetime=Lifetime(
            soft_bytes=1000,
            hard_bytes=2000,
            soft_packets=5,
            hard_packets=9,
            soft_add_seconds=60,
            hard_add_seconds=90,
        ),
        selector=Selector.of("192.0.2.1", "192.0.2.2", 6),
        mark=Mark(3, 0xFF),
        if_id=4,
        tfcpad=16,
        replay_window=0,
    ),
    State(A4, B4, 0x1003, Proto.AH, auth=Auth("hmac(sha512)", b"x" * 64, 256)),
]


@pytest.mark.parametrize("state", STATES, ids=["gcm", "chacha-esn-flags", "cbc-encap", "ah"])
def test_state_round_trip(state: State) -> None:
    data = codec.encode_state(state, 9)
    got = codec.decode_state(codec.decode_body(MsgType.NEWSA, data, 0))
    assert got == state


def test_state_flags_and_esn_attribute() -> None:
    s = STATES[1]
    body = codec.state_info_bytes(s)
    flags = body[216]
    assert flags == StateFlag.NOECN | StateFlag.DECAP_DSCP | StateFlag.NOPMTUDISC | StateFlag.ESN
    assert body[215] == 0  # replay_window must be 0 when XFRMA_REPLAY_ESN_VAL is sent
    attrs = codec.state_attrs(s)
    # AEAD first, then REPLAY_ESN_VAL with a 4-word bitmap for a 128-packet window
    off = 0
    kinds = {}
    while off < len(attrs):
        alen, atype = struct.unpack_from("=HH", attrs, off)
        kinds[atype] = attrs[off + 4 : off + alen]
        off += (alen + 3) & ~3
    esn = kinds[23]
    assert struct.unpack_from("=6I", esn) == (4, 0, 0, 0, 0, 128)
    assert len(esn) == 24 + 16


def test_dfbit_set_is_reported_unsupported() -> None:
    with pytest.raises(XfrmUnsupported, match="dfbit 'set'"):
        codec.encode_state(State(A4, B4, 1, aead=aes_gcm(KEY_GCM), dfbit=DfBit.SET), 1)


def test_state_needs_algorithms() -> None:
    with pytest.raises(ValueError, match="ESP SA needs"):
        codec.encode_state(State(A4, B4, 1), 1)
    with pytest.raises(ValueError, match="AH SA needs"):
        codec.encode_state(State(A4, B4, 1, Proto.AH), 1)


def test_default_policy_body() -> None:
    data = codec.encode_default(
        DefaultPolicy(DefaultAction.BLOCK, DefaultAction.ACCEPT, DefaultAction.UNSPEC), 1
    )
    assert data[16:19] == bytes([1, 2, 0])
    msg = codec.decode_body(MsgType.GETDEFAULT, data, 0)
    assert codec.decode_default(msg) == DefaultPolicy(
        DefaultAction.BLOCK, DefaultAction.ACCEPT, DefaultAction.UNSPEC
    )


def _event(kind: MsgType, body: bytes) -> object:
    data = codec.message(kind, 0, 0, body)
    return codec.decode_event(kind, codec.decode_body(kind, data, 0))


def test_decode_expire_and_polexpire() -> None:
    s = STATES[0]
    ev = _event(
        MsgType.EXPIRE, codec.state_info_bytes(s) + b"\x01" + b"\0" * 7 + codec.state_attrs(s)
    )
    assert isinstance(ev, StateExpired) and ev.hard and ev.state == s
    p = POLICIES[2]
    ev = _event(MsgType.POLEXPIRE, codec.policy_info_bytes(p) + b"\0" * 8 + codec.policy_attrs(p))
    assert isinstance(ev, PolicyExpired) and not ev.hard and ev.policy == p


def test_decode_acquire() -> None:
    p = POLICIES[2]
    xid = wire.compiled(wire.XFRM_ID).struct.pack(B4.packed, socket.htonl(0), Proto.ESP)
    sel = wire.compiled(wire.SELECTOR).struct.pack(*codec.selector_tuple(p.selector))
    body = xid + A4.packed.ljust(16, b"\0") + sel + codec.policy_info_bytes(p)
    body += struct.pack("=4I", 0, 0, 0, 77) + codec.policy_attrs(p)
    ev = _event(MsgType.ACQUIRE, body)
    assert isinstance(ev, AcquireRequested)
    assert (ev.proto, ev.dst, ev.src, ev.seq) == (Proto.ESP, B4, A4, 77)
    assert ev.selector == p.selector and ev.policy == p


def test_decode_mapping() -> None:
    said = wire.compiled(wire.USERSA_ID).struct.pack(B4.packed, socket.htonl(0x99), 2, Proto.ESP)
    body = (
        said
        + struct.pack("=I", 5)
        + A4.packed.ljust(16, b"\0")
        + address("203.0.113.9").packed.ljust(16, b"\0")
    )
    body += struct.pack("!HH", 4500, 31000)
    ev = _event(MsgType.MAPPING, body)
    assert ev == MappingChanged(
        codec.SaId(B4, 0x99, Proto.ESP), 5, A4, 4500, address("203.0.113.9"), 31000
    )


def test_parse_error_with_extended_ack() -> None:
    text = b"Requested type not found\0"
    attr = struct.pack("=HH", 4 + len(text), 1) + text + b"\0" * (-(4 + len(text)) & 3)
    orig = struct.pack("=IHHII", 200, MsgType.NEWSA, 5, 42, 0)
    body = struct.pack("=i", -93) + orig + attr
    data = struct.pack("=IHHII", 16 + len(body), 2, 0x100 | 0x200, 42, 0) + body
    ((off, length, kind, flags, seq),) = list(codec.split_messages(data))
    assert (kind, seq) == (2, 42)
    assert codec.parse_error(data, off, length, flags) == (93, "Requested type not found")


def test_split_messages_stops_at_truncation() -> None:
    one = codec.message(MsgType.GETDEFAULT, 0, 1, b"\0\0\0\0")
    assert len(list(codec.split_messages(one + one[:10]))) == 1
