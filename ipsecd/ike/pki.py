"""Certificate validation for IKEv2 (RFC 7296 3.6, 3.7; the RFC 4945 PKI profile).

Pure: certificates, CRLs and the time (``now``, seconds since the epoch) come from the
caller; nothing here reads a clock, and only the loader helpers (:func:`load_pem_certificates`,
:func:`load_pem_crls`, :meth:`LocalCredentials.from_pem`) parse what the caller read
from a file.  The IKE_AUTH exchange uses three things:

* :class:`TrustStore`: the trust anchors and CRLs of a connection.
  :meth:`TrustStore.validate` builds and checks the peer's path (end entity, the
  intermediates it sent in CERT payloads, one of our anchors) and raises
  :class:`CertificateError` with a :class:`CertFailure` and an operator's message;
  :meth:`~TrustStore.certreq_data` / :meth:`~TrustStore.anchors_for` are the CERTREQ
  data (RFC 7296 3.7).
* :func:`id_matches`: whether the peer's IDi/IDr is one its certificate names
  (RFC 4945 3.1: the identity must be in the certificate).
* :class:`LocalCredentials`: our own chain and private key.

What is checked (RFC 5280 6.1 in the parts an IKE peer needs, RFC 4945 5):

* path: end entity, then intermediates in any order, then an anchor, at most
  ``max_path`` intermediates; each link by name *and* signature, so two CAs with one
  name work; a certificate the peer sent that is byte-identical to an anchor is ignored
  (ours is used); an end entity that is itself an anchor is accepted only when it is
  byte-identical to it (a pinned, usually self-signed, certificate);
* every certificate of the path, the anchor included: notBefore <= now <= notAfter;
  the key: RSA >= 2048 bits, ECDSA on P-256/P-384/P-521, Ed25519 (what
  :mod:`ipsecd.ike.signature` speaks), anything else refused; no critical extension
  we do not implement (RFC 5280 4.2);
* every signature except the anchor's own: not MD5 or SHA-1;
* issuers: basicConstraints cA=TRUE (RFC 4945 5.1.3.9), pathLenConstraint
  (RFC 5280 4.2.1.9), keyCertSign when keyUsage is present (RFC 5280 4.2.1.3); a
  nameConstraints extension, critical or not, refuses the path: name constraints are
  not implemented, and ignoring them would trust more than the CA allows;
* the end entity: keyUsage, when present, has digitalSignature or nonRepudiation
  (RFC 4945 5.1.3.2); extendedKeyUsage, when present, has id-kp-ipsecIKE or
  anyExtendedKeyUsage (RFC 4945 5.1.3.12), or serverAuth or clientAuth (beyond RFC
  4945: what Libreswan/NSS accept, and what most deployed IKE certificates carry);
* revocation: CRLs only (no OCSP, no fetching); see :meth:`TrustStore.validate`.

No message and no log line holds key material; :class:`LocalCredentials` keeps its key
out of ``repr``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import ipaddress
import itertools
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import (
    ExtendedKeyUsageOID,
    ExtensionOID,
    PublicKeyAlgorithmOID,
    SignatureAlgorithmOID,
)

from .config import Identity
from .constants import IdType
from .errors import IkeLocalError, IkePeerError

__all__ = [
    "ACCEPTED_EKUS",
    "MAX_INTERMEDIATES",
    "CertFailure",
    "CertificateError",
    "LocalCredentials",
    "PrivateKey",
    "TrustStore",
    "check_identity",
    "describe",
    "id_matches",
    "identity_of",
    "load_der_certificate",
    "load_pem_certificates",
    "load_pem_crls",
    "spki_sha1",
]

log = logging.getLogger("ipsecd.ike.pki")

#: The private keys we sign with (the same union as :data:`ipsecd.ike.signature.PrivateKey`).
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: extendedKeyUsage purposes that make an end-entity certificate fit for IKE.
#: RFC 4945 5.1.3.12 names id-kp-ipsecIKE and anyExtendedKeyUsage; serverAuth and
#: clientAuth are accepted as Libreswan (NSS's IPsec profile) does; strongSwan does not
#: look at extendedKeyUsage for IKE at all.
ACCEPTED_EKUS: frozenset[x509.ObjectIdentifier] = frozenset(
    {
        x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17"),  # id-kp-ipsecIKE (RFC 4945 5.1.3.12)
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
)

#: At most this many certificates besides the end entity are looked at per validation
#: (RFC 7296 3.6 lets a peer send several; the bound keeps path building cheap).
MAX_INTERMEDIATES = 16

_CURVES = {"secp256r1", "secp384r1", "secp521r1"}
#: A CA's own checks during one validation: returns its pathLenConstraint or raises.
_IssuerCheck = Callable[[x509.Certificate, str], "int | None"]
_WEAK_HASHES = {"md5", "sha1"}
#: What cryptography raises from the parts of a certificate it decodes lazily (names,
#: extensions, keys) when a peer's certificate is damaged; TypeError included: a name
#: attribute of an impossible string type raises it.
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
_EMPTY_NAME_DER = b"\x30\x00"

# Extensions that may be critical: we act on them or, marked critical, they do not
# change the answer for us (RFC 5280 4.2).  certificatePolicies: we do no policy
# processing; with the initial policy set any-policy and no explicit policy required,
# RFC 5280 6.1 accepts the path whatever the policies are (from memory of 6.1.3/6.1.5:
# the policy tree only matters once explicit_policy reaches 0, which only
# policyConstraints requireExplicitPolicy, refused below, can cause); so do
# policyMappings and inhibitAnyPolicy.
_UNDERSTOOD = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.ISSUER_ALTERNATIVE_NAME,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.CRL_DISTRIBUTION_POINTS,
    ExtensionOID.FRESHEST_CRL,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.POLICY_MAPPINGS,
    ExtensionOID.INHIBIT_ANY_POLICY,
}
# CRL extensions that may be critical (RFC 5280 5.2: a CRL with an unknown critical
# extension must not be used).  issuingDistributionPoint narrows what a CRL covers; a
# serial it lists is still revoked by that issuer.
_CRL_UNDERSTOOD = {
    ExtensionOID.CRL_NUMBER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.ISSUING_DISTRIBUTION_POINT,
    ExtensionOID.ISSUER_ALTERNATIVE_NAME,
}


class CertFailure(enum.Enum):
    """Why a certificate was refused."""

    #: Cannot be parsed, or carries a critical extension we do not implement.
    MALFORMED = "malformed"
    #: The path does not reach one of our trust anchors.
    UNKNOWN_CA = "unknown_ca"
    #: A signature of the path does not verify, or uses MD5/SHA-1.
    BAD_SIGNATURE = "bad_signature"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    #: Listed in a CRL of its issuer.
    REVOKED = "revoked"
    #: The only CRLs of the issuer are past their nextUpdate (``strict_crl``).
    CRL_STALE = "crl_stale"
    #: Used as an issuer, but basicConstraints does not say cA=TRUE.
    NOT_A_CA = "not_a_ca"
    #: More intermediates than ``max_path``, or than a CA's pathLenConstraint allows.
    PATH_TOO_LONG = "path_too_long"
    #: keyUsage forbids the use (digitalSignature for the end entity, keyCertSign for CAs).
    KEY_USAGE = "key_usage"
    #: extendedKeyUsage of the end entity names no purpose fit for IKE.
    EXTENDED_KEY_USAGE = "extended_key_usage"
    #: The certificate does not name the identity the peer claims (:func:`id_matches`).
    ID_MISMATCH = "id_mismatch"
    #: RSA below 2048 bits, an elliptic curve below 256 bits.
    WEAK_KEY = "weak_key"
    #: DSA, Ed448, other curves: keys we do not sign or verify with.
    UNSUPPORTED_KEY = "unsupported_key"


class CertificateError(IkePeerError):
    """The peer's certificate (or a certificate of its path) was refused.

    ``message`` names the certificate (subject DN and serial), says why and, where one
    exists, the fix; ``certificate`` is the certificate at fault.  Built like
    :class:`~ipsecd.ike.errors.IkeProtocolError`: ``CertificateError(message,
    failure=CertFailure.EXPIRED, certificate=cert)``.
    """

    def __init__(
        self,
        message: str,
        *,
        failure: CertFailure = CertFailure.MALFORMED,
        certificate: x509.Certificate | None = None,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.certificate = certificate

    def __str__(self) -> str:
        return f"{self.message} [{self.failure.value}]"


# --------------------------------------------------------------------------- naming


def _printable(text: str, limit: int = 256) -> str:
    """Peer-controlled text made safe for one log line."""
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _name(name: x509.Name) -> str:
    try:
        text = name.rfc4514_string()
    except _PARSE_ERRORS:  # pragma: no cover - an attribute cryptography cannot print
        text = "(unprintable name)"
    return _printable(text) if text else "(empty name)"


def _serial(number: int) -> str:
    sign = "-" if number < 0 else ""
    digits = f"{abs(number):x}"
    if len(digits) % 2:
        digits = "0" + digits
    return sign + ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def describe(cert: x509.Certificate) -> str:
    """``certificate 'CN=peer,O=Example' (serial 1f:2a)``: how messages name a certificate."""
    return f"certificate '{_subject_text(cert)}' (serial {_serial(_serial_number(cert))})"


def _subject_text(cert: x509.Certificate) -> str:
    try:
        return _name(cert.subject)
    except _PARSE_ERRORS:
        return "(unparsable subject)"


def _when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --------------------------------------------------------------------------- a little DER


def _element(data: bytes, off: int) -> tuple[int, int, int]:
    """(tag, start of the element, end of the element) of the DER element at ``off``."""
    if off + 2 > len(data):
        raise ValueError("truncated")
    tag, first = data[off], data[off + 1]
    body = off + 2
    if first & 0x80:
        size = first & 0x7F
        if not 1 <= size <= 4 or body + size > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[body : body + size], "big")
        body += size
    else:
        length = first
    if body + length > len(data):
        raise ValueError("truncated")
    return tag, off, body + length


def _header_len(data: bytes, off: int) -> int:
    first = data[off + 1]
    return 2 + (first & 0x7F if first & 0x80 else 0)


def _tbs_fields(cert: x509.Certificate) -> list[bytes]:
    """The top-level elements of the TBSCertificate, exactly as encoded (RFC 5280 4.1)."""
    tbs = cert.tbs_certificate_bytes
    _, _, end = _element(tbs, 0)
    off = _header_len(tbs, 0)
    out = []
    while off < end:
        _, start, off = _element(tbs, off)
        out.append(tbs[start:off])
    if out and out[0][0] == 0xA0:  # [0] EXPLICIT version
        out = out[1:]
    return out  # serial, signature, issuer, validity, subject, spki, ...


def _subject_der(cert: x509.Certificate) -> bytes:
    """The subject Name as the certificate encodes it."""
    try:
        return _tbs_fields(cert)[4]
    except (ValueError, IndexError):  # pragma: no cover - cryptography parsed it already
        return cert.subject.public_bytes()


def _spki_der(cert: x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo as the certificate encodes it."""
    try:
        return _tbs_fields(cert)[5]
    except (ValueError, IndexError):  # pragma: no cover - cryptography parsed it already
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the certificate's SubjectPublicKeyInfo (DER): the CA identifier of
    CERTREQ and of CERT payloads of type hash-and-URL (RFC 7296 3.6, 3.7).  The one use
    of SHA-1 the RFC mandates; it names a key, it does not secure anything."""
    return hashlib.sha1(_spki_der(cert), usedforsecurity=False).digest()


def _serial_number(cert: x509.Certificate) -> int:
    """The serial number, read from the DER (``Certificate.serial_number`` warns about
    serials that are not positive, which a peer may send)."""
    try:
        field = _tbs_fields(cert)[0]
        return int.from_bytes(field[_header_len(field, 0) :], "big", signed=True)
    except (ValueError, IndexError):  # pragma: no cover - cryptography parsed it already
        return 0


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- single checks


def _key_problem(key: object, owner_of: Callable[[], str]) -> tuple[CertFailure, str] | None:
    """Why a public (or private) key is not acceptable, or None.  ``owner_of()`` names
    the key's holder; it is called only when there is a problem (naming a certificate
    costs more than checking its key).

    RSA below 2048 bits and curves other than P-256/P-384/P-521 are out: the floor
    RFC 8247 4 sets for IKE authentication as far as memory serves (not re-read); DSA
    and Ed448 are out because :mod:`ipsecd.ike.signature` does not speak them."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 2048:
            return CertFailure.WEAK_KEY, (
                f"{owner_of()} has a {key.key_size}-bit RSA key; at least 2048 bits are "
                "required; issue a new key of 2048 bits or more"
            )
        return None
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        curve = key.curve.name
        if curve in _CURVES:
            return None
        if key.curve.key_size < 256:
            return CertFailure.WEAK_KEY, (
                f"{owner_of()} has an ECDSA key on {curve} ({key.curve.key_size} bits); use "
                "P-256, P-384 or P-521"
            )
        return CertFailure.UNSUPPORTED_KEY, (
            f"{owner_of()} has an ECDSA key on {curve}; ipsecd supports P-256, P-384 and P-521"
        )
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return None
    # DSA, Ed448 and the rest are named by their class (``DSAPublicKey`` -> "DSA"): the
    # ``dsa`` module's classes warn on access since cryptography 51 (DSA is deprecated).
    if key is None:
        kind = "unreadable"
    else:
        kind = type(key).__name__.removesuffix("PublicKey").removesuffix("PrivateKey")
    return CertFailure.UNSUPPORTED_KEY, (
        f"{owner_of()} has a {kind} key; ipsecd supports RSA (2048 bits or more), ECDSA "
        "(P-256, P-384, P-521) and Ed25519"
    )


