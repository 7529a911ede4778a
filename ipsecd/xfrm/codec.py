"""Encode model values into XFRM netlink messages and decode what the kernel sends.

Pure functions, no I/O.  Encoding packs the :mod:`.wire` layouts with their compiled
structs; decoding reads pyroute2-decoded messages (``nlmsg`` instances).  Dumps are
decoded by :mod:`.decoder` straight from the receive buffer; the unit tests hold both
decoders to the same values.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from collections.abc import Iterator, Mapping
from typing import Any

from . import wire
from .consts import (
    XFRM_INF,
    Action,
    Attr,
    DefaultAction,
    Dir,
    EncapType,
    Mode,
    MsgType,
    PolicyFlag,
    Proto,
    Share,
    StateFlag,
)
from .errors import XfrmUnsupported
from .model import (
    AcquireRequested,
    Address,
    Aead,
    Auth,
    Crypt,
    DefaultPolicy,
    DfBit,
    Encap,
    Level,
    Lifetime,
    LifetimeCurrent,
    MappingChanged,
    Mark,
    Network,
    Policy,
    PolicyExpired,
    PolicyKey,
    SadInfo,
    SaId,
    SaStats,
    Selector,
    SpdInfo,
    State,
    StateExpired,
    Template,
    XfrmEvent,
)

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
ALL_ALGOS = 0xFFFF_FFFF

_SEL = wire.compiled(wire.SELECTOR)
_POL = wire.compiled(wire.USERPOLICY_INFO)
_POLID = wire.compiled(wire.USERPOLICY_ID)
_SA = wire.compiled(wire.USERSA_INFO)
_SAID = wire.compiled(wire.USERSA_ID)
_SPI = wire.compiled(wire.USERSPI_INFO)
_TMPL = wire.compiled(wire.USER_TMPL)
_ENCAP = wire.compiled(wire.ENCAP_TMPL)
_MARK = wire.compiled(wire.MARK)
_ALGO = wire.compiled(wire.ALGO)
_AUTH = wire.compiled(wire.ALGO_AUTH)
_AEAD = wire.compiled(wire.ALGO_AEAD)
_ESN = wire.compiled(wire.REPLAY_ESN)
_DEF = wire.compiled(wire.USERPOLICY_DEFAULT)
_HDR = wire.NLMSGHDR
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")


def _be16(v: int) -> int:
    return socket.htons(v)


def _be32(v: int) -> int:
    return socket.htonl(v)


def _addr_bytes(a: Address | None) -> bytes:
    return b"" if a is None else a.packed


def _addr_from(raw: bytes, family: int) -> Address:
    if family == AF_INET6:
        return ipaddress.IPv6Address(raw[:16])
    return ipaddress.IPv4Address(raw[:4])


def _family_of(a: Address) -> int:
    return AF_INET if a.version == 4 else AF_INET6


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (-length & 3)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """A complete netlink message: header + body (body already 4-byte aligned)."""
    return _HDR.pack(16 + len(body), kind, flags, seq, 0) + body


# ------------------------------------------------------------------------ selectors


def selector_tuple(sel: Selector) -> tuple[Any, ...]:
    """The 12 non-padding members of ``struct xfrm_selector``, in wire order."""
    dport, sport = sel.dport, sel.sport
    return (
        sel.dst.network_address.packed,
        sel.src.network_address.packed,
        0 if dport is None else _be16(dport),
        0 if dport is None else 0xFFFF,
        0 if sport is None else _be16(sport),
        0 if sport is None else 0xFFFF,
        AF_INET if sel.src.version == 4 else AF_INET6,
        sel.dst.prefixlen,
        sel.src.prefixlen,
        sel.proto,
        sel.ifindex,
        0,
    )


def selector_values(sel: Selector, prefix: str = "sel_") -> dict[str, Any]:
    names = [n for n in wire.compiled(wire.SELECTOR).names]
    return {f"{prefix}{n}": v for n, v in zip(names, selector_tuple(sel), strict=True)}


def _any_selector(family: int) -> Selector:
    if family == AF_INET6:
        return Selector(ipaddress.IPv6Network("::/0"), ipaddress.IPv6Network("::/0"))
    return Selector(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Network("0.0.0.0/0"))


@functools.lru_cache(maxsize=65536)
def _net(raw: bytes, family: int, plen: int) -> Network:
    if family == AF_INET6:
        return ipaddress.IPv6Network((raw[:16], plen), strict=False)
    return ipaddress.IPv4Network((raw[:4], plen), strict=False)


@functools.lru_cache(maxsize=65536)
def _addr_cached(raw: bytes, family: int) -> Address:
    return _addr_from(raw, family)


def selector_from(d: Mapping[str, Any], prefix: str = "sel_", family: int = 0) -> Selector:
    fam = d[f"{prefix}family"] or family or AF_INET
    sport = socket.ntohs(d[f"{prefix}sport"]) if d[f"{prefix}sport_mask"] else None
    dport = socket.ntohs(d[f"{prefix}dport"]) if d[f"{prefix}dport_mask"] else None
    return Selector(
        _net(bytes(d[f"{prefix}saddr"]), fam, d[f"{prefix}prefixlen_s"]),
        _net(bytes(d[f"{prefix}daddr"]), fam, d[f"{prefix}prefixlen_d"]),
        d[f"{prefix}proto"],
        sport,
        dport,
        d[f"{prefix}ifindex"],
    )


# ------------------------------------------------------------------------ lifetimes


def lifetime_tuple(lft: Lifetime) -> tuple[int, ...]:
    """``struct xfrm_lifetime_cfg`` members in wire order.

    Byte/packet limits: 0 would mean "expire at once"; XFRM_INF is "no limit".
    Time limits: 0 is "no limit" (net/xfrm/xfrm_state.c, xfrm_timer_handler).
    """
    if lft == _NO_LIMITS:
        return _NO_LIMITS_TUPLE

    def inf(v: int | None) -> int:
        return XFRM_INF if v is None else v

    return (
        inf(lft.soft_bytes),
        inf(lft.hard_bytes),
        inf(lft.soft_packets),
        inf(lft.hard_packets),
        lft.soft_add_seconds or 0,
        lft.hard_add_seconds or 0,
        lft.soft_use_seconds or 0,
        lft.hard_use_seconds or 0,
    )


_NO_LIMITS = Lifetime()
_NO_LIMITS_TUPLE = (XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0)


def lifetime_values(lft: Lifetime, prefix: str = "lft_") -> dict[str, int]:
    names = wire.compiled(wire.LIFETIME_CFG).names
    return {f"{prefix}{n}": v for n, v in zip(names, lifetime_tuple(lft), strict=True)}


def lifetime_from(d: Mapping[str, Any], prefix: str = "lft_") -> Lifetime:
    """Inverse of :func:`lifetime_values`."""

    def lim(v: int) -> int | None:
        return None if v == XFRM_INF else v

    def sec(v: int) -> int | None:
        return v or None

    return Lifetime(
        soft_bytes=lim(d[f"{prefix}soft_byte_limit"]),
        hard_bytes=lim(d[f"{prefix}hard_byte_limit"]),
        soft_packets=lim(d[f"{prefix}soft_packet_limit"]),
        hard_packets=lim(d[f"{prefix}hard_packet_limit"]),
        soft_add_seconds=sec(d[f"{prefix}soft_add_expires_seconds"]),
        hard_add_seconds=sec(d[f"{prefix}hard_add_expires_seconds"]),
        soft_use_seconds=sec(d[f"{prefix}soft_use_expires_seconds"]),
        hard_use_seconds=sec(d[f"{prefix}hard_use_expires_seconds"]),
    )


def current_from(d: Mapping[str, Any], prefix: str = "cur_") -> LifetimeCurrent:
    return LifetimeCurrent(
        d[f"{prefix}bytes"], d[f"{prefix}packets"], d[f"{prefix}add_time"], d[f"{prefix}use_time"]
    )


# ------------------------------------------------------------------------ policies


_NO_ADDR = b"\0" * 16


def template_bytes(t: Template, family: int) -> bytes:
    tfam = family if t.dst is None else _family_of(t.dst)
    return _TMPL.struct.pack(
        _NO_ADDR if t.dst is None else t.dst.packed,  # id.daddr
        _be32(t.spi),  # id.spi
        t.proto,  # id.proto
        tfam,
        _NO_ADDR if t.src is None else t.src.packed,
        t.reqid,
        t.mode,
        Share.UNIQUE if t.level == Level.UNIQUE else Share.ANY,
        1 if t.level == Level.USE else 0,  # optional
        ALL_ALGOS,  # aalgos
        ALL_ALGOS,  # ealgos
        ALL_ALGOS,  # calgos
    )


def template_from(raw: bytes | memoryview, offset: int) -> Template:
    d = _TMPL.unpack(raw, offset)
    fam = d["family"]
    mode = Mode(d["mode"])
    tunnel = mode == Mode.TUNNEL
    if d["optional"]:
        level = Level.USE
    elif d["share"] == Share.UNIQUE:
        level = Level.UNIQUE
    else:
        level = Level.REQUIRE
    return Template(
        proto=Proto(d["id_proto"]),
        mode=mode,
        src=_addr_cached(d["saddr"], fam) if tunnel else None,
        dst=_addr_cached(d["id_daddr"], fam) if tunnel else None,
        reqid=d["reqid"],
        spi=socket.ntohl(d["id_spi"]),
        level=level,
    )


def _mark_attr(mark: Mark | None) -> bytes:
    return b"" if mark is None else nla(Attr.MARK, _MARK.pack({"v": mark.value, "m": mark.mask}))


_ZERO_CUR = (0, 0, 0, 0)


def policy_info_bytes(p: Policy) -> bytes:
    return _POL.struct.pack(
        *selector_tuple(p.selector),
        *lifetime_tuple(p.lifetime),
        *_ZERO_CUR,
        p.priority,
        0,  # index: kernel-assigned
        p.dir,
        p.action,
        p.flags,
        0,  # share
    )


def policy_attrs(p: Policy) -> bytes:
    out = b""
    if p.templates:
        fam = p.selector.family
        out += nla(Attr.TMPL, b"".join(template_bytes(t, fam) for t in p.templates))
    out += _mark_attr(p.mark)
    if p.if_id:
        out += nla(Attr.IF_ID, _U32.pack(p.if_id))
    return out


def encode_policy(p: Policy, seq: int, *, update: bool = False, ack: bool = True) -> bytes:
    """NEWPOLICY (exclusive create) or UPDPOLICY (replace in place, or create)."""
    if p.action == Action.BLOCK and p.templates:
        raise ValueError("a blocking policy cannot carry templates")
    kind = MsgType.UPDPOLICY if update else MsgType.NEWPOLICY
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    if not update:
        flags |= NLM_F_CREATE | NLM_F_EXCL
    return message(kind, flags, seq, policy_info_bytes(p) + policy_attrs(p))


def encode_policy_id(key: PolicyKey, kind: MsgType, seq: int) -> bytes:
    """GETPOLICY / DELPOLICY by selector + dir (+ mark, if_id)."""
    values = selector_values(key.selector)
    values.update(index=0, dir=key.dir)
    body = _POLID.pack(values) + _mark_attr(key.mark)
    if key.if_id:
        body += nla(Attr.IF_ID, _U32.pack(key.if_id))
    return message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def _attr_map(msg: Any) -> dict[str, Any]:
    """pyroute2 message → {XFRMA_NAME: decoded value} (first of each)."""
    out: dict[str, Any] = {}
    for name, value in msg.get("attrs", ()):
        out.setdefault(name, value)
    return out


def _raw(v: Any) -> bytes:
    """cdata attribute payload as bytes."""
    return bytes(v)


def _mark_from(attrs: Mapping[str, Any]) -> Mark | None:
    m = attrs.get("XFRMA_MARK")
    if m is None:
        return None
    return Mark(m["v"], m["m"])


def policy_from_values(d: Mapping[str, Any], attrs: Mapping[str, Any], prefix: str = "") -> Policy:
    sel = selector_from(d, f"{prefix}sel_")
    templates: tuple[Template, ...] = ()
    raw = attrs.get("XFRMA_TMPL")
    if raw is not None:
        data = _raw(raw)
        templates = tuple(template_from(data, off) for off in range(0, len(data), _TMPL.size))
    return Policy(
        selector=sel,
        dir=Dir(d[f"{prefix}dir"]),
        action=Action(d[f"{prefix}action"]),
        priority=d[f"{prefix}priority"],
        templates=templates,
        mark=_mark_from(attrs),
        if_id=attrs.get("XFRMA_IF_ID") or 0,
        lifetime=lifetime_from(d, f"{prefix}lft_"),
        flags=PolicyFlag(d[f"{prefix}flags"]),
        index=d[f"{prefix}index"],
        current=current_from(d, f"{prefix}cur_"),
    )


def decode_policy(msg: Any) -> Policy:
    return policy_from_values(msg, _attr_map(msg))


# ------------------------------------------------------------------------ states


def _algo_name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) > 63:
        raise ValueError(f"algorithm name {name!r} longer than 63 bytes")
    return raw


def state_flags(s: State) -> int:
    flags = StateFlag.NONE
    if not s.ecn:
        flags |= StateFlag.NOECN
    if s.decap_dscp:
        flags |= StateFlag.DECAP_DSCP
    if s.dfbit == DfBit.CLEAR:
        flags |= StateFlag.NOPMTUDISC
    elif s.dfbit == DfBit.SET:
        raise XfrmUnsupported(
            "dfbit 'set' has no per-SA setting in Linux XFRM (only copy, or clear via "
            "XFRM_STATE_NOPMTUDISC): use dfbit copy or clear"
        )
    if s.esn:
        flags |= StateFlag.ESN
    return int(flags)


def _use_esn_attr(s: State) -> bool:
    # The u8 replay_window of usersa_info only covers a 32-packet bitmap; larger
    # windows and ESN need XFRMA_REPLAY_ESN_VAL (and then replay_window must be 0,
    # net/xfrm/xfrm_user.c verify_replay).
    return s.esn or s.replay_window > 32


def state_info_bytes(s: State, *, extra: Mapping[str, int] | None = None) -> bytes:
    sel = s.selector or _any_selector(s.family)
    values = selector_values(sel)
    values.update(lifetime_values(s.lifetime))
    values.update(
        id_daddr=s.dst.packed,
        id_spi=_be32(s.spi),
        id_proto=s.proto,
        saddr=s.src.packed,
        reqid=s.reqid,
        family=s.family,
        mode=s.mode,
        replay_window=0 if _use_esn_attr(s) else s.replay_window,
        flags=state_flags(s),
    )
    if extra:
        values.update(extra)
    return _SA.pack(values)


def state_attrs(s: State) -> bytes:
    if s.proto == Proto.ESP and s.aead is None and s.crypt is None:
        raise ValueError("an ESP SA needs an AEAD or an encryption algorithm")
    if s.proto == Proto.AH and s.auth is None:
        raise ValueError("an AH SA needs an integrity algorithm (auth)")
    if s.aead is not None and (s.crypt is not None or s.auth is not None):
        raise ValueError("an AEAD SA takes no separate crypt/auth algorithms")
    out = b""
    if s.aead is not None:
        a = s.aead
        head = _AEAD.pack(
            {
                "alg_name": _algo_name(a.name),
                "alg_key_len": len(a.key) * 8,
                "alg_icv_len": a.icv_bits,
            }
        )
        out += nla(Attr.ALG_AEAD, head + a.key)
    if s.crypt is not None:
        c = s.crypt
        head = _ALGO.pack({"alg_name": _algo_name(c.name), "alg_key_len": len(c.key) * 8})
        out += nla(Attr.ALG_CRYPT, head + c.key)
    if s.auth is not None:
        h = s.auth
        head = _AUTH.pack(
            {
                "alg_name": _algo_name(h.name),
                "alg_key_len": len(h.key) * 8,
                "alg_trunc_len": h.trunc_bits,
            }
        )
        out += nla(Attr.ALG_AUTH_TRUNC, head + h.key)
    if s.encap is not None:
        e = s.encap
        out += nla(
            Attr.ENCAP,
            _ENCAP.pack(
                {
                    "encap_type": e.type,
                    "encap_sport": _be16(e.sport),
                    "encap_dport": _be16(e.dport),
                    "encap_oa": _addr_bytes(e.oa),
                }
            ),
        )
    if _use_esn_attr(s):
        words = (s.replay_window + 31) // 32
        esn = _ESN.pack({"bmp_len": words, "replay_window": s.replay_window})
        out += nla(Attr.REPLAY_ESN_VAL, esn + b"\0" * (4 * words))
    out += _mark_attr(s.mark)
    if s.if_id:
        out += nla(Attr.IF_ID, _U32.pack(s.if_id))
    if s.tfcpad:
        out += nla(Attr.TFCPAD, _U32.pack(s.tfcpad))
    return out


def encode_state(s: State, seq: int, *, update: bool = False, ack: bool = True) -> bytes:
    kind = MsgType.UPDSA if update else MsgType.NEWSA
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    if not update:
        flags |= NLM_F_CREATE | NLM_F_EXCL
    return message(kind, flags, seq, state_info_bytes(s) + state_attrs(s))


def encode_sa_id(sa: SaId, kind: MsgType, seq: int) -> bytes:
    body = _SAID.pack(
        {
            "daddr": sa.dst.packed,
            "spi": _be32(sa.spi),
            "family": _family_of(sa.dst),
            "proto": sa.proto,
        }
    )
    body += _mark_attr(sa.mark)
    return message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def encode_allocspi(
    src: Address,
    dst: Address,
    proto: Proto,
    reqid: int,
    seq: int,
    *,
    mode: Mode = Mode.TRANSPORT,
    spi_min: int = 0x100,
    spi_max: int = 0x0FFF_FFFF,
    mark: Mark | None = None,
) -> bytes:
    fam = _family_of(dst)
    values = selector_values(_any_selector(fam))
    values.update(lifetime_values(Lifetime()))
    values.update(
        id_daddr=dst.packed,
        id_proto=proto,
        saddr=src.packed,
        reqid=reqid,
        family=fam,
        mode=mode,
        min=spi_min,
        max=spi_max,
    )
    return message(
        MsgType.ALLOCSPI,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        wire.compiled(wire.USERSPI_INFO).pack(values) + _mark_attr(mark),
    )


def _algo_split(raw: bytes, head: wire.Compiled) -> tuple[dict[str, Any], bytes]:
    d = head.unpack(raw)
    key = raw[head.size : head.size + d["alg_key_len"] // 8]
    return d, key


def _name(d: Mapping[str, Any]) -> str:
    return bytes(d["alg_name"]).split(b"\0", 1)[0].decode()


def state_from_values(d: Mapping[str, Any], attrs: Mapping[str, Any], prefix: str = "") -> State:
    fam = d[f"{prefix}family"]
    aead = crypt = auth = None
    if (raw := attrs.get("XFRMA_ALG_AEAD")) is not None:
        h, key = _algo_split(_raw(raw), _AEAD)
        aead = Aead(_name(h), key, h["alg_icv_len"])
    if (raw := attrs.get("XFRMA_ALG_CRYPT")) is not None:
        h, key = _algo_split(_raw(raw), _ALGO)
        crypt = Crypt(_name(h), key)
    if (raw := attrs.get("XFRMA_ALG_AUTH_TRUNC")) is not None:
        h, key = _algo_split(_raw(raw), _AUTH)
        auth = Auth(_name(h), key, h["alg_trunc_len"])
    elif (raw := attrs.get("XFRMA_ALG_AUTH")) is not None:
        h, key = _algo_split(_raw(raw), _ALGO)
        auth = Auth(_name(h), key, 96)
    encap = None
    if (e := attrs.get("XFRMA_ENCAP")) is not None:
        oa = bytes(e["encap_oa"])
        encap = Encap(
            EncapType(e["encap_type"]),
            socket.ntohs(e["encap_sport"]),
            socket.ntohs(e["encap_dport"]),
            None if oa == b"\0" * 16 else _addr_from(oa, fam),
        )
    flags = StateFlag(d[f"{prefix}flags"])
    window = d[f"{prefix}replay_window"]
    if (raw := attrs.get("XFRMA_REPLAY_ESN_VAL")) is not None:
        window = _ESN.unpack(_raw(raw))["replay_window"]
    sel = selector_from(d, f"{prefix}sel_", fam)
    any_sel = _any_selector(fam)
    return State(
        src=_addr_from(d[f"{prefix}saddr"], fam),
        dst=_addr_from(d[f"{prefix}id_daddr"], fam),
        spi=socket.ntohl(d[f"{prefix}id_spi"]),
        proto=Proto(d[f"{prefix}id_proto"]),
        mode=Mode(d[f"{prefix}mode"]),
        reqid=d[f"{prefix}reqid"],
        aead=aead,
        crypt=crypt,
        auth=auth,
        selector=None if sel == any_sel else sel,
        encap=encap,
        replay_window=window,
        esn=bool(flags & StateFlag.ESN),
        lifetime=lifetime_from(d, f"{prefix}lft_"),
        ecn=not flags & StateFlag.NOECN,
        decap_dscp=bool(flags & StateFlag.DECAP_DSCP),
        dfbit=DfBit.CLEAR if flags & StateFlag.NOPMTUDISC else DfBit.COPY,
        mark=_mark_from(attrs),
        if_id=attrs.get("XFRMA_IF_ID") or 0,
        tfcpad=attrs.get("XFRMA_TFCPAD") or 0,
        current=current_from(d, f"{prefix}cur_"),
        stats=SaStats(
            d[f"{prefix}stats_replay_window"],
            d[f"{prefix}stats_replay"],
            d[f"{prefix}stats_integrity_failed"],
        ),
    )


def decode_state(msg: Any) -> State:
    return state_from_values(msg, _attr_map(msg))


# ------------------------------------------------------------------------ defaults, info


def encode_default(dp: DefaultPolicy, seq: int) -> bytes:
    body = _DEF.pack({"in": dp.inbound, "fwd": dp.forward, "out": dp.outbound}) + b"\0"
    return message(MsgType.SETDEFAULT, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def encode_get_default(seq: int) -> bytes:
    return message(MsgType.GETDEFAULT, NLM_F_REQUEST | NLM_F_ACK, seq, b"\0\0\0\0")


def decode_default(msg: Any) -> DefaultPolicy:
    return DefaultPolicy(
        DefaultAction(msg["in"]), DefaultAction(msg["fwd"]), DefaultAction(msg["out"])
    )


def encode_info_request(kind: MsgType, seq: int) -> bytes:
    # The kernel reads a u32 of flags it does not use (xfrm_get_sadinfo/spdinfo).
    return message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, _U32.pack(0xFFFF_FFFF))


def decode_sadinfo(msg: Any) -> SadInfo:
    attrs = _attr_map(msg)
    h = attrs.get("XFRMA_SAD_HINFO") or {"cnt": 0, "max": 0}
    return SadInfo(attrs.get("XFRMA_SAD_CNT") or 0, h["cnt"], h["max"])


def decode_spdinfo(msg: Any) -> SpdInfo:
    attrs = _attr_map(msg)
    i = attrs.get("XFRMA_SPD_INFO")
    h = attrs.get("XFRMA_SPD_HINFO") or {"cnt": 0, "max": 0}
    if i is None:
        return SpdInfo(0, 0, 0, 0, 0, 0, h["cnt"], h["max"])
    return SpdInfo(
        i["incnt"],
        i["outcnt"],
        i["fwdcnt"],
        i["inscnt"],
        i["outscnt"],
        i["fwdscnt"],
        h["cnt"],
        h["max"],
    )


def encode_dump(kind: MsgType, seq: int) -> bytes:
    body = b""
    if kind == MsgType.GETPOLICY:
        body = b"\0" * _POLID.size
    elif kind == MsgType.GETSA:
        body = b"\0" * _SAID.size
    return message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


# ------------------------------------------------------------------------ events


def decode_event(kind: int, msg: Any) -> XfrmEvent | None:
    """ACQUIRE / EXPIRE / POLEXPIRE / MAPPING → event value; others → None."""
    attrs = _attr_map(msg)
    if kind == MsgType.ACQUIRE:
        fam = msg["pol_sel_family"] or msg["sel_family"] or AF_INET
        return AcquireRequested(
            proto=Proto(msg["id_proto"]),
            dst=_addr_from(msg["id_daddr"], fam),
            src=_addr_from(msg["saddr"], fam),
            selector=selector_from(msg, "sel_"),
            policy=policy_from_values(msg, attrs, "pol_"),
            seq=msg["seq"],
        )
    if kind == MsgType.EXPIRE:
        return StateExpired(state_from_values(msg, attrs), bool(msg["hard"]))
    if kind == MsgType.POLEXPIRE:
        return PolicyExpired(policy_from_values(msg, attrs), bool(msg["hard"]))
    if kind == MsgType.MAPPING:
        fam = msg["id_family"]
        return MappingChanged(
            sa=SaId(
                _addr_from(msg["id_daddr"], fam),
                socket.ntohl(msg["id_spi"]),
                Proto(msg["id_proto"]),
            ),
            reqid=msg["reqid"],
            old_src=_addr_from(msg["old_saddr"], fam),
            old_sport=socket.ntohs(msg["old_sport"]),
            new_src=_addr_from(msg["new_saddr"], fam),
            new_sport=socket.ntohs(msg["new_sport"]),
        )
    return None


# ------------------------------------------------------------------------ framing


def split_messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (offset, length, type, flags, seq) for each netlink message in ``data``."""
    off = 0
    end = len(data)
    while off + 16 <= end:
        length, kind, flags, seq, _pid = _HDR.unpack_from(data, off)
        if length < 16 or off + length > end:
            return
        yield off, length, kind, flags, seq
        off += (length + 3) & ~3


