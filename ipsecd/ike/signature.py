"""Digital signatures of IKE_AUTH (RFC 7296 2.15, RFC 7427, RFC 4754, RFC 8420).

The signed octets are built by the IKE_AUTH task; this module only turns them into
the data of an AUTH payload and back.  One table, :data:`SCHEMES`, lists every
signature scheme the engine speaks, with its AUTH method and hash:

* **Digital Signature** (AUTH method 14, RFC 7427 3): the AUTH data is a one-byte
  length, a DER AlgorithmIdentifier naming scheme and hash, then the signature.
  ECDSA (DER ``Ecdsa-Sig-Value``) with SHA2-256/384/512, RSASSA-PSS with
  SHA2-256/384/512 (MGF1 with the same hash, salt as long as the hash, the encodings
  of RFC 7427 appendix A.4.3), RSA PKCS#1 v1.5 with SHA2-256/384/512 (A.1.2-A.1.4),
  and Ed25519 (RFC 8420: the hash is "Identity", the octets are signed as they are).
  A peer may only use a hash we announced in SIGNATURE_HASH_ALGORITHMS (RFC 7427 4),
  so SHA-1 is never accepted in method 14.
* **Older methods**, for peers that do not announce SIGNATURE_HASH_ALGORITHMS:
  RSA PKCS#1 v1.5 with SHA-1 (method 1; SHA-1 is what strongSwan and Libreswan use
  for it) and ECDSA P-256/SHA-256, P-384/SHA-384, P-521/SHA-512 (methods 9, 10 and
  11, RFC 4754: the signature is r | s, each as long as the curve's order).  Used and
  accepted only when the connection allows them (``allow_legacy``).

When the peer announced its hashes we sign with method 14 and a hash it supports
(ECDSA: the one that matches the curve if it can; RSA: RSASSA-PSS); when it did not,
with the older method of our key if allowed.  Which scheme we use is decided by
:func:`choose_scheme`, before anything is signed.

Errors: a peer's AUTH that does not verify, or that uses a scheme we do not accept,
raises :class:`SignatureError` (an :class:`~ipsecd.ike.errors.IkeProtocolError` with
AUTHENTICATION_FAILED, RFC 7296 2.21.2); no scheme in common for signing raises
:class:`NoCommonScheme`.  Messages name the scheme, never key material.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .constants import AuthMethod, HashAlgorithm, NotifyType
from .errors import IkeProtocolError

__all__ = [
    "OUR_HASHES",
    "SCHEMES",
    "KeyKind",
    "NoCommonScheme",
    "PrivateKey",
    "PublicKey",
    "Scheme",
    "SignatureError",
    "choose_scheme",
    "decode_hash_algorithms",
    "encode_hash_algorithms",
    "key_kind",
    "sign",
    "verify",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

#: What we announce in SIGNATURE_HASH_ALGORITHMS (RFC 7427 4, RFC 8420 2), in order.
OUR_HASHES: tuple[HashAlgorithm, ...] = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
    HashAlgorithm.IDENTITY,
)


class SignatureError(IkeProtocolError):
    """The peer's AUTH payload does not authenticate it (AUTHENTICATION_FAILED)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, notify=NotifyType.AUTHENTICATION_FAILED)


