"""Libreswan ``pluto`` as a real IKEv2 test peer, one instance per network namespace.

The counterpart of tests/support/charon.py for Libreswan 4.10 (Debian ``libreswan``).
Facts this module is built on (shared/LAB-NOTES.md and docs/operations.md, "Libreswan
and OpenIKED peers", re-measured here):

* Debian's ``libreswan`` conflicts with strongSwan's packages, so
  scripts/install-lab-peers.sh unpacks it into :data:`LIBRESWAN_ROOT` and installs its
  dependencies; :data:`INSTALL_HINT` is the fix named by every "missing" error.
* pluto executes ``/usr/libexec/ipsec/addconn`` by that absolute path and refuses to
  start without it ("FATAL ERROR: /usr/libexec/ipsec/addconn: missing"): every
  instance runs in a private mount namespace where the unpacked ``libexec/ipsec`` is
  bind-mounted on :data:`MOUNT_POINT` (an empty folder the install script creates).
  The updown script is named by that path too: ``leftupdown=.../_updown.xfrm``
  directly, as shared/LAB-NOTES.md advises, not the default ``_updown`` wrapper.
* Everything else pluto touches is private to the instance, under ``workdir``: the
  ``ipsec.conf`` (``config setup`` names the NSS database, ``ipsec.d``, the secrets
  file, the log file and the dump folder), ``--rundir`` (control socket
  ``run/pluto.ctl`` and pid file), an NSS database made with ``certutil -N``, and the
  PSKs in ``ipsec.secrets`` (mode 0600; never on a command line).
* Libreswan 4.10 spells "IKEv2 only" ``ikev2=insist`` (``keyexchange=ikev2`` is 5.x);
  ``rundir`` is a command-line option, not a ``config setup`` keyword.
* ``whack --initiate`` can exit 0 although the CHILD SA failed (seen when the kernel
  refused the SA; an authentication failure does exit non-zero):
  :meth:`Pluto.initiate` also checks ``whack --showstates`` for an established one.
* Libreswan's default ``pfs=yes`` puts a KE payload in CHILD SA rekeys, which a peer
  without a DH group in its ESP proposals refuses (NO_PROPOSAL_CHOSEN); a synchronous
  ``whack --rekey-ipsec`` then never returns.  :class:`Conn` enables PFS only when an
  ESP proposal names a group, and the rekey helpers pass ``--asynchronous``.
* Tunnel mode needs ``leftsourceip`` (the updown script's route to the remote subnet
  takes its source address from it); :class:`Conn` sets it to the local traffic
  selector when that is a single host.
* ``whack`` shows no IKE SPIs; CHILD SA SPIs, mode and byte counters come from
  ``--showstates``, the negotiated algorithms from ``--status``.
* Certificates (:class:`Certs`) live in the instance's NSS database: the trust
  anchors imported with ``certutil -A -t CT,,``, intermediates with ``-t ,,``, pluto's
  own certificate and key from a PKCS#12 file (``pk12util``), all before pluto
  starts.  A :class:`Conn` with ``cert=NICKNAME`` authenticates with it
  (``authby=rsasig`` by default: RSA-PSS with SHA-2 when the peer announced RFC 7427
  hashes) and sends its chain (``leftsendcert=always``, ``sendca=all``: Libreswan's
  default ``sendca=none`` sends no intermediate).  pluto IKE-fragments (RFC 7383)
  a message above 576 bytes (IPv4) only on its first retransmission, unless it
  received fragments on that IKE SA, or ``fragmentation=force``.  As initiator
  pluto sends a CERTREQ only when the conn names the peer's CA (``rightca``,
  :class:`Conn` ``remote_ca``; "%same" will do): a peer that sends its certificate
  only when asked (strongSwan's and our default, Libreswan's own) then sends none,
  and pluto fails with "authentication failed: no certificate matched RSASSA-PSS with
  SHA2_256 and 'fd00::1'".  (The "warning: gntoid() failed to initaddr(): IPv4
  address must be exactly 4 bytes" it logs for a certificate with an IPv6 iPAddress
  entry is harmless: such identities are matched all the same.)

Proposals are written as for strongSwan (``aes256gcm16-prfsha384-ecp384``,
``aes256-sha256``) and translated to Libreswan's syntax (:func:`pluto_proposal`), so one
test case can describe the same connection for charon, pluto and iked.

Typical use (kernel lab; the host kernel has no ESP)::

    with Pluto.started(ns, tmp_path / "pluto") as pluto:
        pluto.load([Conn("peer", "192.0.2.1", "192.0.2.2", "pluto.test", "charon.test",
                         psk, local_ts=("198.51.100.1/32",), remote_ts=(...,))])
        pluto.initiate("peer")
        (child,) = pluto.list_sas()[0].children

Every wait is bounded; :meth:`Pluto.stop` always kills the daemon.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.netns import Netns

LAB_PEERS = Path(os.environ.get("IPSECD_LAB_PEERS", "/opt/ipsecd-lab"))
LIBRESWAN_ROOT = LAB_PEERS / "libreswan"
LIBEXEC = LIBRESWAN_ROOT / "usr" / "libexec" / "ipsec"
#: Where pluto looks for addconn; the unpacked LIBEXEC is bind-mounted here.
MOUNT_POINT = Path("/usr/libexec/ipsec")
PLUTO_BIN = MOUNT_POINT / "pluto"  # inside the instance's mount namespace
WHACK_BIN = LIBEXEC / "whack"
ADDCONN_BIN = LIBEXEC / "addconn"
UPDOWN = MOUNT_POINT / "_updown.xfrm"
INSTALL_HINT = "run `make deps` as root (scripts/install-lab-peers.sh unpacks Libreswan)"


class PlutoError(RuntimeError):
    """pluto could not be started, configured or driven; the message says where and why."""


# -- proposals ----------------------------------------------------------------------------

# strongSwan proposal keywords → (kind, Libreswan keyword).  Kinds: encr, aead (an
# AEAD cipher: no integrity transform, RFC 5282 / RFC 7634), integ, prf, dh.
_PLUTO_TOKENS: Mapping[str, tuple[str, str]] = {
    "aes128": ("encr", "aes128"),
    "aes192": ("encr", "aes192"),
    "aes256": ("encr", "aes256"),
    "aes128ctr": ("encr", "aes_ctr128"),
    "aes256ctr": ("encr", "aes_ctr256"),
    "3des": ("encr", "3des"),
    "aes128gcm16": ("aead", "aes_gcm_16_128"),
    "aes256gcm16": ("aead", "aes_gcm_16_256"),
    "aes128gcm12": ("aead", "aes_gcm_12_128"),
    "aes256gcm12": ("aead", "aes_gcm_12_256"),
    "chacha20poly1305": ("aead", "chacha20_poly1305"),
    "sha1": ("integ", "sha1"),
    "sha256": ("integ", "sha2_256"),
    "sha384": ("integ", "sha2_384"),
    "sha512": ("integ", "sha2_512"),
    "prfsha1": ("prf", "sha1"),
    "prfsha256": ("prf", "sha2_256"),
    "prfsha384": ("prf", "sha2_384"),
    "prfsha512": ("prf", "sha2_512"),
    "modp2048": ("dh", "modp2048"),
    "modp3072": ("dh", "modp3072"),
    "modp4096": ("dh", "modp4096"),
    "ecp256": ("dh", "dh19"),
    "ecp384": ("dh", "dh20"),
    "ecp521": ("dh", "dh21"),
    "curve25519": ("dh", "dh31"),
}


def _classify(proposal: str) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {"encr": [], "aead": [], "integ": [], "prf": [], "dh": []}
    for tok in proposal.split("-"):
        if tok not in _PLUTO_TOKENS:
            raise ValueError(
                f"proposal {proposal!r}: unknown keyword {tok!r} "
                f"(known: {', '.join(sorted(_PLUTO_TOKENS))})"
            )
        kind, name = _PLUTO_TOKENS[tok]
        kinds[kind].append(name)
    return kinds


def pluto_proposal(proposal: str, *, ike: bool) -> str:
    """One strongSwan-style proposal as a Libreswan ``ike=``/``esp=`` element.

    Libreswan's IKE syntax is ``ENCR-PRF-DH``, where for a non-AEAD cipher the PRF
    keyword also names the integrity transform (``aes256-sha2_256-modp2048``); so a
    proposal whose PRF differs from its integrity algorithm cannot be written.
    ESP is ``ENCR[-INTEG][-DH]`` (the DH group is the PFS group of later CHILD SAs).
    """
    k = _classify(proposal)
    ciphers = k["encr"] + k["aead"]
    if len(ciphers) != 1:
        raise ValueError(f"proposal {proposal!r}: name exactly one cipher")
    parts = list(ciphers)
    if ike:
        if k["aead"]:
            if k["integ"]:
                raise ValueError(f"proposal {proposal!r}: an AEAD cipher takes no integrity")
            prf = k["prf"] or []
            if not prf:
                raise ValueError(f"proposal {proposal!r}: an AEAD IKE proposal needs prfNNN")
            parts += prf
        else:
            if k["prf"] and k["integ"] and k["prf"] != k["integ"]:
                raise ValueError(
                    f"proposal {proposal!r}: Libreswan cannot pair PRF {k['prf']} with a "
                    f"different integrity algorithm {k['integ']}"
                )
            parts += k["integ"] or k["prf"]
        if not k["dh"]:
            raise ValueError(f"proposal {proposal!r}: an IKE proposal needs a DH group")
    else:
        if k["prf"]:
            raise ValueError(f"proposal {proposal!r}: ESP has no PRF")
        if k["aead"] and k["integ"]:
            raise ValueError(f"proposal {proposal!r}: an AEAD cipher takes no integrity")
        parts += k["integ"]
    return "-".join(parts + k["dh"])


# -- connections --------------------------------------------------------------------------


def pluto_id(ident: str) -> str:
    """An identity in Libreswan's spelling: IP addresses and ``user@host`` as they are,
    a bare name as ``@name`` (otherwise pluto resolves it through DNS)."""
    try:
        ipaddress.ip_address(ident)
        return ident
    except ValueError:
        pass
    if ident.startswith("@") or "@" in ident:
        return ident
    return "@" + ident


def _single_host(selectors: Sequence[str]) -> str | None:
    if len(selectors) != 1:
        return None
    net = ipaddress.ip_network(selectors[0], strict=False)
    return str(net.network_address) if net.num_addresses == 1 else None


@dataclass(frozen=True, slots=True)
class Certs:
    """X.509 material for pluto's NSS database (PEM), imported by :meth:`Pluto.start`.

    ``cert``/``key`` become pluto's own certificate and private key under
    ``nickname`` (what :class:`Conn`'s ``cert`` names); ``intermediates`` are stored
    untrusted (pluto sends them with ``sendca=all``, and builds peers' chains with
    them); ``cas`` are the trust anchors peers' certificates must chain to.
    """

    nickname: str
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    intermediates: tuple[bytes, ...] = field(default=(), repr=False)
    cas: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.nickname):
            raise ValueError(f"Certs nickname {self.nickname!r}: use letters, digits, _ . -")


@dataclass(frozen=True, slots=True)
class Conn:
    """One IKEv2 connection with PSK authentication (``ipsec.conf`` ``conn NAME``), or
    with certificates when ``cert`` names one of :class:`Certs` (``psk`` unused then).

    Addresses and IDs are this side's (``left``) and the peer's (``right``).  Traffic
    selectors default to the two addresses (host to host); more than one selector on a
    side becomes ``leftsubnets={...}``, which makes pluto split the connection into
    ``NAME/1x1``, ``NAME/1x2``... instances.  Times are in seconds.
    """

    name: str
    local_addr: str
    remote_addr: str
    local_id: str
    remote_id: str
    psk: str = field(repr=False)
    ike_proposals: tuple[str, ...] = ("aes256gcm16-prfsha384-ecp384",)
    esp_proposals: tuple[str, ...] = ("aes256gcm16",)
    mode: str = "tunnel"  # "tunnel" | "transport"
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()
    local_protoport: str | None = None  # e.g. "tcp/5432", "udp", "icmp"
    remote_protoport: str | None = None
    # Tunnel mode: the source address of the route to the remote selector; defaults to
    # the local selector when that is a single host.
    local_sourceip: str | None = None
    ikelifetime: int = 3600
    salifetime: int = 1800
    # Rekey at lifetime - margin * (1 + random(0, fuzz%)); small values force quick
    # rekeys.  rekey=False lets SAs expire instead.
    rekeymargin: int = 540
    rekeyfuzz: int = 100
    rekey: bool = True
    # PFS for CHILD SAs after the first (RFC 7296 1.3.1); None: on exactly when an ESP
    # proposal names a DH group, as strongSwan reads its proposals (Libreswan's own
    # default, on, makes a rekey fail with NO_PROPOSAL_CHOSEN against a peer that
    # configured no DH group for ESP).
    pfs: bool | None = None
    dpd_delay: int = 0  # 0: no liveness checks (RFC 7296 2.4)
    dpd_timeout: int = 0  # IKEv2 in Libreswan 4.x uses retransmissions instead
    dpd_action: str = "clear"  # "clear" | "hold" | "restart"
    auto: str = "add"  # "add" | "start" | "ondemand" | "ignore"
    encapsulation: str = "auto"  # "auto" | "yes" | "no" (RFC 3948 UDP encapsulation)
    # Further ipsec.conf keys for this conn (e.g. {"retransmit-timeout": "20s"}).
    extra: Mapping[str, str] = field(default_factory=dict)
    # Certificate authentication: the NSS nickname of our certificate (Certs), and
    # the signature methods (``authby=``: "rsasig", "ecdsa", "rsa-sha2", ...).
    cert: str | None = None
    authby: str = "rsasig"
    # ``rightca=``: the CA the peer's certificate must come from ("%same": the one of
    # ours).  pluto sends a CERTREQ only when this is set (see the module doc).
    remote_ca: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("tunnel", "transport"):
            raise ValueError(f"conn {self.name}: mode must be tunnel or transport")
        if self.auto not in ("add", "start", "ondemand", "ignore"):
            raise ValueError(f"conn {self.name}: auto must be add, start, ondemand or ignore")
        if '"' in self.psk or "\n" in self.psk:
            raise ValueError(f"conn {self.name}: the PSK cannot hold quotes or newlines")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"conn name {self.name!r}: use letters, digits, _ . -")

    @property
    def sourceip(self) -> str | None:
        if self.local_sourceip is not None:
            return self.local_sourceip
        return _single_host(self.local_ts) if self.mode == "tunnel" else None

    @property
    def uses_pfs(self) -> bool:
        if self.pfs is not None:
            return self.pfs
        return any(_classify(p)["dh"] for p in self.esp_proposals)

    def render(self) -> str:
        """The ``conn`` section (no secret in it)."""
        keys: dict[str, str] = {
            "ikev2": "insist",
            "authby": "secret" if self.cert is None else self.authby,
            "type": self.mode,
            "left": self.local_addr,
            "leftid": pluto_id(self.local_id),
            "right": self.remote_addr,
            "rightid": pluto_id(self.remote_id),
            "leftupdown": str(UPDOWN),
            "ike": ",".join(pluto_proposal(p, ike=True) for p in self.ike_proposals),
            "esp": ",".join(pluto_proposal(p, ike=False) for p in self.esp_proposals),
            "ikelifetime": f"{self.ikelifetime}s",
            "salifetime": f"{self.salifetime}s",
            "rekeymargin": f"{self.rekeymargin}s",
            "rekeyfuzz": f"{self.rekeyfuzz}%",
            "rekey": "yes" if self.rekey else "no",
            "pfs": "yes" if self.uses_pfs else "no",
            "encapsulation": self.encapsulation,
            "auto": self.auto,
        }
        for side, sel in (("left", self.local_ts), ("right", self.remote_ts)):
            if len(sel) == 1:
                keys[f"{side}subnet"] = sel[0]
            elif sel:
                keys[f"{side}subnets"] = "{" + " ".join(sel) + "}"
        if self.local_protoport:
            keys["leftprotoport"] = self.local_protoport
        if self.remote_protoport:
            keys["rightprotoport"] = self.remote_protoport
        if self.sourceip:
            keys["leftsourceip"] = self.sourceip
        if self.cert is not None:
            keys.update(leftcert=self.cert, leftsendcert="always", sendca="all")
        if self.remote_ca is not None:
            keys["rightca"] = self.remote_ca
        if self.dpd_delay:
            keys["dpddelay"] = f"{self.dpd_delay}s"
            keys["dpdaction"] = self.dpd_action
            if self.dpd_timeout:
                keys["dpdtimeout"] = f"{self.dpd_timeout}s"
        keys.update(self.extra)
        body = "".join(f"    {k}={v}\n" for k, v in keys.items())
        return f"conn {self.name}\n{body}"

    def secret_line(self) -> str:
        """The ``ipsec.secrets`` entry: both IDs share the PSK (none with certificates:
        the key is in the NSS database)."""
        if self.cert is not None:
            return ""
        return f'{pluto_id(self.local_id)} {pluto_id(self.remote_id)} : PSK "{self.psk}"\n'


# -- status -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildSa:
    """One established CHILD SA as ``whack --showstates`` lists it.

    ``spi_in`` is the SPI of the inbound SA (chosen by this pluto, carried by what the
    peer sends), ``spi_out`` the outbound one (chosen by the peer).
    """

    conn: str
    serial: int  # pluto's state number (#N)
    ike_serial: int  # the IKE SA it belongs to
    state: str  # e.g. "STATE_V2_ESTABLISHED_CHILD_SA"
    protocol: str  # "ESP" | "AH"
    mode: str  # "tunnel" | "transport"
    spi_in: int
    spi_out: int
    bytes_in: int
    bytes_out: int
    algorithms: str  # "ESP algorithm newest" of the connection, e.g. "AES_GCM_16_256-NONE"


@dataclass(frozen=True, slots=True)
class IkeSa:
    """One IKE SA of ``whack --showstates``, with its CHILD SAs."""

    conn: str
    serial: int
    state: str  # e.g. "STATE_V2_ESTABLISHED_IKE_SA"
    remote_port: int
    algorithms: str  # "IKEv2 algorithm newest", e.g. "AES_GCM_16_256-HMAC_SHA2_384-DH20"
    children: tuple[ChildSa, ...] = ()

    @property
    def established(self) -> bool:
        return "ESTABLISHED" in self.state


_STATE = re.compile(
    r'^(?:\d{3} )?#(?P<serial>\d+): "(?P<conn>[^"]+)"(?:\[\d+\])?[^:]*?:(?P<port>\d+) '
    r"(?P<state>STATE_\w+) "
)
_PARENT = re.compile(r"\bIKE SA #(?P<ike>\d+);")
_SPIS = re.compile(
    r'^(?:\d{3} )?#(?P<serial>\d+): "(?P<conn>[^"]+)"(?:\[\d+\])?[^ ]* (?P<rest>.*)$'
)
# pluto writes an SA as PROTO.SPI@ADDR for IPv4 and PROTO:SPI@ADDR for IPv6
# ("esp:c199723d@fd00::1"); the same for the tunnel pseudo-SA (tun.0@ / tun:0@).
_SA = re.compile(r"\b(?P<proto>esp|ah)[.:](?P<spi>[0-9a-f]+)@(?P<addr>\S+)")
_TUN = re.compile(r"\btun[.:][0-9a-f]+@")
_TRAFFIC = re.compile(r"\b(?:ESP|AH)(?P<dir>in|out)=(?P<n>\d+)(?P<unit>[KMGT]?)B")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_ALGS = re.compile(r'^(?:\d{3} )?"(?P<conn>[^"]+)"(?:\[\d+\])?[^:]*:\s+(?P<what>IKEv2|ESP|AH) '
                   r"algorithm newest: (?P<algs>\S+?);?(?:\s|$)")  # fmt: skip


def parse_showstates(
    text: str, *, local_addrs: Sequence[str] = (), algorithms: Mapping[str, Mapping[str, str]]
) -> list[IkeSa]:
    """``whack --showstates`` (and the algorithm lines of ``--status``) → IKE SAs.

    ``local_addrs`` tell inbound SAs (``esp.SPI@<ours>``) from outbound ones; without
    them the first SA of a line is taken as outbound, as pluto prints them.
    """
    states: dict[int, dict[str, Any]] = {}
    spis: dict[int, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _STATE.match(line)
        if m:
            parent = _PARENT.search(line)
            states[int(m["serial"])] = {
                "conn": m["conn"],
                "state": m["state"],
                "port": int(m["port"]),
                "ike": int(parent["ike"]) if parent else None,
                "line": line,
            }
            continue
        m = _SPIS.match(line)
        if m and _SA.search(m["rest"]):
            spis[int(m["serial"])] = m["rest"]
    children: dict[int, list[ChildSa]] = {}
    for serial, st in states.items():
        if st["ike"] is None or serial not in spis:
            continue
        rest = spis[serial]
        sas = list(_SA.finditer(rest))
        inbound = [s for s in sas if s["addr"] in local_addrs]
        outbound = [s for s in sas if s["addr"] not in local_addrs]
        if not local_addrs:
            outbound, inbound = sas[:1], sas[1:2]
        traffic = {t["dir"]: int(t["n"]) * _UNITS[t["unit"]] for t in _TRAFFIC.finditer(rest)}
        children.setdefault(st["ike"], []).append(
            ChildSa(
                conn=st["conn"],
                serial=serial,
                ike_serial=st["ike"],
                state=st["state"],
                protocol=sas[0]["proto"].upper(),
                mode="tunnel" if _TUN.search(rest) else "transport",
                spi_in=int(inbound[0]["spi"], 16) if inbound else 0,
                spi_out=int(outbound[0]["spi"], 16) if outbound else 0,
                bytes_in=traffic.get("in", 0),
                bytes_out=traffic.get("out", 0),
                algorithms=algorithms.get(st["conn"], {}).get("child", ""),
            )
        )
    out = []
    for serial, st in sorted(states.items()):
        if st["ike"] is not None:
            continue
        out.append(
            IkeSa(
                conn=st["conn"],
                serial=serial,
                state=st["state"],
                remote_port=st["port"],
                algorithms=algorithms.get(st["conn"], {}).get("ike", ""),
                children=tuple(children.get(serial, ())),
            )
        )
    return out


def parse_algorithms(status: str) -> dict[str, dict[str, str]]:
    """``whack --status`` "... algorithm newest: X" lines → {conn: {"ike"|"child": X}}."""
    out: dict[str, dict[str, str]] = {}
    for raw in status.splitlines():
        m = _ALGS.match(raw.strip())
        if m:
            key = "ike" if m["what"] == "IKEv2" else "child"
            out.setdefault(m["conn"], {})[key] = m["algs"].rstrip(";")
    return out


# -- the daemon ---------------------------------------------------------------------------


class Pluto:
    """One running pluto in ``netns``; all its files under ``workdir``."""

    def __init__(
        self,
        netns: Netns,
        workdir: Path,
        *,
        debug: str = "none",
        setup: Mapping[str, str] | None = None,
        certs: Sequence[Certs] = (),
    ) -> None:
        self.netns = netns
        self.workdir = Path(workdir)
        self.debug = debug  # plutodebug=, e.g. "base" (never "crypt": it logs keys)
        self.setup = dict(setup or {})
        self.certs = tuple(certs)  # imported into the NSS database at start
        self.proc: subprocess.Popen[bytes] | None = None
        self.conns: dict[str, Conn] = {}

    # -- files ---------------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.workdir / "ipsec.conf"

    @property
    def secrets_path(self) -> Path:
        return self.workdir / "ipsec.secrets"

    @property
    def rundir(self) -> Path:
        return self.workdir / "run"

    @property
    def ctl_path(self) -> Path:
        return self.rundir / "pluto.ctl"

    @property
    def log_path(self) -> Path:
        return self.workdir / "pluto.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "pluto.stdout"

    def _redact(self, text: str) -> str:
        for conn in self.conns.values():
            if conn.psk:
                text = text.replace(conn.psk, "<psk>")
        return text

    def log_text(self) -> str:
        """pluto's log (then whatever it printed on stdout/stderr), PSKs redacted."""
        parts = []
        for path in (self.log_path, self.stdout_path):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return self._redact("".join(parts))

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def render_setup(self) -> str:
        keys = {
            "logfile": str(self.log_path),
            "logappend": "yes",
            "nssdir": str(self.workdir / "nss"),
            "ipsecdir": str(self.workdir / "ipsec.d"),
            "secretsfile": str(self.secrets_path),
            "dumpdir": str(self.rundir),
            "plutodebug": self.debug,
            "dnssec-enable": "no",
            "uniqueids": "no",
        }
        keys.update(self.setup)
        return "config setup\n" + "".join(f"    {k}={v}\n" for k, v in keys.items())

    def _write_private(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(path, 0o600)

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def started(cls, netns: Netns, workdir: Path, **kw: Any) -> Iterator[Pluto]:
        """Start pluto, yield it, always stop (kill) it."""
        pluto = cls(netns, workdir, **kw)
        try:
            pluto.start()
            yield pluto
        finally:
            pluto.stop()

    @staticmethod
    def check_installed() -> None:
        """Raise :class:`PlutoError` naming the fix when something pluto needs is missing."""
        for path in (LIBEXEC / "pluto", WHACK_BIN, ADDCONN_BIN, LIBEXEC / "_updown.xfrm"):
            if not os.access(path, os.X_OK):
                raise PlutoError(f"{path} not found: {INSTALL_HINT}")
        if not MOUNT_POINT.is_dir():
            raise PlutoError(f"mount point {MOUNT_POINT} missing: {INSTALL_HINT}")
        if shutil.which("certutil") is None:
            raise PlutoError(f"certutil not found (Debian libnss3-tools): {INSTALL_HINT}")

    def start(self, timeout: float = 60.0) -> None:
        """Write the setup, make the NSS database, start pluto, wait for its control socket."""
        self.check_installed()
        for sub in ("run", "nss", "ipsec.d"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        nss = subprocess.run(
            ["certutil", "-N", "-d", f"sql:{self.workdir / 'nss'}", "--empty-password"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if nss.returncode != 0 and "already exists" not in nss.stderr:
            raise PlutoError(f"certutil -N for pluto's NSS database failed: {nss.stderr.strip()}")
        for certs in self.certs:
            self.import_certs(certs)
        self.conf_path.write_text(self.render_setup())
        self._write_private(self.secrets_path, "")
        for stale in (self.ctl_path, self.rundir / "pluto.pid"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        script = (
            f'mount --bind "{LIBEXEC}" "{MOUNT_POINT}" && '
            f'exec "{PLUTO_BIN}" --nofork --config "{self.conf_path}" --rundir "{self.rundir}"'
        )
        out = self.stdout_path.open("wb")
        try:
            # ip netns exec → unshare → sh all exec(), so proc.pid ends up being pluto.
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
                raise PlutoError(
                    f"pluto in netns {self.netns.name} exited with {self.proc.returncode} "
                    f"during start-up; log tail:\n{self.log_tail()}"
                )
            if self.ctl_path.exists():
                probe = self._whack_raw(["--status"], timeout=30)
                if probe.returncode == 0:
                    return
            time.sleep(0.1)
        self.stop()
        raise PlutoError(
            f"pluto in netns {self.netns.name} did not answer on {self.ctl_path} within "
            f"{timeout:.0f} s; log tail:\n{self.log_tail()}"
        )

    def _nss_tool(self, argv: Sequence[str]) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            raise PlutoError(
                f"`{' '.join(argv[:2])} ...` for pluto's NSS database failed "
                f"({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
            )

    def import_certs(self, certs: Certs) -> None:
        """Put ``certs`` into the NSS database (see :class:`Certs`); pluto reads it at
        start, so call this before (``Pluto(certs=...)`` does)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import pkcs12

        db = f"sql:{self.workdir / 'nss'}"
        folder = self.workdir / "certs"
        folder.mkdir(exist_ok=True)
        for trust, label, pems in ((",,", "im", certs.intermediates), ("CT,,", "ca", certs.cas)):
            for i, pem in enumerate(pems):
                path = folder / f"{certs.nickname}-{label}-{i}.pem"
                path.write_bytes(pem)
                self._nss_tool(["certutil", "-A", "-d", db, "-n", f"{certs.nickname}-{label}-{i}",
                                "-t", trust, "-a", "-i", str(path)])  # fmt: skip
        password = os.urandom(12).hex()  # pk12util wants one; it only guards this file
        key = serialization.load_pem_private_key(certs.key, None)
        blob = pkcs12.serialize_key_and_certificates(
            certs.nickname.encode(),
            key,  # type: ignore[arg-type]
            x509.load_pem_x509_certificate(certs.cert),
            None,
            serialization.BestAvailableEncryption(password.encode()),
        )
        p12 = folder / f"{certs.nickname}.p12"
        self._write_private(p12, "")
        p12.write_bytes(blob)
        pwfile = folder / f"{certs.nickname}.pw"
        self._write_private(pwfile, password)
        self._nss_tool(["pk12util", "-i", str(p12), "-d", db, "-w", str(pwfile), "-K", ""])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop pluto: SIGTERM (it deletes its SAs), SIGKILL after ``timeout``.  Never raises."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- whack ---------------------------------------------------------------------------

    def _whack_raw(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        # The control socket is a file: whack need not enter the namespace.
        return subprocess.run(
            [str(WHACK_BIN), "--ctlsocket", str(self.ctl_path), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def whack(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``whack ARGS`` against this instance; raise on failure; return its output."""
        if not self.running:
            raise PlutoError(
                f"pluto in netns {self.netns.name} is not running (whack {' '.join(args)}); "
                f"log tail:\n{self.log_tail()}"
            )
        try:
            proc = self._whack_raw(args, timeout)
        except subprocess.TimeoutExpired as exc:
            raise PlutoError(
                f"`whack {' '.join(args)}` did not finish within {timeout:g} s; "
                f"log tail:\n{self.log_tail()}"
            ) from exc
        output = self._redact(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise PlutoError(
                f"`whack {' '.join(args)}` exited {proc.returncode}: {output.strip()}\n"
                f"log tail:\n{self.log_tail()}"
            )
        return output

    def load(self, conns: Sequence[Conn]) -> None:
        """Write ``ipsec.conf`` and ``ipsec.secrets`` (0600), re-read the secrets, add
        (or replace) every conn with ``addconn``; then ``auto=start`` conns are initiated
        in the background and ``auto=ondemand`` ones routed (trap policies)."""
        for conn in conns:
            self.conns[conn.name] = conn
        everything = list(self.conns.values())
        self.conf_path.write_text(
            self.render_setup() + "\n" + "\n".join(c.render() for c in everything)
        )
        self._write_private(self.secrets_path, "".join(c.secret_line() for c in everything))
        self.whack("--rereadsecrets")
        for conn in conns:
            with contextlib.suppress(PlutoError):
                self.whack("--name", conn.name, "--delete")
            if conn.auto == "ignore":
                continue
            proc = subprocess.run(
                [str(ADDCONN_BIN), "--config", str(self.conf_path), "--ctlsocket",
                 str(self.ctl_path), conn.name],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )  # fmt: skip
            said = self._redact(proc.stdout + proc.stderr).strip()
            if proc.returncode != 0 or re.search(r"ERROR|not found|failed", said):
                raise PlutoError(
                    f"addconn {conn.name} failed (exit {proc.returncode}): {said}\n"
                    f"--- {self.conf_path} ---\n{self.conf_path.read_text()}\n"
                    f"log tail:\n{self.log_tail()}"
                )
            if conn.auto == "start":
                self.whack("--name", conn.name, "--initiate", "--asynchronous")
            elif conn.auto == "ondemand":
                self.whack("--name", conn.name, "--route")

    def initiate(self, name: str, *, timeout: float = 120.0) -> IkeSa:
        """Initiate ``name`` and wait until pluto reports the exchange done; return the
        IKE SA holding an established CHILD SA of ``name``, or raise with what whack
        said and the log tail (whack itself exits 0 even on failure)."""
        said = self.whack("--name", name, "--initiate", timeout=timeout)
        for sa in self.list_sas():
            if sa.established and any(c.conn.split("/")[0] == name for c in sa.children):
                return sa
        raise PlutoError(
            f"pluto in netns {self.netns.name} did not establish {name}:\n{said.strip()}\n"
            f"states:\n{self.whack('--showstates').strip()}\nlog tail:\n{self.log_tail()}"
        )

    def terminate(self, name: str) -> None:
        """Delete the SAs of ``name`` (the peer is told, RFC 7296 1.4.1); the conn stays."""
        self.whack("--name", name, "--terminate")

    def delete(self, name: str) -> None:
        """Remove the conn itself (and its SAs)."""
        self.whack("--name", name, "--delete")
        self.conns.pop(name, None)

    def rekey_child(self, name: str) -> None:
        """Start rekeying the newest CHILD SA of ``name`` (CREATE_CHILD_SA, RFC 7296
        1.3.3) and return at once; poll :meth:`list_sas` for the outcome (a synchronous
        whack never returns when the peer refuses the rekey)."""
        self.whack("--name", name, "--rekey-ipsec", "--asynchronous")

    def rekey_ike(self, name: str) -> None:
        """Start rekeying the IKE SA of ``name`` (RFC 7296 1.3.2); returns at once."""
        self.whack("--name", name, "--rekey-ike", "--asynchronous")

    def status(self) -> str:
        """``whack --status`` as text."""
        return self.whack("--status")

    def list_sas(self) -> list[IkeSa]:
        """IKE SAs with their CHILD SAs, SPIs, modes, byte counts and algorithms."""
        algorithms = parse_algorithms(self.status())
        local = [c.local_addr for c in self.conns.values()]
        return parse_showstates(
            self.whack("--showstates"), local_addrs=local, algorithms=algorithms
        )