def _fail(failure: CertFailure, cert: x509.Certificate, text: str) -> CertificateError:
    return CertificateError(text, failure=failure, certificate=cert)


def _extensions(cert: x509.Certificate) -> x509.Extensions:
    try:
        return cert.extensions
    except _PARSE_ERRORS as exc:  # duplicate or undecodable extension
        raise _fail(
            CertFailure.MALFORMED,
            cert,
            f"{describe(cert)}: its extensions cannot be parsed ({_printable(str(exc))})",
        ) from exc


def _check_validity(cert: x509.Certificate, now: float, role: str) -> None:
    # RFC 5280 4.1.2.5: the validity period includes both ends.
    if now < cert.not_valid_before_utc.timestamp():
        raise _fail(
            CertFailure.NOT_YET_VALID,
            cert,
            f"{role} {describe(cert)} is not valid before "
            f"{_when(cert.not_valid_before_utc)}; check this node's clock, or wait",
        )
    if now > cert.not_valid_after_utc.timestamp():
        raise _fail(
            CertFailure.EXPIRED,
            cert,
            f"{role} {describe(cert)} expired on {_when(cert.not_valid_after_utc)}; "
            "it needs to be renewed",
        )


def _check_common(cert: x509.Certificate, now: float, role: str, *, issuer: bool) -> None:
    """What every certificate of a path must satisfy: validity, key, extensions."""
    exts = _extensions(cert)
    for ext in exts:
        if ext.oid == ExtensionOID.NAME_CONSTRAINTS and (issuer or ext.critical):
            raise _fail(
                CertFailure.MALFORMED,
                cert,
                f"{role} {describe(cert)} has a nameConstraints extension, which ipsecd "
                "does not implement; it refuses such CAs rather than ignore the "
                "constraints (RFC 5280 4.2.1.10); use a CA without name constraints",
            )
        if not ext.critical or ext.oid in _UNDERSTOOD:
            continue
        if ext.oid == ExtensionOID.POLICY_CONSTRAINTS:
            value = ext.value
            if isinstance(value, x509.PolicyConstraints) and value.require_explicit_policy is None:
                continue  # inhibitPolicyMapping alone: nothing for us to enforce
            raise _fail(
                CertFailure.MALFORMED,
                cert,
                f"{role} {describe(cert)} requires explicit certificate policies "
                "(policyConstraints), which ipsecd does not process",
            )
        oid_name = getattr(ext.oid, "_name", "") or "unknown"
        raise _fail(
            CertFailure.MALFORMED,
            cert,
            f"{role} {describe(cert)} has a critical extension ipsecd does not implement "
            f"({ext.oid.dotted_string}, {oid_name}); RFC 5280 4.2 requires refusing it",
        )
    _check_validity(cert, now, role)
    if cert.public_key_algorithm_oid == PublicKeyAlgorithmOID.DSA:
        # refused before loading: cryptography >= 51 warns on every DSA key it loads
        raise _fail(
            CertFailure.UNSUPPORTED_KEY,
            cert,
            f"{role} {describe(cert)} has a DSA key; ipsecd supports RSA (2048 bits or "
            "more), ECDSA (P-256, P-384, P-521) and Ed25519",
        )
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _fail(
            CertFailure.UNSUPPORTED_KEY,
            cert,
            f"{role} {describe(cert)} has a public key ipsecd cannot use "
            f"({cert.public_key_algorithm_oid.dotted_string})",
        ) from exc
    problem = _key_problem(key, lambda: f"{role} {describe(cert)}")
    if problem is not None:
        raise _fail(problem[0], cert, problem[1])