class NoCommonScheme(IkeProtocolError):
    """We cannot sign in a way the peer accepts (AUTHENTICATION_FAILED)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, notify=NotifyType.AUTHENTICATION_FAILED)


class KeyKind(enum.Enum):
    """Public key algorithm families."""

    ECDSA = "ECDSA"
    RSA = "RSA"
    ED25519 = "Ed25519"


def key_kind(key: PrivateKey | PublicKey) -> KeyKind:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return KeyKind.ECDSA
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return KeyKind.RSA
    return KeyKind.ED25519


# ------------------------------------------------------------------ a little DER


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    size = (n.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + n.to_bytes(size, "big") + body


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


_NULL = b"\x05\x00"
_SEQ = 0x30


def _alg_id(oid: str, params: bytes | None = None) -> bytes:
    return _der(_SEQ, _oid(oid) + (params if params is not None else b""))


def _read(data: bytes, off: int, end: int) -> tuple[int, int, int]:
    """(tag, body start, body end) of the DER element at ``off``; ValueError if bad."""
    if end - off < 2:
        raise ValueError("truncated")
    tag, first = data[off], data[off + 1]
    off += 2
    if first < 0x80:
        n = first
    else:
        size = first & 0x7F
        if not 1 <= size <= 2 or end - off < size:
            raise ValueError("bad length")
        n = int.from_bytes(data[off : off + size], "big")
        off += size
    if end - off < n:
        raise ValueError("truncated")
    return tag, off, off + n


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, s, e = _read(data, start, end)
        out.append((tag, s, e))
        start = e
        if len(out) > 8:
            raise ValueError("too many elements")
    return out


_HASH_OIDS = {
    HashAlgorithm.SHA1: "1.3.14.3.2.26",
    HashAlgorithm.SHA2_256: "2.16.840.1.101.3.4.2.1",
    HashAlgorithm.SHA2_384: "2.16.840.1.101.3.4.2.2",
    HashAlgorithm.SHA2_512: "2.16.840.1.101.3.4.2.3",
}
_OID_HASHES = {_oid(v): k for k, v in _HASH_OIDS.items()}
_MGF1 = "1.2.840.113549.1.1.8"
_PSS = "1.2.840.113549.1.1.10"
_HASH_LEN = {
    HashAlgorithm.SHA1: 20,
    HashAlgorithm.SHA2_256: 32,
    HashAlgorithm.SHA2_384: 48,
    HashAlgorithm.SHA2_512: 64,
}


def _pss_alg_id(h: HashAlgorithm) -> bytes:
    """RSASSA-PSS with hash ``h``, MGF1 with ``h`` and a salt of the hash's length: the
    encodings RFC 7427 A.4.3 shows (hash AlgorithmIdentifiers with NULL parameters)."""
    hash_id = _alg_id(_HASH_OIDS[h], _NULL)
    params = _der(
        _SEQ,
        _der(0xA0, hash_id)
        + _der(0xA1, _alg_id(_MGF1, hash_id))
        + _der(0xA2, _der(0x02, bytes((_HASH_LEN[h],)))),
    )
    return _alg_id(_PSS, params)


# ------------------------------------------------------------------ the schemes


@dataclass(frozen=True, slots=True)
class Scheme:
    """One signature scheme: how an AUTH payload's data is made and checked."""

    name: str
    method: AuthMethod
    hash: HashAlgorithm
    kind: KeyKind
    #: RSA only: "pss" or "pkcs1".
    rsa_padding: str = ""
    #: Method 14: the DER AlgorithmIdentifier that names the scheme on the wire.
    algorithm_id: bytes = b""
    #: Methods 9-11: the curve the method implies.
    curve: str = ""

    @property
    def legacy(self) -> bool:
        return self.method != AuthMethod.DIGITAL_SIGNATURE

    def __str__(self) -> str:
        return self.name


def _short(h: HashAlgorithm) -> str:
    return h.name.lower().replace("2_", "")  # SHA2_256 -> sha256


def _schemes() -> tuple[Scheme, ...]:
    ds = AuthMethod.DIGITAL_SIGNATURE
    out: list[Scheme] = []
    # (hash, last arc of ecdsa-with-SHAx: 1.2.840.10045.4.3.n, of shaXWithRSAEncryption)
    for h, ec_arc, rsa_arc in (
        (HashAlgorithm.SHA2_256, 2, 11),
        (HashAlgorithm.SHA2_384, 3, 12),
        (HashAlgorithm.SHA2_512, 4, 13),
    ):
        name = _short(h)
        out += [
            Scheme(
                f"ecdsa-{name}", ds, h, KeyKind.ECDSA, "", _alg_id(f"1.2.840.10045.4.3.{ec_arc}")
            ),
            Scheme(f"rsa-pss-{name}", ds, h, KeyKind.RSA, "pss", _pss_alg_id(h)),
            Scheme(
                f"rsa-pkcs1-{name}",
                ds,
                h,
                KeyKind.RSA,
                "pkcs1",
                _alg_id(f"1.2.840.113549.1.1.{rsa_arc}", _NULL),
            ),
        ]
    out.append(
        Scheme("ed25519", ds, HashAlgorithm.IDENTITY, KeyKind.ED25519, "", _alg_id("1.3.101.112"))
    )
    out.append(
        Scheme(
            "rsa-pkcs1-sha1 (AUTH method 1)",
            AuthMethod.RSA_SIG,
            HashAlgorithm.SHA1,
            KeyKind.RSA,
            "pkcs1",
        )
    )
    for method, h, curve in (
        (AuthMethod.ECDSA_SHA256_P256, HashAlgorithm.SHA2_256, "secp256r1"),
        (AuthMethod.ECDSA_SHA384_P384, HashAlgorithm.SHA2_384, "secp384r1"),
        (AuthMethod.ECDSA_SHA512_P521, HashAlgorithm.SHA2_512, "secp521r1"),
    ):
        label = f"ecdsa-{curve[4:7]}-{_short(h)} (AUTH method {int(method)})"
        out.append(Scheme(label, method, h, KeyKind.ECDSA, curve=curve))
    return tuple(out)


