"""Fast decoding of XFRM dumps, straight from the receive buffer.

The agent reconciles by diff: every policy change dumps the whole SPD (and SAD) and
compares.  pyroute2's generic ``nlmsg`` decoder builds a dict per message and per
attribute; for a dump of 10,000 policies that costs far more than the kernel does.
:class:`DumpDecoder` reads each message with *one* precompiled :class:`struct.Struct`
(netlink header and fixed body together, the layouts of :mod:`.wire`), walks the
attributes by offset, and builds the :mod:`.model` values directly.

Model values are frozen, so values that repeat are shared instead of rebuilt:

* networks, addresses, templates, lifetimes, marks, encapsulations and SA selectors
  are interned;
* a message the previous dump already held decodes to the very same object: a
  NEWPOLICY message is compared without its current lifetime (``use_time`` moves
  whenever traffic hits the policy; only a new :class:`~.model.LifetimeCurrent` is
  made then), a NEWSA message as a whole (an SA that carried traffic has new
  counters and replay state, and is decoded again).  That is the steady state of the
  reconcile loop, where almost nothing changed between two dumps.

Caches are generational: what one dump used is kept for the next, the rest dropped
(:meth:`DumpDecoder.rotate`), so memory stays bounded by two dumps.  The decoders are
process-wide, one per (namespace, dump kind) (:func:`decoder_for`), so the short-lived
client of each reconcile still finds the previous dump; :func:`forget` drops them.
The SA memo holds states, keys included, exactly as long as that: never in a log or
a repr.

Policies, selectors, templates and states are built slot by slot
(:func:`_slot_setters`), without their dataclass ``__init__``: the values come from
fixed-size kernel fields, so the checks of ``__post_init__`` (one address family per
selector or SA, ports and SPI in range, tunnel endpoints present) hold by
construction — and the one that may not (a ``unique`` template without reqid) goes
through the real constructor, which raises as before.

The decoded values are exactly those of the pyroute2 path
(:func:`.codec.decode_policy` / :func:`.codec.decode_state`): the unit tests compare
both, field by field and type by type, on generated messages that carry the
attributes only the kernel sends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from . import wire
from .consts import (
    XFRM_INF,
    Action,
    Attr,
    Dir,
    EncapType,
    Mode,
    MsgType,
    PolicyFlag,
    Proto,
    Share,
    StateFlag,
)
from .model import (
    Address,
    Aead,
    Auth,
    Crypt,
    DfBit,
    Encap,
    Level,
    Lifetime,
    LifetimeCurrent,
    Mark,
    Network,
    Policy,
    SaStats,
    Selector,
    State,
    Template,
)
from .netns import Netns

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
_HDR_LEN = 16
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_ntohs = socket.ntohs
_ntohl = socket.ntohl


def _from_bytes(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _with_header(fields: wire.Fields) -> struct.Struct:
    """nlmsghdr + a fixed body, as one struct (both native, body 4-byte aligned)."""
    return struct.Struct("=IHHII" + "".join(fmt for _, fmt in fields))


#: NEWPOLICY: 5 header members, then the 30 members of xfrm_userpolicy_info.
_POL_MSG = _with_header(wire.USERPOLICY_INFO)
_POL_ATTRS = _HDR_LEN + wire.KERNEL_SIZES["USERPOLICY_INFO"]
#: NEWSA: 5 header members, then the 37 members of xfrm_usersa_info.
_SA_MSG = _with_header(wire.USERSA_INFO)
_SA_ATTRS = _HDR_LEN + wire.KERNEL_SIZES["USERSA_INFO"]
#: xfrm_userpolicy_info.curlft: offset in a NEWPOLICY message, struct, size
_POL_CUR = _HDR_LEN + wire.compiled(wire.SELECTOR).size + wire.compiled(wire.LIFETIME_CFG).size
_CUR = wire.compiled(wire.LIFETIME_CUR).struct
_CUR_SIZE = _CUR.size
_TMPL = wire.compiled(wire.USER_TMPL).struct
_TMPL_SIZE = _TMPL.size
_ENCAP = wire.compiled(wire.ENCAP_TMPL).struct
_MARK = wire.compiled(wire.MARK).struct
_ALGO = wire.compiled(wire.ALGO).struct
_ALGO3 = wire.compiled(wire.ALGO_AUTH).struct  # same shape as ALGO_AEAD
_ESN = wire.compiled(wire.REPLAY_ESN).struct
_NLA = struct.Struct("=HH")
_HDR = wire.NLMSGHDR
_U32 = struct.Struct("=I")
_NO_ADDR = b"\0" * 16
_ANY4 = Selector(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Network("0.0.0.0/0"))
_ANY6 = Selector(ipaddress.IPv6Network("::/0"), ipaddress.IPv6Network("::/0"))
_NO_LIMITS = (XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0)

assert _POL_ATTRS % 4 == 0 and _SA_ATTRS % 4 == 0
assert _POL_MSG.size == _POL_ATTRS and _SA_MSG.size == _SA_ATTRS

E = TypeVar("E")


def _enum_table(enum: Callable[[int], E], size: int) -> Callable[[int], E]:
    """``enum(v)`` through a table for the byte-sized values; the call itself (and its
    ValueError for unknown values) otherwise."""
    table: dict[int, E] = {}
    for v in range(size):
        with contextlib.suppress(ValueError):
            table[v] = enum(v)

    def lookup(v: int) -> E:
        got = table.get(v)
        return enum(v) if got is None else got

    return lookup


_F_ESN = int(StateFlag.ESN)
_F_NOECN = int(StateFlag.NOECN)
_F_DECAP_DSCP = int(StateFlag.DECAP_DSCP)
_F_NOPMTUDISC = int(StateFlag.NOPMTUDISC)
_dir = _enum_table(Dir, 256)
#: struct xfrm_userpolicy_info.dir of per-socket policies: XFRM_POLICY_MAX + dir.
_SOCKET_DIRS = frozenset({3, 4, 5})
_action = _enum_table(Action, 256)
_policy_flag = _enum_table(PolicyFlag, 256)
_mode = _enum_table(Mode, 256)
_proto = _enum_table(Proto, 256)


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


Setter = Callable[[Any, Any], None]


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Setter, ...]:
    """The slot setters of a frozen, slotted dataclass, in field order.

    Checked against the model at import: a field added to the model without teaching
    this module about it fails here, loudly, instead of leaving a slot unset.
    """
    have = tuple(f.name for f in dataclasses.fields(cls))
    if have != names:
        raise ImportError(
            f"ipsecd.xfrm.decoder builds {cls.__name__} from the fields {names}, but the "
            f"model now has {have}: update the decoder (and its tests) with the model"
        )
    return tuple(cls.__dict__[n].__set__ for n in names)


_new = object.__new__
(
    _p_selector,
    _p_dir,
    _p_action,
    _p_priority,
    _p_templates,
    _p_mark,
    _p_if_id,
    _p_lifetime,
    _p_flags,
    _p_index,
    _p_current,
) = _slot_setters(
    Policy,
    (
        "selector",
        "dir",
        "action",
        "priority",
        "templates",
        "mark",
        "if_id",
        "lifetime",
        "flags",
        "index",
        "current",
    ),
)
_sel_src, _sel_dst, _sel_proto, _sel_sport, _sel_dport, _sel_ifindex = _slot_setters(
    Selector, ("src", "dst", "proto", "sport", "dport", "ifindex")
)
_t_proto, _t_mode, _t_src, _t_dst, _t_reqid, _t_spi, _t_level = _slot_setters(
    Template, ("proto", "mode", "src", "dst", "reqid", "spi", "level")
)
(
    _s_src,
    _s_dst,
    _s_spi,
    _s_proto,
    _s_mode,
    _s_reqid,
    _s_aead,
    _s_crypt,
    _s_auth,
    _s_selector,
    _s_encap,
    _s_replay_window,
    _s_esn,
    _s_lifetime,
    _s_ecn,
    _s_decap_dscp,
    _s_dfbit,
    _s_mark,
    _s_if_id,
    _s_tfcpad,
    _s_current,
    _s_stats,
) = _slot_setters(
    State,
    (
        "src",
        "dst",
        "spi",
        "proto",
        "mode",
        "reqid",
        "aead",
        "crypt",
        "auth",
        "selector",
        "encap",
        "replay_window",
        "esn",
        "lifetime",
        "ecn",
        "decap_dscp",
        "dfbit",
        "mark",
        "if_id",
        "tfcpad",
        "current",
        "stats",
    ),
)


def _selector_of(
    src: Network, dst: Network, proto: int, sport: int | None, dport: int | None, ifindex: int
) -> Selector:
    """``Selector(...)`` for values that satisfy its checks by construction."""
    sel = _new(Selector)
    _sel_src(sel, src)
    _sel_dst(sel, dst)
    _sel_proto(sel, proto)
    _sel_sport(sel, sport)
    _sel_dport(sel, dport)
    _sel_ifindex(sel, ifindex)
    return sel


def _template_of(
    proto: Proto,
    mode: Mode,
    src: Address | None,
    dst: Address | None,
    reqid: int,
    spi: int,
    level: Level,
) -> Template:
    """``Template(...)``; through the real constructor where its check could fail."""
    if level is Level.UNIQUE and not reqid:
        return Template(proto, mode, src, dst, reqid, spi, level)  # raises ValueError
    t = _new(Template)
    _t_proto(t, proto)
    _t_mode(t, mode)
    _t_src(t, src)
    _t_dst(t, dst)
    _t_reqid(t, reqid)
    _t_spi(t, spi)
    _t_level(t, level)
    return t


def _policy_of(
    selector: Selector,
    dir_: Dir,
    action: Action,
    priority: int,
    templates: tuple[Template, ...],
    mark: Mark | None,
    if_id: int,
    lifetime: Lifetime,
    flags: PolicyFlag,
    index: int,
    current: LifetimeCurrent,
) -> Policy:
    """``Policy(...)`` (which has no checks)."""
    p = _new(Policy)
    _p_selector(p, selector)
    _p_dir(p, dir_)
    _p_action(p, action)
    _p_priority(p, priority)
    _p_templates(p, templates)
    _p_mark(p, mark)
    _p_if_id(p, if_id)
    _p_lifetime(p, lifetime)
    _p_flags(p, flags)
    _p_index(p, index)
    _p_current(p, current)
    return p


class DumpDecoder:
    """Decoder for NEWPOLICY / NEWSA messages with generational interning.

    One per namespace and dump kind (:func:`decoder_for`); call :meth:`rotate` after
    each complete dump.  Decoding is synchronous and touches only this object, so
    clients that share it need no lock (interleaved dumps only cost cache hits).
    """

    __slots__ = (
        "_addr",
        "_addr_old",
        "_cur",
        "_cur_old",
        "_encaps",
        "_lft",
        "_lft_old",
        "_marks",
        "_msg",
        "_msg_old",
        "_net",
        "_net_old",
        "_sa_msg",
        "_sa_msg_old",
        "_sel",
        "_sel_old",
        "_stats",
        "_stats_old",
        "_tmpl",
        "_tmpl_old",
    )

    def __init__(self) -> None:
        # policy message without its current lifetime → (that lifetime's bytes, policy)
        self._msg: dict[bytes, tuple[bytes, Policy]] = {}
        self._msg_old: dict[bytes, tuple[bytes, Policy]] = {}
        # whole SA message → state (keys included: kept as long as the states are)
        self._sa_msg: dict[bytes, State] = {}
        self._sa_msg_old: dict[bytes, State] = {}
        self._net: dict[tuple[bytes, int, int], Network] = {}
        self._net_old: dict[tuple[bytes, int, int], Network] = {}
        self._addr: dict[tuple[bytes, int], Address] = {}
        self._addr_old: dict[tuple[bytes, int], Address] = {}
        self._sel: dict[tuple[bytes, int], Selector] = {}
        self._sel_old: dict[tuple[bytes, int], Selector] = {}
        self._tmpl: dict[bytes, Template] = {}
        self._tmpl_old: dict[bytes, Template] = {}
        self._lft: dict[tuple[int, ...], Lifetime] = {}
        self._lft_old: dict[tuple[int, ...], Lifetime] = {}
        self._cur: dict[tuple[int, ...], LifetimeCurrent] = {}
        self._cur_old: dict[tuple[int, ...], LifetimeCurrent] = {}
        self._stats: dict[tuple[int, ...], SaStats] = {}
        self._stats_old: dict[tuple[int, ...], SaStats] = {}
        # few distinct values in practice: bounded by clearing
        self._marks: dict[bytes, Mark] = {}
        self._encaps: dict[tuple[bytes, int], Encap] = {}

    def rotate(self) -> None:
        """End of a dump: keep what it used, forget what it did not."""
        self._msg_old, self._msg = self._msg, {}
        self._sa_msg_old, self._sa_msg = self._sa_msg, {}
        self._net_old, self._net = self._net, {}
        self._addr_old, self._addr = self._addr, {}
        self._sel_old, self._sel = self._sel, {}
        self._tmpl_old, self._tmpl = self._tmpl, {}
        self._lft_old, self._lft = self._lft, {}
        self._cur_old, self._cur = self._cur, {}
        self._stats_old, self._stats = self._stats, {}
        if len(self._marks) > 4096:
            self._marks.clear()
        if len(self._encaps) > 4096:
            self._encaps.clear()

    # ------------------------------------------------------------------ interning

    def network(self, raw: bytes, family: int, plen: int) -> Network:
        key = (raw, family, plen)
        n = self._net.get(key)
        if n is None:
            n = self._net_old.get(key)
            if n is None:  # from an int: what the constructor turns bytes into anyway
                if family == AF_INET6:
                    n = ipaddress.IPv6Network((_from_bytes(raw), plen), strict=False)
                else:
                    n = ipaddress.IPv4Network((_from_bytes(raw[:4]), plen), strict=False)
            self._net[key] = n
        return n

    def address(self, raw: bytes, family: int) -> Address:
        key = (raw, family)
        a = self._addr.get(key)
        if a is None:
            a = self._addr_old.get(key)
            if a is None:
                if family == AF_INET6:
                    a = ipaddress.IPv6Address(raw[:16])
                else:
                    a = ipaddress.IPv4Address(raw[:4])
            self._addr[key] = a
        return a

    def _lifetime(self, v: tuple[int, ...]) -> Lifetime:
        lft = self._lft.get(v)
        if lft is None:
            lft = self._lft_old.get(v)
            if lft is None:
                if v == _NO_LIMITS:
                    lft = Lifetime()
                else:
                    lft = Lifetime(
                        *(None if x == XFRM_INF else x for x in v[:4]),
                        *(x or None for x in v[4:]),
                    )
            self._lft[v] = lft
        return lft

    def _current(self, v: tuple[int, ...]) -> LifetimeCurrent:
        cur = self._cur.get(v)
        if cur is None:
            cur = self._cur_old.get(v)
            if cur is None:
                cur = LifetimeCurrent(*v)
            self._cur[v] = cur
        return cur

    def _sa_stats(self, v: tuple[int, ...]) -> SaStats:
        st = self._stats.get(v)
        if st is None:
            st = self._stats_old.get(v)
            if st is None:
                st = SaStats(*v)
            self._stats[v] = st
        return st

    def _selector(self, v: tuple[Any, ...], family: int) -> Selector:
        """The selector from the 12 members at v[5:17] (``family``: fallback)."""
        fam = v[11] or family or AF_INET
        return _selector_of(
            self.network(v[6], fam, v[13]),
            self.network(v[5], fam, v[12]),
            v[14],
            _ntohs(v[9]) if v[10] else None,
            _ntohs(v[7]) if v[8] else None,
            v[15],
        )

    def _mark(self, data: bytes, pos: int) -> Mark:
        key = data[pos : pos + 8]
        m = self._marks.get(key)
        if m is None:
            m = self._marks[key] = Mark(*_MARK.unpack_from(data, pos))
        return m

    def _template(self, raw: bytes) -> Template:
        t = self._tmpl.get(raw)
        if t is None:
            t = self._tmpl_old.get(raw)
            if t is None:
                t = self._new_template(raw)
            self._tmpl[raw] = t
        return t

    def _new_template(self, raw: bytes) -> Template:
        daddr, spi, proto, fam, saddr, reqid, mode_v, share, optional, *_ = _TMPL.unpack(raw)
        mode = _mode(mode_v)
        if optional:
            level = Level.USE
        elif share == Share.UNIQUE:
            level = Level.UNIQUE
        else:
            level = Level.REQUIRE
        tunnel = mode == Mode.TUNNEL
        return _template_of(
            _proto(proto),
            mode,
            self.address(saddr, fam) if tunnel else None,
            self.address(daddr, fam) if tunnel else None,
            reqid,
            _ntohl(spi),
            level,
        )

    # ------------------------------------------------------------------ policies

    def policy(self, data: bytes, off: int, length: int) -> Policy | None:
        """Decode the NEWPOLICY message at ``data[off:off+length]``; None for a
        per-socket policy (its direction is XFRM_POLICY_MAX + dir: not part of the SPD
        the reconciler manages, e.g. the IKE sockets' bypass).

        Memoised on the message without its netlink header and without the policy's
        current lifetime (``use_time`` moves whenever traffic hits the policy): a
        policy seen before with another current lifetime costs one new
        :class:`~.model.LifetimeCurrent`, not a whole decode.
        """
        cur_at = off + _POL_CUR
        if data[cur_at + _CUR_SIZE + 8] in _SOCKET_DIRS:
            return None
        key = data[off + _HDR_LEN : cur_at] + data[cur_at + _CUR_SIZE : off + length]
        cur = data[cur_at : cur_at + _CUR_SIZE]
        hit = self._msg.get(key)
        if hit is None:
            hit = self._msg_old.get(key)
        if hit is None:
            p = self._new_policy(data, off, length)
        elif hit[0] != cur:
            old = hit[1]
            p = _policy_of(
                old.selector,
                old.dir,
                old.action,
                old.priority,
                old.templates,
                old.mark,
                old.if_id,
                old.lifetime,
                old.flags,
                old.index,
                self._current(_CUR.unpack_from(data, cur_at)),
            )
        else:
            self._msg[key] = hit
            return hit[1]
        self._msg[key] = (cur, p)
        return p

    def _new_policy(self, data: bytes, off: int, length: int) -> Policy:
        v = _POL_MSG.unpack_from(data, off)
        templates: tuple[Template, ...] = ()
        mark = None
        if_id = 0
        seen = 0
        pos = off + _POL_ATTRS
        end = off + length
        while pos + 4 <= end:
            alen, atype = _NLA.unpack_from(data, pos)
            if alen < 4:
                break
            atype &= _NLA_TYPE_MASK
            bit = 1 << atype
            if not seen & bit:  # the first of each attribute counts
                seen |= bit
                if atype == Attr.TMPL:
                    raw = data[pos + 4 : pos + alen]
                    if len(raw) == _TMPL_SIZE:
                        templates = (self._template(raw),)
                    else:
                        templates = tuple(
                            self._template(raw[o : o + _TMPL_SIZE])
                            for o in range(0, len(raw), _TMPL_SIZE)
                        )
                elif atype == Attr.MARK:
                    mark = self._mark(data, pos + 4)
                elif atype == Attr.IF_ID:
                    (if_id,) = _U32.unpack_from(data, pos + 4)
            pos += (alen + 3) & ~3
        return _policy_of(
            self._selector(v, 0),
            _dir(v[31]),
            _action(v[32]),
            v[29],
            templates,
            mark,
            if_id,
            self._lifetime(v[17:25]),
            _policy_flag(v[33]),
            v[30],
            self._current(v[25:29]),
        )

    # ------------------------------------------------------------------ states

    def _state_selector(self, v: tuple[Any, ...], raw: bytes, family: int) -> Selector | None:
        """The SA's selector, or None when it is the "any" selector of its family."""
        key = (raw, family)
        got = self._sel.get(key)
        if got is None:
            got = self._sel_old.get(key)
            if got is None:
                got = self._selector(v, family)
                if got == _ANY4:
                    got = _ANY4
                elif got == _ANY6:
                    got = _ANY6
            self._sel[key] = got
        # the SA's own family decides which "any" means no selector (as codec does)
        return None if got is (_ANY6 if family == AF_INET6 else _ANY4) else got

    def state(self, data: bytes, off: int, length: int) -> State:
        """Decode the NEWSA message at ``data[off:off+length]``.

        Memoised on the whole message without its netlink header: an SA that carried
        no traffic since the last dump (larval SAs, idle ones) is not decoded again;
        one that did has new counters, replay state and last-use time, and is.
        """
        key = data[off + _HDR_LEN : off + length]
        st = self._sa_msg.get(key)
        if st is None:
            st = self._sa_msg_old.get(key)
            if st is None:
                st = self._new_state(data, off, length)
        self._sa_msg[key] = st
        return st

    def _new_state(self, data: bytes, off: int, length: int) -> State:
        v = _SA_MSG.unpack_from(data, off)
        fam = v[38]
        aead = crypt = auth = auth_legacy = None
        encap = None
        mark = None
        window = v[40]
        if_id = tfcpad = 0
        seen = 0
        pos = off + _SA_ATTRS
        end = off + length
        while pos + 4 <= end:
            alen, atype = _NLA.unpack_from(data, pos)
            if alen < 4:
                break
            atype &= _NLA_TYPE_MASK
            bit = 1 << atype
            if not seen & bit:  # the first of each attribute counts
                seen |= bit
                p = pos + 4
                if atype == Attr.ALG_AEAD:
                    name, bits, icv = _ALGO3.unpack_from(data, p)
                    key = data[p + 72 : min(p + 72 + bits // 8, pos + alen)]
                    aead = Aead(_name(name), key, icv)
                elif atype == Attr.ALG_CRYPT:
                    name, bits = _ALGO.unpack_from(data, p)
                    key = data[p + 68 : min(p + 68 + bits // 8, pos + alen)]
                    crypt = Crypt(_name(name), key)
                elif atype == Attr.ALG_AUTH_TRUNC:
                    name, bits, trunc = _ALGO3.unpack_from(data, p)
                    key = data[p + 72 : min(p + 72 + bits // 8, pos + alen)]
                    auth = Auth(_name(name), key, trunc)
                elif atype == Attr.ALG_AUTH:
                    auth_legacy = p, pos + alen
                elif atype == Attr.ENCAP:
                    encap = self._encap(data[p : p + 24], fam)
                elif atype == Attr.REPLAY_ESN_VAL:
                    window = _ESN.unpack_from(data, p)[5]
                elif atype == Attr.MARK:
                    mark = self._mark(data, p)
                elif atype == Attr.IF_ID:
                    (if_id,) = _U32.unpack_from(data, p)
                elif atype == Attr.TFCPAD:
                    (tfcpad,) = _U32.unpack_from(data, p)
            pos += (alen + 3) & ~3
        if auth is None and auth_legacy is not None:
            # XFRMA_ALG_AUTH (struct xfrm_algo) only when no XFRMA_ALG_AUTH_TRUNC:
            # the legacy attribute implies the 96-bit truncation (RFC 2404 2).
            p, stop = auth_legacy
            name, bits = _ALGO.unpack_from(data, p)
            auth = Auth(_name(name), data[p + 68 : min(p + 68 + bits // 8, stop)], 96)
        flags = v[41]  # plain int: enum arithmetic costs more than the rest
        # State(...) slot by slot: one address family and a 32-bit SPI by construction
        st = _new(State)
        _s_src(st, self.address(v[20], fam))
        _s_dst(st, self.address(v[17], fam))
        _s_spi(st, _ntohl(v[18]))
        _s_proto(st, _proto(v[19]))
        _s_mode(st, _mode(v[39]))
        _s_reqid(st, v[37])
        _s_aead(st, aead)
        _s_crypt(st, crypt)
        _s_auth(st, auth)
        _s_selector(st, self._state_selector(v, data[off + 16 : off + 72], fam))
        _s_encap(st, encap)
        _s_replay_window(st, window)
        _s_esn(st, bool(flags & _F_ESN))
        _s_lifetime(st, self._lifetime(v[21:29]))
        _s_ecn(st, not flags & _F_NOECN)
        _s_decap_dscp(st, bool(flags & _F_DECAP_DSCP))
        _s_dfbit(st, DfBit.CLEAR if flags & _F_NOPMTUDISC else DfBit.COPY)
        _s_mark(st, mark)
        _s_if_id(st, if_id)
        _s_tfcpad(st, tfcpad)
        _s_current(st, self._current(v[29:33]))
        _s_stats(st, self._sa_stats(v[33:36]))
        return st

    def _encap(self, raw: bytes, family: int) -> Encap:
        key = (raw, family)
        e = self._encaps.get(key)
        if e is None:
            etype, sport, dport, oa = _ENCAP.unpack(raw)
            e = self._encaps[key] = Encap(
                EncapType(etype),
                _ntohs(sport),
                _ntohs(dport),
                None if oa == _NO_ADDR else self.address(oa, family),
            )
        return e

    # ------------------------------------------------------------------ buffers

    def feed(
        self,
        data: bytes,
        seq: int,
        kind: int,
        decode: Callable[[bytes, int, int], E | None],
        out: list[E],
    ) -> int:
        """Decode every ``kind`` message of sequence ``seq`` in one receive buffer into
        ``out``.  Returns the offset of the message that ends the answer (NLMSG_DONE or
        NLMSG_ERROR of ``seq``), or -1 if more is to come.  Messages of other sequence
        numbers (late answers to an abandoned request) are skipped."""
        off = 0
        end = len(data)
        hdr = _HDR.unpack_from
        while off + _HDR_LEN <= end:
            length, got, _flags, mseq, _pid = hdr(data, off)
            if length < _HDR_LEN or off + length > end:
                return -1
            if mseq == seq:
                if got == kind:
                    value = decode(data, off, length)
                    if value is not None:
                        out.append(value)
                elif got == MsgType.DONE or got == MsgType.ERROR:
                    return off
            off += (length + 3) & ~3
        return -1


_DECODERS: OrderedDict[tuple[Netns, int], DumpDecoder] = OrderedDict()
_DECODERS_MAX = 16


def decoder_for(netns: Netns, kind: int) -> DumpDecoder:
    """The process-wide decoder for the ``kind`` dumps (GETPOLICY, GETSA) of ``netns``
    (as the caller names it).

    Shared so that short-lived clients (one per reconcile) still find the previous
    dump's values; one per kind so that a state dump does not age the policies; the
    most recently used ones are kept.  A name reused for another namespace only costs
    cache misses: values are keyed by their bytes.
    """
    key = (netns, kind)
    d = _DECODERS.get(key)
    if d is None:
        d = _DECODERS[key] = DumpDecoder()
        while len(_DECODERS) > _DECODERS_MAX:
            _DECODERS.popitem(last=False)
    else:
        _DECODERS.move_to_end(key)
    return d


def forget(netns: Netns) -> None:
    """Drop the decoders of ``netns`` and what they remember (e.g. when the namespace
    is gone, or to let go of remembered SA keys at once)."""
    for key in [k for k in _DECODERS if k[0] == netns]:
        del _DECODERS[key]


def forget_all() -> None:
    """Drop every decoder of the process."""
    _DECODERS.clear()