def _check_signature_hash(cert: x509.Certificate, role: str) -> None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise _fail(
            CertFailure.BAD_SIGNATURE,
            cert,
            f"{role} {describe(cert)} is signed with an algorithm ipsecd does not support "
            f"({cert.signature_algorithm_oid.dotted_string})",
        ) from exc
    if algorithm is not None and algorithm.name in _WEAK_HASHES:
        label = "SHA-1" if algorithm.name == "sha1" else "MD5"
        raise _fail(
            CertFailure.BAD_SIGNATURE,
            cert,
            f"{role} {describe(cert)} is signed with {label}, which is no longer accepted; "
            "the CA has to reissue it with SHA-256 or better",
        )


def _check_end_entity(cert: x509.Certificate) -> None:
    exts = _extensions(cert)
    try:
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        # RFC 4945 5.1.3.2: digitalSignature or nonRepudiation, if keyUsage is present.
        if not (ku.digital_signature or ku.content_commitment):
            raise _fail(
                CertFailure.KEY_USAGE,
                cert,
                f"{describe(cert)}: its keyUsage has neither digitalSignature nor "
                "nonRepudiation, so it may not sign IKE_AUTH (RFC 4945 5.1.3.2); reissue it "
                "with digitalSignature",
            )
    try:
        eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ACCEPTED_EKUS.intersection(eku):
        present = ", ".join(getattr(o, "_name", "") or o.dotted_string for o in eku) or "none"
        raise _fail(
            CertFailure.EXTENDED_KEY_USAGE,
            cert,
            f"{describe(cert)}: its extendedKeyUsage ({present}) allows no use in IKE "
            "(RFC 4945 5.1.3.12); reissue it with id-kp-ipsecIKE (1.3.6.1.5.5.7.3.17), "
            "serverAuth or clientAuth, or without extendedKeyUsage",
        )


