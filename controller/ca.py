"""The cluster CA (issue #12; docs/security.md): keys, certificates that carry a role,
CRLs, and the file rules for private material.

Pure x509 with ``cryptography`` (nothing is shelled out).  What it makes:

* the CA: a self-signed certificate (ECDSA P-256 by default), basicConstraints cA=TRUE
  with pathLenConstraint 0, keyUsage keyCertSign + cRLSign; or an existing CA key and
  certificate (:meth:`CertificateAuthority.from_pem`; an intermediate may bring its
  issuers along in the same PEM file);
* end-entity certificates for four roles:

  ==========  =========================================  ==============================
  role        subjectAltName                             extendedKeyUsage
  ==========  =========================================  ==============================
  admin       the role URI                               clientAuth
  viewer      the role URI                               clientAuth
  node        the role URI, the node name (dNSName),     serverAuth, clientAuth,
              its addresses (iPAddress)                  id-kp-ipsecIKE
  controller  the role URI, the host names (dNSName)     serverAuth, clientAuth
              and addresses (iPAddress) it serves on
  ==========  =========================================  ==============================

  keyUsage digitalSignature (critical; plus keyEncipherment for RSA keys),
  basicConstraints cA=FALSE.  A node certificate is also the node's IKE certificate
  (``auth certificate``, docs/operations.md "Certificates"): ipsecd.ike.pki accepts
  its keyUsage and extendedKeyUsage, and its dNSName / iPAddress entries are the
  node's ``id name`` / ``id address`` identities.
* CRLs of the revoked serial numbers (CRL number and authorityKeyIdentifier set).

**Where the role lives.**  In exactly one place: one subjectAltName URI
``ipsecd://role/ROLE/NAME`` (:mod:`ipsecd.roles`, shared with the agent).  The subject
(``CN=NAME``) is for people reading the certificate and is never used to decide
anything; a certificate with no role URI, or with more than one, has no role and is
refused by the controller.

Private keys never appear in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ipsecd.roles import ROLE_URI_PREFIX, Role, RoleError, RoleIdentity, parse_role_uri, valid_name
from ipsecd.roles import role_of as _role_of

__all__ = [
    "DEFAULT_KEY_TYPE",
    "KEY_TYPES",
    "ROLE_URI_PREFIX",
    "CaError",
    "CertificateAuthority",
    "NodeRequest",
    "PrivateKey",
    "Role",
    "RoleIdentity",
    "check_name",
    "check_node_csr",
    "check_private_file",
    "crl_serials",
    "describe",
    "generate_key",
    "key_pem",
    "load_private_key",
    "make_private_dir",
    "parse_role_uri",
    "pem",
    "read_private_file",
    "read_public_file",
    "role_of",
    "write_file",
    "write_private",
]

#: id-kp-ipsecIKE (RFC 4945 5.1.3.12), on node certificates beside serverAuth/clientAuth.
IPSEC_IKE_EKU = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")

KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "rsa-3072")
DEFAULT_KEY_TYPE = "ecdsa-p256"

#: Certificates start a little in the past: a peer whose clock is slightly behind
#: accepts them at once.
BACKDATE = dt.timedelta(minutes=5)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: Largest PEM file (certificate bundle, key, CRL) read from disk.
MAX_PEM_FILE = 4 * 1024 * 1024


class CaError(Exception):
    """A CA operation or a credential file that cannot be used; the message names the
    file and the fix, never key material."""


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is usable in a certificate (letters, digits, ``_ . @ -``, at most
    253 characters, not starting with a punctuation mark); else :class:`CaError`."""
    if not valid_name(name):
        raise CaError(
            f"{what} {name[:80]!r} is not usable: use letters, digits and _ . @ - "
            "(at most 253, starting with a letter, digit or _)"
        )
    return name


def role_of(cert: x509.Certificate) -> RoleIdentity:
    """The certificate's role (:func:`ipsecd.roles.role_of`), errors as :class:`CaError`."""
    try:
        return _role_of(cert)
    except RoleError as exc:
        raise CaError(str(exc)) from None


def describe(cert: x509.Certificate) -> str:
    """``'CN=x' (serial 0x..)`` for messages."""
    try:
        subject = cert.subject.rfc4514_string()
    except ValueError:
        subject = "?"
    return f"certificate '{subject[:120]}' (serial {cert.serial_number:#x})"


