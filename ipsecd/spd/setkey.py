"""setkey(8) statements, read as setkey reads them.

``spdadd``/``spdupdate``/``spddelete`` with ipsec_set_policy(3) policies, ``add``/
``delete``/``deleteall`` for manual SAs, ``flush``/``spdflush``; ``get``/``dump``/
``spddump`` are accepted and ignored (with a warning), ``exit`` ends the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .algorithms import AUTH, COMP, ENC, AlgInfo, key_bits_text
from .cursor import Cursor
from .errors import Loc
from .lexer import Token
from .model import (
    Action,
    Address,
    Direction,
    IpsecProto,
    Level,
    Lifetime,
    ManualSa,
    Mode,
    Prefix,
    Selector,
    SpdEntry,
    Template,
)
from .secrets import KeyMaterial, Secret
from .values import (
    ICMP_PROTOCOLS,
    PORT_PROTOCOLS,
    parse_address,
    parse_duration,
    parse_int,
    parse_port,
    parse_prefix,
    parse_protocol,
)

if TYPE_CHECKING:
    from .parser import Parser

__all__ = ["HANDLERS", "QUIET"]

_ADDR = re.compile(r"(?P<addr>[^/\[\]]+)(?:/(?P<plen>[^\[\]]*))?(?:\[(?P<port>[^\]]*)\])?")
_PRIO = re.compile(r"(?:(?P<base>low|def|high)(?:(?P<sign>[+-])(?P<off>\d+))?|(?P<num>-?\d+))")
_PRIO_BASE = {"low": -1073741824, "def": 0, "high": 1073741824}
_ACTIONS = ("discard", "none", "ipsec", "bypass", "entrust")
# enum lookups by value without the Enum call machinery (hot path: 10,000 statements)
_DIRECTIONS = {d.value: d for d in Direction}
_MODES = {m.value: m for m in Mode}
_PROTOS = {p.value: p for p in IpsecProto}
_LEVELS = {lv.value: lv for lv in Level}
_U32 = 2**32 - 1


# -- SPD statements ---------------------------------------------------------------
@dataclass(slots=True)
class _Spd:
    selector: Selector
    direction: Direction
    action: Action
    templates: tuple[Template, ...]
    priority: int | None
    loc: Loc


def spdadd(p: Parser, cur: Cursor) -> None:
    entry = _spd_statement(p, cur)
    key = spd_key(entry.selector, entry.direction)
    old = p.builder.spd.get(key)
    if old is not None:
        cur.fail(
            entry.loc,
            f"a policy for this selector and direction '{old.direction.value}'"
            f" already exists (added at {old.loc.short()})",
            "setkey would fail with 'File exists'; use spdupdate to replace it",
        )
    p.builder.spd[key] = _entry(entry, p.scope)


def spdupdate(p: Parser, cur: Cursor) -> None:
    entry = _spd_statement(p, cur)
    p.builder.spd.pop(spd_key(entry.selector, entry.direction), None)
    p.builder.spd[spd_key(entry.selector, entry.direction)] = _entry(entry, p.scope)


def spddelete(p: Parser, cur: Cursor) -> None:
    entry = _spd_statement(p, cur, delete=True)
    if p.builder.spd.pop(spd_key(entry.selector, entry.direction), None) is None:
        p.sink.warning(entry.loc, "spddelete matches no earlier spdadd in this file")


def spdflush(p: Parser, cur: Cursor) -> None:
    cur.done()
    if p.builder.spd:
        p.sink.warning(
            cur.tokens[0].loc, f"spdflush discards the {len(p.builder.spd)} policies added above it"
        )
    p.builder.spd.clear()


def spd_key(sel: Selector, direction: Direction) -> tuple[object, ...]:
    """The kernel's identity of a policy, as cheap-to-hash plain values."""
    return (
        int(sel.src.network_address), sel.src.prefixlen, sel.src.version,
        int(sel.dst.network_address), sel.dst.prefixlen, sel.proto, sel.sport, sel.dport,
        sel.icmp_type, sel.icmp_code, direction,
    )  # fmt: skip


def _entry(s: _Spd, group: str | None) -> SpdEntry:
    return SpdEntry(s.selector, s.direction, s.action, s.templates, s.priority, s.loc, group)