#: Every scheme we sign or verify with (see the module doc).
SCHEMES: tuple[Scheme, ...] = _schemes()
_BY_NAME = {s.name: s for s in SCHEMES}
_LEGACY_BY_METHOD = {s.method: s for s in SCHEMES if s.legacy}
_SIMPLE_IDS = {s.algorithm_id: s for s in SCHEMES if not s.legacy and s.rsa_padding != "pss"}
_CURVE_HASH = {
    "secp256r1": HashAlgorithm.SHA2_256,
    "secp384r1": HashAlgorithm.SHA2_384,
    "secp521r1": HashAlgorithm.SHA2_512,
}
_SIGNING_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)


def encode_hash_algorithms(algs: Iterable[int]) -> bytes:
    """Notification data of SIGNATURE_HASH_ALGORITHMS: 2 bytes per hash (RFC 7427 4)."""
    return b"".join(int(a).to_bytes(2, "big") for a in algs)


def decode_hash_algorithms(data: bytes) -> frozenset[int]:
    """The hashes a peer announced (unknown values kept; a trailing odd byte ignored)."""
    return frozenset(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2))


# ------------------------------------------------------------------ signing


def choose_scheme(
    key: PrivateKey, peer_hashes: frozenset[int] | None, *, allow_legacy: bool
) -> Scheme:
    """The scheme we sign with.  ``peer_hashes``: what the peer announced in
    SIGNATURE_HASH_ALGORITHMS, None when it sent none."""
    kind = key_kind(key)
    if peer_hashes is not None:
        if kind is KeyKind.ED25519:
            if HashAlgorithm.IDENTITY in peer_hashes:
                return _BY_NAME["ed25519"]
            raise NoCommonScheme(
                "our key is Ed25519 but the peer did not announce the Identity hash "
                "(RFC 8420); use an ECDSA or RSA certificate with this peer"
            )
        order = list(_SIGNING_HASHES)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            preferred = _CURVE_HASH.get(key.curve.name)
            if preferred is not None:
                order.remove(preferred)
                order.insert(0, preferred)
        for h in order:
            if h in peer_hashes:
                prefix = "ecdsa" if kind is KeyKind.ECDSA else "rsa-pss"
                return _BY_NAME[f"{prefix}-{_short(h)}"]
        announced = ", ".join(_hash_name(h) for h in sorted(peer_hashes)) or "none"
        raise NoCommonScheme(
            f"the peer announced only the hashes {announced} for signatures; we sign "
            "with SHA2-256, SHA2-384 or SHA2-512"
        )
    if not allow_legacy:
        raise NoCommonScheme(
            "the peer did not send SIGNATURE_HASH_ALGORITHMS (RFC 7427), so only the older "
            "signature methods (RSA method 1, ECDSA methods 9-11) would do, and this "
            "connection does not allow them; allow them for this peer, or enable RFC 7427 "
            "signatures on it"
        )
    if kind is KeyKind.RSA:
        return _LEGACY_BY_METHOD[AuthMethod.RSA_SIG]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        for scheme in _LEGACY_BY_METHOD.values():
            if scheme.curve == key.curve.name:
                return scheme
        raise NoCommonScheme(f"no older signature method exists for curve {key.curve.name}")
    raise NoCommonScheme(
        "the peer did not send SIGNATURE_HASH_ALGORITHMS and an Ed25519 key can only sign "
        "with RFC 7427 / RFC 8420 signatures"
    )


def _hash_name(h: int) -> str:
    try:
        return HashAlgorithm(h).name.replace("_", "-")
    except ValueError:
        return str(h)