# --------------------------------------------------------------------------- keys


def generate_key(kind: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise CaError(f"key type {kind!r} is not one of {', '.join(KEY_TYPES)}")


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file holding it is mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def load_private_key(data: bytes, *, where: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CaError(
            f"{where}: the private key is encrypted; give it unencrypted in a file only "
            "its owner can read (mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # cryptography's message is not shown: nothing of a key goes into errors
        raise CaError(f"{where}: no usable PEM private key") from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CaError(f"{where}: a {type(key).__name__}; use an ECDSA, RSA or Ed25519 key")
    return key


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _public_der(key: object) -> bytes:
    assert isinstance(
        key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    ), type(key)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


# --------------------------------------------------------------------------- the CA


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        text = host.strip().strip("[]")
        if not text or text in seen:
            continue
        seen.add(text)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            try:
                text.encode("ascii")
            except UnicodeEncodeError:
                raise CaError(f"host name {text[:80]!r} is not ASCII (use its IDNA form)") from None
            out.append(x509.DNSName(text))
    return out


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """The CA's certificate (``cert``), the issuers above it when it is an intermediate
    (``chain``), and its key (never in ``repr``)."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False, compare=False)
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def bundle(self) -> tuple[x509.Certificate, ...]:
        """What peers trust: the CA certificate and the issuers above it."""
        return (self.cert, *self.chain)

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What an issued certificate's file carries after it: every certificate of
        the bundle except a self-signed root."""
        return tuple(c for c in self.bundle if c.subject != c.issuer)

    @classmethod
    def create(
        cls,
        *,
        key_type: str = DEFAULT_KEY_TYPE,
        days: int = 3650,
        label: str = "",
        now: dt.datetime | None = None,
    ) -> CertificateAuthority:
        """A new self-signed cluster CA.  ``label`` goes into the subject (default: a
        random hex tag, so two clusters' CAs have different names)."""
        key = generate_key(key_type)
        now = now or _now()
        tag = label or secrets.token_hex(4)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsecd"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"ipsecd cluster CA {tag}"),
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, _hash_for(key))
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem_data: bytes, *, where: str) -> CertificateAuthority:
        """An existing CA: ``cert_pem`` holds the CA certificate first, then (when it is
        an intermediate) its issuers; ``key_pem_data`` its unencrypted key."""
        try:
            certs = x509.load_pem_x509_certificates(cert_pem)
        except ValueError:
            raise CaError(f"{where}: no PEM certificate in the CA certificate file") from None
        key = load_private_key(key_pem_data, where=where)
        ca = certs[0]
        try:
            bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CaError(f"{where}: {describe(ca)} is not a CA (basicConstraints cA=TRUE missing)")
        if bc.path_length is not None and bc.path_length < 0:
            raise CaError(f"{where}: {describe(ca)} has a negative pathLenConstraint")
        try:
            ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            pass
        else:
            if not ku.key_cert_sign or not ku.crl_sign:
                raise CaError(
                    f"{where}: {describe(ca)}: its keyUsage must allow keyCertSign and cRLSign"
                )
        if _public_der(key.public_key()) != _public_der(ca.public_key()):
            raise CaError(f"{where}: the CA key does not belong to {describe(ca)}")
        now = _now()
        if ca.not_valid_after_utc <= now:
            raise CaError(f"{where}: {describe(ca)} expired on {ca.not_valid_after_utc:%Y-%m-%d}")
        chain = tuple(certs[1:])
        lower = ca
        for upper in chain:
            if not _signed_by(lower, upper):
                raise CaError(
                    f"{where}: {describe(upper)} did not issue {describe(lower)}: list the "
                    "CA certificate first, then each issuer up to the root"
                )
            lower = upper
        return cls(ca, key, chain)

    # ------------------------------------------------------------------ issuing

    def issue(
        self,
        role: Role,
        name: str,
        public_key: object,
        *,
        hosts: Sequence[str] = (),
        days: int = 365,
        now: dt.datetime | None = None,
        lifetime: dt.timedelta | None = None,
    ) -> x509.Certificate:
        """A certificate for ``role``/``name`` on ``public_key``.  ``hosts``: the node's
        addresses, or the controller's host names and addresses (ignored for admin and
        viewer).  ``lifetime`` (instead of ``days``): validity from now; the certificate
        starts at most a tenth of it (at most 5 minutes) in the past."""
        check_name(name)
        ident = RoleIdentity(role, name)
        now = now or _now()
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ident.uri)]
        if role == Role.NODE:
            sans += _host_names([name, *hosts])
            ekus = [
                ExtendedKeyUsageOID.SERVER_AUTH,
                ExtendedKeyUsageOID.CLIENT_AUTH,
                IPSEC_IKE_EKU,
            ]
        elif role == Role.CONTROLLER:
            sans += _host_names(hosts)
            ekus = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        else:
            ekus = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if not isinstance(
            public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            raise CaError(f"cannot issue for a {type(public_key).__name__}")
        span = lifetime if lifetime is not None else dt.timedelta(days=days)
        backdate = min(BACKDATE, span / 10)
        not_after = min(now + span, self.cert.not_valid_after_utc)
        if not_after <= now:
            raise CaError(
                f"the CA {describe(self.cert)} expires on "
                f"{self.cert.not_valid_after_utc:%Y-%m-%d}: it can issue nothing more"
            )
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._aki(), critical=False)
        )
        return builder.sign(self.key, _hash_for(self.key))

    def _aki(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def signed(self, cert: x509.Certificate) -> bool:
        """Whether this CA issued ``cert`` (name and signature)."""
        return _signed_by(cert, self.cert)

    # ------------------------------------------------------------------ CRL

    def crl(
        self,
        revoked: Iterable[tuple[int, dt.datetime]],
        *,
        number: int,
        days: int = 30,
        now: dt.datetime | None = None,
    ) -> x509.CertificateRevocationList:
        """A CRL listing ``revoked`` (serial, revocation time), valid ``days`` days."""
        now = now or _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - BACKDATE)
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(self._aki(), critical=False)
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.key, _hash_for(self.key))