def _spd_statement(p: Parser, cur: Cursor, *, delete: bool = False) -> _Spd:
    start = cur.tokens[0].loc
    _addr_flags(cur)
    if cur.peek_text() == "tagged":
        cur.fail(
            cur.here(),
            "'spdadd tagged' (PF tags) is not supported on Linux",
            "write the selector as addresses and ports",
        )
    src, sport = _range(cur, "a source range")
    dst, dport = _range(cur, "a destination range")
    if src.version != dst.version:
        cur.fail(
            start,
            f"source {src} and destination {dst} are different address families",
            "a policy selector is either IPv4 or IPv6",
        )
    proto_tok = cur.word("an upper-layer protocol (tcp, udp, icmp6, any, or a number)")
    proto = cur.value(proto_tok, parse_protocol)
    icmp_type, icmp_code = _icmp_misc(cur, proto)
    if (sport or dport) and proto not in PORT_PROTOCOLS:
        cur.fail(
            proto_tok.loc,
            "ports are given but the protocol has no ports",
            "use tcp, udp or sctp as the upper-layer protocol, or drop the [port]",
        )
    if proto not in ICMP_PROTOCOLS and proto != 0 and icmp_type is not None:
        cur.fail(proto_tok.loc, "an ICMP type is given for a non-ICMP protocol")
    _ctx(p, cur)
    if cur.accept("-P") is None:
        cur.fail(
            cur.here(), "expected '-P direction policy'", "e.g. -P out ipsec esp/transport//require"
        )
    direction = _DIRECTIONS[cur.choice("a direction", _DIRECTIONS).text]
    priority = _priority(cur)
    templates: tuple[Template, ...] = ()
    if delete and cur.at_end():
        action = Action.ALLOW
    else:
        action, templates = _policy(cur, src.version)
    cur.done()
    sel = Selector(src, dst, proto, sport, dport, icmp_type, icmp_code)
    return _Spd(sel, direction, action, templates, priority, start)


_FLAGS = re.compile(r"-[46n]+")


def _addr_flags(cur: Cursor) -> None:
    while (text := cur.peek_text()) is not None and text[0] == "-" and _FLAGS.fullmatch(text):
        cur.pos += 1


def _range(cur: Cursor, what: str) -> tuple[Prefix, int]:
    tok = cur.word(what)
    text = tok.text
    nxt = cur.peek_text()
    if "[" not in text and nxt is not None and nxt.startswith("["):
        text += cur.word("a [port]").text
    m = _ADDR.fullmatch(text)
    if m is None:
        cur.fail(
            tok.loc,
            f"bad address range '{text}'",
            "write ADDRESS, ADDRESS/LEN, ADDRESS[PORT] or ADDRESS/LEN[PORT]",
        )
    addr_text = m.group("addr")
    if m.group("plen") is not None:
        addr_text += "/" + m.group("plen")
    prefix = cur.value(tok, parse_prefix, addr_text)
    port = 0
    if m.group("port") is not None:
        port = cur.value(tok, parse_port, m.group("port"))
    return prefix, port


def _icmp_misc(cur: Cursor, proto: int) -> tuple[int | None, int | None]:
    text = cur.peek_text()
    if text is None or not text.isdigit():
        return None, None
    tok = cur.word("an ICMP type")
    if proto not in ICMP_PROTOCOLS:
        cur.fail(
            tok.loc,
            f"unexpected '{tok.text}' after the upper-layer protocol",
            "only icmp and icmp6 take a 'type,code' here",
        )
    icmp_type = cur.value(tok, lambda t: parse_int(t, "ICMP type", 0, 255))
    icmp_code = None
    if cur.accept(","):
        icmp_code = cur.value(cur.word("an ICMP code"), lambda t: parse_int(t, "ICMP code", 0, 255))
    return icmp_type, icmp_code


def _ctx(p: Parser, cur: Cursor) -> None:
    tok = cur.accept("-ctx")
    if tok is None:
        return
    cur.word("a DOI")
    cur.word("an algorithm")
    cur.next("a context string")
    p.sink.warning(tok.loc, "security context (-ctx) is ignored: ipsecd does not label SAs")


