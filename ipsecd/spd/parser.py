"""Parser for the SPD language: native statements and setkey(8) statements, one file.

The file is split into statements (ended by ``;`` or by a closing ``}``), macros are
expanded, and each statement is parsed on its own: an error abandons only its
statement, so one run reports every error of the file.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cryptography import x509

from . import setkey
from ._gc import gc_paused
from .algorithms import IKE_DH, IKE_ENC, IKE_INTEG, IKE_PRF, AlgInfo
from .cursor import STATEMENT_WORDS, Bail, Cursor
from .errors import Loc, Sink
from .lexer import Kind, Token, tokenize
from .limits import MACRO_CAP, MACRO_FLOOR, MACRO_MEMO, MACRO_RATIO, macro_budget
from .model import (
    Action,
    Address,
    AuthSpec,
    Connection,
    Direction,
    IpsecProto,
    Level,
    ManualSa,
    Mode,
    NodeGroup,
    Peer,
    Prefix,
    ProposalDef,
    Rule,
    SpdEntry,
    TrafficSpec,
    Transform,
    Tunnel,
)
from .secrets import KeyMaterial, Secret, SecretRef
from .values import (
    PROTOCOLS,
    Problem,
    parse_address,
    parse_duration,
    parse_hex_key,
    parse_int,
    parse_port,
    parse_prefix,
    parse_protocol,
)

__all__ = ["Builder", "parse"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_MACRO_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)(.*)", re.DOTALL)
_SECRET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass
class Builder:
    """Everything the statements said, in file order, before cross-checks."""

    defaults: dict[str, object] = field(default_factory=dict)
    default_locs: dict[str, Loc] = field(default_factory=dict)
    proposals: dict[tuple[str, str], ProposalDef] = field(default_factory=dict)
    groups: dict[str, NodeGroup] = field(default_factory=dict)
    connections: list[Connection] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    # keyed like the kernel keys them: (selector, direction) and (src, dst, proto, spi)
    spd: dict[tuple[object, ...], SpdEntry] = field(default_factory=dict)
    sas: dict[tuple[Address, Address, IpsecProto, int], ManualSa] = field(default_factory=dict)
    literal_keys: list[Loc] = field(default_factory=list)
    group_refs: list[tuple[str, Loc]] = field(default_factory=list)
    proposal_refs: list[tuple[str, str, Loc]] = field(default_factory=list)
    between_refs: list[tuple[str, Loc]] = field(default_factory=list)  # groups or peers
    peers: dict[str, Peer] = field(default_factory=dict)
    stopped: bool = False  # setkey 'exit'
    macro_words: int = 0  # words produced by macro uses (bounded: docs/limits.md)


def parse(text: str, filename: str, sink: Sink) -> Builder:
    """Tokenize and parse ``text`` into a :class:`Builder`, reporting into ``sink``."""
    with gc_paused():
        return _parse(text, filename, sink)


def _parse(text: str, filename: str, sink: Sink) -> Builder:
    tokens, _lines = tokenize(text, filename, sink)
    parser = Parser(sink)
    parser.has_dollar = "$" in text
    parser.budget = macro_budget(len(tokens))
    for stmt, end in _statements(tokens, sink):
        if parser.builder.stopped:
            sink.warning(stmt[0].loc, "statement after 'exit' is ignored")
            break
        parser.statement(stmt, end)
    parser.builder.macro_words = parser.expanded
    return parser.builder


@dataclass(slots=True)
class _Macro:
    """A defined macro: its words as written (other macros by reference), the number
    of words it expands to, the word itself when that number is 1, and the expansion
    once it has been made (only for short ones, MACRO_MEMO words at most)."""

    items: list[Token | _Macro]
    size: int
    single: Token | None
    loc: Loc
    memo: tuple[tuple[str, Kind], ...] | None = None


def _flatten(macro: _Macro) -> list[tuple[str, Kind]] | tuple[tuple[str, Kind], ...]:
    """The words of ``macro`` with every macro in it expanded.  No recursion (a chain
    of macros may be as long as the file), and each short macro is expanded once: the
    work is about the number of words produced, which the caller has counted."""
    if macro.memo is not None:
        return macro.memo
    out: list[tuple[str, Kind]] = []
    frames: list[tuple[_Macro, Iterator[Token | _Macro], int]] = [(macro, iter(macro.items), 0)]
    while frames:
        current, items, start = frames[-1]
        item = next(items, None)
        if item is None:
            frames.pop()
            if current.size <= MACRO_MEMO:
                current.memo = tuple(out[start:])
        elif isinstance(item, Token):
            out.append((item.text, item.kind))
        elif item.memo is not None:
            out.extend(item.memo)
        elif item.single is not None:
            out.append((item.single.text, item.single.kind))
        else:
            frames.append((item, iter(item.items), len(out)))
    return out


def _statements(tokens: list[Token], sink: Sink) -> list[tuple[list[Token], Token]]:
    """Group tokens into statements; returns (tokens, closing token) pairs."""
    out: list[tuple[list[Token], Token]] = []
    current: list[Token] = []
    depth = 0
    i = 0
    punct = Kind.PUNCT
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        i += 1
        if tok.kind is not punct:
            if tok.kind is Kind.EOF:
                _unterminated(current, depth, sink)
                break
            current.append(tok)
        elif tok.text == ";" and depth == 0:
            if current:
                out.append((current, tok))
            current = []
        elif tok.text == "{":
            depth += 1
            current.append(tok)
        elif tok.text == "}":
            if depth == 0:
                sink.error(tok.loc, "unmatched '}'", "remove it, or add the '{' it closes")
                continue
            depth -= 1
            current.append(tok)
            if depth == 0:
                out.append((current, tok))
                current = []
                if i < n and tokens[i].is_punct(";"):
                    i += 1
        else:
            current.append(tok)
    return out


def _unterminated(current: list[Token], depth: int, sink: Sink) -> None:
    if not current:
        return
    if depth > 0:
        opener = next(t for t in current if t.is_punct("{"))
        sink.error(opener.loc, "'{' is never closed", "add the missing '}'")
        return
    last = current[-1].loc
    if any(d.is_error and d.line >= last.line for d in sink.items):
        return  # an unterminated string already explains it
    width = max(len(current[-1].text), 1)
    where = Loc(last.filename, last.line, last.col + width, last.source_line)
    sink.error(where, "missing ';' at the end of the statement", "every statement ends with ';'")


class Parser:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.builder = Builder()
        self.macros: dict[str, _Macro] = {}
        self.has_dollar = True  # False when the text has no '$': no statement to expand
        self.budget = MACRO_FLOOR  # words macro uses may produce (set per file)
        self.expanded = 0  # words macro uses produced so far
        self.scope: str | None = None  # the group of an enclosing ``on GROUP { }``

    # -- statements --------------------------------------------------------------
    def statement(self, tokens: list[Token], end: Token, *, expand: bool = True) -> None:
        first = tokens[0]
        if len(tokens) >= 2 and tokens[1].kind is Kind.WORD and tokens[1].text == "=":
            self._macro(tokens, end)
            return
        if expand:  # the statements of an 'on' block were expanded with the block
            tokens = self._expand(tokens)
        if not tokens:
            return
        cur = Cursor(tokens, end, self.sink)
        try:
            if first.kind is not Kind.WORD:
                cur.fail(first.loc, f"expected a statement, found {first.describe()}")
            handler: Callable[[Parser, Cursor], None] | None = _HANDLERS.get(first.text)
            if handler is None:
                handler = setkey.HANDLERS.get(first.text)
            if handler is None:
                cur.fail(first.loc, f"unknown statement '{first.text}'", _suggest(first.text))
            cur.pos = 1
            handler(self, cur)
        except Bail:
            pass

    def _macro(self, tokens: list[Token], end: Token) -> None:
        name_tok = tokens[0]
        cur = Cursor(tokens, end, self.sink)
        try:
            if name_tok.kind is not Kind.WORD or not _NAME.fullmatch(name_tok.text):
                cur.fail(
                    name_tok.loc,
                    f"bad macro name '{name_tok.text}'",
                    "macro names are letters, digits and '_', starting with a letter",
                )
            reserved = name_tok.text in _HANDLERS or name_tok.text in setkey.HANDLERS
            if reserved and name_tok.text not in _LATER_KEYWORDS:
                cur.fail(name_tok.loc, f"'{name_tok.text}' is a keyword, not a macro name")
            if name_tok.text in self.macros:
                prev = self.macros[name_tok.text].loc
                cur.fail(
                    name_tok.loc,
                    f"macro '{name_tok.text}' is defined twice",
                    f"first definition at {prev.short()}",
                )
            if len(tokens) < 3:
                cur.fail(end.loc, f"macro '{name_tok.text}' has no value")
            self.macros[name_tok.text] = self._define(tokens[2:], name_tok.loc)
        except Bail:
            pass

    def _define(self, value: list[Token], loc: Loc) -> _Macro:
        """A macro as written: uses of other macros are checked now (they must be
        defined before) but expanded only where this macro is used, so a macro that is
        never used costs no more than its own words (docs/limits.md)."""
        items: list[Token | _Macro] = []
        size = 0
        for tok in value:
            m = _MACRO_REF.fullmatch(tok.text) if tok.kind is Kind.WORD else None
            used = self.macros.get(m.group(1)) if m is not None else None
            if m is None or used is None:
                if m is not None:
                    self._undefined(tok, m.group(1))  # kept: the statement bails on it
                items.append(tok)
                size += 1
            elif m.group(2):  # $name/32: joined now, the macro is a single word
                items.append(self._joined(tok, m.group(1), used, m.group(2)))
                size += 1
            else:
                items.append(used)
                size += used.size
        single = None
        if size == 1:
            only = items[0]
            single = only if isinstance(only, Token) else only.single
        # sizes double with every level of a macro bomb: saturate instead of growing
        return _Macro(items, min(size, MACRO_CAP + 1), single, loc)

    def _undefined(self, tok: Token, name: str) -> None:
        self.sink.error(
            tok.loc, f"undefined macro '${name}'", f"define it before use: {name} = VALUE;"
        )

    def _joined(self, tok: Token, name: str, used: _Macro, rest: str) -> Token:
        if used.single is None:
            self.sink.error(
                tok.loc, f"macro '${name}' is a list and cannot be joined with other text"
            )
            return tok
        return tok.at(used.single.text + rest, Kind.WORD)

    def _expand(self, tokens: list[Token]) -> list[Token]:
        if not self.has_dollar or not any("$" in tok.text for tok in tokens):
            return tokens
        out: list[Token] = []
        for tok in tokens:
            m = _MACRO_REF.fullmatch(tok.text) if tok.kind is Kind.WORD else None
            if m is None:
                out.append(tok)
                continue
            used = self.macros.get(m.group(1))
            if used is None:
                self._undefined(tok, m.group(1))
                out.append(tok)  # the statement will bail quietly on it
            elif m.group(2):
                out.append(self._joined(tok, m.group(1), used, m.group(2)))
            elif used.single is not None:
                out.append(tok.at(used.single.text, used.single.kind))
                self.expanded += 1
            elif not self._charge(tok, m.group(1), used.size):
                out.append(tok)
            else:
                out.extend(tok.at(text, kind) for text, kind in _flatten(used))
        return out

    def _charge(self, tok: Token, name: str, size: int) -> bool:
        """Count ``size`` expanded words against the file's budget (docs/limits.md);
        False, with an error at the use, if they do not fit."""
        left = self.budget - self.expanded
        if size <= left:
            self.expanded += size
            return True
        words = f"more than {MACRO_CAP}" if size > MACRO_CAP else str(size)
        self.sink.error(
            tok.loc,
            f"macro '${name}' expands to {words} words, more than the {left} left of "
            f"this file's macro expansion budget ({self.budget} words)",
            f"the budget is {MACRO_RATIO} times the words of the file, at least "
            f"{MACRO_FLOOR}, at most {MACRO_CAP}; a macro that uses another one twice "
            "doubles it: write the list out, or use broader prefixes",
        )
        return False

    # -- on GROUP { ... } ----------------------------------------------------------
    def on(self, cur: Cursor) -> None:
        name = self._name(cur, "a node group")
        self.builder.group_refs.append((name.text, name.loc))
        cur.expect_punct("{", "to open the block of statements")
        if self.scope is not None:
            cur.fail(name.loc, "'on' blocks do not nest")
        closing = cur.tokens[-1]
        inner = [*cur.tokens[cur.pos : -1], closing.at("", Kind.EOF)]
        self.scope = name.text
        try:
            for stmt, end in _statements(inner, self.sink):
                word = stmt[0].text
                if word not in setkey.HANDLERS and word not in ("bypass", "discard", "sa"):
                    self.sink.error(
                        stmt[0].loc,
                        f"'{word}' cannot be limited to a group",
                        "'on GROUP { }' holds setkey statements, sa and bypass/discard",
                    )
                    continue
                self.statement(stmt, end, expand=False)
        finally:
            self.scope = None

    # -- defaults ----------------------------------------------------------------
    def defaults(self, cur: Cursor) -> None:
        if cur.accept("{") is None:
            self._default_item(cur.tokens[cur.pos :], cur.end)
            return
        items: list[Token] = []
        for tok in cur.tokens[cur.pos :]:
            if tok.is_punct(";") or tok is cur.tokens[-1]:  # ';' or the closing '}'
                if items:
                    with contextlib.suppress(Bail):
                        self._default_item(items, tok)
                items = []
            else:
                items.append(tok)

    def _default_item(self, items: list[Token], end: Token) -> None:
        cur = Cursor(items, end, self.sink)
        key_tok = cur.word("a default setting")
        key = _DEFAULT_ALIASES.get(key_tok.text, key_tok.text)
        spec = _DEFAULT_KEYS.get(key)
        if spec is None:
            cur.fail(
                key_tok.loc,
                f"unknown default '{key_tok.text}'",
                "known: " + ", ".join(sorted(_DEFAULT_KEYS)),
            )
        if key == "socket_policy":
            which = cur.choice("a socket (ike or control)", ("ike", "control"))
            key = f"socket_policy_{which.text}"
        value_tok = cur.choice(f"a value for {key_tok.text}", spec)
        cur.done("one setting per ';'")
        if key in self.builder.defaults:
            prev = self.builder.default_locs[key]
            cur.fail(
                key_tok.loc,
                f"default '{key_tok.text}' is set twice",
                f"first set at {prev.short()}",
            )
        self.builder.defaults[key] = _default_value(key, value_tok.text)
        self.builder.default_locs[key] = key_tok.loc

    # -- proposals ---------------------------------------------------------------
    def proposal(self, cur: Cursor) -> None:
        kind = cur.choice("a proposal kind", ("ike", "esp", "ah")).text
        name_tok = self._name(cur, "a proposal name")
        transforms = [self._transform(cur, kind)]
        while cur.accept(","):
            transforms.append(self._transform(cur, kind))
        cur.done("separate transforms with ','")
        key = (kind, name_tok.text)
        if key in self.builder.proposals:
            prev = self.builder.proposals[key].loc
            cur.fail(
                name_tok.loc,
                f"{kind} proposal '{name_tok.text}' is defined twice",
                f"first definition at {prev.short()}",
            )
        self.builder.proposals[key] = ProposalDef(
            kind, name_tok.text, tuple(transforms), name_tok.loc
        )

    def _transform(self, cur: Cursor, kind: str) -> Transform:
        tok = cur.word("a transform such as aes256gcm16-prfsha384-ecp384")
        parts = tok.text.split("-")
        enc: str | None = None
        integ = prf = dh = None
        for part in parts:
            table, slot = _transform_slot(part, kind)
            if table is None:
                cur.fail(
                    tok.loc,
                    f"unknown algorithm '{part}' in {kind} transform '{tok.text}'",
                    _transform_hint(kind),
                )
            info = table[part]
            if info.status == "forbid":
                cur.sink.error(tok.loc, info.reason, info.hint)
            elif info.status == "warn":
                cur.sink.warning(tok.loc, info.reason, info.hint)
            if slot == "enc":
                enc = info.name
            elif slot == "integ":
                integ = info.name
            elif slot == "prf":
                prf = info.name
            else:
                dh = info.name
        self._check_transform(cur, tok, kind, enc, integ, prf)
        return Transform(tok.text, enc or "none", integ, prf, dh)

    def _check_transform(
        self,
        cur: Cursor,
        tok: Token,
        kind: str,
        enc: str | None,
        integ: str | None,
        prf: str | None,
    ) -> None:
        aead = enc is not None and any(i.name == enc and i.aead for i in IKE_ENC.values())
        if kind == "ah":
            if enc is not None:
                cur.fail(
                    tok.loc,
                    "an AH transform has no encryption algorithm",
                    "write only an integrity algorithm, e.g. sha256",
                )
            if integ is None:
                cur.fail(tok.loc, "an AH transform needs an integrity algorithm, e.g. sha256")
            return
        if enc is None:
            cur.fail(
                tok.loc,
                f"{kind} transform '{tok.text}' has no encryption algorithm",
                _transform_hint(kind),
            )
        if aead and integ is not None:
            cur.fail(
                tok.loc,
                f"'{enc}' is an AEAD cipher and takes no integrity algorithm",
                "drop the integrity part, e.g. aes256gcm16-prfsha256-ecp256",
            )
        if not aead and integ is None:
            # RFC 8221 3 / RFC 8247 2.1: non-AEAD encryption needs integrity protection
            cur.fail(
                tok.loc,
                f"'{enc}' needs an integrity algorithm (RFC 8221 3)",
                "add one, e.g. aes256-sha256, or use an AEAD such as aes256gcm16",
            )
        if kind == "ike" and prf is None and integ is None:
            cur.fail(
                tok.loc,
                "an IKE transform with an AEAD cipher needs a PRF",
                "add one, e.g. aes256gcm16-prfsha256-ecp256",
            )
        if kind == "ike" and enc == "null":
            # RFC 7296 5: IKE SAs are always encrypted
            cur.fail(tok.loc, "IKE SAs cannot use null encryption (RFC 7296 5)", "use aes256gcm16")

    # -- node groups -------------------------------------------------------------
    def nodes(self, cur: Cursor) -> None:
        name_tok = self._name(cur, "a group name")
        names: list[str] = []
        labels: list[tuple[tuple[str, str], ...]] = []
        prefixes: list[Prefix] = []
        block = cur.accept("{") is not None
        while not cur.at_end():
            if block and (cur.accept(";") or cur.accept("}")):
                continue
            kw = cur.choice("'name', 'label' or 'address'", ("name", "label", "address"))
            for tok in self._list(cur, f"a {kw.text}"):
                if kw.text == "name":
                    names.append(self._name_text(cur, tok))
                elif kw.text == "label":
                    labels.append(self._labels(cur, tok))
                else:
                    prefixes.append(cur.value(tok, parse_prefix))
        if not (names or labels or prefixes):
            cur.fail(
                name_tok.loc,
                f"node group '{name_tok.text}' selects nothing",
                "add name A, B / label key=value / address PREFIX",
            )
        if name_tok.text == "all":
            cur.fail(
                name_tok.loc, "'all' is the built-in group of every node", "choose another name"
            )
        if name_tok.text in self.builder.groups:
            prev = self.builder.groups[name_tok.text].loc
            cur.fail(
                name_tok.loc,
                f"node group '{name_tok.text}' is defined twice",
                f"first definition at {prev.short()}",
            )
        self.builder.groups[name_tok.text] = NodeGroup(
            name_tok.text, tuple(names), tuple(labels), tuple(prefixes), name_tok.loc
        )

    def _list(self, cur: Cursor, what: str) -> list[Token]:
        items = [cur.word(what)]
        while cur.accept(","):
            items.append(cur.word(what))
        return items

    def _labels(self, cur: Cursor, tok: Token) -> tuple[tuple[str, str], ...]:
        pairs = []
        for part in tok.text.split("+"):
            key, eq, value = part.partition("=")
            if not eq or not key or not value:
                cur.fail(tok.loc, f"bad label '{part}'", "write key=value (join several with +)")
            pairs.append((key, value))
        return tuple(pairs)

    # -- connections -------------------------------------------------------------
    def connection(self, cur: Cursor) -> None:
        name_tok = self._name(cur, "a connection name")
        state = _ConnState(name_tok.text, name_tok.loc)
        block = cur.accept("{") is not None
        while not cur.at_end():
            if block and (cur.accept(";") or cur.accept("}")):
                continue
            self._conn_clause(cur, state)
        if state.a_group is None:
            cur.fail(
                name_tok.loc,
                f"connection '{name_tok.text}' has no 'between' clause",
                "add: between GROUP and GROUP",
            )
        if any(c.name == name_tok.text for c in self.builder.connections):
            prev = next(c for c in self.builder.connections if c.name == name_tok.text).loc
            cur.fail(
                name_tok.loc,
                f"connection '{name_tok.text}' is defined twice",
                f"first definition at {prev.short()}",
            )
        self.builder.connections.append(state.build())

    def _conn_clause(self, cur: Cursor, st: _ConnState) -> None:
        kw = cur.choice("a connection clause", _CONN_CLAUSES)
        if kw.text in st.locs and kw.text != "traffic":
            cur.fail(
                kw.loc,
                f"'{kw.text}' is given twice in connection '{st.name}'",
                f"first at {st.locs[kw.text].short()}",
            )
        st.locs[kw.text] = kw.loc
        getattr(self, "_conn_" + kw.text)(cur, st, kw)

    def _conn_between(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        a = self._name(cur, "a node group")
        cur.choice("'and'", ("and",))
        b = self._name(cur, "a node group")
        st.a_group, st.b_group = a.text, b.text
        self.builder.between_refs += [(a.text, a.loc), (b.text, b.loc)]

    def _conn_traffic(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        proto = 0
        nxt = cur.peek_text()
        # 'esp'/'ah' right after 'traffic' start the next clause, not a protocol
        if nxt is not None and nxt not in _CONN_CLAUSES and (nxt in PROTOCOLS or nxt.isdigit()):
            proto = cur.value(cur.word("a protocol"), parse_protocol)
        a_net: Prefix | None = None
        b_net: Prefix | None = None
        a_port = b_port = 0
        while cur.peek_text() in ("from", "to", "port"):
            word = cur.word("from/to/port").text
            if word == "port":
                b_port = self._port(cur, proto)
                continue
            net = self._net_or_node(cur)
            port = self._port(cur, proto) if cur.accept("port") else 0
            if word == "from":
                a_net, a_port = net, port
            else:
                b_net, b_port = net, port
        st.traffic.append(TrafficSpec(proto, a_net, a_port, b_net, b_port))

    def _net_or_node(self, cur: Cursor) -> Prefix | None:
        tok = cur.word("a prefix or @node")
        if tok.text in ("@node", "@self", "@peer"):
            return None
        return cur.value(tok, parse_prefix)

    def _port(self, cur: Cursor, proto: int) -> int:
        tok = cur.word("a port")
        if proto not in (6, 17, 132, 136):
            cur.fail(
                tok.loc,
                "ports need a protocol with ports (tcp, udp, sctp, udplite)",
                "write e.g. 'tcp port 5432'",
            )
        return cur.value(tok, parse_port)

    def _conn_mode(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        st.mode = Mode(cur.choice("a mode", ("transport", "tunnel")).text)
        if st.mode is Mode.TRANSPORT and "tunnel" in st.locs:
            cur.fail(kw.loc, "'mode transport' contradicts the 'tunnel' clause", "drop one of them")

    def _conn_tunnel(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        if st.mode is Mode.TRANSPORT and "mode" in st.locs:
            cur.fail(kw.loc, "'tunnel' contradicts 'mode transport'", "drop one of them")
        st.mode = Mode.TUNNEL
        local: str | Address = "@self"
        remote: str | Address = "@peer"
        if cur.accept("from"):
            local = self._endpoint(cur)
        if cur.accept("to"):
            remote = self._endpoint(cur)
        st.tunnel = Tunnel(local, remote)

    def _endpoint(self, cur: Cursor) -> str | Address:
        tok = cur.word("@self, @peer or an address")
        if tok.text in ("@self", "@peer"):
            return tok.text
        return cur.value(tok, parse_address)

    def _conn_level(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        st.level = Level(cur.choice("a level", ("default", "use", "require", "unique")).text)

    def _conn_auth(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        kind = cur.choice("an auth method", ("psk", "certificate")).text
        if kind == "certificate":
            st.auth = self._cert_auth(cur, kw)
            return
        tok = cur.next('a pre-shared key (secret:NAME, "string" or 0x...)')
        st.auth = AuthSpec("psk", self.key(cur, tok, psk=True))

    _CERT_OPTIONS = ("ca", "cert", "key", "sendcert", "legacy")

    def _cert_auth(self, cur: Cursor, kw: Token) -> AuthSpec:
        """``certificate [ca PATH] [cert PATH key PATH] [sendcert WHEN] [legacy]``."""
        paths: dict[str, str] = {}
        send_cert = "always"
        legacy = False
        seen: set[str] = set()
        while (word := cur.peek_text()) in self._CERT_OPTIONS:
            tok = cur.word("an option")
            if word in seen:
                cur.fail(tok.loc, f"'{word}' given twice", "keep one of them")
            seen.add(word)
            if word == "legacy":
                legacy = True
            elif word == "sendcert":
                send_cert = cur.choice("when to send", ("always", "ifasked", "never")).text
            else:
                path = cur.next(f"a file path after '{word}'")
                if path.kind is Kind.PUNCT or not path.text.startswith("/"):
                    cur.fail(
                        path.loc,
                        f"'{word}' wants an absolute file path, found {path.describe()}",
                        "write the file's full path on the nodes, e.g. "
                        '"/etc/ipsecd/partner-ca.pem"',
                    )
                paths[word] = path.text
        if ("cert" in paths) != ("key" in paths):
            cur.fail(
                kw.loc,
                "'cert' and 'key' go together: the certificate and its private key",
                "give both, or neither to use the node's own certificate",
            )
        return AuthSpec(
            "certificate",
            None,
            paths.get("ca"),
            paths.get("cert"),
            paths.get("key"),
            send_cert,
            legacy,
        )

    def _conn_ike(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        name, lifetime = self._proposal_ref(cur, "ike")
        st.ike_proposal = name
        if lifetime is not None:
            st.ike_lifetime = lifetime

    def _conn_esp(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        self._child(cur, st, "esp")

    def _conn_ah(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        self._child(cur, st, "ah")

    def _child(self, cur: Cursor, st: _ConnState, kind: str) -> None:
        name, lifetime = self._proposal_ref(cur, kind)
        st.protocols.append(IpsecProto(kind))
        if kind == "esp":
            st.child_proposal = name
        else:
            st.ah_proposal = name
        if lifetime is not None:
            st.child_lifetime = lifetime

    def _proposal_ref(self, cur: Cursor, kind: str) -> tuple[str | None, int | None]:
        name: str | None = None
        nxt = cur.peek_text()
        if nxt is not None and nxt not in _CONN_CLAUSES and nxt != "lifetime":
            tok = self._name(cur, f"an {kind} proposal name")
            name = tok.text
            self.builder.proposal_refs.append((kind, name, tok.loc))
        lifetime = None
        if cur.accept("lifetime"):
            lifetime = cur.value(cur.word("a lifetime"), parse_duration)
        return name, lifetime

    def _conn_dpd(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        tok = cur.word("a DPD interval or 'off'")
        st.dpd = 0 if tok.text == "off" else cur.value(tok, parse_duration)

    def _conn_priority(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        st.priority = cur.value(
            cur.word("a priority"), lambda t: parse_int(t, "priority", 0, 2**32 - 1)
        )

    def _conn_id(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        st.local_id = cur.choice("an identity kind", ("address", "name")).text

    def _conn_start(self, cur: Cursor, st: _ConnState, kw: Token) -> None:
        st.start = cur.choice("a start mode", _START_MODES).text

    # -- peers outside the cluster -------------------------------------------------
    def peer(self, cur: Cursor) -> None:
        name_tok = self._name(cur, "a peer name")
        name = name_tok.text
        addresses: list[Address] = []
        ike_id: str | None = None
        seen: dict[str, Loc] = {}
        block = cur.accept("{") is not None
        while not cur.at_end():
            if block and (cur.accept(";") or cur.accept("}")):
                continue
            kw = cur.choice("'address' or 'id'", ("address", "id"))
            if kw.text in seen:
                cur.fail(
                    kw.loc,
                    f"'{kw.text}' is given twice in peer '{name}'",
                    f"first at {seen[kw.text].short()}"
                    + ("; list the addresses with ','" if kw.text == "address" else ""),
                )
            seen[kw.text] = kw.loc
            if kw.text == "id":
                ike_id = self._ike_id(cur)
                continue
            for tok in self._list(cur, "an address"):
                addr = cur.value(tok, parse_address)
                if any(a.version == addr.version for a in addresses):
                    cur.fail(
                        tok.loc,
                        f"peer '{name}' has two IPv{addr.version} addresses",
                        "a peer has one address per address family (one IKE SA each)",
                    )
                addresses.append(addr)
        if not addresses:
            cur.fail(
                name_tok.loc,
                f"peer '{name}' has no address",
                f"add one: peer {name} {{ address 203.0.113.5; }}",
            )
        if name == "all":
            cur.fail(name_tok.loc, "'all' is the built-in group of every node",
                     "choose another name")  # fmt: skip
        if name in self.builder.peers:
            cur.fail(
                name_tok.loc,
                f"peer '{name}' is defined twice",
                f"first definition at {self.builder.peers[name].loc.short()}",
            )
        self.builder.peers[name] = Peer(name, tuple(addresses), ike_id, name_tok.loc)

    def _ike_id(self, cur: Cursor) -> str:
        """An IKE identity (RFC 7296 3.5) as text: an address, fqdn:NAME, keyid:HEX, or
        a quoted distinguished name (``dn:...``)."""
        tok = cur.next('an IKE identity (address, fqdn:NAME, keyid:HEX or "DN")')
        text = tok.text
        if tok.kind is Kind.STRING:
            if not text.strip():
                cur.fail(tok.loc, "empty distinguished name")
            if not _is_dn(text):
                cur.fail(
                    tok.loc,
                    f"'{text}' is not a distinguished name",
                    "write it as RFC 4514 text: TYPE=value pairs separated by commas, e.g. "
                    '"CN=gw.example.net, O=Example" (CN, O, OU, C, L, ST, DC, UID, ...)',
                )
            return "dn:" + text
        if tok.kind is not Kind.WORD:
            cur.fail(tok.loc, f"expected an IKE identity, found {tok.describe()}")
        if text.startswith("$"):
            raise Bail  # an undefined macro, already reported
        if text.startswith("fqdn:"):
            if not _FQDN.fullmatch(text[5:]):
                cur.fail(tok.loc, f"bad host name '{text[5:]}' in identity",
                         "write fqdn:gw1.example.net (letters, digits, '-' and '.')")  # fmt: skip
            return "fqdn:" + text[5:].lower()
        if text.startswith("keyid:"):
            digits = text[6:]
            if not digits or len(digits) % 2 or not _HEX.fullmatch(digits):
                cur.fail(tok.loc, f"bad key id '{digits}'",
                         "write keyid: followed by an even number of hex digits")  # fmt: skip
            return "keyid:" + digits.lower()
        try:
            return str(parse_address(text))
        except Problem:
            cur.fail(
                tok.loc,
                f"bad IKE identity '{text}'",
                'write an address, fqdn:NAME, keyid:HEX or a quoted "DN"',
            )

    # -- bypass / discard ------------------------------------------------------------
    def bypass(self, cur: Cursor) -> None:
        self._rule(cur, Action.ALLOW)

    def discard(self, cur: Cursor) -> None:
        self._rule(cur, Action.BLOCK)

    def _rule(self, cur: Cursor, action: Action) -> None:
        start = cur.tokens[0].loc
        r = _RuleState()
        nxt = cur.peek_text()
        if nxt is not None and (nxt in PROTOCOLS or nxt.isdigit()):
            r.proto = cur.value(cur.word("a protocol"), parse_protocol)
        while not cur.at_end():
            kw = cur.choice("a rule clause", _RULE_CLAUSES)
            if kw.text in r.seen:
                cur.fail(kw.loc, f"'{kw.text}' is given twice in this rule")
            r.seen.add(kw.text)
            self._rule_clause(cur, r, kw)
        if r.group is None:
            r.group = self.scope
        if r.either_port and (r.sport or r.dport):
            cur.fail(start, "use either 'port N' or 'from ... port'/'to ... port', not both")
        self.builder.rules.append(
            Rule(
                action,
                r.proto,
                r.src,
                r.sport,
                r.dst,
                r.dport,
                r.either_port,
                r.dirs,
                r.group,
                r.priority,
                r.icmp_type,
                r.icmp_code,
                start,
            )
        )

    def _rule_clause(self, cur: Cursor, r: _RuleState, kw: Token) -> None:
        if kw.text in ("from", "to"):
            tok = cur.word("any, @self or a prefix")
            net: str | Prefix = (
                tok.text if tok.text in ("any", "@self") else cur.value(tok, parse_prefix)
            )
            port = self._port(cur, r.proto) if cur.accept("port") else 0
            if kw.text == "from":
                r.src, r.sport = net, port
            else:
                r.dst, r.dport = net, port
        elif kw.text == "port":
            r.either_port = self._port(cur, r.proto)
        elif kw.text == "dir":
            dirs = self._list(cur, "in, out or fwd")
            for tok in dirs:
                if tok.text not in ("in", "out", "fwd"):
                    cur.fail(tok.loc, f"unknown direction '{tok.text}'", "use in, out or fwd")
            r.dirs = tuple(Direction(t.text) for t in dirs)
        elif kw.text == "on":
            tok = self._name(cur, "a node group")
            r.group = tok.text
            self.builder.group_refs.append((tok.text, tok.loc))
        elif kw.text == "priority":
            r.priority = cur.value(
                cur.word("a priority"), lambda t: parse_int(t, "priority", 0, 2**32 - 1)
            )
        elif kw.text == "type":
            if r.proto not in (1, 58):
                cur.fail(kw.loc, "'type' needs protocol icmp or icmp6")
            r.icmp_type = cur.value(
                cur.word("an ICMP type"), lambda t: parse_int(t, "ICMP type", 0, 255)
            )
            if cur.accept("code"):
                r.icmp_code = cur.value(
                    cur.word("an ICMP code"), lambda t: parse_int(t, "ICMP code", 0, 255)
                )

    # -- helpers -----------------------------------------------------------------
    def _name(self, cur: Cursor, what: str) -> Token:
        tok = cur.word(what)
        self._name_text(cur, tok)
        return tok

    def _name_text(self, cur: Cursor, tok: Token) -> str:
        if not _NAME.fullmatch(tok.text):
            cur.fail(
                tok.loc,
                f"bad name '{tok.text}'",
                "names are letters, digits, '_', '-' and '.', starting with a letter",
            )
        return tok.text

    def key(self, cur: Cursor, tok: Token, *, psk: bool = False) -> KeyMaterial:
        """A key: ``secret:NAME``, ``0xHEX`` or a quoted string (literal: needs mode 0600)."""
        if tok.kind is Kind.WORD and tok.text.startswith("secret:"):
            name = tok.text[len("secret:") :]
            if not _SECRET_NAME.fullmatch(name):
                cur.fail(
                    tok.loc,
                    f"bad secret name '{name}'",
                    "secret names are letters, digits, '_', '-' and '.'",
                )
            return SecretRef(name)
        if tok.kind is Kind.STRING:
            if not tok.text:
                cur.fail(tok.loc, "empty key")
            self.builder.literal_keys.append(tok.loc)
            return Secret(tok.text.encode())
        if tok.kind is Kind.WORD and tok.text.lower().startswith("0x"):
            self.builder.literal_keys.append(tok.loc)
            return Secret(cur.value(tok, parse_hex_key))
        what = "pre-shared key" if psk else "key"
        cur.fail(
            tok.loc,
            f"expected a {what}, found {tok.describe()}",
            'write secret:NAME, a quoted "string" or 0x followed by hex digits',
        )


def _is_dn(text: str) -> bool:
    """RFC 4514 text, with blanks after the commas allowed (as strongSwan writes DNs)."""
    for candidate in (text, re.sub(r",\s+", ",", text)):
        try:
            name = x509.Name.from_rfc4514_string(candidate)
        except ValueError:
            continue
        return len(name) > 0
    return False


@dataclass
class _ConnState:
    name: str
    loc: Loc
    a_group: str | None = None
    b_group: str | None = None
    traffic: list[TrafficSpec] = field(default_factory=list)
    mode: Mode = Mode.TRANSPORT
    protocols: list[IpsecProto] = field(default_factory=list)
    level: Level = Level.REQUIRE
    auth: AuthSpec = field(default_factory=AuthSpec)
    ike_proposal: str | None = None
    ike_lifetime: int = 4 * 3600
    child_proposal: str | None = None
    ah_proposal: str | None = None
    child_lifetime: int = 3600
    dpd: int = 30
    priority: int | None = None
    local_id: str = "address"
    tunnel: Tunnel | None = None
    start: str = "eager"
    locs: dict[str, Loc] = field(default_factory=dict)

    def build(self) -> Connection:
        protocols = tuple(dict.fromkeys(self.protocols)) or (IpsecProto.ESP,)
        if IpsecProto.AH in protocols and IpsecProto.ESP in protocols:
            protocols = (IpsecProto.ESP, IpsecProto.AH)  # setkey order: inner first
        assert self.a_group is not None and self.b_group is not None
        tunnel = self.tunnel
        if self.mode is Mode.TUNNEL and tunnel is None:
            tunnel = Tunnel()
        return Connection(
            self.name,
            self.a_group,
            self.b_group,
            tuple(self.traffic) or (TrafficSpec(),),
            self.mode,
            protocols,
            self.level,
            self.auth,
            self.ike_proposal,
            self.ike_lifetime,
            self.child_proposal,
            self.ah_proposal,
            self.child_lifetime,
            self.dpd,
            self.priority,
            self.local_id,
            tunnel,
            self.loc,
            dict(self.locs),
            start=self.start,
        )


@dataclass
class _RuleState:
    proto: int = 0
    src: str | Prefix = "any"
    sport: int = 0
    dst: str | Prefix = "any"
    dport: int = 0
    either_port: int = 0
    dirs: tuple[Direction, ...] = (Direction.IN, Direction.OUT)
    group: str | None = None
    priority: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    seen: set[str] = field(default_factory=set)


_CONN_CLAUSES = (
    "between",
    "traffic",
    "mode",
    "tunnel",
    "level",
    "auth",
    "ike",
    "esp",
    "ah",
    "dpd",
    "priority",
    "id",
    "start",
)
_START_MODES = ("eager", "ondemand", "passive")
#: Statement words added after files with macros of the same name existed: such a
#: macro is still accepted (``NAME = ...`` is told apart by its '=').
_LATER_KEYWORDS = frozenset({"peer"})
_FQDN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*\.?")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_RULE_CLAUSES = ("from", "to", "port", "dir", "on", "priority", "type")

_ONOFF = ("on", "off")
_DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "def_policy": ("discard", "none"),
    "esp_trans_deflev": ("use", "require"),
    "esp_net_deflev": ("use", "require"),
    "ah_trans_deflev": ("use", "require"),
    "ah_net_deflev": ("use", "require"),
    "dfbit": ("clear", "set", "copy"),
    "ecn": _ONOFF,
    "log": ("unmatched", "none"),
    "debug": _ONOFF,
    "message": ("quiet", "default", "verbose"),
    "socket_policy": ("bypass", "entrust"),
}
_DEFAULT_ALIASES = {"policy": "def_policy", "message_level": "message"}


def _default_value(key: str, text: str) -> object:
    if key in ("ecn", "debug"):
        return text == "on"
    if key == "log":
        return text == "unmatched"
    return text


def _transform_slot(part: str, kind: str) -> tuple[dict[str, AlgInfo] | None, str]:
    tables: list[tuple[dict[str, AlgInfo], str]] = [
        (IKE_ENC, "enc"),
        (IKE_INTEG, "integ"),
        (IKE_DH, "dh"),
    ]
    if kind == "ike":
        tables.append((IKE_PRF, "prf"))
    for table, slot in tables:
        if part in table:
            return table, slot
    return None, ""


def _transform_hint(kind: str) -> str:
    if kind == "ike":
        return "e.g. aes256gcm16-prfsha384-ecp384 or aes256-sha256-modp3072"
    if kind == "ah":
        return "e.g. sha256"
    return "e.g. aes256gcm16 or aes256-sha256 (add -ecp256 etc. for PFS)"


def _suggest(word: str) -> str:
    known = sorted(set(_HANDLERS) | set(setkey.HANDLERS))
    close = [k for k in known if k.startswith(word[:3])] if len(word) >= 3 else []
    if close:
        return "did you mean " + " or ".join(f"'{k}'" for k in close[:3]) + "?"
    return "statements: " + ", ".join(k for k in known if k not in setkey.QUIET)


_HANDLERS: dict[str, Callable[[Parser, Cursor], None]] = {
    "defaults": Parser.defaults,
    "proposal": Parser.proposal,
    "nodes": Parser.nodes,
    "connection": Parser.connection,
    "peer": Parser.peer,
    "bypass": Parser.bypass,
    "discard": Parser.discard,
    "on": Parser.on,
    "sa": setkey.native_sa,
}
STATEMENT_WORDS.update(_HANDLERS, setkey.HANDLERS)
