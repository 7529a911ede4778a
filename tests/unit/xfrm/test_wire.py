"""Struct layouts: sizes equal the x86_64 kernel ABI; pyroute2 and the compiled
encoder agree byte for byte; members sit at the kernel's offsets."""

from __future__ import annotations

import struct

import pytest

from ipsecd.xfrm import codec, wire
from ipsecd.xfrm.consts import XFRM_INF, Action, Dir, Mode, MsgType, Proto
from ipsecd.xfrm.model import Mark, Policy, Selector, Template, address


@pytest.mark.parametrize("name", sorted(wire.KERNEL_SIZES))
def test_size_matches_kernel(name: str) -> None:
    assert wire.compiled(getattr(wire, name)).size == wire.KERNEL_SIZES[name]


@pytest.mark.parametrize(
    ("cls", "size"),
    [
        (wire.userpolicy_info_msg, 168),
        (wire.usersa_info_msg, 224),
        (wire.user_acquire_msg, 280),
        (wire.user_expire_msg, 232),
        (wire.user_polexpire_msg, 176),
        (wire.user_mapping_msg, 64),
        (wire.userpolicy_id_msg, 64),
        (wire.usersa_id_msg, 24),
    ],
)
def test_pyroute2_classes_have_kernel_size(cls: type, size: int) -> None:
    assert sum(struct.calcsize("=" + fmt) for _, fmt in cls.fields) == size


def _policy() -> Policy:
    return Policy(
        Selector.of("192.0.2.0/24", "198.51.100.7/32", 6, 1234, 443),
        Dir.OUT,
        Action.ALLOW,
        priority=0x8001,
        templates=(
            Template(Proto.ESP, Mode.TUNNEL, address("192.0.2.1"), address("198.51.100.1"), 5),
        ),
        mark=Mark(0x10, 0xF0),
    )


def test_policy_offsets_match_kernel_layout() -> None:
    data = codec.encode_policy(_policy(), seq=7)
    length, kind, _flags, seq, _ = struct.unpack_from("=IHHII", data)
    assert (length, kind, seq) == (len(data), MsgType.NEWPOLICY, 7)
    body = data[16:]
    assert body[0:4] == bytes([198, 51, 100, 7])  # sel.daddr
    assert body[16:20] == bytes([192, 0, 2, 0])  # sel.saddr
    assert struct.unpack_from("!H", body, 32)[0] == 443  # sel.dport, big-endian
    assert struct.unpack_from("!H", body, 36)[0] == 1234  # sel.sport
    assert struct.unpack_from("=HBBB", body, 40) == (2, 32, 24, 6)  # family, plens, proto
    assert struct.unpack_from("=Q", body, 56)[0] == XFRM_INF  # lft.soft_byte_limit
    assert struct.unpack_from("=I", body, 152)[0] == 0x8001  # priority
    assert body[160:162] == bytes([Dir.OUT, Action.ALLOW])  # dir, action
    # first attribute right after the 168-byte struct: XFRMA_TMPL carrying one template
    alen, atype = struct.unpack_from("=HH", body, 168)
    assert (alen, atype) == (4 + 64, 5)
    tmpl = body[172 : 172 + 64]
    assert tmpl[0:4] == bytes([198, 51, 100, 1])  # id.daddr
    assert tmpl[20] == Proto.ESP  # id.proto
    assert struct.unpack_from("=H", tmpl, 24)[0] == 2  # family
    assert tmpl[28:32] == bytes([192, 0, 2, 1])  # saddr
    assert struct.unpack_from("=IB", tmpl, 44) == (5, Mode.TUNNEL)


def test_pyroute2_encoder_agrees_with_compiled_encoder() -> None:
    p = _policy()
    ours = codec.policy_info_bytes(p)
    msg = wire.userpolicy_info_msg()
    values = codec.selector_values(p.selector)
    values.update(codec.lifetime_values(p.lifetime))
    values.update(priority=p.priority, dir=p.dir, action=p.action)
    for name, _fmt in wire.USERPOLICY_INFO:
        if not name.startswith("__"):
            msg[name] = values.get(name, 0)
    msg["header"]["type"] = MsgType.NEWPOLICY
    msg.encode()
    assert bytes(msg.data[16:]) == ours


def test_pyroute2_decodes_our_bytes() -> None:
    p = _policy()
    data = codec.encode_policy(p, seq=1)
    msg = codec.decode_body(MsgType.NEWPOLICY, data, 0)
    assert msg["priority"] == 0x8001
    assert codec.decode_policy(msg) == p
