"""Libreswan ``ipsec.conf`` (and its ``ipsec.secrets``) -> SPD.

``conn NAME`` sections with indented ``key=value`` lines; ``conn %default`` and
``also=`` supply values a conn does not set itself; ``config setup`` holds daemon
settings (not converted).  One side of a conn is this host: ``--local-side``, else
the side that is ``%defaultroute``, else the side facing one that is ``%any``, else
``left`` (the convention).  The other side's address becomes a ``peer``, the conn an
SPD ``connection``; ``leftsubnets=``/``rightsubnets=`` become one connection per
pair of subnets (as Libreswan makes one instance per pair).  ``type=passthrough`` and
``type=drop|reject`` become ``bypass``/``discard`` rules.  PSKs come from the
secrets file when one is given.  docs/spd.md, "Converting from strongSwan, Libreswan
and setkey", has the mapping table.

strongSwan's legacy ``ipsec.conf`` uses the same syntax and converts the same way.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from ..compiler import DEFAULT_ESP, DEFAULT_IKE
from ..model import Address, Prefix
from .common import (
    ConnSpec,
    Conversion,
    ConvertError,
    ConvertOptions,
    Identity,
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
from .proposals import dh_groups, translate

__all__ = ["convert_libreswan"]

FORMAT = "libreswan"
LABEL = "Libreswan ipsec.conf"
MAX_ALSO = 32  # also= within also=


@dataclass
class _Value:
    value: str
    line: int


@dataclass
class _Section:
    kind: str  # conn | config
    name: str
    line: int
    values: dict[str, _Value] = field(default_factory=dict)
    also: list[_Value] = field(default_factory=list)


_KEY = re.compile(r"([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*)")


def _strip_comment(line: str) -> str:
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _unquote(value: str) -> str:
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


def parse_ipsec_conf(text: str, filename: str, report: Report) -> list[_Section]:
    sections: list[_Section] = []
    current: _Section | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        if line[0] not in " \t":
            words = line.split()
            if words[0] == "conn" and len(words) == 2:
                current = _Section("conn", words[1], n)
                sections.append(current)
            elif words[:2] == ["config", "setup"] and len(words) == 2:
                current = _Section("config", "setup", n)
                sections.append(current)
            elif words[0] == "include" and len(words) == 2:
                report.warn(
                    filename,
                    n,
                    f"'include {words[1]}' is not followed: convert that "
                    "file separately (or paste it here)",
                )
                current = None
            elif words[0] == "version":
                current = None
            else:
                raise ConvertError(
                    f"expected 'conn NAME', 'config setup' or 'include FILE', found '{words[0]}'",
                    filename,
                    n,
                )
            continue
        if current is None:
            raise ConvertError(
                "an indented setting outside a 'conn' or 'config setup' section", filename, n
            )
        m = _KEY.fullmatch(line.strip())
        if m is None:
            raise ConvertError(f"expected 'key=value', found '{line.strip()}'", filename, n)
        key, value = m.group(1).lower(), _unquote(m.group(2))
        if key == "also":
            current.also.append(_Value(value, n))
            continue
        if key in current.values:
            report.warn(
                filename,
                n,
                f"{current.kind} {current.name}: '{key}' is set twice "
                "(Libreswan refuses that); the last value is used",
            )
        current.values[key] = _Value(value, n)
    return sections


# -- ipsec.secrets -----------------------------------------------------------------------------


@dataclass
class _Secret:
    line: int
    ids: list[Identity]
    value: bytes = field(repr=False)
    name: str | None = None


_ENTRY = re.compile(
    r"(?P<ids>.*?)\s*:\s*(?P<type>PSK|RSA|ECDSA|EDDSA|XAUTH|PIN|PPKS|EAP|NTLM|P12)\b\s*(?P<value>.*)",
    re.IGNORECASE | re.DOTALL,
)


def _words(text: str) -> list[str]:
    return [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', text)]


def parse_secrets(text: str, filename: str, report: Report) -> list[_Secret]:
    """The PSK entries of an ``ipsec.secrets`` file; other entries are reported."""
    entries: list[tuple[int, str]] = []
    depth = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        if not line.strip():
            continue
        if depth == 0 and line[0] not in " \t" and not line.lstrip().startswith("}"):
            entries.append((n, line.strip()))
        elif entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
        else:
            raise ConvertError("a continuation line before the first entry", filename, n)
        depth += line.count("{") - line.count("}")
    out: list[_Secret] = []
    for n, entry in entries:
        if entry.startswith("include "):
            report.warn(
                filename,
                n,
                f"'{entry}' is not followed: convert with that file's secrets in this one",
            )
            continue
        m = _ENTRY.fullmatch(entry)
        if m is None:
            report.warn(filename, n, "not a secrets entry ('IDS : PSK \"...\"'); skipped")
            continue
        kind = m.group("type").upper()
        if kind != "PSK":
            report.warn(
                filename,
                n,
                f"{kind} entry is not carried: only pre-shared keys are; "
                "certificates and private keys are PEM files named by 'auth "
                "certificate'",
            )
            continue
        value = decode_secret(m.group("value").strip())
        if value is None:
            report.warn(filename, n, "PSK entry without a usable value; skipped")
            continue
        ids = [parse_identity(w, "libreswan") for w in _words(m.group("ids"))]
        out.append(_Secret(n, ids, value))
    return out


# -- conversion -----------------------------------------------------------------------------------


def convert_libreswan(
    text: str,
    filename: str = "ipsec.conf",
    options: ConvertOptions | None = None,
    *,
    secrets_text: str | None = None,
    secrets_filename: str = "ipsec.secrets",
) -> Conversion:
    """Convert an ``ipsec.conf`` (and optionally its ``ipsec.secrets``)."""
    options = options or ConvertOptions()
    report = Report()
    sections = parse_ipsec_conf(text, filename, report)
    secrets = (
        parse_secrets(secrets_text, secrets_filename, report) if secrets_text is not None else None
    )
    writer = Writer(filename, LABEL, options)
    ctx = _Ctx(filename, options, report, writer, sections, secrets, secrets_filename)
    ctx.run()
    return finish(FORMAT, writer, report)


_SETUP_QUIET = frozenset(
    {"logfile", "logappend", "logtime", "logip", "plutodebug", "plutostderrlog", "dumpdir",
     "nssdir", "ipsecdir", "secretsfile", "protostack", "rundir", "charondebug",
     "audit-log", "logstderr", "statsbin"}
)  # fmt: skip


class _Ctx:
    def __init__(
        self,
        filename: str,
        options: ConvertOptions,
        report: Report,
        writer: Writer,
        sections: list[_Section],
        secrets: list[_Secret] | None,
        secrets_filename: str,
    ) -> None:
        self.filename = filename
        self.options = options
        self.report = report
        self.writer = writer
        self.sections = sections
        self.secrets = secrets
        self.secrets_filename = secrets_filename
        self.conns = {s.name: s for s in sections if s.kind == "conn"}
        self.used_names: set[str] = set()

    def warn(self, line: int, message: str) -> None:
        self.report.warn(self.filename, line, message)

    def run(self) -> None:
        for s in self.sections:
            if s.kind == "config":
                keys = [k for k in s.values if k not in _SETUP_QUIET]
                if keys:
                    self.warn(
                        s.line,
                        "config setup: daemon settings are not converted: " + ", ".join(keys),
                    )
        templates = {a.value for s in self.conns.values() for a in s.also}
        default = self.conns.get("%default")
        converted = 0
        for sec in self.conns.values():
            if sec.name == "%default":
                continue
            values = self._resolve(sec, default)
            auto = values.get("auto")
            if auto is None and sec.name in templates:
                continue  # a template for also=
            converted += 1
            self.conn(sec, values)
        if not converted:
            self.warn(0, "no conn sections to convert")
        if self.secrets is not None:
            for entry in self.secrets:
                if entry.name is None:
                    self.report.warn(
                        self.secrets_filename,
                        entry.line,
                        "PSK entry used by no converted conn; not carried",
                    )

    def _resolve(self, sec: _Section, default: _Section | None) -> dict[str, _Value]:
        """The conn's own values, then also= sections (depth first), then %default."""
        values: dict[str, _Value] = {}
        self._merge(sec, values, [sec.name])
        if default is not None:
            for key, v in default.values.items():
                values.setdefault(key, v)
        return values

    def _merge(self, sec: _Section, values: dict[str, _Value], seen: list[str]) -> None:
        for key, v in sec.values.items():
            values.setdefault(key, v)
        for ref in sec.also:
            other = self.conns.get(ref.value)
            if other is None:
                raise ConvertError(
                    f"conn {sec.name}: also={ref.value} names no conn section",
                    self.filename,
                    ref.line,
                )
            if len(seen) > MAX_ALSO:
                raise ConvertError(f"conn {sec.name}: also= nested deeper than {MAX_ALSO}",
                                   self.filename, ref.line)  # fmt: skip
            if ref.value in seen:
                raise ConvertError(
                    f"conn {sec.name}: also={ref.value} includes itself", self.filename, ref.line
                )
            self._merge(other, values, [*seen, ref.value])

    # -- one conn ------------------------------------------------------------------------------
    def conn(self, sec: _Section, v: dict[str, _Value]) -> None:
        name = sec.name
        where = f"conn {name}"

        def get(key: str, default: str = "") -> str:
            return v[key].value.strip() if key in v else default

        def line(key: str) -> int:
            return v[key].line if key in v else sec.line

        local = self._local_side(v)
        remote = "right" if local == "left" else "left"
        handled = {
            "auto",
            "type",
            "authby",
            "ike",
            "esp",
            "phase2alg",
            "phase2",
            "ah",
            "ikelifetime",
            "ike-lifetime",
            "salifetime",
            "lifetime",
            "keylife",
            "ipsec-lifetime",
            "dpddelay",
            "keyexchange",
            "ikev2",
            "pfs",
            "priority",
            "connaddrfamily",
            "hostaddrfamily",
            "clientaddrfamily",
        }
        for side in (local, remote):
            handled |= {f"{side}{k}" for k in _SIDE_KEYS}
        auto = get("auto", "")
        if auto == "ignore":
            self.warn(
                line("auto"),
                f"{where}: auto=ignore (Libreswan does not load it); not converted",
            )
            return
        ctype = get("type", "tunnel").lower()
        if ctype not in ("passthrough", "pass", "drop", "reject"):
            for key, val in v.items():
                if key not in handled:
                    self._unhandled(key, val, where)
        lhost = self._host(v, local, sec, where, is_local=True)
        rhost = self._host(v, remote, sec, where, is_local=False)
        lsel = self._subnets(v, local, sec, where)
        rsel = self._subnets(v, remote, sec, where)
        if lsel is None or rsel is None:
            return
        if ctype in ("passthrough", "pass", "drop", "reject"):
            self._shunt(sec, ctype, lsel, rsel, rhost, where)
            return
        if ctype not in ("tunnel", "transport"):
            self.warn(line("type"), f"{where}: type={ctype} is not carried; not converted")
            return
        if rhost is None:
            self.warn(
                line(remote),
                f"{where}: {remote}={get(remote) or '(unset)'} names no "
                "address; a peer needs one (responders for any address, such as road "
                "warriors, cannot be carried); not converted",
            )
            return
        version = get("keyexchange", get("ikev2", "")).lower()
        if version in ("ikev1", "no", "never"):
            key = "keyexchange" if "keyexchange" in v else "ikev2"
            self.warn(
                line(key),
                f"{where}: {key}={version} is IKEv1: ipsecd speaks IKEv2 only; "
                "converted as IKEv2 (the peer must use IKEv2 too)",
            )
        peer_id = self._peer_id(v, remote, sec, where, ctype)
        peer = PeerSpec(name, [rhost], peer_id, f"{self.filename}:{sec.line} conn {name}")
        spec = ConnSpec(name, f"{self.filename}:{sec.line} conn {name}", peer, mode=ctype)
        if not self._auth(v, local, remote, sec, where, spec, lhost, rhost):
            return
        self._proposals(v, sec, where, spec)
        self._times(v, sec, where, spec)
        spec.start = self._start(v, sec, where)
        prio = get("priority")
        if prio and prio != "0":
            spec.priority = parse_priority(prio)
            if spec.priority is None:
                self.warn(
                    line("priority"),
                    f"{where}: priority={prio} is not a number from 1 to 4294967295; not carried",
                )
        self._local_id(v, local, sec, where, spec, lhost)
        pairs = self._pairs(lsel, rsel, ctype, lhost, rhost, sec, where)
        if not pairs:
            self.warn(sec.line, f"{where}: no traffic selector pair left to protect; not converted")
            return
        plural = f"{local}subnets" in v or f"{remote}subnets" in v
        if not plural:
            spec.traffic = [p for group in pairs for p in group]
            self.writer.conns.append(spec)
            return
        # leftsubnets/rightsubnets: one connection per pair of subnets (NAME/1x1, ...)
        for i, group in enumerate(pairs):
            if group:
                instance = _instance(i, len(rsel))
                self.writer.conns.append(
                    replace(
                        spec,
                        traffic=group,
                        hint=f"{name}-{instance}",
                        proposal_hint=name,
                        origin=f"{spec.origin} (instance {name}/{instance})",
                    )
                )

    def _unhandled(self, key: str, val: _Value, where: str) -> None:
        side_key = re.sub(r"^(left|right)", "", key)
        value = val.value.strip().lower()
        if value in _QUIET.get(key, _QUIET.get(side_key, ())):
            return
        reason = _WHY.get(key) or _WHY.get(side_key) or "not a setting the SPD carries"
        self.warn(val.line, f"{where}: '{key}={val.value.strip()}' is not carried: {reason}")

    def _local_side(self, v: dict[str, _Value]) -> str:
        if self.options.local_side in ("left", "right"):
            return self.options.local_side
        left = v["left"].value.strip().lower() if "left" in v else ""
        right = v["right"].value.strip().lower() if "right" in v else ""
        if right == "%defaultroute":
            return "right"
        if left == "%defaultroute":
            return "left"
        if left.startswith("%any") or left.startswith("%opportunistic"):
            return "right"
        self.report.note(
            f"{self.filename}: 'left' is taken as this host's side (use --local-side right "
            "for the other end's file)"
        )
        return "left"

    def _host(
        self, v: dict[str, _Value], side: str, sec: _Section, where: str, *, is_local: bool
    ) -> Address | None:
        if side not in v:
            return None
        text = v[side].value.strip()
        low = text.lower()
        if low.startswith("%"):
            return None
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            what = "this host's" if is_local else "the peer's"
            self.warn(
                v[side].line,
                f"{where}: {side}={text} ({what} address) is not an IP "
                "address: host names are not resolved",
            )
            return None
        if is_local:
            self.writer.add_local_address(addr)
        return addr

    def _subnets(
        self, v: dict[str, _Value], side: str, sec: _Section, where: str
    ) -> list[list[Selector]] | None:
        """The side's selectors, grouped: one group per ``subnets`` entry, or one group
        (``subnet``, possibly a list); None when the conn cannot be carried."""
        proto, port = 0, 0
        pp = v.get(f"{side}protoport")
        if pp is not None:
            parsed = _protoport(pp.value)
            if isinstance(parsed, str):
                self.warn(
                    pp.line,
                    f"{where}: {side}protoport={pp.value} is not carried: {parsed}; not converted",
                )
                return None
            proto, port = parsed
        groups: list[list[Selector]] = []
        plural = v.get(f"{side}subnets")
        single = v.get(f"{side}subnet")
        items: list[tuple[_Value, list[str]]] = []
        if plural is not None:
            inner = plural.value.strip().strip("{}")
            items = [(plural, [x]) for x in re.split(r"[\s,]+", inner) if x]
        elif single is not None:
            items = [(single, [x for x in re.split(r"[\s,]+", single.value) if x])]
        else:
            return [[Selector(None, proto, port)]]
        for val, texts in items:
            group: list[Selector] = []
            for text in texts:
                if text.startswith(("vhost:", "vnet:", "%")):
                    self.warn(
                        val.line,
                        f"{where}: {side}subnet {text} is not carried "
                        "(virtual or special subnets need an address pool)",
                    )
                    continue
                net = parse_net(text)
                if net is None:
                    self.warn(val.line, f"{where}: {side}subnet {text} is not a prefix; dropped")
                    continue
                group.append(Selector(net, proto, port))
            if group:
                groups.append(group)
        if not groups:
            self.warn(sec.line, f"{where}: no usable {side}subnet; not converted")
            return None
        return groups

    def _pairs(
        self,
        lgroups: list[list[Selector]],
        rgroups: list[list[Selector]],
        ctype: str,
        lhost: Address | None,
        rhost: Address | None,
        sec: _Section,
        where: str,
    ) -> list[list[tuple[Selector, Selector]]]:
        count = sum(len(g) for g in lgroups) * sum(len(g) for g in rgroups)
        self.report.charge_pairs(count, self.filename, sec.line)
        out: list[list[tuple[Selector, Selector]]] = []
        for lg in lgroups:
            for rg in rgroups:
                group: list[tuple[Selector, Selector]] = []
                for ls in lg:
                    for rs in rg:
                        pair = self._pair(ls, rs, ctype, lhost, rhost, sec, where)
                        if pair is not None and pair not in group:
                            group.append(pair)
                out.append(group)
        return out if any(out) else []

    def _pair(
        self,
        ls: Selector,
        rs: Selector,
        ctype: str,
        lhost: Address | None,
        rhost: Address | None,
        sec: _Section,
        where: str,
    ) -> tuple[Selector, Selector] | None:
        if ls.net is not None and rs.net is not None and ls.net.version != rs.net.version:
            return None
        if ls.proto and rs.proto and ls.proto != rs.proto:
            self.warn(
                sec.line,
                f"{where}: protocols {ls.proto} and {rs.proto} never match together; pair skipped",
            )
            return None
        proto = ls.proto or rs.proto
        lport, rport = ls.port, rs.port
        if (lport or rport) and not has_ports(proto):
            self.warn(
                sec.line,
                f"{where}: a port without TCP, UDP or SCTP is not carried; the port is dropped",
            )
            lport = rport = 0
        lnet, rnet = ls.net, rs.net
        if ctype == "transport":
            lnet = _host_only(lnet, lhost)
            rnet = _host_only(rnet, rhost)
            if lnet is not None or rnet is not None:
                self.warn(
                    sec.line,
                    f"{where}: transport mode protects only the hosts' own "
                    "addresses: a subnet is not carried; pair skipped",
                )
                return None
        return Selector(lnet, proto, lport), Selector(rnet, proto, rport)

    def _peer_id(
        self, v: dict[str, _Value], side: str, sec: _Section, where: str, ctype: str
    ) -> str | None:
        val = v.get(f"{side}id")
        auth = v.get(f"{side}auth", v.get("authby", _Value("rsasig", sec.line))).value.lower()
        cert = _auth_kind(re.split(r"[,|\s]+", auth.strip())[0]) == "certificate"
        if val is None:
            if cert:
                self.warn(
                    sec.line,
                    f"{where}: no {side}id: with certificates the SPD expects "
                    "the peer's address as its identity; add 'id' to the peer",
                )
            return None
        ident = parse_identity(val.value, "libreswan")
        if ident.kind == "any":
            if cert:
                self.warn(
                    val.line,
                    f"{where}: {side}id={val.value} (any identity the CA "
                    "vouches for) is not carried: the SPD expects the peer's address; add "
                    "'id' to the peer",
                )
            return None
        if ident.spd is None:
            self.warn(
                val.line,
                f"{where}: {side}id={val.value} is not carried: "
                f"{ident.problem}; the SPD expects the peer's address",
            )
            return None
        if ident.problem:
            self.warn(val.line, f"{where}: {side}id={val.value}: {ident.problem}")
        return ident.spd

    def _local_id(
        self,
        v: dict[str, _Value],
        side: str,
        sec: _Section,
        where: str,
        spec: ConnSpec,
        lhost: Address | None,
    ) -> None:
        val = v.get(f"{side}id")
        if val is None:
            return
        ident = parse_identity(val.value, "libreswan")
        if ident.kind == "any" or (
            ident.kind == "address" and lhost is not None and ident.spd == str(lhost)
        ):
            return
        nodes = self.options.nodes
        if len(nodes) == 1 and ident.key == f"fqdn:{nodes[0].lower()}":
            spec.local_id = "name"
            return
        self.warn(
            val.line,
            f"{where}: {side}id={val.value} is not carried: a node identifies "
            "as its address ('id address') or its node name ('id name', with --node "
            "NAME); the peer's id for it must change",
        )

    def _auth(
        self,
        v: dict[str, _Value],
        local: str,
        remote: str,
        sec: _Section,
        where: str,
        spec: ConnSpec,
        lhost: Address | None,
        rhost: Address,
    ) -> bool:
        authby = v.get("authby")
        base = (authby.value if authby is not None else "rsasig,ecdsa").lower()
        methods = {}
        for side in (local, remote):
            val = v.get(f"{side}auth")
            text = (val.value if val is not None else base).lower()
            first = re.split(r"[,|\s]+", text.strip())[0]
            kind = _auth_kind(first)
            line = val.line if val is not None else (authby.line if authby else sec.line)
            if kind is None:
                self.warn(
                    line,
                    f"{where}: authentication '{first}' is not carried: "
                    f"{_AUTH_WHY.get(first, 'unknown method')}; not converted",
                )
                return False
            methods[side] = kind
        if methods[local] != methods[remote]:
            self.warn(
                sec.line,
                f"{where}: {local} and {remote} authenticate differently "
                f"({methods[local]}, {methods[remote]}): the SPD has one method for both; "
                f"converted as {methods[local]}",
            )
        spec.auth = methods[local]
        if spec.auth == "psk":
            self._psk(v, local, remote, sec, where, spec, lhost, rhost)
            return True
        for side in (local, remote):
            for key, why in (
                ("cert", "a certificate nickname in Libreswan's NSS database"),
                ("ca", "a CA in Libreswan's NSS database"),
                ("rsasigkey", "a raw RSA public key (the SPD authenticates with certificates)"),
                ("ecdsakey", "a raw ECDSA public key (the SPD authenticates with certificates)"),
                ("pubkey", "a raw public key (the SPD authenticates with certificates)"),
                ("ckaid", "a key in Libreswan's NSS database"),
            ):
                val = v.get(f"{side}{key}")
                if val is not None:
                    self.warn(
                        val.line,
                        f"{where}: {side}{key}={val.value} is not carried: "
                        f"{why}; export certificates and keys to PEM files and add 'ca', "
                        "'cert' and 'key' to the connection's 'auth certificate' (without "
                        "them the node uses its own certificate and trusts the cluster "
                        "CA)",
                    )
        send = v.get(f"{local}sendcert")
        if send is not None:
            mapped = {
                "always": "always",
                "yes": "always",
                "sendifasked": "ifasked",
                "ifasked": "ifasked",
                "never": "never",
                "no": "never",
            }
            spec.send_cert = mapped.get(send.value.strip().lower())
            if spec.send_cert is None:
                self.warn(send.line, f"{where}: {local}sendcert={send.value} is not carried")
        return True

    def _psk(
        self,
        v: dict[str, _Value],
        local: str,
        remote: str,
        sec: _Section,
        where: str,
        spec: ConnSpec,
        lhost: Address | None,
        rhost: Address,
    ) -> None:
        def keys(side: str, host: Address | None) -> set[str]:
            out = {str(host)} if host is not None else set()
            val = v.get(f"{side}id")
            if val is not None:
                out.add(parse_identity(val.value, "libreswan").key)
            return out

        lkeys, rkeys = keys(local, lhost), keys(remote, rhost)
        best: tuple[int, _Secret | None] = (0, None)
        for s in self.secrets or []:
            ids = {i.key for i in s.ids}
            if not ids:
                score = 1
            else:
                score = (2 if ids & lkeys else 0) + (2 if ids & rkeys else 0)
                if "%any" in ids:
                    score = max(score, 1 + (2 if ids & (lkeys | rkeys) else 0))
            if score > best[0]:
                best = (score, s)
        found = best[1]
        if found is None:
            spec.psk = self._secret_name(f"{sec.name}-psk")
            why = (
                f"no PSK entry in {self.secrets_filename} matches its identities"
                if self.secrets is not None
                else "no secrets file given (--secrets ipsec.secrets)"
            )
            self.warn(
                sec.line,
                f"{where}: {why}: the SPD names secret:{spec.psk}; put the key in the secrets file",
            )
            return
        if found.name is None:
            found.name = self._secret_name(f"{sec.name}-psk")
            self.writer.secrets[found.name] = found.value
        spec.psk = found.name

    def _secret_name(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", hint).strip("-.") or "psk"
        name, n = base, 2
        while name in self.used_names:
            name = f"{base}-{n}"
            n += 1
        self.used_names.add(name)
        return name

    def _proposals(self, v: dict[str, _Value], sec: _Section, where: str, spec: ConnSpec) -> None:
        ike = v.get("ike")
        if ike is not None:
            tr = translate(ike.value, "ike", "libreswan")
            self._translated(ike.line, where, tr.warnings, tr.notes)
            spec.ike = tr.transforms
        pfs_value = v["pfs"].value.strip().lower() if "pfs" in v else "yes"
        pfs = pfs_value not in ("no", "false", "0")
        groups = dh_groups(spec.ike if spec.ike is not None else list(DEFAULT_IKE)) if pfs else []
        phase2 = v["phase2"].value.strip().lower() if "phase2" in v else "esp"
        alg = v.get("ah") if phase2 == "ah" else None
        alg = alg or v.get("esp") or v.get("phase2alg")
        kind = "ah" if phase2 == "ah" else "esp"
        spec.protocols = (kind,)
        if alg is not None:
            tr = translate(alg.value, kind, "libreswan", pfs_groups=groups)
            self._translated(alg.line, where, tr.warnings, tr.notes)
            setattr(spec, kind, tr.transforms)
        elif pfs and groups and kind == "esp":
            tr = translate(",".join(DEFAULT_ESP), "esp", "strongswan", pfs_groups=groups)
            spec.esp = tr.transforms
            self.report.note(
                f"{self.filename}:{sec.line}: {where}: pfs=yes: the SPD's default ESP "
                "proposals are written with the IKE DH groups, as Libreswan rekeys with them"
            )

    def _translated(self, line: int, where: str, warnings: list[str], notes: list[str]) -> None:
        for w in warnings:
            self.warn(line, f"{where}: {w}")
        for n in notes:
            self.report.note(f"{self.filename}:{line}: {where}: {n}")

    def _times(self, v: dict[str, _Value], sec: _Section, where: str, spec: ConnSpec) -> None:
        for keys, attr in (
            (("ikelifetime", "ike-lifetime"), "ike_lifetime"),
            (("salifetime", "lifetime", "keylife", "ipsec-lifetime"), "child_lifetime"),
        ):
            key = next((k for k in keys if k in v), None)
            if key is None:
                continue
            seconds = parse_time(v[key].value)
            if seconds is None or seconds <= 0:
                self.warn(
                    v[key].line, f"{where}: {key}={v[key].value} is not a duration; not carried"
                )
                continue
            setattr(spec, attr, seconds)
        dpd = v.get("dpddelay")
        seconds = parse_time(dpd.value) if dpd is not None else 0
        if seconds is None and dpd is not None:
            self.warn(dpd.line, f"{where}: dpddelay={dpd.value} is not a duration; DPD off")
        spec.dpd = seconds or 0

    def _start(self, v: dict[str, _Value], sec: _Section, where: str) -> str:
        auto = v["auto"].value.strip().lower() if "auto" in v else None
        if auto in ("start", "up"):
            return "eager"
        if auto in ("ondemand", "route"):
            return "ondemand"
        if auto in ("add", "keep"):
            return "passive"
        if auto is None:
            self.warn(
                sec.line,
                f"{where}: no auto= (Libreswan's default is ignore: the conn "
                "is loaded only by hand); converted as 'start passive'",
            )
        else:
            self.warn(
                v["auto"].line, f"{where}: auto={auto} is not carried; converted as 'start passive'"
            )
        return "passive"

    def _shunt(
        self,
        sec: _Section,
        ctype: str,
        lgroups: list[list[Selector]],
        rgroups: list[list[Selector]],
        rhost: Address | None,
        where: str,
    ) -> None:
        action = "bypass" if ctype in ("passthrough", "pass") else "discard"
        origin = f"{self.filename}:{sec.line} conn {sec.name} (type={ctype})"
        count = sum(len(g) for g in lgroups) * sum(len(g) for g in rgroups)
        self.report.charge_pairs(count, self.filename, sec.line)
        count = 0
        for ls in (s for g in lgroups for s in g):
            for rs in (s for g in rgroups for s in g):
                rnet: Prefix | None = rs.net
                if rnet is None:
                    if rhost is None:
                        continue
                    rnet = ipaddress.ip_network(rhost)
                if ls.net is not None and ls.net.version != rnet.version:
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
                sec.line, f"{where}: type={ctype} without a remote subnet or address is not carried"
            )