def _check_issuer(cert: x509.Certificate, role: str) -> int | None:
    """A CA's own constraints; returns its pathLenConstraint."""
    exts = _extensions(cert)
    try:
        bc = exts.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise _fail(
            CertFailure.NOT_A_CA,
            cert,
            f"{role} {describe(cert)} issued a certificate of the path but is not a CA: "
            "its basicConstraints does not say cA=TRUE (RFC 4945 5.1.3.9); the CA "
            "certificate has to be reissued with cA=TRUE",
        )
    try:
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not ku.key_cert_sign:
            raise _fail(
                CertFailure.KEY_USAGE,
                cert,
                f"{role} {describe(cert)}: its keyUsage lacks keyCertSign, so it may not "
                "issue certificates (RFC 5280 4.2.1.3)",
            )
    return bc.path_length


def _crl_sign_allowed(issuer: x509.Certificate) -> bool:
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, *_PARSE_ERRORS):
        return True  # no keyUsage: every use allowed (RFC 5280 4.2.1.3)
    return bool(ku.crl_sign)


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


# --------------------------------------------------------------------------- the store


class _CrlState:
    """What a store learned while validating: CRL signature results and what was logged.

    Only remembers, never changes an answer."""

    __slots__ = ("checked", "logged", "unverified")

    def __init__(self) -> None:
        #: (CRL index, issuer SPKI) -> signature valid
        self.checked: dict[tuple[int, bytes], bool] = {}
        #: CRL index -> the issuer it failed to verify with (while it never verified)
        self.unverified: dict[int, str] = {}
        self.logged: set[tuple[int, str]] = set()


@dataclass(frozen=True, slots=True)
class _Node:
    cert: x509.Certificate
    child: _Node | None
    #: intermediates between this certificate and the end entity that are not
    #: self-issued (what a pathLenConstraint counts, RFC 5280 4.2.1.9)
    below: int

    def chain(self) -> list[x509.Certificate]:
        out: list[x509.Certificate] = []
        node: _Node | None = self
        while node is not None:
            out.append(node.cert)
            node = node.child
        return out