def crl_serials(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> frozenset[int] | None:
    """The revoked serials of ``crl`` when ``ca`` signed it, else None."""
    if crl.issuer != ca.subject:
        return None
    try:
        key = ca.public_key()
        if not isinstance(
            key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            return None
        if not crl.is_signature_valid(key):
            return None
    except (ValueError, UnsupportedAlgorithm):
        return None
    return frozenset(entry.serial_number for entry in crl)


# --------------------------------------------------------------------------- CSRs

#: Largest CSR accepted (a P-256 CSR with a few addresses is ~400 bytes, RSA 4096 ~1.7 KB).
MAX_CSR_BYTES = 16 * 1024
#: Addresses one node certificate may carry.
MAX_NODE_ADDRESSES = 32


@dataclass(frozen=True, slots=True)
class NodeRequest:
    """What a node's CSR asks for, once checked: its key and its addresses."""

    name: str
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    addresses: tuple[str, ...]


def _key_problem(key: object) -> str | None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in ("secp256r1", "secp384r1", "secp521r1"):
            return None
        return f"an ECDSA key on curve {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size >= 2048 else f"an RSA key of {key.key_size} bits"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return None
    return f"a {type(key).__name__.removeprefix('_')}"


def check_node_csr(der: bytes, node: str) -> NodeRequest:
    """Check a node's PKCS#10 request (DER) for ``node``: a valid self-signature; the
    subject ``CN=node`` (or empty); subjectAltNames only ``DNS:node``, the node's role
    URI and IP addresses; no CA (basicConstraints cA=TRUE, keyCertSign, cRLSign); an
    ECDSA P-256/P-384/P-521, RSA >= 2048 or Ed25519 key.  :class:`CaError` says what
    is wrong.  Only the key and the addresses are taken: the controller writes every
    extension of the certificate itself (:meth:`CertificateAuthority.issue`)."""
    check_name(node, "node name")
    if len(der) > MAX_CSR_BYTES:
        raise CaError(f"the certificate request is {len(der)} bytes, over {MAX_CSR_BYTES}")
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError:
        raise CaError("the certificate request is not a DER PKCS#10 request") from None
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CaError("the certificate request's key cannot be read") from None
    problem = _key_problem(key)
    if problem is not None:
        raise CaError(
            f"the certificate request has {problem}: node keys are ECDSA P-256 (the "
            "default), P-384 or P-521, RSA of 2048 bits or more, or Ed25519"
        )
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey)
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise CaError("the certificate request's signature does not verify")
    try:
        cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        other = [a for a in csr.subject if a.oid != NameOID.COMMON_NAME]
        extensions = list(csr.extensions)
    except ValueError:
        raise CaError("the certificate request's subject or extensions cannot be parsed") from None
    if cns != [node] and cns:
        raise CaError(
            f"the certificate request is for CN={str(cns[0])[:80]!r}, not node {node!r}: a "
            "node asks only for its own name"
        )
    if other:
        raise CaError("the certificate request's subject may hold only CN=NODE")
    addresses: list[str] = []
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints):
            if value.ca:
                raise CaError(
                    "the certificate request asks for a CA certificate (basicConstraints "
                    "cA=TRUE): a node certificate can never sign others"
                )
        elif isinstance(value, x509.KeyUsage):
            if value.key_cert_sign or value.crl_sign:
                raise CaError(
                    "the certificate request asks for keyCertSign or cRLSign: a node "
                    "certificate can never sign certificates or CRLs"
                )
        elif isinstance(value, x509.SubjectAlternativeName):
            for gn in value:
                if isinstance(gn, x509.DNSName) and gn.value == node:
                    continue
                if isinstance(gn, x509.UniformResourceIdentifier) and gn.value == (
                    RoleIdentity(Role.NODE, node).uri
                ):
                    continue
                if isinstance(gn, x509.IPAddress) and isinstance(
                    gn.value, ipaddress.IPv4Address | ipaddress.IPv6Address
                ):
                    addresses.append(str(gn.value))
                    continue
                raise CaError(
                    f"the certificate request names {str(gn.value)[:80]!r}: a node asks only "
                    f"for DNS:{node}, its role URI and its IP addresses"
                )
        elif isinstance(value, x509.ExtendedKeyUsage):
            continue  # the controller sets its own
        else:
            raise CaError(
                f"the certificate request asks for the extension {ext.oid.dotted_string}; only "
                "subjectAltName, basicConstraints, keyUsage and extendedKeyUsage are read"
            )
    unique = tuple(dict.fromkeys(addresses))
    if len(unique) > MAX_NODE_ADDRESSES:
        raise CaError(
            f"the certificate request names {len(unique)} addresses, over {MAX_NODE_ADDRESSES}"
        )
    return NodeRequest(node, key, unique)