def _hasher(h: HashAlgorithm) -> hashes.HashAlgorithm:
    if h == HashAlgorithm.SHA1:
        return hashes.SHA1()  # AUTH method 1 only (RFC 7296 3.8 as deployed)
    if h == HashAlgorithm.SHA2_256:
        return hashes.SHA256()
    if h == HashAlgorithm.SHA2_384:
        return hashes.SHA384()
    return hashes.SHA512()


def _pss(h: HashAlgorithm, salt: int) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(_hasher(h)), salt_length=salt)


def _curve_bytes(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def sign(key: PrivateKey, scheme: Scheme, octets: bytes) -> bytes:
    """The AUTH payload data for ``octets`` (method: ``scheme.method``)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.sign(octets)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        der = key.sign(octets, ec.ECDSA(_hasher(scheme.hash)))
        if not scheme.legacy:
            raw = der
        else:  # RFC 4754 7: r | s, each left-padded to the curve's size
            r, s = decode_dss_signature(der)
            n = _curve_bytes(key.curve)
            raw = r.to_bytes(n, "big") + s.to_bytes(n, "big")
    else:
        pad: padding.AsymmetricPadding = (
            _pss(scheme.hash, _HASH_LEN[scheme.hash])
            if scheme.rsa_padding == "pss"
            else padding.PKCS1v15()
        )
        raw = key.sign(octets, pad, _hasher(scheme.hash))
    if scheme.legacy:
        return raw
    return bytes((len(scheme.algorithm_id),)) + scheme.algorithm_id + raw


# ------------------------------------------------------------------ verifying


def _parse_pss(
    alg_id: bytes, params: tuple[int, int, int] | None
) -> tuple[HashAlgorithm, HashAlgorithm, int]:
    """(hash, MGF1 hash, salt length) of RSASSA-PSS-params (RFC 4055 3.1); the defaults
    are SHA-1, MGF1-SHA-1 and 20, as that RFC says."""
    h, mgf, salt = HashAlgorithm.SHA1, HashAlgorithm.SHA1, 20
    if params is None:
        return h, mgf, salt
    tag, s, e = params
    if tag != _SEQ:
        raise ValueError("RSASSA-PSS parameters are not a SEQUENCE")
    for ftag, fs, fe in _children(alg_id, s, e):
        if ftag in (0xA0, 0xA1):
            (inner,) = _children(alg_id, fs, fe)
            fields = _children(alg_id, inner[1], inner[2])
            oid = alg_id[fields[0][1] - 2 : fields[0][2]] if fields else b""
            if ftag == 0xA0:
                h = _hash_of_oid(oid)
            else:
                if oid != _oid(_MGF1) or len(fields) < 2:
                    raise ValueError("mask generation is not MGF1")
                sub = _children(alg_id, fields[1][1], fields[1][2])
                mgf = _hash_of_oid(alg_id[sub[0][1] - 2 : sub[0][2]] if sub else b"")
        elif ftag == 0xA2:
            (inner,) = _children(alg_id, fs, fe)
            if inner[0] != 0x02 or not 1 <= inner[2] - inner[1] <= 2:
                raise ValueError("bad salt length")
            salt = int.from_bytes(alg_id[inner[1] : inner[2]], "big")
        elif ftag == 0xA3:
            (inner,) = _children(alg_id, fs, fe)
            if alg_id[inner[1] : inner[2]] != b"\x01":
                raise ValueError("trailer field is not 1")
        else:
            raise ValueError(f"unknown RSASSA-PSS parameter tag {ftag:#x}")
    return h, mgf, salt


def _hash_of_oid(oid_der: bytes) -> HashAlgorithm:
    h = _OID_HASHES.get(oid_der)
    if h is None:
        raise ValueError("unknown hash algorithm")
    return h


def _parse_ds(data: bytes) -> tuple[Scheme, bytes, tuple[HashAlgorithm, int] | None]:
    """(scheme, signature, (MGF1 hash, salt) for PSS) of method-14 AUTH data."""
    if not data:
        raise SignatureError("Digital Signature AUTH data is empty")
    n = data[0]
    alg_id, sig = data[1 : 1 + n], data[1 + n :]
    if len(alg_id) != n or not sig:
        raise SignatureError("Digital Signature AUTH data is shorter than its ASN.1 length says")
    simple = _SIMPLE_IDS.get(alg_id)
    if simple is not None:
        return simple, sig, None
    try:
        tag, s, e = _read(alg_id, 0, len(alg_id))
        if tag != _SEQ or e != len(alg_id):
            raise ValueError("AlgorithmIdentifier is not one SEQUENCE")
        fields = _children(alg_id, s, e)
        if not fields or fields[0][0] != 0x06:
            raise ValueError("AlgorithmIdentifier has no OID")
        oid = alg_id[fields[0][1] - 2 : fields[0][2]]
        if oid != _oid(_PSS):
            # the same OIDs as our table with other parameter encodings (e.g. ECDSA with
            # NULL parameters): compare on the OID alone
            for scheme in SCHEMES:
                if scheme.algorithm_id and scheme.rsa_padding != "pss":
                    ours = _children(scheme.algorithm_id, 2, len(scheme.algorithm_id))[0]
                    if scheme.algorithm_id[ours[1] - 2 : ours[2]] == oid:
                        return scheme, sig, None
            raise ValueError(
                f"signature algorithm {_oid_text(alg_id[fields[0][1] : fields[0][2]])}"
            )
        h, mgf, salt = _parse_pss(alg_id, fields[1] if len(fields) > 1 else None)
    except ValueError as exc:
        raise SignatureError(
            f"unsupported or malformed signature AlgorithmIdentifier: {exc}"
        ) from None
    if h not in _SIGNING_HASHES:
        raise SignatureError(f"RSASSA-PSS with {_hash_name(h)}, which we never announced")
    return _BY_NAME[f"rsa-pss-{_short(h)}"], sig, (mgf, salt)


def _oid_text(body: bytes) -> str:
    if not body:
        return "?"
    arcs = [body[0] // 40, body[0] % 40]
    value = 0
    for b in body[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(str(a) for a in arcs)


def verify(
    key: PublicKey,
    method: int,
    data: bytes,
    octets: bytes,
    *,
    allow_legacy: bool,
    announced: Iterable[int] = OUR_HASHES,
) -> Scheme:
    """Check the AUTH data of a peer signed with ``key``; returns the scheme it used.
    Raises :class:`SignatureError` saying why not."""
    pss: tuple[HashAlgorithm, int] | None = None
    if method == AuthMethod.DIGITAL_SIGNATURE:
        scheme, sig, pss = _parse_ds(bytes(data))
        if scheme.hash not in set(announced):
            raise SignatureError(
                f"the peer signed with {scheme}, whose hash we did not announce (RFC 7427 4)"
            )
    elif method in _LEGACY_BY_METHOD:
        scheme, sig = _LEGACY_BY_METHOD[AuthMethod(method)], bytes(data)
        if not allow_legacy:
            raise SignatureError(
                f"the peer signed with {scheme}, an older method this connection does not "
                "allow; allow older signature methods for this peer, or have it use RFC 7427 "
                "signatures"
            )
    else:
        raise SignatureError(f"AUTH method {method} is not a signature method we support")
    kind = key_kind(key)
    if kind is not scheme.kind:
        raise SignatureError(
            f"the peer signed with {scheme} but its certificate holds a {kind.value} key"
        )
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, octets)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if scheme.legacy:
                if key.curve.name != scheme.curve:
                    raise SignatureError(
                        f"AUTH method {int(method)} needs a {scheme.curve} key, the "
                        f"certificate's is {key.curve.name}"
                    )
                n = _curve_bytes(key.curve)
                if len(sig) != 2 * n:
                    raise SignatureError(f"{scheme}: signature is {len(sig)} bytes, not {2 * n}")
                sig = encode_dss_signature(
                    int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big")
                )
            key.verify(sig, octets, ec.ECDSA(_hasher(scheme.hash)))
        else:
            if key.key_size < 2048:
                raise SignatureError(f"RSA key of {key.key_size} bits: at least 2048 are needed")
            pad: padding.AsymmetricPadding
            if scheme.rsa_padding == "pss":
                mgf, salt = pss if pss is not None else (scheme.hash, _HASH_LEN[scheme.hash])
                pad = padding.PSS(mgf=padding.MGF1(_hasher(mgf)), salt_length=salt)
            else:
                pad = padding.PKCS1v15()
            key.verify(sig, octets, pad, _hasher(scheme.hash))
    except InvalidSignature:
        raise SignatureError(
            f"the peer's {scheme} signature does not verify with its certificate's key"
        ) from None
    return scheme
