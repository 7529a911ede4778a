"""What the converters share: warnings, the result, names, values and the SPD writer.

The converters are pure: text in, :class:`Conversion` out (SPD text, the secrets it
references, warnings).  Each one fills a :class:`Writer` with format-neutral
:class:`ConnSpec`/:class:`RuleSpec`/:class:`PeerSpec` values; the writer names things,
deduplicates proposals and peers, and prints the SPD file.

Secrets never appear in a warning, a note, a comment or a ``repr``: warnings name the
secret (``secret:NAME``), never its value.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from cryptography import x509

from ..model import Address, Prefix
from ..values import PORT_PROTOCOLS, PROTOCOLS, SERVICES, Problem, parse_prefix

__all__ = [
    "ConnSpec",
    "Conversion",
    "ConvertError",
    "ConvertOptions",
    "ConvertWarning",
    "Identity",
    "PeerSpec",
    "Report",
    "RuleSpec",
    "Selector",
    "Writer",
    "decode_secret",
    "duration_text",
    "finish",
    "parse_identity",
    "parse_priority",
    "parse_time",
    "render_secrets",
]


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConvertWarning:
    """Something of the input the SPD file does not carry, at ``filename:line``."""

    filename: str
    line: int
    message: str

    def location(self) -> str:
        return f"{self.filename}:{self.line}" if self.line > 0 else self.filename

    def render(self) -> str:
        return f"{self.location()}: warning: {self.message}"

    def __str__(self) -> str:
        return self.render()


class ConvertError(Exception):
    """The input cannot be converted at all (unreadable, malformed, unknown format)."""

    def __init__(self, message: str, filename: str = "", line: int = 0) -> None:
        self.message = message
        self.filename = filename
        self.line = line
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.filename}:{self.line}: " if self.line > 0 else ""
        if self.filename and not where:
            where = f"{self.filename}: "
        return f"{where}error: {self.message}"


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    """How to map one host's configuration onto the cluster.

    ``group``: the node group the converted host becomes (``local`` by default);
    ``nodes``: cluster node names for it (otherwise it selects the host's addresses);
    ``inline_secrets``: literal keys in the SPD text instead of ``secret:NAME``;
    ``local_side``: Libreswan's ``left``/``right`` for this host (default: guessed);
    ``swanctl_dir``: where swanctl's relative certificate paths live."""

    group: str = "local"
    nodes: tuple[str, ...] = ()
    inline_secrets: bool = False
    local_side: str | None = None
    swanctl_dir: str = "/etc/swanctl"


@dataclass(frozen=True, slots=True)
class Conversion:
    """The converted SPD text, the secrets it names (``secret:NAME`` -> value; empty
    with inline secrets), the warnings and informational notes."""

    source_format: str
    spd: str = field(repr=False)
    secrets: dict[str, bytes] = field(repr=False)
    warnings: tuple[ConvertWarning, ...]
    notes: tuple[str, ...] = ()


#: Warnings listed per conversion (the others are counted, as the SPD's own diagnostics
#: are, docs/limits.md); and selector pairs all connections together may expand to.
MAX_WARNINGS = 1000
MAX_PAIRS = 100_000


class Report:
    """Collects warnings (in input order) and notes while converting."""

    def __init__(self) -> None:
        self.warnings: list[ConvertWarning] = []
        self.notes: list[str] = []
        self._seen: set[tuple[str, int, str]] = set()
        self.unlisted = 0
        self.pairs = 0

    def warn(self, filename: str, line: int, message: str) -> None:
        key = (filename, line, message)
        if key in self._seen:
            return
        if len(self.warnings) >= MAX_WARNINGS:
            self.unlisted += 1
            return
        self._seen.add(key)
        self.warnings.append(ConvertWarning(filename, line, message))

    def note(self, message: str) -> None:
        if message not in self.notes and len(self.notes) < MAX_WARNINGS:
            self.notes.append(message)

    def charge_pairs(self, count: int, filename: str, line: int) -> None:
        """Count selector pairs (cross products of subnet lists); past
        :data:`MAX_PAIRS` the input is refused rather than expanded."""
        self.pairs += count
        if self.pairs > MAX_PAIRS:
            raise ConvertError(
                f"the connections expand to more than {MAX_PAIRS} traffic selector pairs; "
                "split the input or use broader subnets",
                filename,
                line,
            )

    def sorted_warnings(self) -> tuple[ConvertWarning, ...]:
        out = sorted(self.warnings, key=lambda w: (w.filename, w.line))
        if self.unlisted:
            last = out[-1]
            out.append(ConvertWarning(last.filename, 0, f"{self.unlisted} more warnings not "
                                      f"listed (at most {MAX_WARNINGS} are)"))  # fmt: skip
        return tuple(out)


# -- values ----------------------------------------------------------------------------------

_TIME = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> int | None:
    """``90``, ``30s``, ``5m``, ``8h``, ``1d``, ``1.5h`` -> seconds; None if not a time."""
    m = _TIME.fullmatch(text.strip())
    if m is None:
        return None
    return round(float(m.group(1)) * _UNIT[m.group(2).lower()])


def parse_priority(text: str) -> int | None:
    """A kernel policy priority (XFRM: 32 bits), or None."""
    t = text.strip()
    if not t.isdigit() or not 0 < int(t) < 2**32:
        return None
    return int(t)


def duration_text(seconds: int) -> str:
    """Seconds in the SPD's DURATION spelling, with the largest exact unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def decode_secret(text: str) -> bytes | None:
    """A strongSwan/Libreswan secret value: ``"text"``, ``0xHEX`` or ``0sBASE64``."""
    import base64
    import binascii

    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].encode()
    low = value.lower()
    if low.startswith("0x"):
        digits = value[2:].replace("_", "")
        if len(digits) % 2:
            digits = "0" + digits
        try:
            return bytes.fromhex(digits)
        except ValueError:
            return None
    if low.startswith("0s"):
        try:
            return base64.b64decode(value[2:], validate=True)
        except (binascii.Error, ValueError):
            return None
    return value.encode() if value else None


def render_secrets(secrets: dict[str, bytes], source: str = "") -> str:
    """The secrets file ``ipsecd --secrets`` reads: ``NAME = "text"`` or ``NAME = 0xHEX``
    per line (agent/daemon.py ``read_secrets``).  Text is used when it survives that
    reader unchanged (printable, no surrounding blanks), hex otherwise."""
    lines = ["# ipsecd secrets (ipsecd --secrets FILE); keep this file mode 0600"]
    if source:
        lines.append(f"# converted from {source} by ipsecctl convert")
    for name in sorted(secrets):
        value = secrets[name]
        lines.append(f"{name} = {_secret_value(value)}")
    return "\n".join(lines) + "\n"


def _secret_value(value: bytes) -> str:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return "0x" + value.hex()
    if text and text.isprintable() and text == text.strip():
        return f'"{text}"'
    return "0x" + value.hex()


def spd_literal(value: bytes) -> str:
    """A literal key for the SPD text: ``"text"`` when the lexer can carry it."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return "0x" + value.hex()
    if text and text.isprintable() and '"' not in text and "#" not in text:
        return f'"{text}"'
    return "0x" + value.hex()


# -- identities --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """An IKE identity of the input.

    ``kind``: address | fqdn | keyid | dn | any | email | other; ``spd``: the SPD's
    ``id`` spelling (``fqdn:x``, ``keyid:0a``, ``"CN=.."``, an address) or None when the
    SPD cannot say it; ``key``: a normalised text for matching secrets to connections."""

    kind: str
    spd: str | None
    key: str
    text: str
    problem: str = ""


# RFC 4514 names cryptography knows, and the other attribute names strongSwan and
# Libreswan print (as dotted OIDs, which RFC 4514 allows).
_DN_ATTRS = {
    "cn": "CN", "c": "C", "l": "L", "st": "ST", "o": "O", "ou": "OU", "dc": "DC",
    "uid": "UID", "street": "STREET",
    "e": "1.2.840.113549.1.9.1", "email": "1.2.840.113549.1.9.1",
    "emailaddress": "1.2.840.113549.1.9.1", "sn": "2.5.4.4", "serialnumber": "2.5.4.5",
    "g": "2.5.4.42", "gn": "2.5.4.42", "givenname": "2.5.4.42", "t": "2.5.4.12",
    "title": "2.5.4.12", "initials": "2.5.4.43", "pseudonym": "2.5.4.65",
}  # fmt: skip


def _split_rdns(text: str) -> list[str] | None:
    """RDNs of a DN written in ASN.1 order (``C=CH, O=x, CN=y`` or ``/C=CH/O=x/CN=y``)."""
    sep = "/" if text.startswith("/") else ","
    body = text[1:] if sep == "/" else text
    parts: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in body:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    if any("=" not in p for p in parts):
        return None
    return parts


def dn_to_rfc4514(text: str) -> str | None:
    """A DN as strongSwan and Libreswan write it (ASN.1 order, most general RDN first)
    in RFC 4514 order (most specific first), as the SPD and the IKE engine read it."""
    rdns = _split_rdns(text.strip())
    if not rdns:
        return None
    out = []
    for rdn in reversed(rdns):
        avas = []
        for ava in rdn.split("+"):
            attr, _, value = ava.partition("=")
            name = _DN_ATTRS.get(attr.strip().lower())
            if name is None and not re.fullmatch(r"\d+(\.\d+)+", attr.strip()):
                return None
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            avas.append(f"{name or attr.strip()}={value}")
        out.append("+".join(avas))
    result = ", ".join(out)
    try:
        name_obj = x509.Name.from_rfc4514_string(re.sub(r",\s+", ",", result))
    except ValueError:
        return None
    if len(name_obj) == 0 or '"' in result:
        return None
    return result


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_identity(text: str, style: str) -> Identity:
    """An identity as strongSwan (``style='strongswan'``) or Libreswan writes it."""
    raw = text.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    low = raw.lower()
    if low in ("%any", "%any6", "%none", "%fromcert", "*", ""):
        return Identity("any", None, "%any", raw)
    for prefix in ("ipv4:", "ipv6:"):
        if low.startswith(prefix):
            raw, low = raw[len(prefix) :], low[len(prefix) :]
    addr = _address(raw)
    if addr is not None:
        return Identity("address", str(addr), str(addr), raw)
    if low.startswith("fqdn:"):
        return _fqdn(raw[5:], raw)
    if low.startswith(("rfc822:", "email:", "userfqdn:")):
        return Identity(
            "email",
            None,
            "email:" + raw.split(":", 1)[1].lower(),
            raw,
            "an RFC 822 (e-mail) identity",
        )
    if low.startswith(("asn1dn:", "dn:")):
        return _dn(raw.split(":", 1)[1], raw)
    if low.startswith("keyid:"):
        return _keyid(raw[6:], raw)
    if raw.startswith("@#"):
        return _keyid(raw[2:], raw)
    if raw.startswith("@[") and raw.endswith("]"):
        data = raw[2:-1].encode().hex()
        return Identity("keyid", f"keyid:{data}", f"keyid:{data}", raw)
    if raw.startswith("@@"):
        return Identity(
            "email", None, "email:" + raw[2:].lower(), raw, "an RFC 822 (e-mail) identity"
        )
    if raw.startswith("@~"):
        return Identity("other", None, raw, raw, "a binary DER distinguished name")
    if raw.startswith("@"):
        return _fqdn(raw[1:], raw)
    if "=" in raw:
        return _dn(raw, raw)
    if "@" in raw:
        return Identity("email", None, "email:" + low, raw, "an RFC 822 (e-mail) identity")
    if style == "libreswan":
        # Libreswan resolves a bare host name through DNS and uses the address
        ident = _fqdn(raw, raw)
        return Identity(
            ident.kind,
            ident.spd,
            ident.key,
            raw,
            "a host name Libreswan resolves to an address; kept as fqdn:",
        )
    return _fqdn(raw, raw)


_FQDN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*\.?")


def _fqdn(name: str, raw: str) -> Identity:
    if not _FQDN.fullmatch(name):
        return Identity("other", None, raw, raw, f"'{name}' is not a host name")
    return Identity("fqdn", f"fqdn:{name.lower()}", f"fqdn:{name.lower()}", raw)


def _keyid(digits: str, raw: str) -> Identity:
    digits = digits.removeprefix("0x")
    if not digits or len(digits) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
        return Identity("other", None, raw, raw, f"'{raw}' is not a hex key id")
    return Identity("keyid", f"keyid:{digits.lower()}", f"keyid:{digits.lower()}", raw)


def _dn(text: str, raw: str) -> Identity:
    rfc = dn_to_rfc4514(text)
    if rfc is None:
        return Identity(
            "other", None, raw, raw, f"'{text}' is not a distinguished name the SPD can write"
        )
    key = "dn:" + re.sub(r",\s+", ",", rfc).lower()
    return Identity("dn", f'"{rfc}"', key, raw)


# -- traffic selectors ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """One side of a traffic selector: a prefix (None: the host's own address), an
    upper-layer protocol (0: any) and a port (0: any)."""

    net: Prefix | None = None
    proto: int = 0
    port: int = 0


def parse_net(text: str) -> Prefix | None:
    try:
        return parse_prefix(text.strip())
    except Problem:
        return None


def parse_proto(text: str) -> int | None:
    t = text.strip().lower()
    if t in ("", "%any", "any", "0"):
        return 0
    if t.isdigit():
        n = int(t)
        return n if n <= 255 else None
    aliases = {"icmpv6": 58, "ipv6-icmp": 58}
    if t in aliases:
        return aliases[t]
    return PROTOCOLS.get(t)


def parse_port(text: str) -> int | None:
    t = text.strip().lower()
    if t in ("", "%any", "any", "0"):
        return 0
    if t.isdigit():
        n = int(t)
        return n if n <= 65535 else None
    return SERVICES.get(t)


def proto_word(proto: int) -> str:
    names = {0: "any", 1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 58: "icmp6", 132: "sctp"}
    return names.get(proto, str(proto))


def has_ports(proto: int) -> bool:
    return proto in PORT_PROTOCOLS


# -- the SPD file ----------------------------------------------------------------------------------


@dataclass
class PeerSpec:
    """A gateway outside the cluster: its addresses (one per family) and identity."""

    hint: str
    addresses: list[Address]
    ike_id: str | None
    origin: str


@dataclass
class ConnSpec:
    """One SPD ``connection`` between the converted host and a peer."""

    hint: str
    origin: str  # "FILE:LINE ..." for the comment above it
    peer: PeerSpec
    mode: str = "tunnel"
    traffic: list[tuple[Selector, Selector]] = field(default_factory=list)
    auth: str = "certificate"
    psk: str | None = None  # the secret's name
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    send_cert: str | None = None
    ike: list[str] | None = None  # None: the SPD's default proposals
    esp: list[str] | None = None
    ah: list[str] | None = None
    protocols: tuple[str, ...] = ("esp",)
    ike_lifetime: int | None = None
    child_lifetime: int | None = None
    dpd: int | None = None  # 0: off
    start: str | None = None
    priority: int | None = None
    local_id: str | None = None  # "name" for 'id name'
    proposal_hint: str | None = None  # proposal names start with it (default: hint)


@dataclass
class RuleSpec:
    """A native ``bypass``/``discard`` rule limited to the converted host."""

    action: str  # bypass | discard
    origin: str
    local: Selector
    remote: Selector


_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
#: Words that would read as something else where a name goes in the SPD.
_RESERVED = frozenset(
    {"all", "lifetime", "between", "and", "traffic", "mode", "tunnel", "level", "auth",
     "ike", "esp", "ah", "dpd", "priority", "id", "start", "address", "name", "label",
     "off", "from", "to", "port", "on", "dir", "type", "code"}
)  # fmt: skip


def clean_name(text: str, fallback: str = "x") -> str:
    """A valid SPD name from arbitrary text (letters, digits, '_', '-', '.')."""
    name = _NAME_CHARS.sub("-", text).strip("-.") or fallback
    if not (name[0].isalpha() or name[0] == "_"):
        name = f"{fallback}-{name}"
    return name


class Names:
    """Unique SPD names in one namespace."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self.taken: set[str] = set(taken or ())

    def get(self, hint: str, fallback: str = "x") -> str:
        base = clean_name(hint, fallback)
        if base.lower() in _RESERVED:
            base = f"{base}-{fallback}"
        name, n = base, 2
        while name in self.taken:
            name = f"{base}-{n}"
            n += 1
        self.taken.add(name)
        return name


class Writer:
    """Builds the SPD text: the local node group, proposals, peers, connections, rules.

    Proposals with the same transforms are written once; peers with the same addresses
    and identity are one peer.  ``secrets`` maps the secret names the text references to
    their values; with ``inline`` the values are written into the text instead."""

    def __init__(self, source: str, fmt_label: str, options: ConvertOptions) -> None:
        self.source = source
        self.fmt_label = fmt_label
        self.options = options
        self.local_addresses: list[Address] = []
        self.conns: list[ConnSpec] = []
        self.rules: list[RuleSpec] = []
        self.secrets: dict[str, bytes] = {}
        self.header_notes: list[str] = []

    def add_local_address(self, addr: Address) -> None:
        if addr not in self.local_addresses:
            self.local_addresses.append(addr)

    def render(self, warnings: tuple[ConvertWarning, ...]) -> str:
        names = Names({self.options.group})
        peer_names: dict[tuple[tuple[str, ...], str | None], str] = {}
        peers_out: list[str] = []
        props: dict[tuple[str, tuple[str, ...]], str] = {}
        prop_names = {"ike": Names(), "esp": Names(), "ah": Names()}
        props_out: list[str] = []
        conns_out: list[str] = []

        def proposal(kind: str, hint: str, transforms: list[str] | None) -> str | None:
            if transforms is None:
                return None
            key = (kind, tuple(transforms))
            if key not in props:
                name = prop_names[kind].get(f"{hint}-{kind}", kind)
                props[key] = name
                props_out.append(f"proposal {kind} {name} {', '.join(transforms)};")
            return props[key]

        conn_names = Names()
        for c in self.conns:
            pkey = (tuple(str(a) for a in c.peer.addresses), c.peer.ike_id)
            if pkey not in peer_names:
                pname = names.get(c.peer.hint, "gw")
                peer_names[pkey] = pname
                clauses = ["address " + ", ".join(str(a) for a in c.peer.addresses)]
                if c.peer.ike_id is not None:
                    clauses.append(f"id {c.peer.ike_id}")
                peers_out.append(f"# {c.peer.origin}\npeer {pname} {{ {'; '.join(clauses)}; }}")
            pname = peer_names[pkey]
            cname = conn_names.get(c.hint, "conn")
            lines = [
                f"# {c.origin}",
                f"connection {cname} {{",
                f"    between {self.options.group} and {pname};",
            ]
            if c.mode == "tunnel":
                lines.append("    tunnel;")
            else:
                lines.append("    mode transport;")
            bare = [(Selector(), Selector())]
            for local, remote in [] if c.traffic == bare else c.traffic:
                lines.append(f"    {_traffic(local, remote)};")
            lines.append(f"    {self._auth(c)};")
            if c.local_id:
                lines.append(f"    id {c.local_id};")
            phint = c.proposal_hint or c.hint
            ike = proposal("ike", phint, c.ike)
            if ike is not None or c.ike_lifetime is not None:
                lines.append("    " + _child("ike", ike, c.ike_lifetime) + ";")
            if "esp" in c.protocols:
                esp = proposal("esp", phint, c.esp)
                life = c.child_lifetime
                lines.append("    " + _child("esp", esp, life) + ";")
            if "ah" in c.protocols:
                ah = proposal("ah", phint, c.ah)
                life = c.child_lifetime if "esp" not in c.protocols else None
                lines.append("    " + _child("ah", ah, life) + ";")
            if c.dpd is not None:
                lines.append(f"    dpd {'off' if c.dpd == 0 else duration_text(c.dpd)};")
            if c.priority is not None:
                lines.append(f"    priority {c.priority};")
            if c.start is not None:
                lines.append(f"    start {c.start};")
            lines.append("}")
            conns_out.append("\n".join(lines))

        out = [
            f"# Converted by 'ipsecctl convert' from {self.source}",
            f'# ({self.fmt_label}).  Review it before use: docs/spd.md, "Converting from',
            '# strongSwan, Libreswan and setkey", says what maps to what; the warnings at',
            "# the end list what was not carried.",
        ]
        if self.secrets and not self.options.inline_secrets:
            out.append("# Pre-shared keys are secret:NAME references: the values are in the")
            out.append("# secrets file written with it (ipsecd --secrets FILE).")
        out += [f"# {n}" for n in self.header_notes]
        out.append("")
        if self.conns or self.rules:
            out.append(self._group())
            out.append("")
        if props_out:
            out += props_out
            out.append("")
        for block in peers_out:
            out += [block, ""]
        for block in conns_out:
            out += [block, ""]
        for r in self.rules:
            out += [f"# {r.origin}", _rule(r, self.options.group), ""]
        if not (self.conns or self.rules):
            out += ["# (nothing to convert)", ""]
        if warnings:
            out.append(f"# Not carried ({len(warnings)} warnings):")
            out += [f"#   {w.location()}: {w.message}" for w in warnings]
        return "\n".join(out).rstrip("\n") + "\n"

    def _group(self) -> str:
        g = self.options.group
        if self.options.nodes:
            return f"nodes {g} name {', '.join(self.options.nodes)};   # the converted host"
        if self.local_addresses:
            nets = ", ".join(f"{a}/{a.max_prefixlen}" for a in self.local_addresses)
            return f"nodes {g} address {nets};   # the converted host, by its addresses"
        return f"nodes {g} name {g};   # the converted host: name its cluster node here (--node)"

    def _auth(self, c: ConnSpec) -> str:
        if c.auth == "psk":
            assert c.psk is not None
            if self.options.inline_secrets and c.psk in self.secrets:
                return f"auth psk {spd_literal(self.secrets[c.psk])}"
            return f"auth psk secret:{c.psk}"
        parts = ["auth certificate"]
        if c.ca:
            parts.append(f'ca "{c.ca}"')
        if c.cert and c.key:
            parts.append(f'cert "{c.cert}" key "{c.key}"')
        if c.send_cert and c.send_cert != "always":  # the SPD's default
            parts.append(f"sendcert {c.send_cert}")
        return " ".join(parts)


def finish(fmt: str, writer: Writer, report: Report) -> Conversion:
    """The :class:`Conversion` of a filled writer."""
    opts = writer.options
    if (writer.conns or writer.rules) and not opts.nodes and not writer.local_addresses:
        report.warn(
            writer.source,
            0,
            f"the file does not give this host's address (%defaultroute, %any): the node "
            f"group '{opts.group}' selects a node named '{opts.group}'; give --node NAME",
        )
    used = {c.psk for c in writer.conns if c.auth == "psk"}
    writer.secrets = {n: v for n, v in writer.secrets.items() if n in used}
    warnings = report.sorted_warnings()
    text = writer.render(warnings)
    secrets = {} if writer.options.inline_secrets else dict(writer.secrets)
    return Conversion(fmt, text, secrets, warnings, tuple(report.notes))


def _child(kind: str, proposal: str | None, lifetime: int | None) -> str:
    text = kind
    if proposal is not None:
        text += f" {proposal}"
    if lifetime is not None:
        text += f" lifetime {duration_text(lifetime)}"
    return text


def _traffic(local: Selector, remote: Selector) -> str:
    proto = local.proto or remote.proto
    words = ["traffic"]
    if proto:
        words.append(proto_word(proto))
    if local.net is not None or local.port:
        words.append("from " + (local.net.with_prefixlen if local.net is not None else "@node"))
        if local.port:
            words.append(f"port {local.port}")
    if remote.net is not None or remote.port:
        words.append("to " + (remote.net.with_prefixlen if remote.net is not None else "@node"))
        if remote.port:
            words.append(f"port {remote.port}")
    return " ".join(words)


def _rule(r: RuleSpec, group: str) -> str:
    proto = r.local.proto or r.remote.proto
    words = [r.action]
    if proto:
        words.append(proto_word(proto))
    words.append("from " + (r.local.net.with_prefixlen if r.local.net is not None else "@self"))
    if r.local.port:
        words.append(f"port {r.local.port}")
    words.append("to " + (r.remote.net.with_prefixlen if r.remote.net is not None else "any"))
    if r.remote.port:
        words.append(f"port {r.remote.port}")
    words.append(f"on {group}")
    return " ".join(words) + ";"
