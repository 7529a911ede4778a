"""The private etcd's certificates (issue #12; docs/security.md "The etcd link").

The controller's private etcd (controller/embedded_etcd.py) serves TLS only and
requires a client certificate.  Its certificates live in ``STATE_DIR/etcd-pki/``
(folder 0700, every file 0600)::

    ca.pem  ca.key          the etcd CA (ECDSA P-256), used for nothing else
    server.pem server.key   etcd's certificate: 127.0.0.1 and localhost
    client.pem client.key   the controller's etcd client certificate

**A dedicated CA, not the cluster CA.**  etcd 3.4 with ``--client-cert-auth`` admits
*every* certificate that chains to its ``--trusted-ca-file``, and without etcd's own
auth enabled such a client may read and write every key.  If etcd trusted the cluster
CA, every node certificate (the most exposed keys: one on every node), every viewer
and admin certificate would be a full etcd credential: read all literal keys, move
the ``current`` pointer past the controller's validation.  etcd cannot tell our roles
apart (``--client-cert-allowed-hostname`` matches a host name, and node certificates
carry their node names, which any admin may choose).  With a CA of its own, etcd
trusts only the two certificates below, and the controller's API (which trusts only
the cluster CA) refuses both at the TLS handshake: neither credential works on the
other side, and controller/authz.py's table needs no new role.

The etcd CA's key stays in the state directory (0600) so that the certificates can be
issued again: :func:`ensure_etcd_pki` runs at every start of a controller with a
private etcd (and in ``init``), keeps what is valid, and issues what is missing,
unreadable, not issued by the etcd CA, not matching its key, or expiring within
:data:`RENEW_BEFORE` (a new CA when the CA itself is).  Lifetimes are long (the CA's
:data:`VALIDITY`) because a shorter one protects nothing here: the files never leave
this folder, and whoever can read it holds the etcd CA key and can mint more.

The server certificate also has the clientAuth usage: etcd's HTTP gateway (``/v3/...``
JSON, used by etcdctl-less tooling and the test helpers) dials etcd's own gRPC side
with the server certificate as its client certificate, and etcd refuses it without.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.ca import (
    BACKDATE,
    CaError,
    check_private_file,
    key_pem,
    load_private_key,
    make_private_dir,
    pem,
    write_private,
)
from controller.etcd_tls import EtcdClientTls, load_client_tls, public_key_der

__all__ = ["RENEW_BEFORE", "VALIDITY", "EtcdPki", "ensure_etcd_pki", "state_etcd_pki"]

_log = logging.getLogger(__name__)

VALIDITY = dt.timedelta(days=3650)
RENEW_BEFORE = dt.timedelta(days=365)
#: what the private etcd listens on (controller/embedded_etcd.py)
SERVER_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True, slots=True)
class EtcdPki:
    """The files of one etcd PKI folder (see the module docstring)."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    def files(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.client_cert,
            self.client_key,
        )

    def client_tls(self, server_name: str = "127.0.0.1") -> EtcdClientTls:
        """The controller's credentials for this etcd (checked like ``--etcd-*`` files)."""
        return load_client_tls(
            self.ca_cert,
            self.client_cert,
            self.client_key,
            server_name=server_name,
            flags=(str(self.ca_cert), str(self.client_cert), str(self.client_key)),
        )


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_etcd_pki(
    folder: Path,
    *,
    hosts: tuple[str, ...] = SERVER_HOSTS,
    renew: bool = False,
    now: dt.datetime | None = None,
) -> EtcdPki:
    """Make ``folder`` hold a usable etcd PKI (see the module docstring) and return it.
    ``renew``: a new CA and certificates whatever is there (``init --force``).
    :class:`CaError` for a key file others can read (with the ``chmod``)."""
    pki = EtcdPki(folder)
    now = now or dt.datetime.now(dt.UTC)
    make_private_dir(folder)
    with _locked(folder):
        for path in pki.files():
            if path.exists() and path.suffix == ".key":
                check_private_file(path, "etcd TLS key")
        ca = None if renew else _load_ca(pki, now)
        if ca is None:
            ca = _new_ca(now)
            write_private(pki.ca_key, key_pem(ca[1]))
            write_private(pki.ca_cert, pem(ca[0]))
            _log.info("etcd TLS: new etcd CA in %s", pki.ca_cert)
        for cert_path, key_path, server in (
            (pki.server_cert, pki.server_key, True),
            (pki.client_cert, pki.client_key, False),
        ):
            if _usable(cert_path, key_path, ca[0], now):
                continue
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _issue(ca, key.public_key(), server=server, hosts=hosts, now=now)
            write_private(key_path, key_pem(key))
            write_private(cert_path, pem(cert))
            _log.info("etcd TLS: issued %s", cert_path)
    return pki


def state_etcd_pki(root: Path, *, renew: bool = False) -> EtcdPki:
    """:func:`ensure_etcd_pki` for the state directory ``root`` (``root/etcd-pki``; the
    state directory is made 0700 like ``init`` makes it)."""
    make_private_dir(root)
    return ensure_etcd_pki(root / "etcd-pki", renew=renew)


def _load_ca(
    pki: EtcdPki, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The etcd CA when both files are there, match and it is not about to expire."""
    if not (pki.ca_cert.exists() and pki.ca_key.exists()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        key = load_private_key(pki.ca_key.read_bytes(), where=str(pki.ca_key))
    except (ValueError, OSError, CaError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or public_key_der(
        key.public_key()
    ) != public_key_der(cert.public_key()):
        return None
    if cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return None
    return cert, key


def _usable(cert_path: Path, key_path: Path, ca: x509.Certificate, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = load_private_key(key_path.read_bytes(), where=str(key_path))
        cert.verify_directly_issued_by(ca)
    except (ValueError, OSError, TypeError, CaError, InvalidSignature, UnsupportedAlgorithm):
        return False
    if public_key_der(key.public_key()) != public_key_der(cert.public_key()):
        return False
    return cert.not_valid_after_utc - RENEW_BEFORE > now


def _new_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsecd"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ipsecd etcd CA {secrets.token_hex(4)}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    public_key: ec.EllipticCurvePublicKey,
    *,
    server: bool,
    hosts: tuple[str, ...],
    now: dt.datetime,
) -> x509.Certificate:
    """etcd's server certificate (serverAuth + clientAuth, the hosts as SANs) or the
    controller's client certificate (clientAuth).  Neither carries an ipsecd role URI."""
    ca_cert, ca_key = ca
    if server:
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        ekus = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        common_name = "ipsecd private etcd"
    else:
        ekus = [ExtendedKeyUsageOID.CLIENT_AUTH]
        common_name = "ipsecd-controller etcd client"
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())