@dataclass(frozen=True, slots=True)
class TrustStore:
    """The trust anchors and CRLs one connection checks a peer's certificate against."""

    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    #: Intermediate certificates allowed between the end entity and the anchor.
    max_path: int = 4
    #: A CRL past its nextUpdate: False = still used (logged once as stale);
    #: True = the certificates it covers are refused with CRL_STALE.
    strict_crl: bool = False
    _ids: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _state: _CrlState = field(init=False, repr=False, compare=False, default_factory=_CrlState)

    def __post_init__(self) -> None:
        anchors = tuple(self.anchors)
        crls = tuple(self.crls)
        for a in anchors:
            if not isinstance(a, x509.Certificate):
                raise IkeLocalError(f"TrustStore: anchor {a!r} is not an X.509 certificate")
        for c in crls:
            if not isinstance(c, x509.CertificateRevocationList):
                raise IkeLocalError(f"TrustStore: {c!r} is not a CRL")
        if isinstance(self.max_path, bool) or not isinstance(self.max_path, int):
            raise IkeLocalError("TrustStore: max_path must be an integer")
        if not 0 <= self.max_path <= MAX_INTERMEDIATES:
            raise IkeLocalError(f"TrustStore: max_path must be in 0..{MAX_INTERMEDIATES}")
        object.__setattr__(self, "anchors", anchors)
        object.__setattr__(self, "crls", crls)
        object.__setattr__(self, "_ids", tuple(spki_sha1(a) for a in anchors))

    def __hash__(self) -> int:
        # CRL objects are not hashable; their DER is
        crls = tuple(c.public_bytes(serialization.Encoding.DER) for c in self.crls)
        return hash((self.anchors, crls, self.max_path, self.strict_crl))

    # ------------------------------------------------------------------ CERTREQ

    def certreq_data(self) -> bytes:
        """Certification Authority data of our CERTREQ (RFC 7296 3.7): the SHA-1 of each
        anchor's SubjectPublicKeyInfo, concatenated (each key once)."""
        seen: list[bytes] = []
        for h in self._ids:
            if h not in seen:
                seen.append(h)
        return b"".join(seen)

    def anchors_for(self, certreq_data: bytes) -> tuple[x509.Certificate, ...]:
        """The anchors a peer's CERTREQ names, in its order; unknown hashes are ignored,
        and data whose length is not a multiple of 20 names none (RFC 7296 3.7)."""
        if len(certreq_data) % 20:
            return ()
        out: list[x509.Certificate] = []
        for i in range(0, len(certreq_data), 20):
            wanted = certreq_data[i : i + 20]
            for anchor, h in zip(self.anchors, self._ids, strict=True):
                if h == wanted and anchor not in out:
                    out.append(anchor)
        return tuple(out)

    # ------------------------------------------------------------------ CRLs

    def with_crls(self, crls: Iterable[x509.CertificateRevocationList]) -> TrustStore:
        """The same anchors with these CRLs (the agent reloads CRLs without a restart)."""
        return dataclasses.replace(self, crls=tuple(crls))

    def crl_problems(self, now: float) -> tuple[str, ...]:
        """Why CRLs are (or would be) ignored, or are stale, at ``now``: text for the
        agent to log after loading CRLs, or when asked for status.  A CRL whose issuer is
        not an anchor can only be checked against the intermediates peers send; one that
        did not verify against any of them is listed once validations met it."""
        out: list[str] = []
        for i, crl in enumerate(self.crls):
            what = self._crl_name(crl)
            problem = _crl_static_problem(crl)
            if problem:
                out.append(f"{what}: {problem}; it is ignored")
                continue
            if crl.last_update_utc.timestamp() > now:
                out.append(
                    f"{what}: not valid before {_when(crl.last_update_utc)}; ignored until then"
                )
            nxt = crl.next_update_utc
            if nxt is not None and nxt.timestamp() < now:
                out.append(f"{what}: stale since {_when(nxt)}; {self._stale_consequence()}")
            named = [a for a in self.anchors if a.subject == crl.issuer]
            signers = [a for a in named if self._crl_verifies(i, crl, a)]
            if named and not signers:
                out.append(
                    f"{what}: its signature does not verify with the trust anchor "
                    f"named '{_name(crl.issuer)}'; it is ignored"
                )
            elif signers and not any(_crl_sign_allowed(a) for a in signers):
                out.append(
                    f"{what}: the trust anchor that signed it may not sign CRLs (keyUsage "
                    "without cRLSign); it is ignored"
                )
            elif i in self._state.unverified:
                out.append(
                    f"{what}: its signature does not verify with "
                    f"{self._state.unverified[i]}; it is ignored"
                )
        return tuple(out)

    def _stale_consequence(self) -> str:
        if self.strict_crl:
            return (
                "unless a fresher CRL of that CA is loaded, the certificates it covers are "
                "refused (strict_crl)"
            )
        return "still used; load a fresh CRL"

    @staticmethod
    def _crl_name(crl: x509.CertificateRevocationList) -> str:
        return f"CRL of '{_name(crl.issuer)}' issued {_when(crl.last_update_utc)}"

    def _crl_verifies(
        self, index: int, crl: x509.CertificateRevocationList, issuer: x509.Certificate
    ) -> bool:
        key = (index, _spki_der(issuer))
        ok = self._state.checked.get(key)
        if ok is None:
            try:
                public = issuer.public_key()
                ok = isinstance(
                    public,
                    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
                ) and crl.is_signature_valid(public)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                ok = False
            self._state.checked[key] = ok
        if ok:
            self._state.unverified.pop(index, None)
        elif not any(v for (n, _), v in self._state.checked.items() if n == index):
            self._state.unverified[index] = describe(issuer)
        return ok

    def _log_once(self, index: int, kind: str, text: str) -> None:
        if (index, kind) not in self._state.logged:
            self._state.logged.add((index, kind))
            log.warning("%s", text)

    def _check_revocation(
        self, cert: x509.Certificate, issuer: x509.Certificate, now: float, role: str
    ) -> None:
        """RFC 5280 6.3, CRLs we were given only: a CRL of ``cert``'s issuer (same name,
        signed by ``issuer``'s key, RFC 5280 6.3.3 (f)) that lists its serial revokes
        it.  Stale CRLs still revoke (as strongSwan); when every usable CRL is stale,
        ``strict_crl`` refuses, otherwise it is logged once.  No CRL: not revoked."""
        usable: list[tuple[int, x509.CertificateRevocationList]] = []
        for i, crl in enumerate(self.crls):
            if crl.issuer != cert.issuer:
                continue
            problem = _crl_static_problem(crl)
            if problem:
                self._log_once(i, "static", f"{self._crl_name(crl)}: {problem}; ignored")
                continue
            if not self._crl_verifies(i, crl, issuer):
                continue  # another CA of that name, or forged: not this issuer's
            if not _crl_sign_allowed(issuer):
                self._log_once(
                    i,
                    "crlsign",
                    f"{self._crl_name(crl)}: {describe(issuer)} may not sign CRLs "
                    "(keyUsage without cRLSign); ignored",
                )
                continue
            if crl.last_update_utc.timestamp() > now:
                continue  # not valid yet (strongSwan ignores these too)
            usable.append((i, crl))
        for _, crl in usable:
            entry = crl.get_revoked_certificate_by_serial_number(_serial_number(cert))
            if entry is None:
                continue
            reason = _reason(entry)
            if reason == "remove_from_crl":
                continue  # RFC 5280 5.3.1: only meaningful in delta CRLs
            because = f", reason {reason}" if reason else ""
            raise _fail(
                CertFailure.REVOKED,
                cert,
                f"{role} {describe(cert)} was revoked on {_when(entry.revocation_date_utc)}"
                f"{because} (CRL of '{_name(crl.issuer)}'); it needs a new certificate",
            )
        stale = [
            (i, crl)
            for i, crl in usable
            if crl.next_update_utc is not None and crl.next_update_utc.timestamp() < now
        ]
        if not usable or len(stale) < len(usable):
            return
        i, crl = max(stale, key=lambda item: item[1].last_update_utc)
        assert crl.next_update_utc is not None
        text = f"{self._crl_name(crl)} is stale (its nextUpdate was {_when(crl.next_update_utc)})"
        if self.strict_crl:
            raise _fail(
                CertFailure.CRL_STALE,
                cert,
                f"{role} {describe(cert)}: revocation status unknown: {text}; load a fresh "
                "CRL (strict_crl refuses certificates whose CRL is stale)",
            )
        self._log_once(i, "stale", f"{text}; still used to check revocation")

    # ------------------------------------------------------------------ validation

    def validate(
        self,
        end_entity: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        now: float,
    ) -> x509.Certificate:
        """Check ``end_entity`` (the peer's first CERT payload) with the
        ``intermediates`` it sent (any order; unrelated ones are ignored) at ``now``;
        return the anchor the path ends at, or raise :class:`CertificateError`.

        Path building (RFC 5280 6.1, breadth first, so the shortest path is found):
        each certificate's issuer is looked up by name among the anchors, then among
        the intermediates, and accepted only if its key verifies the signature.  When
        no path is valid, the error reported is the one found furthest up a path (a
        wrong signature from a same-named CA loses to a real problem higher up).
        """
        try:
            return self._validate(end_entity, intermediates, now)
        except _PARSE_ERRORS as exc:
            # a part cryptography parses lazily (a name, an extension) is malformed
            raise _fail(
                CertFailure.MALFORMED,
                end_entity,
                f"a certificate of the path of {describe(end_entity)} cannot be parsed "
                f"({_printable(str(exc), 160)})",
            ) from exc

    def _validate(
        self,
        end_entity: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        now: float,
    ) -> x509.Certificate:
        ee_der = _der(end_entity)
        anchor_ders = [_der(a) for a in self.anchors]
        for anchor, der in zip(self.anchors, anchor_ders, strict=True):
            if der == ee_der:  # a pinned certificate: trusted as it is
                _check_common(anchor, now, "pinned", issuer=False)
                _check_end_entity(anchor)
                return anchor
        pool: list[x509.Certificate] = []
        seen = {ee_der, *anchor_ders}
        for cert in intermediates:
            der = _der(cert)
            if der not in seen:
                seen.add(der)
                pool.append(cert)
        if len(pool) > MAX_INTERMEDIATES:
            raise _fail(
                CertFailure.MALFORMED,
                end_entity,
                f"the peer sent {len(pool)} certificates besides {describe(end_entity)}; "
                f"at most {MAX_INTERMEDIATES} are considered",
            )
        _check_common(end_entity, now, "end-entity", issuer=False)
        _check_signature_hash(end_entity, "end-entity")
        _check_end_entity(end_entity)

        best: tuple[int, CertificateError] | None = None

        def record(rank: int, err: CertificateError) -> None:
            nonlocal best
            if best is None or rank > best[0]:
                best = (rank, err)

        checked: dict[bytes, CertificateError | int | None] = {}

        def check_issuer(cert: x509.Certificate, role: str) -> int | None:
            """A CA's own checks, once per certificate; returns its pathLenConstraint."""
            der = _der(cert)
            if der not in checked:
                try:
                    if role == "intermediate":
                        _check_signature_hash(cert, role)
                    _check_common(cert, now, role, issuer=True)
                    checked[der] = _check_issuer(cert, role)
                except CertificateError as err:
                    checked[der] = err
            result = checked[der]
            if isinstance(result, CertificateError):
                raise result
            return result

        frontier = [_Node(end_entity, None, 0)]
        deepest = frontier[0]
        for level in range(self.max_path + 1):
            upper: list[_Node] = []
            for node in frontier:
                cert = node.cert
                rank = 4 * level
                for anchor in self.anchors:
                    if anchor.subject != cert.issuer:
                        continue
                    try:
                        self._link(node, anchor, "trust anchor", now, check_issuer, rank)
                    except _LinkError as exc:
                        record(exc.rank, exc.error)
                        continue
                    return anchor
                on_path = {_der(c) for c in node.chain()}
                for cand in pool:
                    if cand.subject != cert.issuer or _der(cand) in on_path:
                        continue
                    if level == self.max_path:
                        record(
                            4 * (level + 1),
                            _fail(
                                CertFailure.PATH_TOO_LONG,
                                cert,
                                f"the path from {describe(end_entity)} needs more than "
                                f"{self.max_path} intermediate CA certificates (max_path) "
                                f"to reach a trust anchor; {describe(cert)} is the last one "
                                "allowed",
                            ),
                        )
                        continue
                    try:
                        self._link(node, cand, "intermediate", now, check_issuer, rank)
                    except _LinkError as exc:
                        record(exc.rank, exc.error)
                        continue
                    below = node.below + (
                        1 if node.child is not None and not _self_issued(cert) else 0
                    )
                    upper.append(_Node(cand, node, below))
            if not upper:
                break
            frontier = upper
            deepest = upper[0]
        if best is not None:
            raise best[1]
        top = deepest.cert
        if top is end_entity and _self_issued(top) and _signed_by(top, top):
            raise _fail(
                CertFailure.UNKNOWN_CA,
                top,
                f"{describe(top)} is self-signed and is not one of the trust anchors; to "
                "pin it, add this exact certificate to the anchors",
            )
        raise _fail(
            CertFailure.UNKNOWN_CA,
            top,
            f"{describe(top)} is issued by '{_name(top.issuer)}', which is neither a "
            f"trust anchor nor among the {len(pool)} other certificate(s) the peer sent; "
            "add that CA to the trust anchors, or have the peer send its intermediates",
        )

    def _link(
        self,
        node: _Node,
        issuer: x509.Certificate,
        role: str,
        now: float,
        check_issuer: _IssuerCheck,
        rank: int,
    ) -> None:
        """Accept ``issuer`` as the issuer of ``node.cert`` or raise :class:`_LinkError`
        ranked by how far up the path the fault is."""
        cert = node.cert
        try:
            _verify_signature(cert, issuer)
        except InvalidSignature:
            raise _LinkError(
                rank + 1,
                _fail(
                    CertFailure.BAD_SIGNATURE,
                    cert,
                    f"the signature of {describe(cert)} does not verify with the key of "
                    f"{role} {describe(issuer)}, which has its issuer's name: it was "
                    "issued by another CA of the same name, or altered",
                ),
            ) from None
        except (ValueError, TypeError, UnsupportedAlgorithm):
            try:
                issuer_key: object = issuer.public_key()
            except (ValueError, UnsupportedAlgorithm):
                issuer_key = None
            problem = _key_problem(issuer_key, lambda: f"{role} {describe(issuer)}")
            if problem is not None:
                raise _LinkError(rank + 4, _fail(problem[0], issuer, problem[1])) from None
            raise _LinkError(
                rank + 1,
                _fail(
                    CertFailure.BAD_SIGNATURE,
                    cert,
                    f"the signature of {describe(cert)} cannot be checked with the key of "
                    f"{role} {describe(issuer)} (unsupported signature algorithm "
                    f"{cert.signature_algorithm_oid.dotted_string})",
                ),
            ) from None
        try:
            path_len = check_issuer(issuer, role)
        except CertificateError as err:
            raise _LinkError(rank + 4, err) from None
        below = node.below + (1 if node.child is not None and not _self_issued(cert) else 0)
        if path_len is not None and below > path_len:
            raise _LinkError(
                rank + 2,
                _fail(
                    CertFailure.PATH_TOO_LONG,
                    issuer,
                    f"{role} {describe(issuer)} allows {path_len} intermediate CA "
                    f"certificate(s) below it (pathLenConstraint, RFC 5280 4.2.1.9), the "
                    f"path has {below}",
                ),
            )
        try:
            self._check_revocation(
                cert, issuer, now, "end-entity" if node.child is None else "intermediate"
            )
        except CertificateError as err:
            raise _LinkError(rank + 3, err) from None