def _priority(cur: Cursor) -> int | None:
    """``prio N`` / ``priority low|def|high [+-] N`` -> kernel priority (lower wins)."""
    tok = cur.accept("priority") or cur.accept("prio")
    if tok is None:
        return None
    parts: list[str] = []
    while (text := cur.peek_text()) is not None and text not in _ACTIONS:
        parts.append(cur.word("a priority").text)
    spec = "".join(parts)
    m = _PRIO.fullmatch(spec)
    if m is None:
        cur.fail(tok.loc, f"bad priority '{spec}'", "write prio N, or prio low|def|high [+|- N]")
    if m.group("num") is not None:
        value = int(m.group("num"))
    else:
        off = int(m.group("off") or 0)
        value = _PRIO_BASE[m.group("base")] + (-off if m.group("sign") == "-" else off)
    # ipsec_set_policy(3): p(kernel) = 0x80000000 - p(func)
    kernel = 0x80000000 - value
    if not 0 <= kernel <= _U32:
        cur.fail(
            tok.loc,
            f"priority '{spec}' is out of range",
            "use -2147483647 .. 2147483648, or low/def/high +- 1073741823",
        )
    return kernel


def _policy(cur: Cursor, family: int) -> tuple[Action, tuple[Template, ...]]:
    act = cur.word("discard, none or ipsec")
    if act.text in ("bypass", "entrust"):
        cur.fail(
            act.loc,
            f"'{act.text}' is a per-socket policy (ipsec_set_policy(3)) and "
            "cannot be used in spdadd",
            "use 'none' to let the traffic pass without IPsec",
        )
    if act.text not in ("discard", "none", "ipsec"):
        cur.fail(act.loc, f"unknown policy '{act.text}'", "use discard, none or ipsec")
    if act.text != "ipsec":
        if not cur.at_end():
            tok = cur.peek()
            assert tok is not None
            cur.fail(
                tok.loc,
                f"'{act.text}' takes no requests",
                "requests like esp/transport//require only follow 'ipsec'",
            )
        return (Action.BLOCK if act.text == "discard" else Action.ALLOW), ()
    templates: list[Template] = []
    while not cur.at_end():
        templates.append(_request(cur, cur.word("a request")))
    if not templates:
        cur.fail(act.loc, "'ipsec' needs at least one request", "e.g. ipsec esp/transport//require")
    return Action.IPSEC, tuple(templates)


def _request(cur: Cursor, tok: Token) -> Template:
    parts = tok.text.split("/")
    if len(parts) < 2 or len(parts) > 4:
        cur.fail(tok.loc, f"bad request '{tok.text}'", "write protocol/mode/src-dst/level")
    proto_s, mode_s = parts[0], parts[1]
    if proto_s not in ("esp", "ah", "ipcomp"):
        cur.fail(
            tok.loc, f"unknown IPsec protocol '{proto_s}' in '{tok.text}'", "use esp, ah or ipcomp"
        )
    if mode_s not in ("transport", "tunnel"):
        cur.fail(tok.loc, f"unknown mode '{mode_s}' in '{tok.text}'", "use transport or tunnel")
    mode = _MODES[mode_s]
    src = dst = None
    sport = dport = 0
    if len(parts) >= 3 and parts[2]:
        src, sport, dst, dport = _endpoints(cur, tok, parts[2])
    if mode is Mode.TUNNEL and src is None:
        cur.fail(
            tok.loc,
            f"tunnel mode needs the tunnel endpoints in '{tok.text}'",
            f"write {proto_s}/tunnel/LOCAL-REMOTE/{parts[3] if len(parts) > 3 else 'require'}",
        )
    level, reqid = _level(cur, tok, parts[3] if len(parts) == 4 else "")
    return Template(_PROTOS[proto_s], mode, src, dst, level, reqid, sport, dport)


def _endpoints(cur: Cursor, tok: Token, text: str) -> tuple[Address, int, Address, int]:
    left, dash, right = text.partition("-")
    if not dash or not left or not right:
        cur.fail(tok.loc, f"bad endpoints '{text}' in '{tok.text}'", "write SRC-DST")
    src, sport = _endpoint(cur, tok, left)
    dst, dport = _endpoint(cur, tok, right)
    if src.version != dst.version:
        cur.fail(
            tok.loc,
            f"tunnel endpoints {src} and {dst} are different address families",
            "both endpoints of an SA are IPv4, or both IPv6",
        )
    return src, sport, dst, dport


def _endpoint(cur: Cursor, tok: Token, text: str) -> tuple[Address, int]:
    port = 0
    m = re.fullmatch(r"([^\[\]]+)\[(\d+)\]", text)
    if m is not None:
        text = m.group(1)
        port = cur.value(tok, parse_port, m.group(2))
    return cur.value(tok, parse_address, text), port


