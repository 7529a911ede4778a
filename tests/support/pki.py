"""A small factory of test PKIs, made with ``cryptography`` only (no openssl CLI).

Test-only: product code never imports this.  Typical use::

    root = ca("Test Root CA")
    inter = ca("Test Intermediate CA", issuer=root, key="p384")
    peer = end_entity(inter, "peer.test", dns=("peer.test",), ips=("192.0.2.2",))
    store = TrustStore((root.cert,))
    store.validate(peer.cert, [inter.cert], NOW)

Deterministic where cheap: EC and Ed25519 keys are derived from their ``label`` (the
same label gives the same key in every run), serial numbers come from a counter, and
times are relative to :data:`NOW` (a fixed instant).  RSA keys cannot be derived, so
they are generated once per (size, label) and process and then reused: generation is
slow.  Signatures (ECDSA) still differ between runs.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import itertools
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ipsecd.ike.signature import _der, _oid  # the DER the product writes

#: The instant tests validate at: 2025-06-15 00:00:00 UTC.
NOW = 1_749_945_600.0
DAY = 86_400.0

#: Key kinds :func:`make_key` knows.
KEY_KINDS = ("p256", "p384", "p521", "rsa2048", "rsa3072", "ed25519", "rsa1024", "p224", "dsa")

#: Any key these helpers sign with (DSA among them: cryptography 51 deprecates its
#: classes, so the type comes from cryptography's own union rather than ``dsa.*``).
TestKey = CertificateIssuerPrivateKeyTypes
_CURVES: dict[str, ec.EllipticCurve] = {
    "p224": ec.SECP224R1(),
    "p256": ec.SECP256R1(),
    "p384": ec.SECP384R1(),
    "p521": ec.SECP521R1(),
}
_serials = itertools.count(0x1000)

IPSEC_IKE = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")


def _seed(kind: str, label: str) -> bytes:
    return hashlib.sha512(f"ipsecd test key {kind} {label}".encode()).digest()


@functools.cache
def _slow_key(kind: str, label: str) -> TestKey:
    if kind == "dsa":
        # a DSA certificate is what the refusal tests need; cryptography >= 51 warns
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            return dsa.generate_private_key(2048)
    return rsa.generate_private_key(65537, int(kind[3:]))


def make_key(kind: str = "p256", label: str = "") -> TestKey:
    """A private key: ``p224``/``p256``/``p384``/``p521`` (ECDSA), ``rsa1024``/``rsa2048``/
    ``rsa3072`` (any ``rsaN``), ``ed25519``, ``dsa``.  Same (kind, label), same key."""
    if kind in _CURVES:
        curve = _CURVES[kind]
        # any value in [1, n-1] will do; reduce a hash of the label into range
        order_bits = curve.key_size
        value = int.from_bytes(_seed(kind, label), "big") % (2 ** (order_bits - 1)) + 1
        return ec.derive_private_key(value, curve)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(_seed(kind, label)[:32])
    if kind.startswith("rsa") or kind == "dsa":
        return _slow_key(kind, label)
    raise ValueError(f"unknown key kind {kind!r}; one of {KEY_KINDS}")


def name(cn: str, *, org: str | None = "ipsecd tests") -> x509.Name:
    attrs = []
    if org is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _when(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _aki(issuer_key: TestKey) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def _default_hash(key: TestKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: TestKey

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _build(
    subject: x509.Name,
    public_key: object,
    issuer_name: x509.Name,
    signer: TestKey,
    *,
    serial: int | None,
    not_before: float,
    not_after: float,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
    hash_alg: hashes.HashAlgorithm | None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(next(_serials) if serial is None else serial)
        .not_valid_before(_when(not_before))
        .not_valid_after(_when(not_after))
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical)
    if hash_alg is None:
        hash_alg = _default_hash(signer)
    return builder.sign(signer, hash_alg)


def ca(
    cn: str = "Test Root CA",
    *,
    issuer: Issued | None = None,
    key: str | TestKey = "p256",
    subject: x509.Name | None = None,
    path_len: int | None = None,
    ca_flag: bool | None = True,
    key_cert_sign: bool | None = True,
    not_before: float = NOW - 30 * DAY,
    not_after: float = NOW + 3650 * DAY,
    serial: int | None = None,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    sign_with: TestKey | None = None,
    hash_alg: hashes.HashAlgorithm | None = None,
) -> Issued:
    """A CA certificate: self-signed (a root) unless ``issuer`` is given.

    ``ca_flag``: basicConstraints cA (None: no basicConstraints at all);
    ``key_cert_sign``: keyUsage keyCertSign + cRLSign (None: no keyUsage; False:
    keyUsage with digitalSignature only); ``sign_with`` signs with another key than the
    issuer's (under the issuer's name)."""
    private = make_key(key, f"ca {cn}") if isinstance(key, str) else key
    subject = subject if subject is not None else name(cn)
    exts: list[tuple[x509.ExtensionType, bool]] = []
    if ca_flag is not None:
        exts.append((x509.BasicConstraints(ca=ca_flag, path_length=path_len), True))
    if key_cert_sign is not None:
        exts.append(
            (_key_usage(cert_sign=key_cert_sign, digital_signature=not key_cert_sign), True)
        )
    exts.append((x509.SubjectKeyIdentifier.from_public_key(private.public_key()), False))
    exts.append((_aki(issuer.key if issuer else private), False))
    exts.extend(extra)
    signer = sign_with or (issuer.key if issuer else private)
    cert = _build(
        subject,
        private.public_key(),
        issuer.cert.subject if issuer else subject,
        signer,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        extensions=exts,
        hash_alg=hash_alg,
    )
    return Issued(cert, private)


def _key_usage(
    *, cert_sign: bool = False, digital_signature: bool = False, key_encipherment: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def end_entity(
    issuer: Issued,
    cn: str = "peer.test",
    *,
    key: str | TestKey = "p256",
    subject: x509.Name | None = None,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    emails: Iterable[str] = (),
    digital_signature: bool | None = True,
    eku: Iterable[x509.ObjectIdentifier] | None = (IPSEC_IKE,),
    not_before: float = NOW - DAY,
    not_after: float = NOW + 365 * DAY,
    serial: int | None = None,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    sign_with: TestKey | None = None,
    hash_alg: hashes.HashAlgorithm | None = None,
) -> Issued:
    """An end-entity certificate issued by ``issuer``.

    ``digital_signature``: keyUsage digitalSignature (None: no keyUsage; False:
    keyUsage keyEncipherment only); ``eku``: extendedKeyUsage purposes (None: no
    extendedKeyUsage); ``sign_with``: sign with another key under the issuer's name."""
    private = make_key(key, f"ee {cn}") if isinstance(key, str) else key
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True)
    ]
    if digital_signature is not None:
        exts.append(
            (
                _key_usage(
                    digital_signature=digital_signature, key_encipherment=not digital_signature
                ),
                True,
            )
        )
    if eku is not None:
        exts.append((x509.ExtendedKeyUsage(list(eku)), False))
    exts.append((_aki(issuer.key), False))
    alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    alt += [x509.RFC822Name(e) for e in emails]
    if alt:
        exts.append((x509.SubjectAlternativeName(alt), False))
    exts.extend(extra)
    cert = _build(
        subject if subject is not None else name(cn),
        private.public_key(),
        issuer.cert.subject,
        sign_with or issuer.key,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        extensions=exts,
        hash_alg=hash_alg,
    )
    return Issued(cert, private)


