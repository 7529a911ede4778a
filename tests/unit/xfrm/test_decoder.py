"""The dump decoder (ipsecd.xfrm.decoder) against the pyroute2 path (codec.decode_*).

Messages are generated as the kernel sends them in a dump: kernel-filled members
(index, current lifetimes, statistics), NLM_F_MULTI, and attributes the encoder never
sends (XFRMA_POLICY_TYPE, XFRMA_REPLAY_VAL, XFRMA_LASTUSED, the legacy XFRMA_ALG_AUTH
next to XFRMA_ALG_AUTH_TRUNC, ...).  Both decoders must give the same values, down to
the fields that do not take part in ``==`` and the exact types.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from ipsecd.xfrm import codec, decoder
from ipsecd.xfrm.consts import (
    Action,
    Attr,
    Dir,
    EncapType,
    Mode,
    MsgType,
    PolicyFlag,
    Proto,
)
from ipsecd.xfrm.decoder import DumpDecoder, decoder_for
from ipsecd.xfrm.model import (
    Address,
    Aead,
    Auth,
    Crypt,
    DfBit,
    Encap,
    Level,
    Lifetime,
    Mark,
    Policy,
    Selector,
    State,
    Template,
    address,
)

NLM_F_MULTI = 0x2
_U32 = struct.Struct("=I")
# offsets inside the fixed bodies (struct xfrm_userpolicy_info / xfrm_usersa_info)
POL_CUR, POL_INDEX, POL_SHARE = 120, 156, 163
SA_CUR, SA_STATS, SA_SEQ = 160, 192, 204


def same(a: Any, b: Any, path: str = "value") -> None:
    """Equal *and* of the same types, through every dataclass field (compare=False
    ones included) and tuple."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def attr(kind: int, payload: bytes) -> bytes:
    return codec.nla(kind, payload)


# ------------------------------------------------------------------ generators


def _addr(rng: random.Random, v6: bool) -> Address:
    if v6:
        return ipaddress.IPv6Address(b"\xfd" + rng.randbytes(15))
    return ipaddress.IPv4Address(rng.choice([b"\xc0\x00\x02", b"\xc6\x33\x64"]) + rng.randbytes(1))


def _net(rng: random.Random, v6: bool) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    a = _addr(rng, v6)
    plen = rng.choice([0, 8, 24, 31, 32] if not v6 else [0, 48, 64, 127, 128])
    return ipaddress.ip_network((a, plen), strict=False)


def _selector(rng: random.Random, v6: bool) -> Selector:
    proto = rng.choice([0, 6, 17, 132, 58 if v6 else 1])
    if proto in (1, 58):  # ICMP: type in sport, code in dport (possibly absent)
        sport = rng.choice([None, 0, 8, 128, 255])
        dport = rng.choice([None, 0, 3])
    elif proto:
        sport = rng.choice([None, 0, 500, 4500, 65535])
        dport = rng.choice([None, 53, 443, 65535])
    else:
        sport = dport = None
    return Selector(
        _net(rng, v6), _net(rng, v6), proto, sport, dport, rng.choice([0, 0, 0, 3, 1 << 30])
    )


def _template(rng: random.Random) -> Template:
    mode = rng.choice([Mode.TRANSPORT, Mode.TUNNEL, Mode.BEET])
    v6 = rng.random() < 0.4  # the outer family may differ from the selector's
    tunnel = mode == Mode.TUNNEL
    level = rng.choice(list(Level))
    reqid = rng.choice([0, 1, 0x4950_0001, 0xFFFF_FFFF])
    if level is Level.UNIQUE and not reqid:
        reqid = 7
    return Template(
        proto=rng.choice([Proto.ESP, Proto.AH, Proto.COMP]),
        mode=mode,
        src=_addr(rng, v6) if tunnel else None,
        dst=_addr(rng, v6) if tunnel else None,
        reqid=reqid,
        spi=rng.choice([0, 0x100, 0xFFFF_FFFF]),
        level=level,
    )


def _lifetime(rng: random.Random) -> Lifetime:
    if rng.random() < 0.5:
        return Lifetime()

    def maybe(hi: int) -> int | None:
        return rng.choice([None, 1, rng.randrange(1, hi)])

    return Lifetime(*(maybe(1 << 62) for _ in range(4)), *(maybe(1 << 32) for _ in range(4)))