def _instance(i: int, rcount: int) -> str:
    return f"{i // rcount + 1}x{i % rcount + 1}"


def _host_only(net: Prefix | None, host: Address | None) -> Prefix | None:
    if net is None:
        return None
    if host is not None and host.version == net.version and host in net:
        return None
    return net


def _protoport(text: str) -> tuple[int, int] | str:
    proto_text, _, port_text = text.strip().partition("/")
    proto = parse_proto(proto_text)
    if proto is None:
        return f"unknown protocol '{proto_text}'"
    if "-" in port_text:
        return "port ranges are not carried"
    port = parse_port(port_text)
    if port is None:
        return f"unknown port '{port_text}'"
    if proto in (1, 58) and port:
        return "ICMP types are not carried by connection traffic selectors"
    return proto, port


def _auth_kind(method: str) -> str | None:
    if method in ("secret", "psk"):
        return "psk"
    if method.startswith(("rsasig", "rsa", "ecdsa", "pubkey", "eddsa")):
        return "certificate"
    return None


_AUTH_WHY = {
    "null": "NULL authentication (RFC 7619) is not supported",
    "never": "'never' negotiates nothing",
    "eaponly": "EAP authentication is not supported",
    "eap": "EAP authentication is not supported",
}
_SIDE_KEYS = (
    "", "id", "subnet", "subnets", "protoport", "auth", "cert", "ca", "rsasigkey",
    "ecdsakey", "pubkey", "ckaid", "sendcert",
)  # fmt: skip
_QUIET: dict[str, tuple[str, ...]] = {
    "mobike": ("no",),
    "narrowing": ("no",),
    "compress": ("no",),
    "encapsulation": ("auto", "no"),
    "fragmentation": ("yes",),
    "rekey": ("yes",),
    "dpdaction": ("clear", "hold"),
    "dpdtimeout": (),
    "aggressive": ("no",),
    "aggrmode": ("no",),
    "nexthop": ("%defaultroute", "%direct"),
    "xauthserver": ("no",),
    "xauthclient": ("no",),
    "modecfgserver": ("no",),
    "modecfgclient": ("no",),
    "ikepad": ("yes",),
    "sha2-truncbug": ("no",),
    "nic-offload": ("no",),
    "ms-dh-downgrade": ("no",),
    "initial-contact": ("yes",),
    "decap-dscp": ("no",),
    "nopmtudisc": ("no",),
    "sendca": ("issuer",),
    "rekeymargin": (),
    "rekeyfuzz": (),
}
_WHY = {
    "updown": "updown scripts are not run (ipsecd installs policies itself)",
    "sourceip": "the source address of routes to the peer's subnet is not set by ipsecd",
    "nexthop": "routing is not configured by ipsecd",
    "vti": "VTI interfaces are not supported",
    "vti-interface": "VTI interfaces are not supported",
    "vti-routing": "VTI interfaces are not supported",
    "vti-shared": "VTI interfaces are not supported",
    "ipsec-interface": "XFRM interfaces are not supported",
    "interface-ip": "XFRM interfaces are not supported",
    "mark": "XFRM marks are not supported",
    "mark-in": "XFRM marks are not supported",
    "mark-out": "XFRM marks are not supported",
    "addresspool": "address pools (IKE configuration payloads) have no SPD equivalent",
    "modecfgserver": "IKE configuration payloads are not supported",
    "modecfgclient": "IKE configuration payloads are not supported",
    "modecfgpull": "IKE configuration payloads are not supported",
    "modecfgdns": "IKE configuration payloads are not supported",
    "modecfgdomains": "IKE configuration payloads are not supported",
    "modecfgbanner": "IKE configuration payloads are not supported",
    "xauthserver": "XAUTH is IKEv1 only",
    "xauthclient": "XAUTH is IKEv1 only",
    "xauthusername": "XAUTH is IKEv1 only",
    "username": "XAUTH/EAP user names are not supported",
    "narrowing": "traffic selector narrowing is not supported: the selectors are exact",
    "mobike": "MOBIKE (RFC 4555) is not supported",
    "compress": "IPComp negotiation is not supported",
    "encapsulation": "forced UDP encapsulation is not supported (ipsecd encapsulates only "
    "behind NAT)",
    "nat-keepalive": "NAT keepalives are ipsecd's own",
    "fragmentation": "IKE fragmentation is set per node (ipsecd --ike-fragment-size)",
    "rekey": "ipsecd always rekeys",
    "rekeymargin": "ipsecd rekeys at 90% of the lifetime",
    "rekeyfuzz": "ipsecd rekeys at 90% of the lifetime",
    "keyingtries": "retries are ipsecd's own",
    "dpdtimeout": "liveness timeouts are ipsecd's own (retransmissions)",
    "dpdaction": "after DPD ipsecd reconnects by the connection's 'start' mode",
    "replay-window": "the replay window is ipsecd's own",
    "nic-offload": "hardware offload is not configured by the SPD",
    "metric": "routing is not configured by ipsecd",
    "mtu": "routing is not configured by ipsecd",
    "reqid": "the SPD assigns reqids (65536 and up)",
    "tfc": "traffic flow confidentiality padding is not supported",
    "sha2-truncbug": "SHA-256 truncated to 96 bits is not supported",
    "aggressive": "Aggressive Mode is IKEv1",
    "aggrmode": "Aggressive Mode is IKEv1",
    "ikepad": "IKEv1 padding",
    "ms-dh-downgrade": "DH downgrades for Windows peers are not supported",
    "retransmit-timeout": "retransmissions are ipsecd's own",
    "retransmit-interval": "retransmissions are ipsecd's own",
    "overlapip": "overlapping road-warrior addresses are not supported",
    "ppk": "post-quantum preshared keys (RFC 8784) are not supported",
    "ppk-ids": "post-quantum preshared keys (RFC 8784) are not supported",
    "intermediate": "IKE_INTERMEDIATE (RFC 9242) is not supported",
    "labeled-ipsec": "security labels are not supported",
    "policy-label": "security labels are not supported",
    "sec-label": "security labels are not supported",
    "nflog-group": "NFLOG logging is not supported",
    "iptfs": "IP-TFS is not supported",
    "sendca": "ipsecd sends its chain as configured by 'auth certificate'",
    "cisco-unity": "Cisco extensions are not supported",
    "fake-strongswan": "vendor ids are not configurable",
    "remote-peer-type": "Cisco extensions are not supported",
    "decap-dscp": "DSCP handling is not configurable",
    "nopmtudisc": "path MTU discovery settings are not configurable",
    "initial-contact": "ipsecd always sends INITIAL_CONTACT",
}
