"""The controller's state directory: the cluster CA and what ``ipsecd-controller init``,
``issue``, ``revoke`` and ``crl`` keep there (docs/operations.md "Controller",
docs/security.md).

Layout (the directory and ``pki/`` mode 0700; every key 0600)::

    DIR/admin.conf        the first admin's ipsecctl config (0600, controller/clientconf.py)
    DIR/envelope.key      32 random bytes (0600): the key that will encrypt secrets at
                          rest in etcd (issue #12 "least privilege"); created, not used yet
    DIR/cluster.json      the controller addresses written into issued configs
    DIR/pki/ca.pem        the CA certificate (then its issuers, for an intermediate CA)
    DIR/pki/ca.key        the CA key (0600); never in etcd
    DIR/pki/server.pem    the serving certificate (role controller), then intermediates
    DIR/pki/server.key    its key (0600)
    DIR/pki/crl.pem       the CRL of every revoked serial, signed by the CA
    DIR/pki/certs.json    every certificate issued (serial, role, name, expiry, revoked)
    DIR/etcd/             the private etcd's data (controller/embedded_etcd.py)
    DIR/etcd-pki/         the private etcd's TLS: its own CA, etcd's server certificate,
                          the controller's etcd client certificate (every file 0600;
                          controller/etcd_pki.py), made by init or the first start

``issue``, ``revoke`` and ``crl`` hold an exclusive lock on ``pki/.lock`` while they
update ``certs.json`` and the CRL.  A running controller re-reads ``crl.pem`` when it
changes (controller/authz.py): a revocation takes effect without a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller.ca import (
    DEFAULT_KEY_TYPE,
    CaError,
    CertificateAuthority,
    NodeRequest,
    Role,
    RoleIdentity,
    check_name,
    check_private_file,
    generate_key,
    key_pem,
    make_private_dir,
    pem,
    read_private_file,
    read_public_file,
    write_file,
    write_private,
)
from controller.clientconf import ClientConfig
from controller.etcd_pki import state_etcd_pki

__all__ = [
    "ENVELOPE_KEY_BYTES",
    "IssuedFiles",
    "NotInitialized",
    "Record",
    "ServingMaterial",
    "StateDir",
    "controller_addresses",
    "init_state",
    "issue_credentials",
    "issue_node",
    "list_records",
    "live_records",
    "load_serving",
    "revoke",
    "split_hostport",
    "write_crl",
]

ENVELOPE_KEY_BYTES = 32
DEFAULT_PORT = 7480
_WILDCARDS = {"", "0.0.0.0", "::", "*"}
#: Host names every serving certificate names, so that the controller's own host can
#: always reach it on loopback.
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class NotInitialized(CaError):
    """The state directory has no cluster CA (``ipsecd-controller init`` not run)."""


@dataclass(frozen=True, slots=True)
class StateDir:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.pki / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.pki / "server.key"

    @property
    def crl(self) -> Path:
        return self.pki / "crl.pem"

    @property
    def records(self) -> Path:
        return self.pki / "certs.json"

    @property
    def envelope_key(self) -> Path:
        return self.root / "envelope.key"

    @property
    def admin_conf(self) -> Path:
        return self.root / "admin.conf"

    @property
    def cluster(self) -> Path:
        return self.root / "cluster.json"

    def initialized(self) -> bool:
        return self.ca_cert.exists() or self.ca_key.exists()

    def not_initialized(self) -> NotInitialized:
        return NotInitialized(
            f"{self.root} has no cluster CA ({self.ca_cert} is missing): run "
            f"`ipsecd-controller init --state-dir {self.root}` first (or start with "
            "--insecure for plaintext gRPC on a trusted network)"
        )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock of the PKI files (issue, revoke, crl)."""
        make_private_dir(self.pki)
        fd = os.open(self.pki / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load_ca(self) -> CertificateAuthority:
        """The CA with its key (needs ``pki/ca.key``, mode 0600)."""
        if not self.initialized():
            raise self.not_initialized()
        cert = read_public_file(self.ca_cert, "CA certificate")
        key = read_private_file(self.ca_key, "CA key")
        return CertificateAuthority.from_pem(cert, key, where=str(self.ca_key))

    def ca_certificates(self) -> tuple[x509.Certificate, ...]:
        if not self.ca_cert.exists():
            raise self.not_initialized()
        data = read_public_file(self.ca_cert, "CA certificate")
        try:
            return tuple(x509.load_pem_x509_certificates(data))
        except ValueError:
            raise CaError(f"{self.ca_cert}: no PEM certificate in it") from None


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class Record:
    """One issued certificate in ``certs.json``."""

    serial: int
    role: str
    name: str
    not_after: str
    issued: str
    revoked: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "serial": f"{self.serial:x}",
            "role": self.role,
            "name": self.name,
            "not_after": self.not_after,
            "issued": self.issued,
            "revoked": self.revoked,
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Record:
        revoked = d.get("revoked")
        return cls(
            serial=int(str(d["serial"]), 16),
            role=str(d["role"]),
            name=str(d["name"]),
            not_after=str(d["not_after"]),
            issued=str(d.get("issued", "")),
            revoked=None if revoked is None else str(revoked),
        )


@dataclass(slots=True)
class _Records:
    crl_number: int = 0
    certs: list[Record] = field(default_factory=list)


def _load_records(sd: StateDir) -> _Records:
    if not sd.records.exists():
        return _Records()
    data = read_private_file(sd.records, "certificate records")
    try:
        raw = json.loads(data)
        return _Records(
            int(raw.get("crl_number", 0)), [Record.from_json(r) for r in raw.get("certs", [])]
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CaError(f"{sd.records}: not a certificate record file ({exc})") from None


def _save_records(sd: StateDir, records: _Records) -> None:
    body = {"crl_number": records.crl_number, "certs": [r.to_json() for r in records.certs]}
    write_private(sd.records, (json.dumps(body, indent=1) + "\n").encode())


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(records: _Records, cert: x509.Certificate, ident: RoleIdentity) -> None:
    records.certs.append(
        Record(
            serial=cert.serial_number,
            role=ident.role.value,
            name=ident.name,
            not_after=_iso(cert.not_valid_after_utc),
            issued=_iso(dt.datetime.now(dt.UTC)),
        )
    )


def list_records(root: Path) -> list[Record]:
    sd = StateDir(root)
    if not sd.initialized():
        raise sd.not_initialized()
    with sd.locked():
        return list(_load_records(sd).certs)


# --------------------------------------------------------------------------- addresses


def split_hostport(text: str, default_port: int | None = None) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``host`` or ``v6`` → (host, port or None)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a bare name, IPv4 address or IPv6 address
        host, port_text = text, ""
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise CaError(f"{text!r}: the port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise CaError(f"{text!r}: port {port} is outside 1..65535")
    return host, port


def _join(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def controller_addresses(listen: Sequence[str], advertise: Sequence[str]) -> list[str]:
    """The addresses clients use: the advertised ones (port of the first --listen when
    missing), else the listen addresses with a wildcard host replaced by 127.0.0.1."""
    listen_port = DEFAULT_PORT
    if listen:
        listen_port = split_hostport(listen[0], DEFAULT_PORT)[1] or DEFAULT_PORT
    out: list[str] = []
    if advertise:
        for a in advertise:
            host, port = split_hostport(a, listen_port)
            out.append(_join(host, port or listen_port))
    else:
        for entry in listen:
            host, port = split_hostport(entry, DEFAULT_PORT)
            out.append(_join("127.0.0.1" if host in _WILDCARDS else host, port or DEFAULT_PORT))
    return list(dict.fromkeys(out))


def _serving_hosts(
    listen: Sequence[str], advertise: Sequence[str], extra: Sequence[str]
) -> list[str]:
    hosts = [split_hostport(x)[0] for x in (*listen, *advertise)]
    hosts += list(extra)
    hosts += _LOOPBACK_HOSTS
    return [h for h in dict.fromkeys(hosts) if h not in _WILDCARDS]


# --------------------------------------------------------------------------- init


@dataclass(frozen=True, slots=True)
class InitReport:
    state_dir: Path
    ca_subject: str
    controllers: tuple[str, ...]
    hosts: tuple[str, ...]
    admin: str
    envelope_kept: bool


def init_state(
    root: Path,
    *,
    listen: Sequence[str] = ("127.0.0.1:7480",),
    advertise: Sequence[str] = (),
    extra_hosts: Sequence[str] = (),
    ca_cert_file: Path | None = None,
    ca_key_file: Path | None = None,
    key_type: str = DEFAULT_KEY_TYPE,
    admin_name: str = "admin",
    force: bool = False,
    ca_days: int = 3650,
    cert_days: int = 365,
) -> InitReport:
    """Create the CA (or take the given one), the envelope key, the serving certificate
    and ``admin.conf``.  Refuses an initialized directory unless ``force`` (which keeps
    an existing envelope key: what it encrypted stays readable)."""
    sd = StateDir(root)
    check_name(admin_name, "admin name")
    if sd.initialized() and not force:
        raise CaError(
            f"{root} is already initialized ({sd.ca_cert} exists); nothing changed. "
            "--force replaces the CA, the serving certificate and admin.conf: every "
            "credential issued so far stops working"
        )
    if (ca_cert_file is None) != (ca_key_file is None):
        raise CaError("--ca-cert and --ca-key go together: the CA certificate and its key")
    if ca_cert_file is not None and ca_key_file is not None:
        ca = CertificateAuthority.from_pem(
            read_public_file(ca_cert_file, "CA certificate"),
            read_private_file(ca_key_file, "CA key"),
            where=f"{ca_cert_file} / {ca_key_file}",
        )
    else:
        ca = CertificateAuthority.create(key_type=key_type, days=ca_days)
    controllers = controller_addresses(listen, advertise)
    hosts = _serving_hosts(listen, advertise, extra_hosts)
    make_private_dir(root)
    with sd.locked():
        records = _Records()
        # the serving certificate: also the client certificate of replica-to-replica
        # status forwarding (role controller)
        server_key = generate_key(key_type)
        server = ca.issue(
            Role.CONTROLLER, "controller", server_key.public_key(), hosts=hosts, days=cert_days
        )
        _record(records, server, RoleIdentity(Role.CONTROLLER, "controller"))
        admin_key = generate_key(key_type)
        admin = ca.issue(Role.ADMIN, admin_name, admin_key.public_key(), days=cert_days)
        _record(records, admin, RoleIdentity(Role.ADMIN, admin_name))
        records.crl_number = 1
        crl = ca.crl([], number=records.crl_number)
        write_private(sd.ca_key, key_pem(ca.key))
        write_file(sd.ca_cert, pem(*ca.bundle), 0o644)
        write_private(sd.server_key, key_pem(server_key))
        write_file(sd.server_cert, pem(server, *ca.intermediates), 0o644)
        write_file(sd.crl, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        _save_records(sd, records)
    state_etcd_pki(root, renew=force)
    kept = sd.envelope_key.exists()
    if kept:
        check_private_file(sd.envelope_key, "envelope key")
    else:
        write_private(sd.envelope_key, secrets.token_bytes(ENVELOPE_KEY_BYTES))
    write_file(
        sd.cluster,
        (json.dumps({"controllers": controllers, "hosts": hosts}, indent=1) + "\n").encode(),
        0o644,
    )
    conf = ClientConfig(
        controllers=tuple(controllers),
        ca_pem=pem(*ca.bundle),
        cert_pem=pem(admin, *ca.intermediates),
        key_pem=key_pem(admin_key),
        identity=str(RoleIdentity(Role.ADMIN, admin_name)),
    )
    write_private(sd.admin_conf, conf.dumps())
    return InitReport(
        root,
        ca.cert.subject.rfc4514_string(),
        tuple(controllers),
        tuple(hosts),
        str(RoleIdentity(Role.ADMIN, admin_name)),
        kept,
    )


# --------------------------------------------------------------------------- serving


@dataclass(frozen=True, slots=True)
class ServingMaterial:
    """What ``ipsecd-controller --state-dir DIR`` serves mTLS with."""

    ca_pem: bytes
    ca_certs: tuple[x509.Certificate, ...]
    server_chain_pem: bytes
    server_cert: x509.Certificate
    server_key_pem: bytes = field(repr=False)
    crl_path: Path = Path()

    def names(self) -> tuple[str, ...]:
        """The host names and addresses the serving certificate names."""
        try:
            sans = self.server_cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            return ()
        out = list(sans.get_values_for_type(x509.DNSName))
        out += [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
        return tuple(out)


def load_serving(root: Path) -> ServingMaterial:
    """The serving material, after the file checks: :class:`NotInitialized` when there
    is no CA; :class:`CaError` for a key file others can read (with the chmod) or a
    serving certificate the CA did not issue.  A missing CRL is written again from the
    records when the CA key is there."""
    sd = StateDir(root)
    if not sd.ca_cert.exists():
        raise sd.not_initialized()
    for path, what in (
        (sd.ca_key, "CA key"),
        (sd.envelope_key, "envelope key"),
    ):
        if path.exists():
            check_private_file(path, what)
    ca_pem = read_public_file(sd.ca_cert, "CA certificate")
    try:
        ca_certs = tuple(x509.load_pem_x509_certificates(ca_pem))
    except ValueError:
        raise CaError(f"{sd.ca_cert}: no PEM certificate in it") from None
    key_data = read_private_file(sd.server_key, "serving key")
    chain_pem = read_public_file(sd.server_cert, "serving certificate")
    try:
        server = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError:
        raise CaError(f"{sd.server_cert}: no PEM certificate in it") from None
    try:
        server.verify_directly_issued_by(ca_certs[0])
    except Exception:
        raise CaError(
            f"{sd.server_cert} was not issued by the CA of {sd.ca_cert}: issue a new one "
            f"(`ipsecd-controller issue --state-dir {root} --role controller ...`)"
        ) from None
    if server.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise CaError(
            f"{sd.server_cert} expired on {server.not_valid_after_utc:%Y-%m-%d}: issue a new "
            f"one with `ipsecd-controller issue --state-dir {root} --role controller --name "
            f"controller --address HOST ... --out {sd.pki}` (it writes controller.pem/.key: "
            "move them to server.pem/.key)"
        )
    if not sd.crl.exists():
        if not sd.ca_key.exists():
            raise CaError(
                f"{sd.crl} is missing and the CA key is not here to write it: copy the "
                "cluster's crl.pem there"
            )
        write_crl(root)
    return ServingMaterial(ca_pem, ca_certs, chain_pem, server, key_data, sd.crl)


# --------------------------------------------------------------------------- issue


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    identity: str
    serial: int
    not_after: dt.datetime
    files: tuple[Path, ...]


def issue_credentials(
    root: Path,
    role: Role,
    name: str,
    out: Path,
    *,
    hosts: Sequence[str] = (),
    controllers: Sequence[str] = (),
    days: int = 365,
    key_type: str = DEFAULT_KEY_TYPE,
    force: bool = False,
) -> IssuedFiles:
    """Mint a credential: for admin and viewer an ipsecctl config file at ``out`` (the
    format of admin.conf); for node and controller ``NAME.pem`` (certificate, then
    intermediates), ``NAME.key`` (0600), ``ca.pem`` and ``crl.pem`` in the directory
    ``out``.  Existing files are not overwritten unless ``force``."""
    sd = StateDir(root)
    check_name(name, f"{role.value} name")
    ca = sd.load_ca()
    if role in (Role.ADMIN, Role.VIEWER):
        targets = [out]
    else:
        targets = [out / f"{name}.pem", out / f"{name}.key"]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise CaError(f"{existing[0]} exists; nothing written (--force replaces it)")
    if role in (Role.ADMIN, Role.VIEWER) and not controllers:
        controllers = _cluster_controllers(sd)
    key = generate_key(key_type)
    ident = RoleIdentity(role, name)
    with sd.locked():
        records = _load_records(sd)
        cert = ca.issue(role, name, key.public_key(), hosts=hosts, days=days)
        _record(records, cert, ident)
        _save_records(sd, records)
    if role in (Role.ADMIN, Role.VIEWER):
        if not out.parent.exists():
            make_private_dir(out.parent)
        conf = ClientConfig(
            controllers=tuple(controllers),
            ca_pem=pem(*ca.bundle),
            cert_pem=pem(cert, *ca.intermediates),
            key_pem=key_pem(key),
            identity=str(ident),
        )
        write_private(out, conf.dumps())
        files: tuple[Path, ...] = (out,)
    else:
        if not out.exists():
            make_private_dir(out)
        write_private(out / f"{name}.key", key_pem(key))
        write_file(out / f"{name}.pem", pem(cert, *ca.intermediates), 0o644)
        write_file(out / "ca.pem", pem(*ca.bundle), 0o644)
        write_file(out / "crl.pem", read_public_file(sd.crl, "CRL"), 0o644)
        files = (out / f"{name}.pem", out / f"{name}.key", out / "ca.pem", out / "crl.pem")
    return IssuedFiles(str(ident), cert.serial_number, cert.not_valid_after_utc, files)


def _cluster_controllers(sd: StateDir) -> list[str]:
    try:
        raw = json.loads(read_public_file(sd.cluster, "cluster addresses"))
        return [str(a) for a in raw["controllers"]]
    except (CaError, ValueError, KeyError, TypeError):
        raise CaError(
            f"{sd.cluster} does not list the controller addresses: give --controller "
            "HOST:PORT (repeatable)"
        ) from None


# --------------------------------------------------------------------------- revoke


def write_crl(root: Path, *, days: int = 30) -> int:
    """Sign a new CRL of every revoked serial; returns its CRL number."""
    sd = StateDir(root)
    ca = sd.load_ca()
    with sd.locked():
        records = _load_records(sd)
        records.crl_number += 1
        revoked = [
            (r.serial, dt.datetime.strptime(r.revoked, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC))
            for r in records.certs
            if r.revoked
        ]
        crl = ca.crl(revoked, number=records.crl_number, days=days)
        _save_records(sd, records)
        write_file(sd.crl, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return records.crl_number


def revoke(
    root: Path,
    *,
    serial: int | None = None,
    role: Role | None = None,
    name: str | None = None,
    days: int = 30,
) -> list[Record]:
    """Revoke the certificate with ``serial``, or every certificate issued to
    ``role``/``name`` (not yet revoked); then write the CRL.  Returns what was revoked
    now (empty: nothing matched, no new CRL)."""
    sd = StateDir(root)
    if serial is None and (role is None or name is None):
        raise CaError("revoke needs --serial HEX, or --role and --name")
    sd.load_ca()  # the CA key must be here before anything is marked
    now = _iso(dt.datetime.now(dt.UTC))
    with sd.locked():
        records = _load_records(sd)
        hit = [
            r
            for r in records.certs
            if r.revoked is None
            and (
                r.serial == serial
                if serial is not None
                else (r.role == role.value if role else False) and r.name == name
            )
        ]
        if serial is not None and not hit and all(r.serial != serial for r in records.certs):
            # not issued by these commands (e.g. by another tool with the same CA key)
            unknown = Record(serial, "unknown", "", "", "")
            records.certs.append(unknown)
            hit = [unknown]
        for r in hit:
            r.revoked = now
        if hit:
            _save_records(sd, records)
    if hit:
        write_crl(root, days=days)
    return hit


# --------------------------------------------------------------------------- node CSRs


def _parse_iso(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def live_records(root: Path, role: Role, name: str) -> list[Record]:
    """The certificates issued to ``role``/``name`` that are neither revoked nor expired."""
    now = dt.datetime.now(dt.UTC)
    return [
        r
        for r in list_records(root)
        if r.role == role.value
        and r.name == name
        and r.revoked is None
        and r.not_after
        and _parse_iso(r.not_after) > now
    ]


@dataclass(frozen=True, slots=True)
class NodeIssued:
    """A node certificate made from a CSR (join, renewal) and what goes with it."""

    cert: x509.Certificate
    chain_pem: bytes
    ca_pem: bytes
    crl_pem: bytes
    revoked: tuple[Record, ...] = ()


def issue_node(
    root: Path,
    request: NodeRequest,
    *,
    lifetime: dt.timedelta,
    revoke_others: bool = False,
    crl_days: int = 30,
) -> NodeIssued:
    """Issue node ``request.name``'s certificate on the CSR's key and addresses, and
    record it in ``pki/certs.json`` (the CA's index, which ``revoke`` and node removal
    use).  ``revoke_others``: also revoke every earlier certificate of that node (a
    node joining again), then sign a new CRL."""
    sd = StateDir(root)
    ca = sd.load_ca()
    ident = RoleIdentity(Role.NODE, request.name)
    revoked: list[Record] = []
    with sd.locked():
        records = _load_records(sd)
        cert = ca.issue(
            Role.NODE, request.name, request.public_key, hosts=request.addresses, lifetime=lifetime
        )
        if revoke_others:
            stamp = _iso(dt.datetime.now(dt.UTC))
            for r in records.certs:
                if r.role == Role.NODE.value and r.name == request.name and r.revoked is None:
                    r.revoked = stamp
                    revoked.append(r)
        _record(records, cert, ident)
        _save_records(sd, records)
    if revoked:
        write_crl(root, days=crl_days)
    return NodeIssued(
        cert,
        pem(cert, *ca.intermediates),
        pem(*ca.bundle),
        read_public_file(sd.crl, "CRL"),
        tuple(revoked),
    )
