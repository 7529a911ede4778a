"""strongSwan ``swanctl.conf`` -> SPD.

The file is strongSwan's settings syntax: ``name { ... }`` sections, ``key = value``
settings (the value runs to the end of the line unless quoted), ``#`` comments,
``include`` lines and section templates (``name : other { ... }``).  Each connection's
``remote_addrs`` becomes a ``peer``, each of its children an SPD ``connection``
between the converted host (a node group) and that peer; ``secrets { ike... }``
become ``secret:NAME`` values.  Children with ``mode = pass``/``drop`` become
``bypass``/``discard`` rules.  docs/spd.md, "Converting from strongSwan, Libreswan and
setkey", has the mapping table.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..model import Address, Prefix
from .common import (
    ConnSpec,
    Conversion,
    ConvertError,
    ConvertOptions,
    Identity,
    Names,
    PeerSpec,
    Report,
    RuleSpec,
    Selector,
    Writer,
    decode_secret,
    finish,
    has_ports,
    parse_identity,
    parse_net,
    parse_port,
    parse_priority,
    parse_proto,
    parse_time,
)
from .proposals import translate

__all__ = ["convert_swanctl", "parse_settings"]

FORMAT = "swanctl"
LABEL = "strongSwan swanctl.conf"
#: Sections within sections, and templates of templates (swanctl.conf needs 4 levels).
MAX_DEPTH = 32


# -- the settings syntax ------------------------------------------------------------------------


@dataclass
class Setting:
    key: str
    value: str
    line: int


@dataclass
class Section:
    name: str
    line: int
    parents: list[str] = field(default_factory=list)
    settings: dict[str, Setting] = field(default_factory=dict)
    sections: dict[str, Section] = field(default_factory=dict)
    includes: list[Setting] = field(default_factory=list)
    template: bool = False  # another section inherits from it (``name : this``)
    resolved: bool = False  # its templates are merged in

    def get(self, key: str, default: str | None = None) -> str | None:
        s = self.settings.get(key)
        return s.value if s is not None else default

    def line_of(self, key: str) -> int:
        s = self.settings.get(key)
        return s.line if s is not None else self.line


_STOP = set(" \t\r\n{}=:#,")


class _Scanner:
    def __init__(self, text: str, filename: str) -> None:
        self.text = text
        self.filename = filename
        self.pos = 0
        self.line = 1

    def error(self, message: str, line: int | None = None) -> ConvertError:
        return ConvertError(message, self.filename, line or self.line)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, newlines: bool = True) -> None:
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif ch == "\n" and newlines:
                self.line += 1
                self.pos += 1
            elif ch in " \t\r":
                self.pos += 1
            else:
                return

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _STOP:
            self.pos += 1
        return self.text[start : self.pos]

    def rest_of_line(self) -> str:
        """An unquoted value: up to the end of the line, a comment or a brace."""
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in "\n#{}":
            self.pos += 1
        return self.text[start : self.pos].strip()

    def quoted(self) -> str:
        """A ``"..."`` value; it may span lines and holds C-like escapes."""
        start_line = self.line
        self.pos += 1
        out: list[str] = []
        escapes = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == '"':
                return "".join(out)
            if ch == "\n":
                self.line += 1
            if ch == "\\" and self.pos < len(self.text):
                nxt = self.text[self.pos]
                self.pos += 1
                if nxt == "\n":
                    self.line += 1
                    continue
                out.append(escapes.get(nxt, "\\" + nxt))
                continue
            out.append(ch)
        raise self.error("unterminated quoted string", start_line)


def parse_settings(text: str, filename: str) -> Section:
    """The section tree of a strongSwan settings file (raises :class:`ConvertError`)."""
    sc = _Scanner(text, filename)
    root = Section("", 0)
    stack = [root]
    while True:
        sc.skip()
        ch = sc.peek()
        if not ch:
            break
        if ch == "}":
            if len(stack) == 1:
                raise sc.error("'}' without a section to close")
            stack.pop()
            sc.pos += 1
            continue
        line = sc.line
        name = sc.word()
        if not name:
            raise sc.error(f"unexpected '{ch}'")
        sc.skip(newlines=False)
        nxt = sc.peek()
        current = stack[-1]
        if nxt == "=":
            sc.pos += 1
            sc.skip(newlines=False)
            value = sc.quoted() if sc.peek() == '"' else sc.rest_of_line()
            current.settings[name] = Setting(name, value, line)
            continue
        if name == "include" and nxt not in ("{", ":", ""):
            current.includes.append(Setting(name, sc.rest_of_line(), line))
            continue
        parents: list[str] = []
        if nxt == ":":
            sc.pos += 1
            while True:
                sc.skip()
                parent = sc.word()
                if not parent:
                    raise sc.error(f"section '{name}': a template name must follow ':'")
                parents.append(parent)
                sc.skip()
                if sc.peek() != ",":
                    break
                sc.pos += 1
        sc.skip()
        if sc.peek() != "{":
            raise sc.error(
                f"'{name}' is neither 'key = value' nor a section 'name {{ ... }}'", line
            )
        sc.pos += 1
        section = current.sections.get(name)
        if section is None:
            section = current.sections[name] = Section(name, line)
        section.parents += parents
        stack.append(section)
        if len(stack) > MAX_DEPTH:
            raise sc.error(f"sections nested deeper than {MAX_DEPTH}", line)
    if len(stack) > 1:
        raise ConvertError(f"section '{stack[-1].name}' is never closed", filename, stack[-1].line)
    _resolve_templates(root, root, filename)
    return root


def _find(root: Section, scope: Section, path: str) -> tuple[Section, Section] | None:
    """The section a template reference names, and the section that holds it: a full
    path from the top (``connections.base``), else a sibling (``base``)."""
    container, node = root, root
    for part in path.split("."):
        found = node.sections.get(part)
        if found is None:
            break
        container, node = node, found
    else:
        return node, container
    sibling = scope.sections.get(path)
    return (sibling, scope) if sibling is not None else None


def _resolve_templates(root: Section, sec: Section, filename: str) -> None:
    """Merge ``name : parent`` templates into the sections below ``sec``."""
    for child in list(sec.sections.values()):
        _resolve_one(root, sec, child, filename, [])
        _resolve_templates(root, child, filename)


def _resolve_one(
    root: Section, scope: Section, sec: Section, filename: str, seen: list[str]
) -> None:
    """Merge the templates of ``sec`` (held by ``scope``) into it, templates of
    templates first; its own settings and subsections win."""
    if sec.resolved:
        return
    for parent_name in sec.parents:
        if len(seen) >= MAX_DEPTH:
            raise ConvertError(f"section '{sec.name}': templates nested deeper than "
                               f"{MAX_DEPTH}", filename, sec.line)  # fmt: skip
        found = _find(root, scope, parent_name)
        if found is None or found[0] is sec or parent_name in seen:
            raise ConvertError(f"section '{sec.name}': template '{parent_name}' "
                               "is not defined (or refers to itself)", filename,
                               sec.line)  # fmt: skip
        parent, holder = found
        _resolve_one(root, holder, parent, filename, [*seen, parent_name])
        _resolve_templates(root, parent, filename)
        _inherit(sec, parent)
        parent.template = True
    sec.parents = []
    sec.resolved = True


def _inherit(child: Section, parent: Section) -> None:
    for key, setting in parent.settings.items():
        child.settings.setdefault(key, setting)
    for name, sub in parent.sections.items():
        mine = child.sections.get(name)
        if mine is None:
            copy = Section(sub.name, sub.line)
            _inherit(copy, sub)
            child.sections[name] = copy
        else:
            _inherit(mine, sub)


# -- conversion ------------------------------------------------------------------------------


def convert_swanctl(
    text: str, filename: str = "swanctl.conf", options: ConvertOptions | None = None
) -> Conversion:
    """Convert a ``swanctl.conf``; raises :class:`ConvertError` when it does not parse."""
    options = options or ConvertOptions()
    root = parse_settings(text, filename)
    report = Report()
    writer = Writer(filename, LABEL, options)
    ctx = _Ctx(filename, options, report, writer)
    ctx.includes(root)
    for key, s in root.settings.items():
        report.warn(filename, s.line, f"top-level setting '{key}' is not carried")
    for name, sec in root.sections.items():
        if name not in ("connections", "secrets"):
            why = _TOP_SECTIONS.get(name, "not a swanctl.conf section the SPD carries")
            report.warn(filename, sec.line, f"section '{name}' is not carried: {why}")
    ctx.read_secrets(root.sections.get("secrets"))
    conns = root.sections.get("connections")
    if conns is None or not conns.sections:
        report.warn(filename, conns.line if conns else 0, "no connections to convert")
    else:
        for key, s in conns.settings.items():
            report.warn(filename, s.line, f"setting 'connections.{key}' is not carried")
        for conn in conns.sections.values():
            ctx.connection(conn)
    ctx.unused_secrets()
    return finish(FORMAT, writer, report)


_TOP_SECTIONS = {
    "pools": "virtual IP address pools (IKE configuration payloads) have no SPD equivalent",
    "authorities": "certification authority settings (CRL/OCSP URIs) have no SPD equivalent",
}


@dataclass
class _Psk:
    section: str
    line: int
    ids: list[Identity]
    value: bytes = field(repr=False)
    name: str | None = None  # the secret name, once a connection uses it


@dataclass
class _Round:
    auth: str
    ident: Identity | None
    sec: Section | None


class _Ctx:
    def __init__(
        self, filename: str, options: ConvertOptions, report: Report, writer: Writer
    ) -> None:
        self.filename = filename
        self.options = options
        self.report = report
        self.writer = writer
        self.psks: list[_Psk] = []
        self.secret_names = Names()

    def warn(self, line: int, message: str) -> None:
        self.report.warn(self.filename, line, message)

    def includes(self, sec: Section) -> None:
        for inc in sec.includes:
            self.warn(
                inc.line,
                f"'include {inc.value}' is not followed: convert that file "
                "separately (or paste it here)",
            )
        for sub in sec.sections.values():
            self.includes(sub)

    # -- secrets ---------------------------------------------------------------------------
    def read_secrets(self, sec: Section | None) -> None:
        if sec is None:
            return
        for name, sub in sec.sections.items():
            if not name.startswith("ike"):
                kind = name.rstrip("0123456789-_").split("-")[0] or name
                self.warn(
                    sub.line,
                    f"secret '{name}' ({kind}) is not carried: only ike "
                    "pre-shared keys are; certificates and keys are files named by "
                    "'auth certificate'",
                )
                continue
            value_s = sub.settings.get("secret")
            value = decode_secret(value_s.value) if value_s is not None else None
            if value is None:
                self.warn(sub.line, f"secret '{name}' has no usable 'secret' value; skipped")
                continue
            ids = [
                parse_identity(s.value, "strongswan")
                for key, s in sub.settings.items()
                if key.startswith("id")
            ]
            self.psks.append(_Psk(name, sub.line, ids, value))

    def psk_for(self, local: list[str], remote: list[str]) -> _Psk | None:
        """The best ``ike`` secret for these identities, as charon chooses it: both
        identities listed beats one, one beats a secret without identities."""
        best: tuple[int, _Psk | None] = (0, None)
        for psk in self.psks:
            keys = {i.key for i in psk.ids}
            if not keys:
                score = 1
            else:
                score = (2 if keys & set(local) else 0) + (2 if keys & set(remote) else 0)
                if "%any" in keys:
                    score = max(score, 1)
            if score > best[0]:
                best = (score, psk)
        return best[1]

    def unused_secrets(self) -> None:
        for psk in self.psks:
            if psk.name is None:
                self.warn(
                    psk.line,
                    f"secret '{psk.section}' is used by no converted connection; not carried",
                )

    # -- connections -----------------------------------------------------------------------
    def connection(self, conn: Section) -> None:
        name = conn.name
        children = conn.sections.get("children")
        if conn.template and (children is None or not children.sections):
            return  # only a template for other connections (``name : this``)
        for key, s in conn.settings.items():
            if key not in _CONN_KEYS:
                self._unhandled(key, s, _CONN_WHY, _CONN_QUIET, f"connection '{name}'")
        version = conn.get("version", "0")
        if version == "1":
            self.warn(
                conn.line_of("version"),
                f"connection '{name}' is IKEv1: ipsecd speaks "
                "IKEv2 only; converted as IKEv2 (the peer must use IKEv2 too)",
            )
        for key in ("local_port", "remote_port"):
            port = conn.get(key)
            if port is not None and port.strip() != "500":
                self.warn(
                    conn.line_of(key),
                    f"{key} = {port} is not carried: ipsecd uses "
                    "UDP port 500 (and 4500 behind NAT)",
                )
        local_addrs = self._local_addrs(conn)
        remote = self._remote_addrs(conn)
        local_round, remote_round = self._round(conn, "local"), self._round(conn, "remote")
        if children is None or not children.sections:
            self.warn(
                conn.line, f"connection '{name}' has no children: nothing to protect; not converted"
            )
            return
        ipsec_children = [
            c for c in children.sections.values() if c.get("mode", "tunnel") not in ("pass", "drop")
        ]
        for child in children.sections.values():
            if child.get("mode", "tunnel") in ("pass", "drop"):
                self._shunt(conn, child, local_addrs, remote)
        if not ipsec_children:
            return
        if not remote:
            what = conn.get("remote_addrs", "%any")
            self.warn(
                conn.line_of("remote_addrs"),
                f"connection '{name}': remote_addrs = "
                f"{what} names no address; a peer needs one (responders for any address, "
                "such as road warriors, cannot be carried); not converted",
            )
            return
        peer_id = self._peer_id(conn, remote_round)
        peer = PeerSpec(name, remote, peer_id, f"{self.filename}:{conn.line} connection {name}")
        base = self._base(conn, local_addrs, remote, local_round, remote_round)
        if base is None:
            return
        if len(ipsec_children) > 1:
            self.warn(
                children.line,
                f"connection '{name}' has {len(ipsec_children)} children: "
                "each becomes its own SPD connection, with its own IKE SA (strongSwan "
                "shares one)",
            )
        for child in ipsec_children:
            self._child(conn, child, base, peer, local_addrs, remote, len(ipsec_children))

    def _unhandled(
        self,
        key: str,
        s: Setting,
        why: dict[str, str],
        quiet: dict[str, tuple[str, ...]],
        where: str,
    ) -> None:
        value = s.value.strip().lower()
        if value in quiet.get(key, ()):
            return
        reason = why.get(key, "not a setting the SPD carries")
        self.warn(s.line, f"{where}: '{key} = {s.value.strip()}' is not carried: {reason}")

    def _addresses(self, conn: Section, key: str) -> list[Address]:
        out: list[Address] = []
        raw = conn.get(key)
        if raw is None:
            return out
        for item in (x.strip() for x in raw.split(",")):
            if not item or item.lower() in ("%any", "%any4", "%any6"):
                continue
            try:
                addr = ipaddress.ip_address(item)
            except ValueError:
                self.warn(
                    conn.line_of(key),
                    f"connection '{conn.name}': {key} entry "
                    f"'{item}' is not an IP address (host names, ranges and subnets are "
                    "not carried)",
                )
                continue
            if any(a.version == addr.version for a in out):
                self.warn(
                    conn.line_of(key),
                    f"connection '{conn.name}': {key} entry "
                    f"'{item}': only the first IPv{addr.version} address is carried",
                )
                continue
            out.append(addr)
        return out

    def _local_addrs(self, conn: Section) -> list[Address]:
        addrs = self._addresses(conn, "local_addrs")
        for a in addrs:
            self.writer.add_local_address(a)
        return addrs

    def _remote_addrs(self, conn: Section) -> list[Address]:
        addrs = self._addresses(conn, "remote_addrs")
        if len(addrs) > 1:
            self.warn(
                conn.line_of("remote_addrs"),
                f"connection '{conn.name}': the peer has "
                "an IPv4 and an IPv6 address: ipsecd runs one IKE SA per family, "
                "strongSwan one IKE SA to the first address that answers",
            )
        return addrs

    def _round(self, conn: Section, side: str) -> _Round:
        """The first authentication round of ``side`` (``local<suffix>`` sections, in
        ``round`` order); the others are reported."""
        secs = [s for n, s in conn.sections.items() if n.startswith(side)]

        def order(s: Section) -> tuple[int, str]:
            r = (s.get("round", "0") or "0").strip()
            return (int(r) if r.isdigit() else 0, s.name)

        secs.sort(key=order)
        if not secs:
            return _Round("pubkey", None, None)
        for extra in secs[1:]:
            self.warn(
                extra.line,
                f"connection '{conn.name}': authentication round "
                f"'{extra.name}' (auth = {extra.get('auth', 'pubkey')}) is not carried: "
                "ipsecd authenticates in one round",
            )
        first = secs[0]
        ident = first.get("id")
        return _Round(
            (first.get("auth", "pubkey") or "pubkey").strip().lower(),
            parse_identity(ident, "strongswan") if ident is not None else None,
            first,
        )

    def _peer_id(self, conn: Section, r: _Round) -> str | None:
        ident = r.ident
        line = r.sec.line_of("id") if r.sec is not None else conn.line
        if ident is None or ident.kind == "any":
            if _auth_kind(r.auth) == "certificate":
                self.warn(
                    line,
                    f"connection '{conn.name}': no remote id (strongSwan accepts "
                    "any identity its CA vouches for): the SPD expects the peer's address "
                    "as its identity; add 'id' to the peer",
                )
            return None
        if "*" in ident.text:
            self.warn(
                line,
                f"connection '{conn.name}': wildcard remote id '{ident.text}' is "
                "not carried: a peer has one exact identity",
            )
            return None
        if ident.spd is None:
            self.warn(
                line,
                f"connection '{conn.name}': remote id '{ident.text}' is not "
                f"carried: {ident.problem}; the SPD expects the peer's address",
            )
            return None
        return ident.spd

    def _base(
        self,
        conn: Section,
        local_addrs: list[Address],
        remote: list[Address],
        lround: _Round,
        rround: _Round,
    ) -> ConnSpec | None:
        """What all children of ``conn`` share: auth, IKE proposals and lifetime, DPD."""
        name = conn.name
        spec = ConnSpec(name, "", PeerSpec(name, remote, None, ""))
        lauth, rauth = _auth_kind(lround.auth), _auth_kind(rround.auth)
        for r, kind, side in ((lround, lauth, "local"), (rround, rauth, "remote")):
            line = r.sec.line_of("auth") if r.sec is not None else conn.line
            if kind is None:
                self.warn(
                    line,
                    f"connection '{name}': {side} auth = {r.auth} is not carried: "
                    f"{_AUTH_WHY.get(r.auth.split('-')[0], 'unknown method')}; "
                    "not converted",
                )
                return None
            if r.auth not in ("psk", "pubkey"):
                self.warn(
                    line,
                    f"connection '{name}': {side} auth = {r.auth}: the signature "
                    "scheme is not carried (ipsecd signs per RFC 7427)",
                )
        if lauth != rauth:
            self.warn(
                conn.line,
                f"connection '{name}': local auth {lround.auth} and "
                f"remote auth {rround.auth} differ: the SPD has one method for "
                f"both; converted as {lauth}",
            )
        spec.auth = lauth or "certificate"
        self._local_id(conn, lround, local_addrs, spec)
        if spec.auth == "psk":
            self._psk(conn, lround, rround, local_addrs, remote, spec)
        else:
            self._certs(conn, lround, rround, spec)
        props = conn.settings.get("proposals")
        if props is not None:
            tr = translate(props.value, "ike", "strongswan")
            self._translated(props.line, name, tr.warnings, tr.notes)
            spec.ike = tr.transforms
        rekey = self._duration(conn, "rekey_time", name)
        over = self._duration(conn, "over_time", name)
        if rekey == 0:
            self.warn(
                conn.line_of("rekey_time"),
                f"connection '{name}': rekey_time = 0 (no "
                "IKE rekeying) is not carried: ipsecd rekeys at 90% of the lifetime",
            )
        elif rekey is not None:
            spec.ike_lifetime = rekey + (over if over is not None else rekey // 10)
        elif over is not None:
            spec.ike_lifetime = 4 * 3600 + over
        dpd = self._duration(conn, "dpd_delay", name)
        spec.dpd = dpd if dpd is not None else 0  # strongSwan's default: no DPD
        # strongSwan's default is ifasked: carried as such (the SPD's default is always)
        send = (conn.get("send_cert") or "ifasked").strip().lower()
        if send in ("always", "ifasked", "never"):
            spec.send_cert = send
        else:
            self.warn(
                conn.line_of("send_cert"), f"connection '{name}': send_cert = {send} is not carried"
            )
        return spec

    def _duration(self, sec: Section, key: str, where: str) -> int | None:
        seconds = _time(sec, key)
        if seconds == -1:
            self.warn(sec.line_of(key), f"{where}: {key} = {sec.get(key)} is not a duration; "
                      "not carried")  # fmt: skip
            return None
        return seconds

    def _translated(self, line: int, name: str, warnings: list[str], notes: list[str]) -> None:
        for w in warnings:
            self.warn(line, f"connection '{name}': {w}")
        for n in notes:
            self.report.note(f"{self.filename}:{line}: {n}")

    def _local_id(
        self, conn: Section, r: _Round, local_addrs: list[Address], spec: ConnSpec
    ) -> None:
        ident = r.ident
        line = r.sec.line_of("id") if r.sec is not None else conn.line
        if ident is None or ident.kind == "any":
            if spec.auth == "certificate":
                self.warn(
                    line,
                    f"connection '{conn.name}': no local id: strongSwan "
                    "identifies with the certificate's subject, ipsecd with the node's "
                    "address ('id address'); the peer's remote id must allow it",
                )
            return
        if ident.kind == "address" and any(str(a) == ident.spd for a in local_addrs):
            return
        nodes = self.options.nodes
        if len(nodes) == 1 and ident.key in (f"fqdn:{nodes[0].lower()}", nodes[0].lower()):
            spec.local_id = "name"
            return
        self.warn(
            line,
            f"connection '{conn.name}': local id '{ident.text}' is not carried: a "
            "node identifies as its address ('id address') or its node name ('id "
            "name', with --node NAME); the peer's remote id must change",
        )

    def _psk(
        self,
        conn: Section,
        local: _Round,
        remote: _Round,
        local_addrs: list[Address],
        remote_addrs: list[Address],
        spec: ConnSpec,
    ) -> None:
        lkeys = [str(a) for a in local_addrs] + ([local.ident.key] if local.ident else [])
        rkeys = [str(a) for a in remote_addrs] + ([remote.ident.key] if remote.ident else [])
        psk = self.psk_for(lkeys, rkeys)
        if psk is None:
            spec.psk = self.secret_names.get(f"{conn.name}-psk", "psk")
            self.warn(
                conn.line,
                f"connection '{conn.name}': no ike secret in this file "
                "matches its identities: the SPD names secret:"
                f"{spec.psk}; put the key in the secrets file",
            )
            return
        if psk.name is None:
            psk.name = self.secret_names.get(psk.section, "psk")
            self.writer.secrets[psk.name] = psk.value
        spec.psk = psk.name

    def _certs(self, conn: Section, local: _Round, remote: _Round, spec: ConnSpec) -> None:
        base = self.options.swanctl_dir.rstrip("/")
        name = conn.name
        if local.sec is not None:
            certs = _list(local.sec.get("certs"))
            if certs:
                self.warn(
                    local.sec.line_of("certs"),
                    f"connection '{name}': local certs = "
                    f"{', '.join(certs)} is not carried: swanctl finds the private key "
                    "by matching it in private/, the SPD needs both files; without "
                    "'cert PATH key PATH' the node uses its own certificate, so the peer "
                    "must trust the cluster CA",
                )
            for key in ("pubkeys", "cert_policy", "groups", "eap_id", "aaa_id", "xauth_id"):
                if key in local.sec.settings:
                    self.warn(
                        local.sec.line_of(key), f"connection '{name}': local {key} is not carried"
                    )
        if remote.sec is None:
            return
        cas = _list(remote.sec.get("cacerts"))
        if cas:
            spec.ca = _path(cas[0], f"{base}/x509ca")
            if len(cas) > 1:
                self.warn(
                    remote.sec.line_of("cacerts"),
                    f"connection '{name}': only the first "
                    f"of cacerts = {', '.join(cas)} is carried: put all of them into one "
                    "PEM file for 'ca'",
                )
        else:
            self.warn(
                remote.sec.line,
                f"connection '{name}': no remote cacerts: strongSwan "
                "trusts every CA in x509ca/, the SPD the cluster CA unless 'ca PATH' "
                "names the peer's",
            )
        for key in ("certs", "pubkeys", "ca_id", "cert_policy", "groups", "revocation", "eap_id"):
            if key in remote.sec.settings:
                value = remote.sec.get(key, "")
                if key == "revocation" and (value or "").strip() == "relaxed":
                    continue
                self.warn(
                    remote.sec.line_of(key),
                    f"connection '{name}': remote {key} = {value} is not carried",
                )

    # -- children ----------------------------------------------------------------------------
    def _child(
        self,
        conn: Section,
        child: Section,
        base: ConnSpec,
        peer: PeerSpec,
        local_addrs: list[Address],
        remote: list[Address],
        count: int,
    ) -> None:
        where = f"connection '{conn.name}' child '{child.name}'"
        for key, s in child.settings.items():
            if key not in _CHILD_KEYS:
                self._unhandled(key, s, _CHILD_WHY, _CHILD_QUIET, where)
        mode = (child.get("mode") or "tunnel").strip().lower()
        if mode not in ("tunnel", "transport"):
            self.warn(
                child.line_of("mode"),
                f"{where}: mode = {mode} is not carried (only "
                "tunnel, transport, pass and drop are); not converted",
            )
            return
        hint = conn.name if count == 1 or child.name == conn.name else f"{conn.name}-{child.name}"
        spec = ConnSpec(
            hint,
            f"{self.filename}:{child.line} connection {conn.name}, child {child.name}",
            peer,
            mode=mode,
            auth=base.auth,
            psk=base.psk,
            ca=base.ca,
            cert=base.cert,
            key=base.key,
            send_cert=base.send_cert,
            ike=base.ike,
            ike_lifetime=base.ike_lifetime,
            dpd=base.dpd,
            local_id=base.local_id,
        )
        spec.traffic = self._traffic(conn, child, mode, local_addrs, remote, where)
        if not spec.traffic:
            self.warn(
                child.line, f"{where}: no traffic selector pair left to protect; not converted"
            )
            return
        esp, ah = child.settings.get("esp_proposals"), child.settings.get("ah_proposals")
        if ah is not None:
            spec.protocols = ("ah",)
            tr = translate(ah.value, "ah", "strongswan")
            self._translated(ah.line, conn.name, tr.warnings, tr.notes)
            spec.ah = tr.transforms
            if esp is not None:
                self.warn(
                    esp.line,
                    f"{where}: esp_proposals are ignored when ah_proposals are "
                    "set (as strongSwan does): the child uses AH",
                )
        elif esp is not None:
            tr = translate(esp.value, "esp", "strongswan")
            self._translated(esp.line, conn.name, tr.warnings, tr.notes)
            spec.esp = tr.transforms
        rekey = self._duration(child, "rekey_time", where)
        life = self._duration(child, "life_time", where)
        if life is not None and life > 0:
            spec.child_lifetime = life
        elif life is not None or rekey == 0:
            key = "life_time" if life is not None else "rekey_time"
            self.warn(
                child.line_of(key),
                f"{where}: {key} = {child.get(key)} (no rekeying) is not carried: ipsecd "
                "rekeys at 90% of the lifetime",
            )
        elif rekey is not None:
            spec.child_lifetime = rekey + rekey // 10  # strongSwan: life_time = 110% rekey
        spec.start = self._start(child, where)
        prio = child.get("priority")
        if prio is not None and prio.strip() not in ("", "0"):
            spec.priority = parse_priority(prio)
            if spec.priority is None:
                self.warn(
                    child.line_of("priority"),
                    f"{where}: priority = {prio} is not a number from 1 to 4294967295; not carried",
                )
        self._eager_check(spec, local_addrs, remote, child, where)
        self.writer.conns.append(spec)

    def _start(self, child: Section, where: str) -> str:
        actions = {a.strip() for a in (child.get("start_action") or "none").lower().split("|")}
        if "start" in actions:
            return "eager"
        if "trap" in actions:
            return "ondemand"
        if not actions <= {"none", ""}:
            self.warn(
                child.line_of("start_action"),
                f"{where}: start_action = "
                f"{child.get('start_action')} is not carried; converted as passive",
            )
        return "passive"

    def _eager_check(
        self,
        spec: ConnSpec,
        local_addrs: list[Address],
        remote: list[Address],
        child: Section,
        where: str,
    ) -> None:
        if spec.start != "eager" or self.options.nodes:
            return
        for mine in local_addrs:
            theirs = next((a for a in remote if a.version == mine.version), None)
            if theirs is not None and int(mine) > int(theirs):
                self.warn(
                    child.line_of("start_action"),
                    f"{where}: start_action = start: the "
                    f"peer {theirs} has the lower address, so with 'start eager' ipsecd "
                    "waits for it to initiate (docs/spd.md, connection 'start'); use "
                    "'start ondemand' to initiate on traffic",
                )
                return

    def _traffic(
        self,
        conn: Section,
        child: Section,
        mode: str,
        local_addrs: list[Address],
        remote: list[Address],
        where: str,
    ) -> list[tuple[Selector, Selector]]:
        lsel = self._selectors(child, "local_ts", mode, local_addrs, where)
        rsel = self._selectors(child, "remote_ts", mode, remote, where)
        self.report.charge_pairs(len(lsel) * len(rsel), self.filename, child.line)
        pairs: list[tuple[Selector, Selector]] = []
        for ls in lsel:
            for rs in rsel:
                if ls.net is not None and rs.net is not None and ls.net.version != rs.net.version:
                    continue
                if ls.proto and rs.proto and ls.proto != rs.proto:
                    self.warn(
                        child.line,
                        f"{where}: selectors with protocol {ls.proto} and "
                        f"{rs.proto} never match together; pair skipped",
                    )
                    continue
                proto = ls.proto or rs.proto
                pair = (Selector(ls.net, proto, ls.port), Selector(rs.net, proto, rs.port))
                if pair not in pairs:
                    pairs.append(pair)
        return pairs

    def _selectors(
        self, child: Section, key: str, mode: str, hosts: list[Address], where: str
    ) -> list[Selector]:
        raw = child.get(key) or "dynamic"
        line = child.line_of(key)
        out: list[Selector] = []
        for item in _list(raw):
            sel = _ts(item)
            if isinstance(sel, str):
                self.warn(line, f"{where}: {key} entry '{item}' is not carried: {sel}")
                continue
            for one in sel:
                s = self._narrow(one, mode, hosts, key, item, line, where)
                if s is not None and s not in out:
                    out.append(s)
        return out

    def _narrow(
        self,
        s: Selector,
        mode: str,
        hosts: list[Address],
        key: str,
        item: str,
        line: int,
        where: str,
    ) -> Selector | None:
        if s.port and not has_ports(s.proto):
            self.warn(
                line,
                f"{where}: {key} entry '{item}': a port without TCP, UDP or SCTP "
                "is not carried (the SPD needs the protocol); the port is dropped",
            )
            s = Selector(s.net, s.proto, 0)
        if mode == "transport" and s.net is not None:
            host = next((h for h in hosts if h.version == s.net.version), None)
            if host is not None and host in s.net:
                return Selector(None, s.proto, s.port)  # narrowed to the host, as charon does
            self.warn(
                line,
                f"{where}: {key} entry '{item}' is not carried: transport mode "
                "protects only the hosts' own addresses",
            )
            return None
        return s

    # -- pass / drop --------------------------------------------------------------------------
    def _shunt(
        self, conn: Section, child: Section, local_addrs: list[Address], remote: list[Address]
    ) -> None:
        mode = (child.get("mode") or "").strip().lower()
        action = "bypass" if mode == "pass" else "discard"
        where = f"connection '{conn.name}' child '{child.name}'"
        for key, s in child.settings.items():
            if key not in ("mode", "local_ts", "remote_ts", "start_action", "priority"):
                self._unhandled(key, s, _CHILD_WHY, _CHILD_QUIET, where)
        lsel = self._selectors(child, "local_ts", "tunnel", local_addrs, where)
        rsel = self._selectors(child, "remote_ts", "tunnel", remote, where)
        self.report.charge_pairs(len(lsel) * max(len(rsel), len(remote)), self.filename, child.line)
        origin = (
            f"{self.filename}:{child.line} connection {conn.name}, child {child.name} (mode {mode})"
        )
        count = 0
        for ls in lsel:
            for rs in rsel:
                rnets: list[Prefix | None] = [rs.net]
                if rs.net is None:  # dynamic: the peer's own address
                    rnets = [ipaddress.ip_network(a) for a in remote]
                    if not rnets:
                        self.warn(
                            child.line_of("remote_ts"),
                            f"{where}: remote_ts dynamic without a remote address is not carried",
                        )
                        continue
                for rnet in rnets:
                    if ls.net is not None and rnet is not None and ls.net.version != rnet.version:
                        continue
                    proto = ls.proto or rs.proto
                    self.writer.rules.append(
                        RuleSpec(
                            action,
                            origin,
                            Selector(ls.net, proto, ls.port),
                            Selector(rnet, proto, rs.port),
                        )
                    )
                    count += 1
        if not count:
            self.warn(
                child.line, f"{where}: no selector pair left for the {action} rule; not converted"
            )


def _auth_kind(auth: str) -> str | None:
    a = auth.strip().lower()
    if a == "psk":
        return "psk"
    if a.startswith(("pubkey", "rsa", "ecdsa", "ed25519", "ed448", "bliss")):
        return "certificate"
    return None


_AUTH_WHY = {
    "eap": "EAP authentication is not supported (ipsecd authenticates gateways with "
    "certificates or PSKs)",
    "xauth": "XAUTH is IKEv1 only",
    "null": "NULL authentication (RFC 7619) is not supported",
}


def _time(sec: Section, key: str) -> int | None:
    """A duration setting in seconds; None when unset, -1 when not a duration."""
    value = sec.get(key)
    if value is None:
        return None
    seconds = parse_time(value)
    return -1 if seconds is None else seconds


def _list(value: str | None) -> list[str]:
    if value is None:
        return []
    return [x.strip() for x in value.split(",") if x.strip()]


def _path(name: str, directory: str) -> str:
    return name if name.startswith("/") else f"{directory}/{name}"


def _summarize(a: Address, b: Address) -> list[Prefix]:
    """The prefixes that exactly cover the range ``a``-``b`` (same family, a <= b)."""
    if isinstance(a, ipaddress.IPv4Address) and isinstance(b, ipaddress.IPv4Address):
        return list(ipaddress.summarize_address_range(a, b))
    if isinstance(a, ipaddress.IPv6Address) and isinstance(b, ipaddress.IPv6Address):
        return list(ipaddress.summarize_address_range(a, b))
    return []


def _ts(item: str) -> list[Selector] | str:
    """A swanctl traffic selector: ``dynamic``, a prefix, an address range, each with an
    optional ``[proto/port]``."""
    text = item.strip()
    net_text, proto_text, port_text = text, "", ""
    if "[" in text:
        if not text.endswith("]"):
            return "malformed selector"
        net_text, _, spec = text[:-1].partition("[")
        proto_text, _, port_text = spec.partition("/")
    net_text = net_text.strip()
    proto = parse_proto(proto_text)
    if proto is None:
        return f"unknown protocol '{proto_text}'"
    if proto in (1, 58) and port_text.strip() not in ("", "%any"):
        return "ICMP types and codes are not carried by connection traffic selectors"
    if "-" in port_text:
        lo, _, hi = port_text.partition("-")
        if lo.strip() != hi.strip():
            return "port ranges are not carried (one port or any)"
        port_text = lo
    if port_text.strip().lower() == "opaque":
        return "OPAQUE ports are not carried"
    port = parse_port(port_text)
    if port is None:
        return f"unknown port '{port_text}' (a number, or a service name the SPD knows)"
    nets: list[Prefix | None]
    low = net_text.lower()
    if low in ("dynamic", ""):
        nets = [None]
    elif low in ("%any", "0.0.0.0/0,::/0"):
        nets = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    elif low in ("%any4",):
        nets = [ipaddress.ip_network("0.0.0.0/0")]
    elif low in ("%any6",):
        nets = [ipaddress.ip_network("::/0")]
    elif "-" in net_text and "/" not in net_text:
        first, _, last = net_text.partition("-")
        try:
            a, b = ipaddress.ip_address(first.strip()), ipaddress.ip_address(last.strip())
        except ValueError:
            return "malformed address range"
        if a.version != b.version or int(a) > int(b):
            return "malformed address range"
        nets = list(_summarize(a, b))
    else:
        net = parse_net(net_text)
        if net is None:
            return "not a prefix (host names are not resolved)"
        nets = [net]
    return [Selector(n, proto, port) for n in nets]


_CONN_KEYS = frozenset(
    {"version", "local_addrs", "remote_addrs", "local_port", "remote_port", "proposals",
     "dpd_delay", "rekey_time", "over_time", "send_cert",
     "dpd_timeout"}  # IKEv1 only: strongSwan ignores it for IKEv2
)  # fmt: skip
_CONN_QUIET: dict[str, tuple[str, ...]] = {
    "mobike": ("no",),
    "aggressive": ("no",),
    "encap": ("no",),
    "fragmentation": ("yes", "accept"),
    "send_certreq": ("yes",),
    "unique": ("no",),
    "reauth_time": ("0", "0s"),
    "pull": ("yes", "no"),
    "childless": ("allow", "never"),
    "dscp": ("000000",),
    "keyingtries": ("1",),
    "ocsp": ("reply",),
}
_CONN_WHY = {
    "vips": "virtual IPs (IKE configuration payloads) have no SPD equivalent",
    "pools": "virtual IP pools (IKE configuration payloads) have no SPD equivalent",
    "mobike": "MOBIKE (RFC 4555) is not supported",
    "aggressive": "Aggressive Mode is IKEv1",
    "pull": "IKEv1 Mode Config pull",
    "encap": "forced UDP encapsulation is not supported (ipsecd encapsulates only behind NAT)",
    "fragmentation": "IKE fragmentation is set per node (ipsecd --ike-fragment-size)",
    "send_certreq": "ipsecd always sends certificate requests",
    "unique": "the uniqueness policy is ipsecd's own (INITIAL_CONTACT)",
    "reauth_time": "ipsecd rekeys IKE SAs and never reauthenticates them",
    "rand_time": "rekey jitter is ipsecd's own",
    "keyingtries": "retries are ipsecd's own (retransmissions, then a new attempt)",
    "dscp": "the DSCP of IKE packets is not configurable",
    "childless": "childless IKE SAs (RFC 6023) are not supported",
    "ocsp": "OCSP in IKE is not supported",
    "ppk_id": "post-quantum preshared keys (RFC 8784) are not supported",
    "ppk_required": "post-quantum preshared keys (RFC 8784) are not supported",
    "if_id_in": "XFRM interface ids are not supported",
    "if_id_out": "XFRM interface ids are not supported",
    "mediation": "the strongSwan mediation extension is not supported",
    "mediated_by": "the strongSwan mediation extension is not supported",
    "mediation_peer": "the strongSwan mediation extension is not supported",
    "close_action": "ipsecd reconnects by the connection's 'start' mode",
}
_CHILD_KEYS = frozenset(
    {"mode", "local_ts", "remote_ts", "esp_proposals", "ah_proposals", "rekey_time",
     "life_time", "start_action", "priority"}
)  # fmt: skip
_CHILD_QUIET: dict[str, tuple[str, ...]] = {
    "dpd_action": ("clear", "none"),
    "close_action": ("none",),
    "ipcomp": ("no",),
    "hostaccess": ("no",),
    "policies": ("yes",),
    "policies_fwd_out": ("no",),
    "sha256_96": ("no",),
    "hw_offload": ("no",),
    "copy_df": ("yes",),
    "copy_ecn": ("yes",),
    "copy_dscp": ("out",),
    "inactivity": ("0", "0s"),
    "replay_window": ("32",),
    "rand_time": (),
    "mark_in": ("0", "0/0x00000000"),
    "mark_out": ("0", "0/0x00000000"),
    "tfc_padding": ("0",),
}
_CHILD_WHY = {
    "updown": "updown scripts are not run (ipsecd installs policies itself)",
    "hostaccess": "updown firewall rules are not written",
    "dpd_action": "after DPD ipsecd reconnects by the connection's 'start' mode",
    "close_action": "ipsecd reconnects by the connection's 'start' mode",
    "ipcomp": "IPComp negotiation is not supported",
    "inactivity": "idle timeouts are not supported",
    "reqid": "the SPD assigns reqids (65536 and up)",
    "policies": "ipsecd always installs the connection's policies",
    "policies_fwd_out": "outbound forward policies are not installed",
    "mark_in": "XFRM marks are not supported",
    "mark_in_sa": "XFRM marks are not supported",
    "mark_out": "XFRM marks are not supported",
    "set_mark_in": "XFRM marks are not supported",
    "set_mark_out": "XFRM marks are not supported",
    "if_id_in": "XFRM interface ids are not supported",
    "if_id_out": "XFRM interface ids are not supported",
    "interface": "policies bound to an interface are not supported",
    "label": "security labels are not supported",
    "label_mode": "security labels are not supported",
    "tfc_padding": "traffic flow confidentiality padding is not supported",
    "replay_window": "the replay window is ipsecd's own",
    "hw_offload": "hardware offload is not configured by the SPD",
    "copy_df": "the DF bit is a host-wide default (defaults { dfbit ...; })",
    "copy_ecn": "ECN is a host-wide default (defaults { ecn ...; })",
    "copy_dscp": "DSCP copying is not configurable",
    "sha256_96": "SHA-256 truncated to 96 bits is not supported",
    "rekey_bytes": "volume-based rekeying is not configurable",
    "life_bytes": "volume-based lifetimes are not configurable",
    "rand_bytes": "volume-based rekeying is not configurable",
    "rekey_packets": "packet-count rekeying is not configurable",
    "life_packets": "packet-count lifetimes are not configurable",
    "rand_packets": "packet-count rekeying is not configurable",
    "rand_time": "rekey jitter is ipsecd's own",
}