# --------------------------------------------------------------------------- files


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) as mode 0700, or make an existing one 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte on (a temporary file
    created with that mode, then renamed over ``path``)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def write_private(path: Path, data: bytes) -> None:
    """A file only its owner can read (0600): keys, credential files."""
    write_file(path, data, 0o600)


def check_private_file(path: Path, what: str) -> os.stat_result:
    """The file's stat when only its owner can read or write it; else :class:`CaError`
    with the ``chmod`` that fixes it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CaError(f"{path}: no such file ({what})") from None
    except OSError as exc:
        raise CaError(f"{path}: {exc.strerror} ({what})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CaError(f"{path}: not a regular file ({what})")
    if st.st_mode & 0o077:
        raise CaError(
            f"{path}: {what} is mode {stat.S_IMODE(st.st_mode):04o}, readable or writable by "
            f"others; run chmod 600 {path}"
        )
    return st


def read_private_file(path: Path, what: str, *, limit: int = MAX_PEM_FILE) -> bytes:
    """Read a 0600 file (see :func:`check_private_file`), at most ``limit`` bytes."""
    st = check_private_file(path, what)
    if st.st_size > limit:
        raise CaError(f"{path}: {st.st_size} bytes, more than the {limit} a {what} may have")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CaError(f"{path}: {exc.strerror} ({what})") from None


def read_public_file(path: Path, what: str, *, limit: int = MAX_PEM_FILE) -> bytes:
    try:
        st = path.stat()
        if st.st_size > limit:
            raise CaError(f"{path}: {st.st_size} bytes, more than the {limit} a {what} may have")
        return path.read_bytes()
    except FileNotFoundError:
        raise CaError(f"{path}: no such file ({what})") from None
    except OSError as exc:
        raise CaError(f"{path}: {exc.strerror} ({what})") from None