def crl(
    issuer: Issued,
    revoked: Iterable[int | tuple[int, float] | tuple[int, float, x509.ReasonFlags]] = (),
    *,
    last_update: float = NOW - DAY,
    next_update: float | None = NOW + 7 * DAY,
    sign_with: TestKey | None = None,
    number: int = 1,
) -> x509.CertificateRevocationList:
    """A CRL of ``issuer`` listing ``revoked`` serials (with a revocation time and a
    reason when given); ``next_update`` in the past makes it stale; ``sign_with`` signs
    it with another key (a bad signature)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(_when(last_update))
        .add_extension(x509.CRLNumber(number), False)
        # strongSwan finds a CA's CRLs by this key identifier
        .add_extension(_aki(issuer.key), False)
    )
    if next_update is not None:
        builder = builder.next_update(_when(next_update))
    for item in revoked:
        if isinstance(item, int):
            serial, when, reason = item, NOW - 2 * DAY, None
        elif len(item) == 2:
            serial, when, reason = item[0], item[1], None
        else:
            serial, when, reason = item
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_when(when))
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), False)
        builder = builder.add_revoked_certificate(entry.build())
    signer = sign_with or issuer.key
    return builder.sign(signer, _default_hash(signer))


# ----------------------------------------------------------------------- legacy hashes

_RSA_SIG_OIDS = {
    "sha1": "1.2.840.113549.1.1.5",
    "md5": "1.2.840.113549.1.1.4",
}


def _elements(data: bytes) -> list[bytes]:
    """The elements inside one DER SEQUENCE (``data`` is the whole SEQUENCE)."""
    first = data[1]
    off = 2 + (first & 0x7F if first & 0x80 else 0)
    out = []
    while off < len(data):
        first = data[off + 1]
        hdr = 2 + (first & 0x7F if first & 0x80 else 0)
        length = int.from_bytes(data[off + 2 : off + hdr], "big") if first & 0x80 else first
        out.append(data[off : off + hdr + length])
        off += hdr + length
    return out


def resign_legacy(
    cert: x509.Certificate, key: rsa.RSAPrivateKey, hash_name: str
) -> x509.Certificate:
    """``cert`` signed again by RSA ``key`` with SHA-1 or MD5, which cryptography no
    longer signs certificates with: the TBS's signature algorithm is swapped and the
    certificate re-assembled by hand."""
    alg = _der(0x30, _oid(_RSA_SIG_OIDS[hash_name]) + b"\x05\x00")
    fields = _elements(cert.tbs_certificate_bytes)
    index = 2 if fields[0][0] == 0xA0 else 1  # after [0] version and the serial
    fields[index] = alg
    tbs = _der(0x30, b"".join(fields))
    hasher = hashes.SHA1() if hash_name == "sha1" else hashes.MD5()
    signature = key.sign(tbs, padding.PKCS1v15(), hasher)
    der = _der(0x30, tbs + alg + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


# ----------------------------------------------------------------------- files


def write_pem(path: Path, *items: x509.Certificate | x509.CertificateRevocationList) -> Path:
    """Certificates and CRLs as PEM, one after the other."""
    path.write_bytes(b"".join(i.public_bytes(serialization.Encoding.PEM) for i in items))
    return path


def write_key(path: Path, key: TestKey) -> Path:
    """A private key as unencrypted PKCS#8 PEM, in a file of mode 0600 from the start."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


__all__ = [
    "DAY",
    "IPSEC_IKE",
    "KEY_KINDS",
    "NOW",
    "ExtendedKeyUsageOID",
    "Issued",
    "ca",
    "crl",
    "end_entity",
    "make_key",
    "name",
    "resign_legacy",
    "write_key",
    "write_pem",
]
