"""OpenIKED ``iked`` as a real IKEv2 test peer, one instance per network namespace.

The counterpart of tests/support/charon.py for OpenIKED 7.2 (Debian ``openiked``).
Facts this module is built on (shared/LAB-NOTES.md and docs/operations.md, "Libreswan
and OpenIKED peers", re-measured here):

* scripts/install-lab-peers.sh unpacks the package into :data:`OPENIKED_ROOT` (its
  maintainer scripts would start and enable a system-wide iked) and adds the system
  user ``_iked`` iked drops privileges to; :data:`INSTALL_HINT` names that fix.
* On Linux iked installs SAs and flows through PF_KEY (the ``af_key`` module, which
  scripts/lab.py loads in the VM; the host kernel has none, so iked exits at start
  there: "failed to open PF_KEY socket").  It adds no routes.
* Through PF_KEY the kernel cannot take ESP with AES-GCM, ChaCha20-Poly1305 or
  HMAC-SHA2-256 from iked (it drops such CHILD proposals, or agrees to SHA2-256 and
  then fails to install it): :class:`Conn` refuses those ESP proposals unless told
  ``unchecked=True``; offer AES-CBC with HMAC-SHA2-384/512.  IKE SA algorithms are
  unrestricted.
* iked's certificate process chroots into ``/etc/iked``: every instance runs in a
  private mount namespace with its own ``workdir/etc-iked`` bind-mounted there (an
  empty mount point the install script creates), so instances share nothing.
* The configuration file must be mode 0600 (iked refuses others); the PSKs live in it
  and nowhere else.  ``-s`` gives each instance its own control socket; ``ikectl -s
  SOCK load FILE`` re-reads the configuration, ``ikectl show sa`` lists the SAs.
* iked has no "initiate" command: ``active`` policies are initiated as soon as they
  are loaded (and again after a failure), ``passive`` ones only answer.
  :meth:`Iked.initiate` therefore re-loads the configuration with that policy
  active; :meth:`Iked.terminate` makes it passive again and deletes its SAs.
* ``-v`` logs the parsed configuration, PSKs included (as hex): :meth:`Iked.log_text`
  redacts them.  The fixture runs ``-vv``: configuration loads are only logged at
  that level (:meth:`Iked.load` waits for them); ``-vvv`` would dump key material.
* A configuration load is asynchronous: the ikev2 process ignores IKE_SA_INIT for a
  policy until it logs "config_getcompile: compilation done" (in one lab run that
  had not happened when charon gave up retransmitting, ~5 s after the load):
  :meth:`Iked.load` waits for that line.
* Certificates (:class:`Certs`, ``Iked(certs=...)``): iked signs with
  ``/etc/iked/private/local.key`` whatever the certificate, so the fixture writes the
  certificate's key there (and ``local.pub``), the certificate followed by its
  intermediates in ``certs/local.crt`` (iked sends the intermediates it finds among
  its CAs, and takes the certificates after the first of a ``certs/`` file as CAs;
  an intermediate in a file of its own is never sent), the trust anchors under
  ``ca/``, before iked starts.  iked 7.2 reads only the first CERT payload of a
  peer ("multiple cert payloads, ignoring"), so the intermediates of the peers'
  chains must be among its ``cas`` too, or it refuses them ("ca_validate_cert: ...
  unable to get local issuer certificate").  A :class:`Conn` with ``auth`` other than ``"psk"``
  has no ``psk`` word: ``"sig"`` lets iked pick the signature method (RFC 7427 when
  the peer announced hashes), other values are iked.conf's ``ikeauth`` words
  (``rfc7427``, ``ecdsa256``, ``rsa``...).  IKE fragmentation (RFC 7383) is off
  unless the globals say ``set fragmentation``.
* DPD is global in iked (``set dpd_check_interval``): the smallest ``dpd_delay`` of
  the loaded policies wins.  iked.conf has no rekey margin: CHILD SA rekeying is
  driven by ``lifetime`` alone (use a short one to force rekeys); ``ikelifetime 0``
  (iked's default) disables IKE SA rekeying.

Proposals are written as for strongSwan (``aes256-sha256-modp2048``, ``aes256-sha512``)
and translated to iked.conf's ``ikesa``/``childsa`` words (:func:`iked_transforms`).

Typical use (kernel lab only)::

    with Iked.started(ns, tmp_path / "iked") as iked:
        iked.load([Conn("peer", "fd00::2", "fd00::1", "iked.test", "charon.test", psk,
                        mode="transport", esp_proposals=("aes256-sha512",))])
        sas = iked.list_sas()

Every wait is bounded; :meth:`Iked.stop` always kills the daemon.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.support.netns import Netns

LAB_PEERS = Path(os.environ.get("IPSECD_LAB_PEERS", "/opt/ipsecd-lab"))
OPENIKED_ROOT = LAB_PEERS / "openiked"
IKED_BIN = OPENIKED_ROOT / "usr" / "sbin" / "iked"
IKECTL_BIN = OPENIKED_ROOT / "usr" / "sbin" / "ikectl"
#: iked's compiled-in CA folder (its certificate process chroots there).
ETC_IKED = Path("/etc/iked")
IKED_USER = "_iked"
INSTALL_HINT = "run `make deps` as root (scripts/install-lab-peers.sh unpacks OpenIKED)"
# Sub-folders iked expects under /etc/iked (as the package ships them).
_ETC_DIRS = ("ca", "certs", "crls", "private", "pubkeys/fqdn", "pubkeys/ipv4",
             "pubkeys/ipv6", "pubkeys/ufqdn")  # fmt: skip
AF_KEY = 15  # PF_KEY (RFC 2367); not in Python's socket module
PF_KEY_V2 = 2


class IkedError(RuntimeError):
    """iked could not be started, configured or driven; the message says where and why."""


# -- proposals ----------------------------------------------------------------------------

# strongSwan proposal keywords → (kind, iked.conf word).  "aead" ciphers carry their own
# integrity (RFC 5282, RFC 7634); "prf" keywords only exist for IKE SAs.
_IKED_TOKENS: Mapping[str, tuple[str, str]] = {
    "aes128": ("encr", "aes-128"),
    "aes192": ("encr", "aes-192"),
    "aes256": ("encr", "aes-256"),
    "aes128ctr": ("encr", "aes-128-ctr"),
    "aes256ctr": ("encr", "aes-256-ctr"),
    "3des": ("encr", "3des"),
    "aes128gcm16": ("aead", "aes-128-gcm"),
    "aes256gcm16": ("aead", "aes-256-gcm"),
    "aes128gcm12": ("aead", "aes-128-gcm-12"),
    "aes256gcm12": ("aead", "aes-256-gcm-12"),
    "chacha20poly1305": ("aead", "chacha20-poly1305"),
    "sha1": ("integ", "hmac-sha1"),
    "sha256": ("integ", "hmac-sha2-256"),
    "sha384": ("integ", "hmac-sha2-384"),
    "sha512": ("integ", "hmac-sha2-512"),
    "prfsha1": ("prf", "hmac-sha1"),
    "prfsha256": ("prf", "hmac-sha2-256"),
    "prfsha384": ("prf", "hmac-sha2-384"),
    "prfsha512": ("prf", "hmac-sha2-512"),
    "modp2048": ("dh", "modp2048"),
    "modp3072": ("dh", "modp3072"),
    "modp4096": ("dh", "modp4096"),
    "ecp256": ("dh", "ecp256"),
    "ecp384": ("dh", "ecp384"),
    "ecp521": ("dh", "ecp521"),
    "curve25519": ("dh", "curve25519"),
    "esn": ("esn", "esn"),
    "noesn": ("esn", "noesn"),
}
#: ESP transforms iked cannot install through PF_KEY on Linux (LAB-NOTES).
UNINSTALLABLE_ESP = frozenset({"aes128gcm16", "aes256gcm16", "aes128gcm12", "aes256gcm12",
                               "chacha20poly1305", "sha256"})  # fmt: skip


def iked_transforms(proposal: str, *, ike: bool) -> str:
    """One strongSwan-style proposal as the words after ``ikesa``/``childsa``.

    For IKE a non-AEAD proposal without ``prfNNN`` uses its integrity algorithm as
    PRF too, as strongSwan does.
    """
    words: list[str] = []
    kinds: dict[str, list[str]] = {}
    for tok in proposal.split("-"):
        if tok not in _IKED_TOKENS:
            raise ValueError(
                f"proposal {proposal!r}: unknown keyword {tok!r} "
                f"(known: {', '.join(sorted(_IKED_TOKENS))})"
            )
        kind, name = _IKED_TOKENS[tok]
        kinds.setdefault(kind, []).append(name)
    ciphers = kinds.get("encr", []) + kinds.get("aead", [])
    if len(ciphers) != 1:
        raise ValueError(f"proposal {proposal!r}: name exactly one cipher")
    if kinds.get("aead") and kinds.get("integ"):
        raise ValueError(f"proposal {proposal!r}: an AEAD cipher takes no integrity")
    words += ["enc", ciphers[0]]
    for integ in kinds.get("integ", []):
        words += ["auth", integ]
    if ike:
        prfs = kinds.get("prf") or ([] if kinds.get("aead") else kinds.get("integ", []))
        if not prfs:
            raise ValueError(f"proposal {proposal!r}: an AEAD IKE proposal needs prfNNN")
        for prf in prfs:
            words += ["prf", prf]
        if not kinds.get("dh"):
            raise ValueError(f"proposal {proposal!r}: an IKE proposal needs a DH group")
    elif kinds.get("prf"):
        raise ValueError(f"proposal {proposal!r}: ESP has no PRF")
    for group in kinds.get("dh", []):
        words += ["group", group]
    if not ike:
        words += kinds.get("esn", [])
    return " ".join(words)


# -- policies -----------------------------------------------------------------------------


def _quote(text: str, what: str) -> str:
    if '"' in text or "\n" in text or "\\" in text:
        raise ValueError(f"{what} cannot hold quotes, backslashes or newlines")
    return f'"{text}"'


def iked_id(ident: str) -> str:
    """An identity as iked.conf's srcid/dstid wants it (strongSwan's ``@`` dropped):
    an address becomes IPV4/IPV6, ``user@host`` UFQDN, anything else FQDN."""
    return ident[1:] if ident.startswith("@") else ident


@dataclass(frozen=True, slots=True)
class Certs:
    """iked's own certificate (PEM) and key, written under its ``/etc/iked`` at start
    (see the module doc): ``intermediates`` go to ``certs/local.crt`` after the
    certificate, ``cas`` (the anchors peers' certificates must chain to, and the
    intermediates of their chains: iked 7.2 ignores every CERT payload after the
    first) to ``ca/``."""

    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    intermediates: tuple[bytes, ...] = field(default=(), repr=False)
    cas: tuple[bytes, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class Conn:
    """One IKEv2 policy with PSK authentication (iked.conf ``ikev2 "NAME" ...``), or
    with certificates when ``auth`` is not ``"psk"`` (``psk`` unused then).

    Addresses and IDs are this side's (``local``/``srcid``) and the peer's
    (``peer``/``dstid``).  Traffic selectors default to the two addresses; every
    local selector is paired with every remote one (``from A to B`` each).  Times are
    in seconds.  ``auto="start"`` makes the policy ``active`` (iked initiates it at
    once and after failures), ``"add"`` ``passive`` (it only responds).
    """

    name: str
    local_addr: str
    remote_addr: str
    local_id: str
    remote_id: str
    psk: str = field(repr=False)
    ike_proposals: tuple[str, ...] = ("aes256gcm16-prfsha384-ecp384",)
    esp_proposals: tuple[str, ...] = ("aes256-sha512",)
    mode: str = "tunnel"  # "tunnel" | "transport"
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()
    proto: str | None = None  # upper-layer protocol of the selectors: "tcp", "udp", ...
    local_port: int | None = None
    remote_port: int | None = None
    ikelifetime: int = 0  # 0: no IKE SA rekeying (iked's default)
    salifetime: int = 10800  # CHILD SA lifetime (iked.conf ``lifetime``)
    sa_bytes: int | None = None  # CHILD SA byte lifetime
    dpd_delay: int = 60  # global in iked: the smallest of all loaded policies; 0 = off
    auto: str = "add"  # "add" (passive) | "start" (active)
    # Further words appended to the policy verbatim (e.g. ("tag", '"x"')).
    extra: tuple[str, ...] = ()
    # Skip the check against ESP transforms iked cannot install on Linux.
    unchecked: bool = False
    # "psk", "sig" (certificates, iked picks the signature method), or an iked.conf
    # ikeauth word: "rfc7427", "ecdsa256", "ecdsa384", "ecdsa521", "rsa".
    auth: str = "psk"

    def __post_init__(self) -> None:
        if self.mode not in ("tunnel", "transport"):
            raise ValueError(f"policy {self.name}: mode must be tunnel or transport")
        if self.auto not in ("add", "start"):
            raise ValueError(f"policy {self.name}: auto must be add or start")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"policy name {self.name!r}: use letters, digits, _ . -")
        _quote(self.psk, f"policy {self.name}: the PSK")
        if self.auth not in ("psk", "sig", "rfc7427", "ecdsa256", "ecdsa384", "ecdsa521", "rsa"):
            raise ValueError(f"policy {self.name}: unknown auth {self.auth!r}")
        if not self.unchecked:
            for prop in self.esp_proposals:
                bad = UNINSTALLABLE_ESP.intersection(prop.split("-"))
                if bad:
                    raise ValueError(
                        f"policy {self.name}: ESP proposal {prop!r} uses {sorted(bad)}, "
                        "which iked cannot install through PF_KEY on Linux; offer AES-CBC "
                        "with HMAC-SHA2-384/512 (e.g. aes256-sha512), or pass unchecked=True"
                    )

    def render(self) -> str:
        """The ``ikev2`` policy (the PSK included: the file is 0600)."""
        lines = [
            f'ikev2 "{self.name}" {"active" if self.auto == "start" else "passive"} {self.mode} esp'
        ]
        if self.proto:
            lines.append(f"proto {self.proto}")
        lports = f" port {self.local_port}" if self.local_port else ""
        rports = f" port {self.remote_port}" if self.remote_port else ""
        for lts in self.local_ts or (self.local_addr,):
            for rts in self.remote_ts or (self.remote_addr,):
                lines.append(f"from {lts}{lports} to {rts}{rports}")
        lines.append(f"local {self.local_addr} peer {self.remote_addr}")
        for prop in self.ike_proposals:
            lines.append(f"ikesa {iked_transforms(prop, ike=True)}")
        for prop in self.esp_proposals:
            lines.append(f"childsa {iked_transforms(prop, ike=False)}")
        lines.append(
            f"srcid {_quote(iked_id(self.local_id), 'srcid')} "
            f"dstid {_quote(iked_id(self.remote_id), 'dstid')}"
        )
        life = f"ikelifetime {self.ikelifetime} lifetime {self.salifetime}"
        if self.sa_bytes is not None:
            life += f" bytes {self.sa_bytes}"
        lines.append(life)
        lines += list(self.extra)
        if self.auth == "psk":
            lines.append(f"psk {_quote(self.psk, 'psk')}")
        elif self.auth != "sig":
            lines.append(self.auth)
        return " \\\n    ".join(lines) + "\n"


def render_iked_conf(conns: Sequence[Conn], *, globals_: Sequence[str] = ()) -> str:
    """The whole iked.conf: global settings, then one policy per conn."""
    delays = [c.dpd_delay for c in conns]
    dpd = min(delays) if delays else 60
    out = [f"set dpd_check_interval {dpd}\n", *(f"{g}\n" for g in globals_)]
    out += ["\n", *(c.render() for c in conns)]
    return "".join(out)


# -- status -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildSa:
    """One CHILD SA *direction* pair as ``ikectl show sa`` lists it: iked keeps an
    inbound and an outbound entry per CHILD SA, joined here by their peer link."""

    protocol: str  # "ESP" | "AH"
    spi_in: int
    spi_out: int
    loaded: bool  # both directions installed in the kernel


@dataclass(frozen=True, slots=True)
class Flow:
    protocol: str
    direction: str  # "in" | "out"
    src: str
    dst: str


@dataclass(frozen=True, slots=True)
class IkeSa:
    """One IKE SA of ``ikectl show sa``, with its CHILD SAs and flows."""

    ispi: int
    rspi: int
    local: str  # "addr:port"
    remote: str
    remote_id: str  # e.g. "FQDN/charon.test"
    state: str  # e.g. "ESTABLISHED"
    initiator: bool
    children: tuple[ChildSa, ...] = ()
    flows: tuple[Flow, ...] = ()
    policy: str = ""  # the policy name, from iked's log
    algorithms: str = ""  # IKE SA transforms, from iked's log
    child_algorithms: str = ""  # newest CHILD SA transforms, from iked's log

    @property
    def established(self) -> bool:
        return self.state == "ESTABLISHED"


_SA_LINE = re.compile(
    r"^iked_sas: (?P<ptr>\S+) rspi (?P<rspi>0x[0-9a-f]+) ispi (?P<ispi>0x[0-9a-f]+) "
    r"(?P<local>\S+)->(?P<remote>\S+)<(?P<dstid>[^>]*)>\[[^\]]*\] (?P<state>\S+) (?P<role>[ir])"
)
_CHILD_LINE = re.compile(
    r"^\s*sa_childsas: (?P<ptr>\S+) (?P<proto>\S+) (?P<spi>0x[0-9a-f]+) (?P<dir>in|out) "
    r"(?P<src>\S+) -> (?P<dst>\S+) \((?P<flags>[^)]*)\) B=(?P<bundle>\S+) P=(?P<peer>\S+)"
)
_FLOW_LINE = re.compile(
    r"^\s*sa_flows: (?P<ptr>\S+) (?P<proto>\S+) (?P<dir>in|out) (?P<src>\S+) -> (?P<dst>\S+) "
)


def parse_show_sa(text: str) -> list[IkeSa]:
    """``ikectl show sa`` → IKE SAs with CHILD SAs (in/out joined) and flows."""
    out: list[IkeSa] = []
    current: dict[str, Any] | None = None
    entries: list[dict[str, Any]] = []

    def flush() -> None:
        if current is None:
            return
        by_ptr = {e["ptr"]: e for e in current["childs"]}
        children, seen = [], set()
        for e in current["childs"]:
            if e["ptr"] in seen or e["dir"] != "in":
                continue
            other = by_ptr.get(e["peer"]) or by_ptr.get(e["bundle"])
            seen.update({e["ptr"], other["ptr"] if other else ""})
            children.append(
                ChildSa(
                    protocol=e["proto"],
                    spi_in=int(e["spi"], 16),
                    spi_out=int(other["spi"], 16) if other else 0,
                    loaded="L" in e["flags"] and (other is None or "L" in other["flags"]),
                )
            )
        out.append(replace(current["sa"], children=tuple(children), flows=tuple(current["flows"])))

    for raw in text.splitlines():
        m = _SA_LINE.match(raw)
        if m:
            flush()
            current = {
                "sa": IkeSa(
                    ispi=int(m["ispi"], 16),
                    rspi=int(m["rspi"], 16),
                    local=m["local"],
                    remote=m["remote"],
                    remote_id=m["dstid"],
                    state=m["state"],
                    initiator=m["role"] == "i",
                ),
                "childs": [],
                "flows": [],
            }
            continue
        if current is None:
            continue
        m = _CHILD_LINE.match(raw)
        if m:
            entries.append(m.groupdict())
            current["childs"].append(m.groupdict())
            continue
        m = _FLOW_LINE.match(raw)
        if m:
            current["flows"].append(Flow(m["proto"], m["dir"], m["src"], m["dst"]))
        elif raw and not raw[0].isspace():
            flush()  # the next section (iked_activesas, iked_flows, ...)
            current = None
    flush()
    return out


# "spi=0x…: established peer A[ID] local B[ID] policy 'NAME' as initiator (enc … prf …)"
_ESTABLISHED = re.compile(
    r"spi=(?P<spi>0x[0-9a-f]+): established peer .*?policy '(?P<policy>[^']*)'"
    r".*?\((?P<algs>[^)]*)\)"
)
_LOADED = re.compile(r"spi=(?P<spi>0x[0-9a-f]+): .*?loaded SPIs: .*?\((?P<algs>[^)]*)\)")


def _log_facts(log: str) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    established: dict[int, tuple[str, str]] = {}
    loaded: dict[int, str] = {}
    for m in _ESTABLISHED.finditer(log):
        established[int(m["spi"], 16)] = (m["policy"], m["algs"])
    for m in _LOADED.finditer(log):
        loaded[int(m["spi"], 16)] = m["algs"]
    return established, loaded


# -- the daemon ---------------------------------------------------------------------------


class Iked:
    """One running iked in ``netns``; all its files under ``workdir``."""

    def __init__(
        self,
        netns: Netns,
        workdir: Path,
        *,
        verbosity: int = 2,
        globals_: Sequence[str] = (),
        certs: Certs | None = None,
    ) -> None:
        self.netns = netns
        self.workdir = Path(workdir)
        self.certs = certs  # written under etc-iked at start
        # -v count: 1 logs established SAs and their transforms, 2 also configuration
        # loads (which :meth:`load` waits for); keys are only dumped from 3 on.
        self.verbosity = verbosity
        self.globals = tuple(globals_)  # extra "set ..." lines, e.g. "set nomobike"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conns: dict[str, Conn] = {}

    # -- files ---------------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.workdir / "iked.conf"

    @property
    def sock_path(self) -> Path:
        return self.workdir / "iked.sock"

    @property
    def etc_path(self) -> Path:
        return self.workdir / "etc-iked"

    @property
    def log_path(self) -> Path:
        return self.workdir / "iked.log"

    def _redact(self, text: str) -> str:
        for conn in self.conns.values():
            if conn.psk:
                text = text.replace(conn.psk, "<psk>")
                text = text.replace("0x" + conn.psk.encode().hex(), "<psk>")
        return text

    def log_text(self) -> str:
        """iked's log (stderr with ``-d``), PSKs redacted."""
        try:
            return self._redact(self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _write_conf(self) -> None:
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(render_iked_conf(list(self.conns.values()), globals_=self.globals))
        os.chmod(self.conf_path, 0o600)  # iked refuses a group/world-readable file

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def started(cls, netns: Netns, workdir: Path, **kw: Any) -> Iterator[Iked]:
        """Start iked, yield it, always stop (kill) it."""
        iked = cls(netns, workdir, **kw)
        try:
            iked.start()
            yield iked
        finally:
            iked.stop()

    @staticmethod
    def check_installed() -> None:
        """Raise :class:`IkedError` naming the fix when something iked needs is missing."""
        for path in (IKED_BIN, IKECTL_BIN):
            if not os.access(path, os.X_OK):
                raise IkedError(f"{path} not found: {INSTALL_HINT}")
        try:
            pwd.getpwnam(IKED_USER)
        except KeyError:
            raise IkedError(f"system user {IKED_USER} missing: {INSTALL_HINT}") from None
        if not ETC_IKED.is_dir():
            raise IkedError(f"mount point {ETC_IKED} missing: {INSTALL_HINT}")
        try:
            socket.socket(AF_KEY, socket.SOCK_RAW, PF_KEY_V2).close()
        except OSError as exc:
            raise IkedError(
                f"no PF_KEY socket ({exc.strerror}): iked needs the af_key kernel module; "
                "run in the kernel lab (scripts/lab.py loads it) or `modprobe af_key`"
            ) from None

    def _write_certs(self, certs: Certs) -> None:
        """The certificate's key as iked's local key pair, the certificates under
        ``certs/`` and ``ca/`` (see :class:`Certs`)."""
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(certs.key, None)
        path = self.etc_path / "private" / "local.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(certs.key)
        (self.etc_path / "local.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        # One file, the certificate first: iked stores the certificates after the
        # first one of a certs/ file among its CAs, where it looks for the chain it
        # sends (an intermediate in a file of its own is never sent)
        (self.etc_path / "certs" / "local.crt").write_bytes(
            certs.cert + b"".join(certs.intermediates)
        )
        for i, pem in enumerate(certs.cas):
            (self.etc_path / "ca" / f"ca-{i}.crt").write_bytes(pem)

    def _make_local_key(self) -> None:
        """iked refuses to start without a local key pair, even for PSK policies
        ("config_setkeys: failed to open private key"); make one per instance, as the
        package's postinst does for /etc/iked."""
        key = self.etc_path / "private" / "local.key"
        if self.certs is not None:
            self._write_certs(self.certs)
            return
        if key.exists():
            return
        for argv in (
            ["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(key)],
            ["openssl", "ec", "-in", str(key), "-pubout", "-out", str(self.etc_path / "local.pub")],
        ):
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
            if proc.returncode != 0:
                raise IkedError(
                    f"`{' '.join(argv[:2])}` for iked's local key failed: {proc.stderr}"
                )
        os.chmod(key, 0o600)

    def start(self, timeout: float = 60.0) -> None:
        """Write an empty configuration, start iked, wait until ``ikectl`` gets answers."""
        self.check_installed()
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        for sub in _ETC_DIRS:
            (self.etc_path / sub).mkdir(parents=True, exist_ok=True)
        # iked's certificate process reads these folders as _iked: explicit modes, not
        # whatever the umask of this process is
        for folder in (self.etc_path, *(p for p in self.etc_path.rglob("*") if p.is_dir())):
            os.chmod(folder, 0o755)
        self._make_local_key()
        self._write_conf()
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        flags = "-d" + "v" * self.verbosity
        script = (
            f'mount --bind "{self.etc_path}" "{ETC_IKED}" && '
            f'exec "{IKED_BIN}" {flags} -f "{self.conf_path}" -s "{self.sock_path}"'
        )
        out = self.log_path.open("wb")
        try:
            # ip netns exec → unshare → sh all exec(), so proc.pid ends up being iked's
            # parent process; its privsep children share its process group.
            self.proc = self.netns.popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise IkedError(
                    f"iked in netns {self.netns.name} exited with {self.proc.returncode} "
                    f"during start-up; log tail:\n{self.log_tail()}\n"
                    f"{self._etc_listing()}"
                )
            if self.sock_path.exists():
                # the socket may exist before iked answers on it (a busy start under
                # emulation): a probe that hangs is retried until the deadline
                left = max(1.0, min(30.0, deadline - time.monotonic()))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if self._ikectl_raw(["show", "sa"], timeout=left).returncode == 0:
                        return
            time.sleep(0.1)
        self.stop()
        raise IkedError(
            f"iked in netns {self.netns.name} did not answer on {self.sock_path} within "
            f"{timeout:.0f} s; log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop iked: SIGTERM to its process group, SIGKILL after ``timeout``.  Never raises."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        # The privsep children may outlive the parent for a moment: clear the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- ikectl --------------------------------------------------------------------------

    def _ikectl_raw(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        # The control socket is a file: ikectl need not enter the namespace.
        return subprocess.run(
            [str(IKECTL_BIN), "-s", str(self.sock_path), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def ikectl(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``ikectl -s SOCK ARGS``; raise on failure; return its output."""
        if not self.running:
            raise IkedError(
                f"iked in netns {self.netns.name} is not running (ikectl {' '.join(args)}); "
                f"log tail:\n{self.log_tail()}"
            )
        try:
            proc = self._ikectl_raw(args, timeout)
        except subprocess.TimeoutExpired as exc:
            raise IkedError(
                f"`ikectl {' '.join(args)}` did not finish within {timeout:g} s"
            ) from exc
        output = self._redact(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise IkedError(
                f"`ikectl {' '.join(args)}` exited {proc.returncode}: {output.strip()}\n"
                f"log tail:\n{self.log_tail()}"
            )
        return output

    def _reload(self) -> None:
        self._write_conf()
        # Check the file first: iked itself only logs a syntax error and keeps its old
        # policies.  -n parses and exits (no namespace, no PF_KEY needed).
        check = subprocess.run(
            [str(IKED_BIN), "-n", "-f", str(self.conf_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if check.returncode != 0:
            raise IkedError(
                f"iked -n rejects {self.conf_path}: {self._redact(check.stderr).strip()}\n"
                f"--- config (PSKs redacted) ---\n{self._redact(self.conf_path.read_text())}"
            )
        mark = self._log_size()
        self.ikectl("load", str(self.conf_path))
        if self.verbosity < 2:
            return  # the messages below are debug messages
        # The parent parses the file, then hands the policies to the ikev2 process;
        # until that one logs "compilation done" it ignores IKE_SA_INIT requests for
        # them (seen in the lab: charon's retransmissions, ~5 s, went unanswered).
        # 180 s: under TCG on a loaded 2-core host the ca process's key exchange with the
        # ikev2 process once took over 60 s (a full lab run of 21 minutes)
        deadline = time.monotonic() + 180
        while "config_getcompile: compilation done" not in self._log_since(mark):
            if time.monotonic() > deadline:
                raise IkedError(
                    f"iked did not finish loading {self.conf_path} within 180 s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return self._redact(f.read().decode(errors="replace"))

    def load(self, conns: Sequence[Conn]) -> None:
        """Add (or replace, by name) policies and re-load the 0600 configuration.
        ``auto="start"`` policies are initiated by iked right away."""
        for conn in conns:
            self.conns[conn.name] = conn
        self._reload()

    def initiate(self, name: str, *, timeout: float = 120.0) -> IkeSa:
        """Make policy ``name`` active (iked then initiates it) and wait until its IKE
        SA is established with a loaded CHILD SA; return it, or raise with the log."""
        conn = self.conns[name]
        if conn.auto != "start":
            self.conns[name] = replace(conn, auto="start")
            self._reload()
        return self.wait_established(name, timeout=timeout)

    def wait_established(self, name: str, *, timeout: float = 120.0) -> IkeSa:
        """Wait (bounded) until an IKE SA of policy ``name`` is established with a loaded
        CHILD SA (iked's role does not matter); return it."""
        deadline = time.monotonic() + timeout
        while True:
            for sa in self.list_sas():
                if sa.policy == name and sa.established and any(c.loaded for c in sa.children):
                    return sa
            if time.monotonic() > deadline:
                raise IkedError(
                    f"iked in netns {self.netns.name}: no established SA for {name} within "
                    f"{timeout:g} s\nshow sa:\n{self.ikectl('show', 'sa').strip()}\n"
                    f"log tail:\n{self.log_tail(60)}"
                )
            time.sleep(0.5)

    def terminate(self, name: str) -> None:
        """Make policy ``name`` passive and delete its IKE SAs (``ikectl reset id``,
        the peer is told, RFC 7296 1.4.1)."""
        conn = self.conns[name]
        if conn.auto == "start":
            self.conns[name] = replace(conn, auto="add")
            self._reload()
        # reset id wants the ID as show sa prints it, type included (FQDN/name).
        for remote_id in {sa.remote_id for sa in self.list_sas() if sa.policy == name}:
            self.ikectl("reset", "id", remote_id)

    def list_sas(self) -> list[IkeSa]:
        """``ikectl show sa`` parsed, with policy names and algorithms from iked's log
        (``-v`` logs them when SAs are established)."""
        sas = parse_show_sa(self.ikectl("show", "sa"))
        established, loaded = _log_facts(self.log_text())
        out = []
        for sa in sas:
            policy, algs = established.get(sa.ispi) or established.get(sa.rspi) or ("", "")
            if not policy:
                # an IKE SA made by a rekey (RFC 7296 2.18) has no "established" line
                # of its own: the one loaded policy between the two addresses names it
                policy = self._policy_by_addresses(sa)
            child_algs = loaded.get(sa.ispi) or loaded.get(sa.rspi) or ""
            out.append(replace(sa, policy=policy, algorithms=algs, child_algorithms=child_algs))
        return out

    def _etc_listing(self) -> str:
        """What iked's certificate process sees under /etc/iked (for start-up failures:
        it reads those folders as ``_iked``)."""
        proc = subprocess.run(
            ["ls", "-laR", str(self.etc_path)], capture_output=True, text=True, check=False
        )
        user = subprocess.run(["id", "_iked"], capture_output=True, text=True, check=False)
        umask = os.umask(0o022)
        os.umask(umask)
        return (
            f"etc-iked ({self.etc_path}), umask {umask:04o}, {user.stdout.strip()}:\n"
            f"{proc.stdout}{proc.stderr}"
        )

    def _policy_by_addresses(self, sa: IkeSa) -> str:
        hosts = (sa.local.rsplit(":", 1)[0].strip("[]"), sa.remote.rsplit(":", 1)[0].strip("[]"))
        names = [c.name for c in self.conns.values() if (c.local_addr, c.remote_addr) == hosts]
        return names[0] if len(names) == 1 else ""

    def kernel_states(self) -> str:
        """``ip xfrm state`` in iked's namespace (what PF_KEY installed), keys redacted."""
        text = self.netns.run(["ip", "xfrm", "state"], check=False).stdout
        return re.sub(r"0x[0-9a-f]{16,}", "<key>", text)