def _level(cur: Cursor, tok: Token, text: str) -> tuple[Level, int]:
    if text in ("", "default"):
        return Level.DEFAULT, 0
    if text in ("use", "require", "unique"):
        return _LEVELS[text], 0
    if text.startswith("unique:"):
        # setkey(8): the unique:N policy id must be between 1 and 32767
        reqid = cur.value(tok, lambda t: parse_int(t, "unique id", 1, 32767), text[7:])
        return Level.UNIQUE, reqid
    cur.fail(
        tok.loc,
        f"unknown level '{text}' in '{tok.text}'",
        "use default, use, require, unique or unique:N",
    )


# -- SAD statements ---------------------------------------------------------------
@dataclass
class _Sa:
    mode: Mode = Mode.ANY
    reqid: int = 0
    replay: int = 0
    enc: str | None = None
    enc_key: KeyMaterial | None = None
    auth: str | None = None
    auth_key: KeyMaterial | None = None
    comp: str | None = None
    raw_cpi: bool = False
    lh: int = 0
    ls: int = 0
    bh: int = 0
    bs: int = 0
    flags: list[str] = field(default_factory=list)
    seen: dict[str, Loc] = field(default_factory=dict)
    aead: bool = False


def add(p: Parser, cur: Cursor) -> None:
    start = cur.tokens[0].loc
    _addr_flags(cur)
    src, dst, proto, spi, flags = _sa_head(cur)
    sa = _Sa(flags=flags)
    while not cur.at_end():
        _sa_option(p, cur, sa, proto)
    _store_sa(p, cur, start, (src, dst, proto, spi), sa)


def _store_sa(
    p: Parser, cur: Cursor, start: Loc, key: tuple[Address, Address, IpsecProto, int], sa: _Sa
) -> None:
    src, dst, proto, spi = key
    _check_sa(cur, start, sa, proto)
    old = p.builder.sas.get(key)
    if old is not None:
        cur.fail(
            start,
            f"SA {proto.value} spi 0x{spi:x} {src} -> {dst} already exists "
            f"(added at {old.loc.short()})",
            "setkey would fail with 'File exists'",
        )
    life = Lifetime(sa.lh, sa.ls, sa.bh, sa.bs)
    p.builder.sas[(src, dst, proto, spi)] = ManualSa(
        src,
        dst,
        proto,
        spi,
        sa.mode,
        sa.reqid,
        sa.replay,
        sa.enc,
        sa.enc_key,
        sa.auth,
        sa.auth_key,
        sa.comp,
        sa.raw_cpi,
        life,
        tuple(sa.flags),
        p.scope,
        start,
    )


def _sa_head(cur: Cursor) -> tuple[Address, Address, IpsecProto, int, list[str]]:
    src_tok = cur.word("a source address")
    src = cur.value(src_tok, parse_address)
    dst = cur.value(cur.word("a destination address"), parse_address)
    if src.version != dst.version:
        cur.fail(
            src_tok.loc,
            f"SA source {src} and destination {dst} are different address families",
            "both ends of an SA are IPv4, or both IPv6",
        )
    proto_tok = cur.word("esp, ah or ipcomp")
    flags: list[str] = []
    name = proto_tok.text
    if name in ("esp-old", "ah-old"):
        cur.fail(
            proto_tok.loc,
            f"'{name}' is the obsolete RFC 1827/1826 format",
            f"use {name[:-4]} (RFC 4303/4302)",
        )
    if name == "tcp":
        cur.fail(proto_tok.loc, "TCP-MD5 signature SAs are not IPsec and not supported")
    if name == "esp-udp":
        flags.append("esp-udp")
        name = "esp"
    if name not in ("esp", "ah", "ipcomp"):
        cur.fail(proto_tok.loc, f"unknown SA protocol '{name}'", "use esp, ah or ipcomp")
    return src, dst, IpsecProto(name), _spi(cur, name), flags


def _spi(cur: Cursor, proto: str) -> int:
    spi_tok = cur.word("an SPI")
    spi = cur.value(spi_tok, lambda t: parse_int(t, "SPI", 0, _U32))
    if proto != "ipcomp" and spi < 256:
        # RFC 4303 2.1: SPI values 1-255 are reserved by IANA, 0 is local-only
        cur.fail(spi_tok.loc, f"SPI {spi} is reserved (RFC 4303 2.1)", "use an SPI of 256 or more")
    return spi