def parse_error(data: bytes, off: int, length: int, flags: int) -> tuple[int, str | None]:
    """NLMSG_ERROR → (positive errno or 0, extended-ack message if any)."""
    (err,) = struct.unpack_from("=i", data, off + 16)
    text = None
    if flags & NLM_F_ACK_TLVS:
        # With NETLINK_CAP_ACK only the request's header is echoed.
        (orig_len,) = struct.unpack_from("=I", data, off + 20)
        capped = flags & 0x100
        pos = off + 20 + (16 if capped else (orig_len + 3) & ~3)
        end = off + length
        while pos + 4 <= end:
            alen, atype = _NLA.unpack_from(data, pos)
            if alen < 4:
                break
            if atype & 0x3FFF == NLMSGERR_ATTR_MSG:
                text = data[pos + 4 : pos + alen].split(b"\0", 1)[0].decode(errors="replace")
            pos += (alen + 3) & ~3
    return -err, text


def decode_body(kind: int, data: bytes, off: int) -> Any:
    """Decode one received XFRM message with its pyroute2 class (None if unknown)."""
    cls = wire.MSG_MAP.get(kind)
    if cls is None:
        return None
    msg = cls(data, offset=off)
    msg.decode()
    return msg


def split_seq(data: bytes) -> tuple[int]:
    """Sequence number of an encoded request."""
    return (_HDR.unpack_from(data, 0)[3],)