class _LinkError(Exception):
    def __init__(self, rank: int, error: CertificateError) -> None:
        super().__init__(error.message)
        self.rank = rank
        self.error = error


def _verify_signature(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check ``cert``'s signature with ``issuer``'s key: InvalidSignature when it does
    not verify, TypeError when the algorithm and the key do not go together or are not
    ours.

    ``Certificate.verify_directly_issued_by`` does the same but first wants the issuer
    name in the very same string types as the issuer's subject.  Name chaining here
    uses ``x509.Name.__eq__`` (same attributes and values, string types ignored, case
    kept): RFC 5280 7.1 compares names after string preparation, not by string type
    (from memory, not re-read), and strongSwan's DN comparison also ignores the string
    type (it ignores case only for PrintableString)."""
    key = issuer.public_key()
    params = cert.signature_algorithm_parameters
    algorithm = cert.signature_hash_algorithm
    signature, tbs = cert.signature, cert.tbs_certificate_bytes
    if (
        isinstance(key, rsa.RSAPublicKey)
        and isinstance(params, padding.PSS | padding.PKCS1v15)
        and algorithm is not None
    ):
        key.verify(signature, tbs, params, algorithm)
        return
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
        key.verify(signature, tbs, params)
        return
    if (
        isinstance(key, ed25519.Ed25519PublicKey)
        and cert.signature_algorithm_oid == SignatureAlgorithmOID.ED25519
    ):
        key.verify(signature, tbs)
        return
    raise TypeError("signature algorithm and issuer key do not match")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        _verify_signature(cert, issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _crl_static_problem(crl: x509.CertificateRevocationList) -> str | None:
    """Why a CRL cannot be used at all, or None."""
    try:
        algorithm = crl.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return f"signed with an unsupported algorithm ({crl.signature_algorithm_oid.dotted_string})"
    if algorithm is not None and algorithm.name in _WEAK_HASHES:
        return f"signed with {'SHA-1' if algorithm.name == 'sha1' else 'MD5'}"
    try:
        exts = crl.extensions
    except _PARSE_ERRORS:
        return "its extensions cannot be parsed"
    for ext in exts:
        if ext.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            return "a delta CRL, which ipsecd does not support"
        if ext.critical and ext.oid not in _CRL_UNDERSTOOD:
            return f"has a critical extension ipsecd does not implement ({ext.oid.dotted_string})"
    return None


def _reason(entry: x509.RevokedCertificate) -> str:
    try:
        return str(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name)
    except (x509.ExtensionNotFound, *_PARSE_ERRORS):
        return ""


# --------------------------------------------------------------------------- identities


def identity_of(cert: x509.Certificate) -> Identity:
    """The certificate's subject as an ID_DER_ASN1_DN identity (the DER exactly as the
    certificate encodes it)."""
    der = _subject_der(cert)
    if der == _EMPTY_NAME_DER:
        raise IkeLocalError(
            f"{describe(cert)} has an empty subject; use one of its subjectAltNames as the identity"
        )
    return Identity(IdType.DER_ASN1_DN, der)


def _alt_names(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, *_PARSE_ERRORS):
        return None


def _ascii_lower(data: bytes | str) -> str | None:
    try:
        text = data.decode("ascii") if isinstance(data, bytes) else data
        text.encode("ascii")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None
    return text.lower()


def id_matches(cert: x509.Certificate, identity: Identity) -> bool:
    """Whether ``cert`` names ``identity`` (RFC 4945 3.1, 3.2; RFC 7296 3.5).

    * IPV4_ADDR / IPV6_ADDR: a subjectAltName iPAddress with the same address;
    * FQDN: a subjectAltName dNSName, ASCII case ignored; no wildcards: a ``*`` in the
      certificate is a literal character (strongSwan likewise only lets *configured*
      identities hold wildcards, never the certificate);
    * RFC822_ADDR: a subjectAltName rfc822Name; the domain's case is ignored, the local
      part's is not (RFC 5280 4.2.1.6);
    * DER_ASN1_DN: the subject, byte for byte, or equal once parsed (same attributes,
      values and RDN order; string types such as PrintableString/UTF8String may
      differ; case counts); an empty subject matches nothing;
    * KEY_ID and every other type: never.
    """
    try:
        return _id_matches(cert, identity)
    except _PARSE_ERRORS:  # a damaged certificate names nothing
        return False


def _id_matches(cert: x509.Certificate, identity: Identity) -> bool:
    names = _alt_names(cert)
    kind = identity.type
    if kind in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        if names is None:
            return False
        return any(
            isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
            and ip.packed == identity.data
            for ip in names.get_values_for_type(x509.IPAddress)
        )
    if kind == IdType.FQDN:
        wanted = _ascii_lower(identity.data)
        if names is None or not wanted:
            return False
        return any(_ascii_lower(n) == wanted for n in names.get_values_for_type(x509.DNSName))
    if kind == IdType.RFC822_ADDR:
        mailbox = _mailbox(identity.data)
        if names is None or mailbox is None:
            return False
        return any(_mailbox(n) == mailbox for n in names.get_values_for_type(x509.RFC822Name))
    if kind == IdType.DER_ASN1_DN:
        subject = _subject_der(cert)
        if subject == _EMPTY_NAME_DER:
            return False
        if identity.data == subject:
            return True
        try:
            return x509.Name.from_bytes(identity.data) == cert.subject
        except _PARSE_ERRORS:
            return False
    return False


def check_identity(cert: x509.Certificate, identity: Identity) -> None:
    """Raise :class:`CertificateError` (ID_MISMATCH) unless :func:`id_matches`; the
    message lists what the certificate does name."""
    if id_matches(cert, identity):
        return
    named = []
    if _subject_der(cert) != _EMPTY_NAME_DER:
        named.append(f"dn:{_subject_text(cert)}")
    names = _alt_names(cert)
    if names is not None:
        for general in names:
            if isinstance(general, x509.DNSName):
                named.append(f"fqdn:{_printable(general.value, 80)}")
            elif isinstance(general, x509.IPAddress):
                named.append(str(general.value))
            elif isinstance(general, x509.RFC822Name):
                named.append(f"email:{_printable(general.value, 80)}")
    shown = ", ".join(named[:8]) + (", ..." if len(named) > 8 else "")
    hint = (
        "a KEY_ID identity never matches a certificate; " if identity.type == IdType.KEY_ID else ""
    )
    raise _fail(
        CertFailure.ID_MISMATCH,
        cert,
        f"{describe(cert)} does not name the identity {_printable(str(identity), 120)} "
        f"(RFC 4945 3.1); it names {shown or 'nothing usable'}; {hint}the peer has to use "
        "one of those as its ID, or get a certificate with that identity as a "
        "subjectAltName",
    )


def _mailbox(data: bytes | str) -> tuple[str, str] | None:
    try:
        text = data.decode("ascii") if isinstance(data, bytes) else data
        text.encode("ascii")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain.lower()


# --------------------------------------------------------------------------- our side


@dataclass(frozen=True, slots=True)
class LocalCredentials:
    """Our certificate chain and private key (the key never shows in ``repr``)."""

    #: End entity first, then its intermediates in order (the anchor may be left out).
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        chain = tuple(self.chain)
        object.__setattr__(self, "chain", chain)
        if not chain:
            raise IkeLocalError("LocalCredentials: the certificate chain is empty")
        for cert in chain:
            if not isinstance(cert, x509.Certificate):
                raise IkeLocalError(f"LocalCredentials: {cert!r} is not an X.509 certificate")
        ee = chain[0]
        if not isinstance(
            self.key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        ):
            raise IkeLocalError(
                f"LocalCredentials: the private key for {describe(ee)} is a "
                f"{type(self.key).__name__}; ipsecd signs with RSA, ECDSA or Ed25519 keys"
            )
        problem = _key_problem(self.key, lambda: f"the private key for {describe(ee)}")
        if problem is not None:
            raise IkeLocalError(f"LocalCredentials: {problem[1]}")
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        ours = self.key.public_key().public_bytes(serialization.Encoding.DER, spki)
        try:
            theirs = ee.public_key().public_bytes(serialization.Encoding.DER, spki)
        except (ValueError, UnsupportedAlgorithm):
            theirs = b""
        if ours != theirs:
            raise IkeLocalError(
                f"LocalCredentials: the private key does not belong to {describe(ee)} "
                "(their public keys differ); pair the certificate with its own key"
            )
        for lower, upper in itertools.pairwise(chain):
            if lower.issuer != upper.subject:
                raise IkeLocalError(
                    f"LocalCredentials: the chain is out of order: {describe(lower)} is "
                    f"issued by '{_name(lower.issuer)}', but the next certificate is "
                    f"{describe(upper)}; list the end entity first, then each issuer"
                )

    @property
    def certificate(self) -> x509.Certificate:
        """The end-entity certificate (the first CERT payload)."""
        return self.chain[0]

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        return self.chain[1:]

    @property
    def identity(self) -> Identity:
        """Our certificate's subject as an ID_DER_ASN1_DN identity."""
        return identity_of(self.chain[0])

    @classmethod
    def from_pem(
        cls, cert_pem: bytes, key_pem: bytes, *, where: str = "local credentials"
    ) -> LocalCredentials:
        """From PEM: the certificates (end entity first) and an unencrypted private key.

        ``where`` (e.g. the file names) prefixes the messages of errors."""
        chain = load_pem_certificates(cert_pem, where=where)
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError as exc:  # encrypted and no password given
            raise IkeLocalError(
                f"{where}: the private key is encrypted; ipsecd needs it unencrypted in a "
                "file only root can read (mode 0600)"
            ) from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            # cryptography's text never holds key material, but we do not need it
            raise IkeLocalError(f"{where}: no usable PEM private key") from exc
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        ):
            raise IkeLocalError(
                f"{where}: the private key is a {type(key).__name__}; ipsecd signs with "
                "RSA, ECDSA or Ed25519 keys"
            )
        try:
            return cls(chain, key)
        except IkeLocalError as exc:
            raise IkeLocalError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- loading


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def load_der_certificate(data: bytes) -> x509.Certificate:
    """A certificate as a peer sends it in a CERT payload (DER, RFC 7296 3.6).  Anything
    else raises :class:`CertificateError` (MALFORMED) whose message completes "the
    payload ..."; cryptography's own errors (and warnings, e.g. about a negative
    serial number) never escape."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cert = x509.load_der_x509_certificate(bytes(data))
            _ = cert.extensions  # decoded lazily: a damaged extension fails here, now
    except (*_PARSE_ERRORS, x509.InvalidVersion) as exc:
        raise CertificateError(
            f"is not a DER X.509 certificate ({_printable(str(exc), 120)})"
        ) from None
    return cert


def load_pem_certificates(data: bytes, *, where: str) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM file (other PEM blocks are skipped)."""
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise IkeLocalError(f"{where}: no PEM certificate found") from exc
        raise IkeLocalError(
            f"{where}: a PEM certificate cannot be parsed ({_printable(str(exc), 160)})"
        ) from exc


def load_pem_crls(data: bytes, *, where: str) -> tuple[x509.CertificateRevocationList, ...]:
    """Every CRL of a file: PEM (one or more ``X509 CRL`` blocks) or one DER CRL."""
    blocks = _PEM_CRL.findall(data)
    try:
        if blocks:
            return tuple(x509.load_pem_x509_crl(b) for b in blocks)
        if b"-----BEGIN" in data:
            raise IkeLocalError(f"{where}: no PEM 'X509 CRL' block found")
        if not data:
            raise IkeLocalError(f"{where}: empty file, no CRL")
        return (x509.load_der_x509_crl(data),)
    except ValueError as exc:
        raise IkeLocalError(
            f"{where}: a CRL cannot be parsed ({_printable(str(exc), 160)})"
        ) from exc