def _sa_option(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
    tok = cur.word("an SA option or algorithm")
    opt = tok.text
    if opt in sa.seen and opt != "-f":
        cur.fail(tok.loc, f"'{opt}' is given twice", f"first at {sa.seen[opt].short()}")
    sa.seen[opt] = tok.loc
    handler = _SA_OPTIONS.get(opt)
    if handler is None:
        cur.fail(
            tok.loc,
            f"unknown SA option '{opt}'",
            "options: -m -r -u -f -lh -ls -bh -bs; algorithms: -E -A -C",
        )
    handler(p, cur, sa, proto)


def _opt_mode(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
    sa.mode = Mode(cur.choice("a mode", ("transport", "tunnel", "any")).text)


def _u32(what: str) -> Callable[[str], int]:
    return lambda t: parse_int(t, what, 0, _U32)


def _opt_replay(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
    sa.replay = cur.value(cur.word("a replay window size"), _u32("replay window"))


def _opt_reqid(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
    sa.reqid = cur.value(cur.word("a request id"), _u32("request id"))


def _opt_flag(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
    sa.flags.append(
        cur.choice("a padding option", ("zero-pad", "random-pad", "seq-pad", "nocyclic-seq")).text
    )


def _opt_life(attr: str) -> Callable[[Parser, Cursor, _Sa, IpsecProto], None]:
    def handler(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
        what = "lifetime in seconds" if attr[0] == "l" else "lifetime in bytes"
        setattr(sa, attr, cur.value(cur.word(what), lambda t: parse_int(t, what, 0, 2**64 - 1)))

    return handler


def _opt_ctx(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
    loc = cur.tokens[cur.pos - 1].loc
    cur.word("a DOI")
    cur.word("an algorithm")
    cur.next("a context string")
    p.sink.warning(loc, "security context (-ctx) is ignored: ipsecd does not label SAs")


def _opt_enc(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
    flag = cur.tokens[cur.pos - 1]
    if proto is not IpsecProto.ESP:
        cur.fail(
            flag.loc,
            f"-E (encryption) is for esp SAs, not {proto.value}",
            "AH only authenticates: use -A",
        )
    info, key = _alg_and_key(p, cur, ENC, "encryption")
    sa.enc, sa.enc_key, sa.aead = info.name, key, info.aead


def _opt_auth(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
    flag = cur.tokens[cur.pos - 1]
    if proto is IpsecProto.IPCOMP:
        cur.fail(flag.loc, "-A (authentication) is not for ipcomp SAs", "use -C deflate")
    info, key = _alg_and_key(p, cur, AUTH, "authentication")
    sa.auth, sa.auth_key = info.name, key


def _opt_comp(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
    flag = cur.tokens[cur.pos - 1]
    if proto is not IpsecProto.IPCOMP:
        cur.fail(flag.loc, f"-C (compression) is for ipcomp SAs, not {proto.value}")
    tok = cur.word("a compression algorithm")
    info = COMP.get(tok.text)
    if info is None:
        cur.fail(tok.loc, f"unknown compression algorithm '{tok.text}'", "use deflate or lzs")
    if info.status == "forbid":
        cur.fail(tok.loc, info.reason, info.hint)
    sa.comp = info.name
    sa.raw_cpi = cur.accept("-R") is not None


def _alg_and_key(
    p: Parser, cur: Cursor, table: dict[str, AlgInfo], what: str
) -> tuple[AlgInfo, KeyMaterial | None]:
    tok = cur.word(f"an {what} algorithm")
    info = table.get(tok.text)
    if info is None:
        names = sorted(n for n, i in table.items() if i.status != "forbid")
        cur.fail(
            tok.loc, f"unknown {what} algorithm '{tok.text}'", "use one of: " + ", ".join(names)
        )
    if info.status == "forbid":
        p.sink.error(tok.loc, info.reason, info.hint)
    elif info.status == "warn":
        p.sink.warning(tok.loc, info.reason, info.hint)
    if info.name == "null":
        return info, None
    key_tok = cur.next(f"a key for {tok.text}")
    key = p.key(cur, key_tok)
    if isinstance(key, Secret) and key.bits not in info.key_bits:
        cur.fail(
            key_tok.loc,
            f"{tok.text} needs a key of {key_bits_text(info.key_bits)}, "
            f"this one has {key.bits} bits",
            _key_hint(info),
        )
    return info, key


def _key_hint(info: AlgInfo) -> str:
    sizes = info.key_bits if isinstance(info.key_bits, tuple) else ()
    if sizes:
        return f"a {sizes[-1]}-bit key is 0x followed by {sizes[-1] // 4} hex digits" + (
            " (the last 32 bits are the salt)"
            if info.name in ("aes-gcm-16", "aes-ctr", "aes-gmac", "chacha20-poly1305")
            else ""
        )
    return ""


def _check_sa(cur: Cursor, start: Loc, sa: _Sa, proto: IpsecProto) -> None:
    if proto is IpsecProto.ESP:
        if sa.enc is None:
            cur.fail(
                start,
                "an esp SA needs an encryption algorithm (-E)",
                "e.g. -E aes-gcm-16 0x<72 hex digits>",
            )
        if sa.aead and sa.auth is not None:
            cur.fail(
                sa.seen["-A"],
                f"{sa.enc} is an AEAD cipher (RFC 4106) and takes no -A",
                "drop the -A part",
            )
        if not sa.aead and sa.auth in (None, "null"):
            if sa.enc == "null":
                # RFC 8221 5/6: ENCR_NULL with AUTH_NONE MUST NOT
                cur.fail(
                    start,
                    "esp with null encryption and no authentication protects nothing (RFC 8221 6)",
                    "add -A hmac-sha2-256 KEY",
                )
            # RFC 8221 3: non-AEAD encryption needs an integrity algorithm
            cur.fail(
                start,
                f"esp with {sa.enc} needs an authentication algorithm (RFC 8221 3)",
                "add -A hmac-sha2-256 KEY, or use -E aes-gcm-16",
            )
    elif proto is IpsecProto.AH:
        if sa.auth is None:
            cur.fail(
                start,
                "an ah SA needs an authentication algorithm (-A)",
                "e.g. -A hmac-sha2-256 0x<64 hex digits>",
            )
        if sa.auth == "null":
            cur.fail(
                sa.seen["-A"],
                "ah with null authentication protects nothing (RFC 8221 6)",
                "use -A hmac-sha2-256 KEY",
            )
    elif sa.comp is None:
        cur.fail(start, "an ipcomp SA needs a compression algorithm (-C)", "e.g. -C deflate")
    if sa.ls and sa.lh and sa.ls > sa.lh:
        cur.fail(
            sa.seen["-ls"],
            f"soft lifetime {sa.ls}s is longer than hard lifetime {sa.lh}s",
            "the soft lifetime must expire first",
        )
    if sa.bs and sa.bh and sa.bs > sa.bh:
        cur.fail(sa.seen["-bs"], "soft byte lifetime is larger than the hard byte lifetime")


# -- native manual SA: sa PROTO SPI from SRC to DST { clauses } ---------------------
_NATIVE_SA = {"mode": "-m", "replay": "-r", "reqid": "-u", "pad": "-f", "enc": "-E",
              "auth": "-A", "comp": "-C", "lifetime": "-lh", "bytes": "-bh"}  # fmt: skip


def native_sa(p: Parser, cur: Cursor) -> None:
    """``sa esp 0x1000 from A to B { mode tunnel; enc aes-gcm-16 KEY; lifetime 1h soft 50m; }``"""
    start = cur.tokens[0].loc
    proto = IpsecProto(cur.choice("esp, ah or ipcomp", ("esp", "ah", "ipcomp")).text)
    spi = _spi(cur, proto.value)
    cur.choice("'from'", ("from",))
    src_tok = cur.word("a source address")
    src = cur.value(src_tok, parse_address)
    cur.choice("'to'", ("to",))
    dst = cur.value(cur.word("a destination address"), parse_address)
    if src.version != dst.version:
        cur.fail(src_tok.loc, f"SA source {src} and destination {dst} are different address "
                 "families", "both ends of an SA are IPv4, or both IPv6")  # fmt: skip
    sa = _Sa()
    block = cur.accept("{") is not None
    while not cur.at_end():
        if block and (cur.accept(";") or cur.accept("}")):
            continue
        _native_sa_clause(p, cur, sa, proto)
    _store_sa(p, cur, start, (src, dst, proto, spi), sa)


def _native_sa_clause(p: Parser, cur: Cursor, sa: _Sa, proto: IpsecProto) -> None:
    kw = cur.choice("an SA clause", _NATIVE_SA)
    flag = _NATIVE_SA[kw.text]
    if flag in sa.seen and flag != "-f":
        cur.fail(kw.loc, f"'{kw.text}' is given twice", f"first at {sa.seen[flag].short()}")
    sa.seen[flag] = kw.loc
    if kw.text == "lifetime":
        sa.lh = cur.value(cur.word("a lifetime"), parse_duration)
        if (soft := cur.accept("soft")) is not None:
            sa.seen["-ls"] = soft.loc
            sa.ls = cur.value(cur.word("a soft lifetime"), parse_duration)
    elif kw.text == "bytes":
        sa.bh = cur.value(cur.word("a byte count"), _u64("byte lifetime"))
        if (soft := cur.accept("soft")) is not None:
            sa.seen["-bs"] = soft.loc
            sa.bs = cur.value(cur.word("a soft byte count"), _u64("byte lifetime"))
    else:
        _SA_OPTIONS[flag](p, cur, sa, proto)


def _u64(what: str) -> Callable[[str], int]:
    return lambda t: parse_int(t, what, 0, 2**64 - 1)


def delete(p: Parser, cur: Cursor) -> None:
    start = cur.tokens[0].loc
    _addr_flags(cur)
    src, dst, proto, spi, _ = _sa_head(cur)
    while cur.accept("-m"):
        cur.word("a mode")
    cur.done()
    if p.builder.sas.pop((src, dst, proto, spi), None) is None:
        p.sink.warning(start, "delete matches no earlier add in this file")


def deleteall(p: Parser, cur: Cursor) -> None:
    start = cur.tokens[0].loc
    _addr_flags(cur)
    src = cur.value(cur.word("a source address"), parse_address)
    dst = cur.value(cur.word("a destination address"), parse_address)
    proto = IpsecProto(cur.choice("esp, ah or ipcomp", ("esp", "ah", "ipcomp")).text)
    cur.done()
    gone = [k for k in p.builder.sas if k[:3] == (src, dst, proto)]
    for k in gone:
        del p.builder.sas[k]
    if not gone:
        p.sink.warning(start, "deleteall matches no earlier add in this file")


def flush(p: Parser, cur: Cursor) -> None:
    start = cur.tokens[0].loc
    which: IpsecProto | None = None
    if not cur.at_end():
        which = IpsecProto(cur.choice("esp, ah or ipcomp", ("esp", "ah", "ipcomp")).text)
    cur.done()
    gone = [k for k in p.builder.sas if which is None or k[2] is which]
    if gone:
        p.sink.warning(start, f"flush discards the {len(gone)} SAs added above it")
    for k in gone:
        del p.builder.sas[k]


def ignored(p: Parser, cur: Cursor) -> None:
    word = cur.tokens[0]
    p.sink.warning(word.loc, f"'{word.text}' only shows kernel state and is ignored here")


def stop(p: Parser, cur: Cursor) -> None:
    cur.done()
    p.builder.stopped = True


_SA_OPTIONS: dict[str, Callable[[Parser, Cursor, _Sa, IpsecProto], None]] = {
    "-m": _opt_mode,
    "-r": _opt_replay,
    "-u": _opt_reqid,
    "-f": _opt_flag,
    "-lh": _opt_life("lh"),
    "-ls": _opt_life("ls"),
    "-bh": _opt_life("bh"),
    "-bs": _opt_life("bs"),
    "-ctx": _opt_ctx,
    "-E": _opt_enc,
    "-A": _opt_auth,
    "-C": _opt_comp,
}

HANDLERS: dict[str, Callable[[Parser, Cursor], None]] = {
    "spdadd": spdadd,
    "spdupdate": spdupdate,
    "spddelete": spddelete,
    "spdflush": spdflush,
    "add": add,
    "delete": delete,
    "deleteall": deleteall,
    "flush": flush,
    "get": ignored,
    "dump": ignored,
    "spddump": ignored,
    "exit": stop,
    "quit": stop,
    "bye": stop,
}
QUIET = frozenset({"get", "dump", "spddump", "quit", "bye", "spdupdate", "deleteall"})