def _mark(rng: random.Random) -> Mark | None:
    return rng.choice([None, Mark(1), Mark(rng.getrandbits(32), rng.getrandbits(32))])


def gen_policies(n: int, seed: int = 7) -> Iterator[Policy]:
    rng = random.Random(seed)
    for _ in range(n):
        v6 = rng.random() < 0.4
        action = rng.choice([Action.ALLOW, Action.ALLOW, Action.BLOCK])
        k = 0 if action == Action.BLOCK else rng.choice([0, 1, 1, 2, 3])
        yield Policy(
            selector=_selector(rng, v6),
            dir=rng.choice(list(Dir)),
            action=action,
            priority=rng.choice([0, 0x8000, 0xBFFF, 0xFFFF_FFFF]),
            templates=tuple(_template(rng) for _ in range(k)),
            mark=_mark(rng),
            if_id=rng.choice([0, 0, 9, 0xFFFF_FFFF]),
            lifetime=_lifetime(rng),
            flags=PolicyFlag(rng.randrange(4)),
        )


def _key(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def _algorithms(rng: random.Random, proto: Proto) -> dict[str, Any]:
    if proto == Proto.AH:
        bits = rng.choice([256, 384, 512])
        return {"auth": Auth(f"hmac(sha{bits})", _key(rng, bits // 8), bits // 2)}
    kind = rng.randrange(5)
    if kind == 0:
        return {"aead": Aead("rfc4106(gcm(aes))", _key(rng, rng.choice([20, 28, 36])))}
    if kind == 1:
        return {"aead": Aead("rfc7539esp(chacha20,poly1305)", _key(rng, 36))}
    if kind == 2:
        return {
            "crypt": Crypt("cbc(aes)", _key(rng, rng.choice([16, 24, 32]))),
            "auth": Auth("hmac(sha256)", _key(rng, 32), rng.choice([96, 128])),
        }
    if kind == 3:  # integrity-only ESP (RFC 8221 5: ENCR_NULL)
        return {
            "crypt": Crypt("ecb(cipher_null)", b""),
            "auth": Auth("hmac(sha512)", _key(rng, 64), 256),
        }
    return {"crypt": Crypt("cbc(aes)", _key(rng, 16))}  # no integrity at all


def gen_states(n: int, seed: int = 11) -> Iterator[State]:
    rng = random.Random(seed)
    for i in range(n):
        v6 = rng.random() < 0.4
        proto = rng.choice([Proto.ESP, Proto.ESP, Proto.AH])
        src, dst = _addr(rng, v6), _addr(rng, v6)
        esn = rng.random() < 0.2
        window = rng.choice([0, 32, 64, 128, 255, 1024]) if not esn else rng.choice([0, 128])
        encap = None
        if proto == Proto.ESP and rng.random() < 0.3:
            encap = Encap(
                rng.choice(list(EncapType)),
                rng.choice([4500, 1]),
                rng.choice([4500, 65535]),
                rng.choice([None, _addr(rng, v6)]),
            )
        yield State(
            src=src,
            dst=dst,
            spi=rng.choice([0x100 + i, 0xFFFF_FFFF, 1]),
            proto=proto,
            mode=rng.choice([Mode.TRANSPORT, Mode.TUNNEL, Mode.BEET]),
            reqid=rng.choice([0, 0x4950_0001, 0xFFFF_FFFF]),
            selector=rng.choice([None, _selector(rng, v6)]),
            encap=encap,
            replay_window=window,
            esn=esn,
            lifetime=_lifetime(rng),
            ecn=rng.random() < 0.7,
            decap_dscp=rng.random() < 0.3,
            dfbit=rng.choice([DfBit.COPY, DfBit.CLEAR]),
            mark=_mark(rng),
            if_id=rng.choice([0, 0, 4]),
            tfcpad=rng.choice([0, 0, 16]),
            **_algorithms(rng, proto),
        )


# ------------------------------------------------------------------ kernel messages


def kernel_policy(p: Policy, seq: int, rng: random.Random) -> bytes:
    """``p`` as a GETPOLICY dump answer: index, current lifetime, POLICY_TYPE."""
    body = bytearray(codec.policy_info_bytes(p))
    cur = (0, 0, rng.getrandbits(32), rng.choice([0, rng.getrandbits(32)]))
    struct.pack_into("=4Q", body, POL_CUR, *cur)
    struct.pack_into("=I", body, POL_INDEX, rng.getrandbits(32))
    attrs = codec.policy_attrs(p)
    # XFRMA_POLICY_TYPE (struct xfrm_userpolicy_type: u8 type, u16 + u8 reserved)
    attrs += attr(Attr.POLICY_TYPE, b"\0" * 6)
    if p.mark is not None and p.if_id:  # a second mark / if_id: the first one counts
        attrs += attr(Attr.MARK, struct.pack("=II", 0xDEAD, 0xBEEF))
        attrs += attr(Attr.IF_ID, _U32.pack(0xBEEF))
    return codec.message(MsgType.NEWPOLICY, NLM_F_MULTI, seq, bytes(body) + attrs)


def kernel_state(s: State, seq: int, rng: random.Random) -> bytes:
    """``s`` as a GETSA dump answer, with the attributes the kernel adds."""
    body = bytearray(codec.state_info_bytes(s))
    cur = tuple(rng.choice([0, rng.getrandbits(40)]) for _ in range(4))
    struct.pack_into("=4Q", body, SA_CUR, *cur)
    struct.pack_into("=3I", body, SA_STATS, *(rng.getrandbits(32) for _ in range(3)))
    struct.pack_into("=I", body, SA_SEQ, rng.getrandbits(32))
    attrs = b""
    if s.auth is not None:
        # the kernel sends the legacy XFRMA_ALG_AUTH first, then XFRMA_ALG_AUTH_TRUNC
        a = s.auth
        head = struct.pack("=64sI", a.name.encode(), len(a.key) * 8)
        attrs += attr(Attr.ALG_AUTH, head + a.key)
    attrs += codec.state_attrs(s)
    attrs += attr(Attr.LASTUSED, struct.pack("=Q", rng.getrandbits(40)))
    attrs += attr(Attr.SA_EXTRA_FLAGS, _U32.pack(rng.randrange(4)))
    if not (s.esn or s.replay_window > 32):
        attrs += attr(Attr.REPLAY_VAL, struct.pack("=3I", 1, 2, 3))
    return codec.message(MsgType.NEWSA, NLM_F_MULTI, seq, bytes(body) + attrs)


def normalised(s: State) -> State:
    """An explicit "any" selector of the SA's own family reads back as no selector."""
    net = ipaddress.ip_network("::/0" if s.family == 10 else "0.0.0.0/0")
    if s.selector == Selector(net, net):
        return dataclasses.replace(s, selector=None)
    return s


def reference_policy(msg: bytes) -> Policy:
    return codec.decode_policy(codec.decode_body(MsgType.NEWPOLICY, msg, 0))


def reference_state(msg: bytes) -> State:
    return codec.decode_state(codec.decode_body(MsgType.NEWSA, msg, 0))


# ------------------------------------------------------------------ agreement


POLICIES = list(gen_policies(600))
STATES = list(gen_states(600))


def test_generators_cover_the_interesting_cases() -> None:
    assert any(p.selector.src.version == 6 for p in POLICIES)
    assert any(p.selector.proto in (1, 58) and p.selector.sport is not None for p in POLICIES)
    assert any(len(p.templates) > 1 for p in POLICIES)
    assert any(t.mode == Mode.TUNNEL for p in POLICIES for t in p.templates)
    assert any(t.level is Level.UNIQUE for p in POLICIES for t in p.templates)
    assert any(p.mark is not None and p.if_id for p in POLICIES)
    assert any(p.lifetime != Lifetime() for p in POLICIES)
    assert any(s.aead is not None for s in STATES)
    assert any(s.crypt is not None and s.auth is not None for s in STATES)
    assert any(s.proto == Proto.AH for s in STATES)
    assert any(s.encap is not None and s.encap.oa is not None for s in STATES)
    assert any(s.esn for s in STATES) and any(s.replay_window > 32 for s in STATES)
    assert any(s.selector is not None for s in STATES)
    assert any(s.family == 10 for s in STATES)


def test_policies_decode_like_pyroute2() -> None:
    rng = random.Random(1)
    d = DumpDecoder()
    for i, p in enumerate(POLICIES):
        msg = kernel_policy(p, i, rng)
        ref = reference_policy(msg)
        assert ref == p  # the generator is sound
        same(d.policy(msg, 0, len(msg)), ref)
        same(DumpDecoder().policy(msg, 0, len(msg)), ref)  # cold decoder too


def test_states_decode_like_pyroute2() -> None:
    rng = random.Random(2)
    d = DumpDecoder()
    for i, s in enumerate(STATES):
        msg = kernel_state(s, i, rng)
        ref = reference_state(msg)
        assert ref == normalised(s)
        same(d.state(msg, 0, len(msg)), ref)


def test_legacy_auth_alone_means_96_bit_truncation() -> None:
    s = State(address("192.0.2.1"), address("192.0.2.2"), 5, crypt=Crypt("cbc(aes)", b"k" * 16))
    head = struct.pack("=64sI", b"hmac(sha1)", 160)
    body = codec.state_info_bytes(s) + codec.state_attrs(s)
    body += attr(Attr.ALG_AUTH, head + b"a" * 20)
    msg = codec.message(MsgType.NEWSA, 0, 1, body)
    got = DumpDecoder().state(msg, 0, len(msg))
    same(got, reference_state(msg))
    assert got.auth == Auth("hmac(sha1)", b"a" * 20, 96)


def test_larval_state_decodes_like_pyroute2() -> None:
    larval = codec.encode_allocspi(
        address("fd00::2"), address("fd00::1"), Proto.ESP, 0x4950_0001, 3
    )
    # the kernel answers with the SA: same fixed layout head (usersa_info)
    body = larval[16 : 16 + 224]
    msg = codec.message(MsgType.NEWSA, 0, 3, body)
    same(DumpDecoder().state(msg, 0, len(msg)), reference_state(msg))


def test_current_lifetime_change_reuses_the_decoded_rest() -> None:
    rng = random.Random(3)
    d = DumpDecoder()
    p = POLICIES[5]
    msg = bytearray(kernel_policy(p, 1, rng))
    first = d.policy(bytes(msg), 0, len(msg))
    assert d.policy(bytes(msg), 0, len(msg)) is first  # same bytes: same object
    struct.pack_into("=Q", msg, 16 + POL_CUR + 24, 123456)  # use_time moved
    moved = d.policy(bytes(msg), 0, len(msg))
    same(moved, reference_policy(bytes(msg)))
    assert moved.current is not None and moved.current.use_time == 123456
    assert moved.selector is first.selector and moved.templates is first.templates


def test_generations_keep_one_dump_and_forget_the_rest() -> None:
    rng = random.Random(4)
    d = DumpDecoder()
    msgs = [kernel_policy(p, 0, rng) for p in POLICIES[:3]]
    a = [d.policy(m, 0, len(m)) for m in msgs]
    d.rotate()
    assert d.policy(msgs[0], 0, len(msgs[0])) is a[0]  # still known one dump later
    d.rotate()
    assert d.policy(msgs[0], 0, len(msgs[0])) is a[0]  # used by the last dump: kept
    assert d.policy(msgs[1], 0, len(msgs[1])) is not a[1]  # unused for a dump: rebuilt
    assert d.policy(msgs[1], 0, len(msgs[1])) == a[1]


def test_unchanged_sa_is_not_decoded_again_a_changed_one_is() -> None:
    rng = random.Random(8)
    d = DumpDecoder()
    msg = bytearray(kernel_state(STATES[3], 1, rng))
    first = d.state(bytes(msg), 0, len(msg))
    d.rotate()
    assert d.state(bytes(msg), 0, len(msg)) is first
    struct.pack_into("=Q", msg, 16 + SA_CUR, 999)  # traffic: bytes counter moved
    moved = d.state(bytes(msg), 0, len(msg))
    same(moved, reference_state(bytes(msg)))
    assert moved.current is not None and moved.current.bytes == 999


def test_forget_drops_the_decoders_of_a_namespace() -> None:
    a = decoder_for("ipx-forget-a", MsgType.GETPOLICY)
    b = decoder_for("ipx-forget-b", MsgType.GETSA)
    decoder.forget("ipx-forget-a")
    assert decoder_for("ipx-forget-a", MsgType.GETPOLICY) is not a
    assert decoder_for("ipx-forget-b", MsgType.GETSA) is b
    decoder.forget_all()
    assert decoder_for("ipx-forget-b", MsgType.GETSA) is not b


def test_unknown_enum_values_fail_as_in_pyroute2_path() -> None:
    p = POLICIES[0]
    msg = bytearray(codec.encode_policy(p, 1))
    msg[16 + 160] = 7  # dir
    for decode in (reference_policy, lambda m: DumpDecoder().policy(m, 0, len(m))):
        with pytest.raises(ValueError, match="7 is not a valid Dir"):
            decode(bytes(msg))


def test_unique_template_without_reqid_fails_as_in_pyroute2_path() -> None:
    t = Template(Proto.ESP, reqid=5, level=Level.UNIQUE)
    p = Policy(Selector.of("192.0.2.0/24", "198.51.100.0/24"), Dir.OUT, templates=(t,))
    msg = bytearray(codec.encode_policy(p, 1))
    tmpl_reqid = 16 + 168 + 4 + 44  # message, fixed body, nla header, xfrm_user_tmpl.reqid
    assert _U32.unpack_from(msg, tmpl_reqid)[0] == 5
    struct.pack_into("=I", msg, tmpl_reqid, 0)
    for decode in (reference_policy, lambda m: DumpDecoder().policy(m, 0, len(m))):
        with pytest.raises(ValueError, match="give reqid"):
            decode(bytes(msg))


# ------------------------------------------------------------------ framing


def test_feed_decodes_a_whole_buffer_and_finds_the_end() -> None:
    rng = random.Random(5)
    msgs = [kernel_policy(p, 9, rng) for p in POLICIES[:50]]
    stale = kernel_policy(POLICIES[60], 8, rng)  # late answer of an abandoned request
    done = codec.message(MsgType.DONE, NLM_F_MULTI, 9, b"\0\0\0\0")
    d = DumpDecoder()
    out: list[Policy] = []
    first = b"".join(msgs[:20]) + stale
    assert d.feed(first, 9, MsgType.NEWPOLICY, d.policy, out) == -1
    last = b"".join(msgs[20:])
    assert d.feed(last + done, 9, MsgType.NEWPOLICY, d.policy, out) == len(last)
    assert out == POLICIES[:50]
    for got, m in zip(out, msgs, strict=True):
        same(got, reference_policy(m))


def test_feed_stops_at_an_error_and_at_a_truncated_message() -> None:
    d = DumpDecoder()
    out: list[Policy] = []
    err = codec.message(MsgType.ERROR, 0, 4, struct.pack("=i", -1) + b"\0" * 16)
    assert d.feed(err, 4, MsgType.NEWPOLICY, d.policy, out) == 0
    one = kernel_policy(POLICIES[0], 4, random.Random(6))
    assert d.feed(one + one[:40], 4, MsgType.NEWPOLICY, d.policy, out) == -1
    assert out == [POLICIES[0]]


def test_decoder_per_namespace_and_kind_is_shared_and_bounded() -> None:
    a = decoder_for("ipx-test-a", MsgType.GETPOLICY)
    assert decoder_for("ipx-test-a", MsgType.GETPOLICY) is a
    assert decoder_for("ipx-test-a", MsgType.GETSA) is not a  # states do not age policies
    for i in range(decoder._DECODERS_MAX):
        decoder_for(f"ipx-test-{i}", MsgType.GETPOLICY)
    assert decoder_for("ipx-test-a", MsgType.GETPOLICY) is not a
    assert len(decoder._DECODERS) <= decoder._DECODERS_MAX


def test_ports_are_big_endian_on_the_wire() -> None:
    p = Policy(Selector.of("192.0.2.1", "192.0.2.2", 6, 0x1234, 0xABCD), Dir.OUT)
    msg = codec.encode_policy(p, 1)
    assert struct.unpack_from("!H", msg, 16 + 32)[0] == 0xABCD
    got = DumpDecoder().policy(msg, 0, len(msg))
    assert (got.selector.sport, got.selector.dport) == (0x1234, 0xABCD)
