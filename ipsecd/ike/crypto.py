"""IKEv2 cryptography: key exchange, PRF/prf+, key derivation, SK protection, policy.

Built on ``cryptography`` (OpenSSL) and the standard library's ``hmac``.  Everything
that holds key material keeps it in ``field(repr=False)``; no function puts key bytes
into an exception message.

Key exchange (RFC 7296 3.4)
    ``dh_generate(group) -> DhKeyPair``; ``pair.public`` is the KE payload data
    (MODP: big-endian, padded to the modulus length; ECP: x || y without the 0x04
    prefix, RFC 5903 7; Curve25519: 32 bytes, RFC 8031); ``pair.shared_secret(peer)``
    validates the peer's value (IkeInvalidKeError -> INVALID_SYNTAX) and returns g^ir
    in its RFC encoding.  ``dh_public_length(group)``; ``SUPPORTED_DH_GROUPS``.
PRF (RFC 7296 2.13)
    ``prf(prf_id, key, data)``, ``prf_plus(prf_id, key, seed, length)``,
    ``prf_output_len(prf_id)``.
Key derivation
    ``IkeSuite`` (negotiated encr/key length/prf/integ/dh) and
    ``derive_ike_keys(suite, shared, ni, nr, spi_i, spi_r) -> IkeKeys`` (RFC 7296 2.14),
    ``derive_rekeyed_ike_keys(...)`` (2.18), ``derive_child_keys(...) -> ChildKeys``
    (2.17, with or without PFS).  ``IkeKeys.initiator_cipher()`` /
    ``responder_cipher()`` give the :class:`SkCipher` protecting the messages sent by
    that side (codec.encrypt_sk / decrypt_sk use them).
Authentication helpers (RFC 7296 2.15, 2.23)
    ``psk_auth_data(prf_id, psk, signed_octets)``, ``maced_id(prf_id, sk_p, id_body)``,
    ``nat_detection_hash(spi_i, spi_r, address, port)``.
Algorithm policy (RFC 8247 for IKE SAs, RFC 8221 for ESP/AH)
    ``transform_allowed(protocol_id, transform_type, transform_id, key_length)`` and
    ``check_transform(...)`` (raises IkeLocalError with the reason).  The same table
    decides what we offer and what we accept: an algorithm not allowed is never in our
    proposals and never selected from a peer's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cache
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.utils import CryptographyDeprecationWarning

from .constants import DhGroup, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType, known
from .errors import IkeIntegrityError, IkeInvalidKeError, IkeLocalError, IkeParseError

__all__ = [
    "SUPPORTED_DH_GROUPS",
    "ChildKeys",
    "DhKeyPair",
    "IkeKeys",
    "IkeSuite",
    "SkCipher",
    "check_transform",
    "derive_child_keys",
    "derive_ike_keys",
    "derive_rekeyed_ike_keys",
    "dh_generate",
    "dh_public_length",
    "encr_keymat_len",
    "forbidden_reason",
    "integ_key_len",
    "is_aead",
    "maced_id",
    "modp_prime",
    "nat_detection_hash",
    "prf",
    "prf_output_len",
    "prf_plus",
    "psk_auth_data",
    "transform_allowed",
]

# =========================================================================== key exchange

# RFC 3526 2 / 3: p = 2^k - 2^(k-64) - 1 + 2^64 * ([2^(k-130) pi] + N), generator 2.
# The primes are computed from pi here rather than transcribed (a test checks them
# against the RFC's leading/trailing words and that they are safe primes).
_MODP_OFFSETS: Final = {768: 149686, 1024: 129093, 2048: 124476, 3072: 1690314}
_MODP_BITS: Final[dict[int, int]] = {DhGroup.MODP_2048: 2048, DhGroup.MODP_3072: 3072}


def _arctan_inv(x: int, one: int) -> int:
    """arctan(1/x) scaled by ``one`` (integer Taylor series)."""
    total = term = one // x
    x2 = x * x
    n = 1
    sign = -1
    while term:
        term //= x2
        total += sign * (term // (2 * n + 1))
        sign = -sign
        n += 1
    return total


@cache
def _pi_scaled(bits: int) -> int:
    """floor(pi * 2^bits), via Machin's formula with guard bits."""
    guard = 64
    one = 1 << (bits + guard)
    pi = 16 * _arctan_inv(5, one) - 4 * _arctan_inv(239, one)
    return pi >> guard


@cache
def modp_prime(bits: int) -> int:
    """The RFC 3526 / RFC 2409 MODP prime of ``bits`` bits (768, 1024, 2048, 3072)."""
    if bits not in _MODP_OFFSETS:
        raise IkeLocalError(f"no MODP prime of {bits} bits here (have {sorted(_MODP_OFFSETS)})")
    return (
        (1 << bits)
        - (1 << (bits - 64))
        - 1
        + (1 << 64) * (_pi_scaled(bits - 130) + _MODP_OFFSETS[bits])
    )


_ECP_CURVES: Final[dict[int, tuple[type[ec.EllipticCurve], int]]] = {
    DhGroup.ECP_256: (ec.SECP256R1, 32),  # RFC 5903 3.1
    DhGroup.ECP_384: (ec.SECP384R1, 48),  # RFC 5903 3.2
    DhGroup.ECP_521: (ec.SECP521R1, 66),  # RFC 5903 3.3
}

SUPPORTED_DH_GROUPS: Final = (
    DhGroup.ECP_256,
    DhGroup.ECP_384,
    DhGroup.ECP_521,
    DhGroup.CURVE25519,
    DhGroup.MODP_2048,
    DhGroup.MODP_3072,
)


def dh_public_length(group: int) -> int:
    """Length in bytes of the KE payload data for ``group`` (RFC 7296 3.4)."""
    if group in _MODP_BITS:
        return _MODP_BITS[group] // 8
    if group in _ECP_CURVES:
        return 2 * _ECP_CURVES[group][1]
    if group == DhGroup.CURVE25519:
        return 32
    raise IkeLocalError(f"unsupported key exchange group {_gname(group)}")


def _gname(group: int) -> str:
    g = known(DhGroup, group)
    return f"{g.name} ({int(g)})" if isinstance(g, DhGroup) else str(group)


# MODP arithmetic goes through OpenSSL (cryptography's ``dh``), ~10x faster than
# Python's pow() here.  cryptography >= 46 marks finite-field DH deprecated; the
# warning is silenced only around these calls (RFC 8247 3.4 still lists group 14 as
# MUST).  OpenSSL chooses a private exponent of twice the group's strength (RFC 3526 8).


@contextmanager
def _ffdh() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


@cache
def _modp_params(group: int) -> dh.DHParameters:
    p = modp_prime(_MODP_BITS[group])
    with _ffdh():
        return dh.DHParameterNumbers(p, 2, (p - 1) // 2).parameters()


@dataclass(frozen=True, slots=True, eq=False)
class DhKeyPair:
    """Our side of one key exchange.  ``public`` goes into the KE payload; the private
    key never leaves this object (``repr=False``)."""

    group: int
    public: bytes
    _private: dh.DHPrivateKey | ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey = field(
        repr=False
    )

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir from the peer's KE data, after validating it (RFC 7296 2.14 encoding).

        Raises IkeInvalidKeError (INVALID_SYNTAX) for a wrong length, an out-of-range
        MODP value (RFC 6989 2: 1 < y < p-1), a point not on the curve, or a
        Curve25519 value giving the all-zero secret (RFC 8031 2)."""
        peer_public = bytes(peer_public)
        expected = dh_public_length(self.group)
        if len(peer_public) != expected:
            raise IkeInvalidKeError(
                f"KE data for {_gname(self.group)} is {len(peer_public)} bytes, must be "
                f"{expected} (RFC 7296 3.4)"
            )
        priv = self._private
        if self.group in _MODP_BITS:
            p = modp_prime(_MODP_BITS[self.group])
            y = int.from_bytes(peer_public, "big")
            if not 1 < y < p - 1:
                # RFC 6989 2: reject 0, 1, p-1 and values >= p
                raise IkeInvalidKeError(
                    f"MODP public value out of range for {_gname(self.group)} (RFC 6989 2)"
                )
            with _ffdh():
                assert not isinstance(priv, ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey)
                pn = _modp_params(self.group).parameter_numbers()
                try:
                    secret = priv.exchange(dh.DHPublicNumbers(y, pn).public_key())
                except ValueError as exc:
                    raise IkeInvalidKeError(
                        f"MODP public value rejected for {_gname(self.group)} (RFC 6989 2)"
                    ) from exc
            # RFC 7296 2.14: g^ir is padded with zeros to the length of the modulus
            return secret.rjust(expected, b"\x00")
        if isinstance(priv, ec.EllipticCurvePrivateKey):
            try:
                peer_ec = ec.EllipticCurvePublicKey.from_encoded_point(
                    priv.curve, b"\x04" + peer_public
                )
                # RFC 5903 7: the shared secret is the x coordinate only
                return priv.exchange(ec.ECDH(), peer_ec)
            except ValueError as exc:
                raise IkeInvalidKeError(
                    f"ECP public value for {_gname(self.group)} is not a point on the curve "
                    "(RFC 5903 / RFC 6989 2)"
                ) from exc
        assert isinstance(priv, x25519.X25519PrivateKey)
        try:
            secret = priv.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:
            raise IkeInvalidKeError(
                "Curve25519 public value gives the all-zero shared secret (RFC 8031 2)"
            ) from exc
        if not any(secret):
            # RFC 8031 2: MUST check the result is not all zeros
            raise IkeInvalidKeError(
                "Curve25519 public value gives the all-zero shared secret (RFC 8031 2)"
            )
        return secret


def dh_generate(group: int) -> DhKeyPair:
    """A fresh key pair for ``group`` (one of :data:`SUPPORTED_DH_GROUPS`)."""
    if group in _MODP_BITS:
        with _ffdh():
            mpriv = _modp_params(group).generate_private_key()
            y = mpriv.public_key().public_numbers().y
        return DhKeyPair(group, y.to_bytes(_MODP_BITS[group] // 8, "big"), mpriv)
    if group in _ECP_CURVES:
        curve, size = _ECP_CURVES[group]
        epriv = ec.generate_private_key(curve())
        nums = epriv.public_key().public_numbers()
        # RFC 5903 7: x || y, each padded to the field size, no point-format octet
        return DhKeyPair(group, nums.x.to_bytes(size, "big") + nums.y.to_bytes(size, "big"), epriv)
    if group == DhGroup.CURVE25519:
        xpriv = x25519.X25519PrivateKey.generate()
        return DhKeyPair(group, xpriv.public_key().public_bytes_raw(), xpriv)
    raise IkeLocalError(
        f"unsupported key exchange group {_gname(group)}; supported: "
        f"{', '.join(g.name for g in SUPPORTED_DH_GROUPS)}"
    )


def _dh_from_private(group: int, private_value: bytes) -> DhKeyPair:
    """Key pair from a known private value (known-answer tests only)."""
    if group in _ECP_CURVES:
        curve, size = _ECP_CURVES[group]
        epriv = ec.derive_private_key(int.from_bytes(private_value, "big"), curve())
        nums = epriv.public_key().public_numbers()
        return DhKeyPair(group, nums.x.to_bytes(size, "big") + nums.y.to_bytes(size, "big"), epriv)
    if group == DhGroup.CURVE25519:
        xpriv = x25519.X25519PrivateKey.from_private_bytes(private_value)
        return DhKeyPair(group, xpriv.public_key().public_bytes_raw(), xpriv)
    if group in _MODP_BITS:
        x = int.from_bytes(private_value, "big")
        with _ffdh():
            pn = _modp_params(group).parameter_numbers()
            y = pow(2, x, pn.p)
            mpriv = dh.DHPrivateNumbers(x, dh.DHPublicNumbers(y, pn)).private_key()
        return DhKeyPair(group, y.to_bytes(_MODP_BITS[group] // 8, "big"), mpriv)
    raise IkeLocalError(f"unsupported key exchange group {_gname(group)}")


# =========================================================================== PRF, prf+

_PRF_HASH: Final = {
    PrfId.HMAC_SHA2_256: "sha256",  # RFC 4868
    PrfId.HMAC_SHA2_384: "sha384",
    PrfId.HMAC_SHA2_512: "sha512",
}
_PRF_LEN: Final = {PrfId.HMAC_SHA2_256: 32, PrfId.HMAC_SHA2_384: 48, PrfId.HMAC_SHA2_512: 64}


def _prf_hash(prf_id: int) -> str:
    try:
        return _PRF_HASH[PrfId(prf_id)]
    except (ValueError, KeyError):
        raise IkeLocalError(
            f"unsupported PRF {prf_id}; supported: {', '.join(p.name for p in _PRF_HASH)}"
        ) from None


def prf_output_len(prf_id: int) -> int:
    """Output (and preferred key) length in bytes of a PRF."""
    _prf_hash(prf_id)
    return _PRF_LEN[PrfId(prf_id)]


def prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    """prf(K, S) of RFC 7296 2.13 (HMAC-SHA2, any key length, RFC 4868)."""
    return hmac.digest(key, data, _prf_hash(prf_id))


def prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+(K, S) of RFC 7296 2.13, truncated to ``length`` bytes.

    T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n); at most 255 blocks."""
    name = _prf_hash(prf_id)
    block = _PRF_LEN[PrfId(prf_id)]
    if length < 0 or length > 255 * block:
        # RFC 7296 2.13: the counter is one octet, so prf+ yields at most 255 blocks
        raise IkeLocalError(f"prf+ can produce at most {255 * block} bytes, asked for {length}")
    out = bytearray()
    t = b""
    n = 1
    while len(out) < length:
        t = hmac.digest(key, t + seed + bytes((n,)), name)
        out += t
        n += 1
    return bytes(out[:length])


# =========================================================================== integrity

_INTEG: Final = {
    # id: (hash, key length, ICV length) -- RFC 4868 2.1 / 2.6
    IntegId.HMAC_SHA2_256_128: ("sha256", 32, 16),
    IntegId.HMAC_SHA2_384_192: ("sha384", 48, 24),
    IntegId.HMAC_SHA2_512_256: ("sha512", 64, 32),
}


def _integ(integ_id: int) -> tuple[str, int, int]:
    try:
        return _INTEG[IntegId(integ_id)]
    except (ValueError, KeyError):
        raise IkeLocalError(
            f"unsupported integrity algorithm {integ_id}; supported: "
            f"{', '.join(i.name for i in _INTEG)}"
        ) from None


def integ_key_len(integ_id: int) -> int:
    """Key length in bytes of an integrity algorithm (0 for NONE)."""
    if integ_id == IntegId.NONE:
        return 0
    return _integ(integ_id)[1]


# =========================================================================== encryption

_AEAD: Final = frozenset({EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305})
_AES_KEY_BITS: Final = frozenset({128, 192, 256})
_SALT_LEN: Final = 4  # RFC 5282, RFC 7634


def _check_encr(encr_id: int, key_bits: int | None) -> None:
    if encr_id in (EncrId.AES_CBC, EncrId.AES_GCM_16):
        if key_bits not in _AES_KEY_BITS:
            # RFC 3602 / RFC 5282: the Key Length attribute is mandatory for AES
            raise IkeLocalError(
                f"{EncrId(encr_id).name} needs a key length of 128, 192 or 256 bits, got {key_bits}"
            )
        return
    if encr_id == EncrId.CHACHA20_POLY1305:
        if key_bits not in (None, 256):
            # RFC 7634: no Key Length attribute (fixed 256-bit key)
            raise IkeLocalError(f"ENCR_CHACHA20_POLY1305 has a fixed 256-bit key, got {key_bits}")
        return
    raise IkeLocalError(
        f"unsupported encryption algorithm {encr_id}; supported: AES_CBC, AES_GCM_16, "
        "CHACHA20_POLY1305"
    )


def encr_keymat_len(encr_id: int, key_bits: int | None) -> int:
    """Bytes of keying material an encryption transform takes from prf+: the key, plus
    a 4-byte salt for AES-GCM (RFC 5282, RFC 4106 8.1) and ChaCha20-Poly1305
    (RFC 7634)."""
    _check_encr(encr_id, key_bits)
    if encr_id == EncrId.CHACHA20_POLY1305:
        return 32 + _SALT_LEN
    assert key_bits is not None
    return key_bits // 8 + (_SALT_LEN if encr_id in _AEAD else 0)


def is_aead(encr_id: int) -> bool:
    """True for combined-mode ciphers (no separate integrity transform)."""
    return encr_id in _AEAD


@dataclass(frozen=True, slots=True)
class SkCipher:
    """Protection of one direction of an IKE SA (RFC 7296 3.14).

    ``encr_key`` includes the trailing 4-byte salt for AEAD ciphers; ``integ_key`` is
    empty for them.  ``seal``/``open`` work on the *plaintext* of the SK payload (the
    inner payload chain) and the *prefix* (the message from the IKE header through the
    SK/SKF header, with the final Length fields): for AES-CBC the ICV is the truncated
    HMAC over prefix || IV || ciphertext; for AEAD the prefix is the associated data
    (RFC 5282, RFC 7634).  IVs are random (CBC: 16 bytes, RFC 7296 3.14; AEAD:
    8 bytes, unique with overwhelming probability for the few messages of an IKE SA).
    """

    encr_id: int
    encr_key_bits: int | None
    integ_id: int
    encr_key: bytes = field(repr=False)
    integ_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        need = encr_keymat_len(self.encr_id, self.encr_key_bits)
        if len(self.encr_key) != need:
            raise IkeLocalError(
                f"SkCipher: encryption key is {len(self.encr_key)} bytes, "
                f"{EncrId(self.encr_id).name} needs {need}"
            )
        if is_aead(self.encr_id):
            if self.integ_id != IntegId.NONE or self.integ_key:
                # RFC 5282: no integrity transform with a combined-mode cipher
                raise IkeLocalError("SkCipher: AEAD cipher must have integ_id NONE and no key")
        elif len(self.integ_key) != integ_key_len(self.integ_id) or self.integ_id == 0:
            raise IkeLocalError(
                f"SkCipher: integrity key is {len(self.integ_key)} bytes, integrity algorithm "
                f"{self.integ_id} needs {integ_key_len(self.integ_id)} (and CBC needs one)"
            )

    @property
    def iv_size(self) -> int:
        """Bytes of IV at the start of the SK body."""
        return 8 if is_aead(self.encr_id) else 16

    @property
    def icv_size(self) -> int:
        """Bytes of ICV/tag at the end of the SK body."""
        return 16 if is_aead(self.encr_id) else _integ(self.integ_id)[2]

    @property
    def block_size(self) -> int:
        """Padding alignment of the plaintext (incl. the Pad Length octet)."""
        return 1 if is_aead(self.encr_id) else 16

    def sealed_length(self, plaintext_len: int) -> int:
        """Length of the SK body (IV + ciphertext + ICV) for a given plaintext length."""
        padded = plaintext_len + 1
        padded += (-padded) % self.block_size
        return self.iv_size + padded + self.icv_size

    def seal(self, prefix: bytes, plaintext: bytes, *, iv: bytes | None = None) -> bytes:
        """IV || ciphertext || ICV for ``plaintext`` (RFC 7296 3.14)."""
        if iv is None:
            iv = os.urandom(self.iv_size)
        elif len(iv) != self.iv_size:
            raise IkeLocalError(f"IV must be {self.iv_size} bytes, got {len(iv)}")
        pad = (-(len(plaintext) + 1)) % self.block_size
        # RFC 7296 3.14: Padding (any value; we send zeros) then the Pad Length octet
        padded = plaintext + bytes(pad) + bytes((pad,))
        if is_aead(self.encr_id):
            return iv + self._aead().encrypt(self.encr_key[-_SALT_LEN:] + iv, padded, prefix)
        enc = Cipher(algorithms.AES(self.encr_key), modes.CBC(iv)).encryptor()
        ct = enc.update(padded) + enc.finalize()
        return iv + ct + self._icv(prefix + iv + ct)

    def open(self, prefix: bytes, body: bytes) -> bytes:
        """Verify and decrypt an SK body; returns the plaintext without padding.

        Anything wrong before the ICV/tag verifies raises IkeIntegrityError (the
        message is not authentic: drop it, RFC 7296 2.21.2); a bad Pad Length in an
        authentic message raises IkeParseError (INVALID_SYNTAX)."""
        iv_size, icv_size = self.iv_size, self.icv_size
        ct_len = len(body) - iv_size - icv_size
        if ct_len < 1 or ct_len % self.block_size:
            raise IkeIntegrityError(
                f"SK payload body of {len(body)} bytes cannot hold IV, ciphertext and ICV"
            )
        iv = body[:iv_size]
        if is_aead(self.encr_id):
            try:
                padded = self._aead().decrypt(
                    self.encr_key[-_SALT_LEN:] + iv, body[iv_size:], prefix
                )
            except InvalidTag:
                raise IkeIntegrityError(
                    "SK payload authentication tag does not verify (RFC 7296 2.21.2: drop)"
                ) from None
        else:
            ct = body[iv_size : iv_size + ct_len]
            icv = body[iv_size + ct_len :]
            if not hmac.compare_digest(icv, self._icv(prefix + iv + ct)):
                raise IkeIntegrityError(
                    "SK payload integrity checksum does not verify (RFC 7296 2.21.2: drop)"
                )
            dec = Cipher(algorithms.AES(self.encr_key), modes.CBC(iv)).decryptor()
            padded = dec.update(ct) + dec.finalize()
        pad = padded[-1]
        if pad + 1 > len(padded):
            raise IkeParseError(
                "SK payload", len(prefix), f"Pad Length {pad} exceeds the decrypted data"
            )
        return padded[: len(padded) - pad - 1]

    def _aead(self) -> AESGCM | ChaCha20Poly1305:
        key = self.encr_key[:-_SALT_LEN]
        if self.encr_id == EncrId.CHACHA20_POLY1305:
            return ChaCha20Poly1305(key)
        return AESGCM(key)

    def _icv(self, data: bytes) -> bytes:
        name, _, size = _integ(self.integ_id)
        return hmac.digest(self.integ_key, data, name)[:size]


# =========================================================================== key derivation


@dataclass(frozen=True, slots=True)
class IkeSuite:
    """The transforms negotiated for an IKE SA.  ``integ_id`` is IntegId.NONE with an
    AEAD cipher; ``encr_key_bits`` is None for ChaCha20-Poly1305."""

    encr_id: int
    encr_key_bits: int | None
    prf_id: int
    integ_id: int
    dh_group: int

    def __post_init__(self) -> None:
        if is_aead(self.encr_id) and self.integ_id != IntegId.NONE:
            # RFC 7296 3.3: combined-mode ciphers are proposed without INTEG
            raise IkeLocalError("an AEAD cipher suite must not have an integrity algorithm")
        if not is_aead(self.encr_id) and self.integ_id == IntegId.NONE:
            name = getattr(known(EncrId, self.encr_id), "name", self.encr_id)
            raise IkeLocalError(f"{name} needs an integrity algorithm")
        for ttype, tid, bits in (
            (TransformType.ENCR, self.encr_id, self.encr_key_bits),
            (TransformType.PRF, self.prf_id, None),
            (TransformType.INTEG, self.integ_id, None),
            (TransformType.DH, self.dh_group, None),
        ):
            if ttype == TransformType.INTEG and tid == IntegId.NONE:
                continue
            check_transform(ProtocolId.IKE, ttype, tid, bits)


@dataclass(frozen=True, slots=True)
class IkeKeys:
    """RFC 7296 2.14 keys of an IKE SA.  All key fields are ``repr=False``."""

    suite: IkeSuite
    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)

    def initiator_cipher(self) -> SkCipher:
        """Protects messages sent by the original initiator (SK_ei, SK_ai)."""
        s = self.suite
        return SkCipher(s.encr_id, s.encr_key_bits, s.integ_id, self.sk_ei, self.sk_ai)

    def responder_cipher(self) -> SkCipher:
        """Protects messages sent by the original responder (SK_er, SK_ar)."""
        s = self.suite
        return SkCipher(s.encr_id, s.encr_key_bits, s.integ_id, self.sk_er, self.sk_ar)


def _split_ike_keys(suite: IkeSuite, skeyseed: bytes, seed: bytes) -> IkeKeys:
    p = prf_output_len(suite.prf_id)
    a = integ_key_len(suite.integ_id) if not is_aead(suite.encr_id) else 0
    e = encr_keymat_len(suite.encr_id, suite.encr_key_bits)
    # RFC 7296 2.14: {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(...)
    km = prf_plus(suite.prf_id, skeyseed, seed, p + 2 * a + 2 * e + 2 * p)
    parts: list[bytes] = []
    off = 0
    for n in (p, a, a, e, e, p, p):
        parts.append(km[off : off + n])
        off += n
    return IkeKeys(suite, *parts)


def derive_ike_keys(
    suite: IkeSuite,
    shared_secret: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: bytes,
    spi_r: bytes,
) -> IkeKeys:
    """RFC 7296 2.14: SKEYSEED = prf(Ni | Nr, g^ir), then the seven keys from
    prf+(SKEYSEED, Ni | Nr | SPIi | SPIr).  (For HMAC PRFs the whole Ni | Nr is the key.)"""
    skeyseed = prf(suite.prf_id, nonce_i + nonce_r, shared_secret)
    return _split_ike_keys(suite, skeyseed, nonce_i + nonce_r + spi_i + spi_r)


def derive_rekeyed_ike_keys(
    old_prf_id: int,
    old_sk_d: bytes,
    suite: IkeSuite,
    shared_secret: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: bytes,
    spi_r: bytes,
) -> IkeKeys:
    """RFC 7296 2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the *old*
    PRF; the keys follow with the new suite and the new SPIs (Ni/Nr/SPIs of the
    CREATE_CHILD_SA exchange)."""
    skeyseed = prf(old_prf_id, old_sk_d, shared_secret + nonce_i + nonce_r)
    return _split_ike_keys(suite, skeyseed, nonce_i + nonce_r + spi_i + spi_r)


@dataclass(frozen=True, slots=True)
class ChildKeys:
    """RFC 7296 2.17 keys of a CHILD SA pair.  ``*_i`` protect traffic from the
    initiator to the responder (the SA whose SPI the responder chose), ``*_r`` the
    reverse.  AEAD keys include their 4-byte salt (the form XFRM's rfc4106 and
    rfc7539esp expect); integrity keys are empty with AEAD or for ENCR-less AH."""

    encr_i: bytes = field(repr=False)
    integ_i: bytes = field(repr=False)
    encr_r: bytes = field(repr=False)
    integ_r: bytes = field(repr=False)


def derive_child_keys(
    prf_id: int,
    sk_d: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    *,
    encr_id: int | None,
    encr_key_bits: int | None,
    integ_id: int,
    shared_secret: bytes | None = None,
) -> ChildKeys:
    """RFC 7296 2.17: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr).

    Keys are taken initiator->responder first, then responder->initiator; within a
    direction the encryption key before the integrity key.  ``encr_id`` None is AH
    (integrity only).  ``shared_secret`` is the PFS g^ir of a CREATE_CHILD_SA KE."""
    e = encr_keymat_len(encr_id, encr_key_bits) if encr_id is not None else 0
    a = integ_key_len(integ_id)
    if encr_id is not None and is_aead(encr_id) and a:
        raise IkeLocalError("AEAD CHILD SA must not have an integrity algorithm")
    if encr_id is None and not a:
        raise IkeLocalError("AH CHILD SA needs an integrity algorithm")
    seed = (shared_secret or b"") + nonce_i + nonce_r
    km = prf_plus(prf_id, sk_d, seed, 2 * (e + a))
    return ChildKeys(km[:e], km[e : e + a], km[e + a : 2 * e + a], km[2 * e + a :])


# =========================================================================== authentication

_KEY_PAD: Final = b"Key Pad for IKEv2"  # RFC 7296 2.15


def maced_id(prf_id: int, sk_p: bytes, id_body: bytes) -> bytes:
    """MACedIDForI/R = prf(SK_pi/SK_pr, RestOfIDPayload) (RFC 7296 2.15); ``id_body``
    is ``codec.payload_body(id_payload)``."""
    return prf(prf_id, sk_p, id_body)


def psk_auth_data(prf_id: int, psk: bytes, signed_octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)
    (RFC 7296 2.15), where SignedOctets = RealMessage | Nonce(peer) | MACedID."""
    return prf(prf_id, prf(prf_id, psk, _KEY_PAD), signed_octets)


def nat_detection_hash(spi_i: bytes, spi_r: bytes, address: bytes, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) of NAT_DETECTION_*_IP (RFC 7296 2.23); ``address``
    packed (4 or 16 bytes).  SHA-1 here is a protocol-fixed hash, not a negotiated
    algorithm, so RFC 8247's deprecation of SHA-1 PRF/INTEG does not apply."""
    return hashlib.sha1(spi_i + spi_r + address + port.to_bytes(2, "big")).digest()


# =========================================================================== policy

# Decision table: (protocol, transform type, transform id) -> reason it is forbidden.
# Everything absent from _ALLOWED is refused; the reasons below name the RFC text for
# the cases a reviewer would ask about.  "IKE" rows follow RFC 8247 3.1-3.4, ESP/AH rows
# RFC 8221 5-6.  SHA-1 PRF/INTEG are "MUST-" (still mandatory to implement, being
# phased out) in RFC 8247 3.2 / 3.3 and RFC 8221 6; we decide to neither offer nor
# accept them: every peer we target (strongSwan >= 5.x, Libreswan, OpenIKED) supports
# SHA2, and a new deployment has no legacy peer to accommodate.
_FORBIDDEN_REASONS: Final[dict[tuple[int, int], str]] = {
    (TransformType.ENCR, EncrId.DES_IV64): "MUST NOT (RFC 8247 3.1, RFC 8221 5)",
    (TransformType.ENCR, EncrId.DES): "MUST NOT (RFC 8247 3.1, RFC 8221 5)",
    (TransformType.ENCR, EncrId.DES3): "3DES: MAY/SHOULD NOT, 64-bit block (RFC 8247 3.1, "
    "RFC 8221 5); not offered nor accepted by ipsecd",
    (TransformType.ENCR, EncrId.RC5): "MUST NOT (RFC 8247 3.1)",
    (TransformType.ENCR, EncrId.IDEA): "MUST NOT (RFC 8247 3.1)",
    (TransformType.ENCR, EncrId.CAST): "MUST NOT (RFC 8247 3.1)",
    (TransformType.ENCR, EncrId.BLOWFISH): "MUST NOT (RFC 8247 3.1, RFC 8221 5)",
    (TransformType.ENCR, EncrId.IDEA3): "MUST NOT (RFC 8247 3.1, RFC 8221 5)",
    (TransformType.ENCR, EncrId.DES_IV32): "MUST NOT (RFC 8247 3.1, RFC 8221 5)",
    (TransformType.ENCR, EncrId.NULL): "no confidentiality: MUST NOT for IKE (RFC 8247 3.1); "
    "ipsecd never sends protected traffic in clear (DESIGN)",
    (TransformType.PRF, PrfId.HMAC_MD5): "MUST NOT (RFC 8247 3.2)",
    (TransformType.PRF, PrfId.HMAC_SHA1): "SHA-1 is MUST- (RFC 8247 3.2): not used by ipsecd",
    (TransformType.INTEG, IntegId.HMAC_MD5_96): "MUST NOT (RFC 8247 3.3, RFC 8221 6)",
    (TransformType.INTEG, IntegId.HMAC_MD5_128): "MD5 is forbidden (RFC 8247 3.3)",
    (TransformType.INTEG, IntegId.HMAC_SHA1_96): "SHA-1 is MUST- (RFC 8247 3.3, RFC 8221 6): "
    "not used by ipsecd",
    (TransformType.INTEG, IntegId.HMAC_SHA1_160): "SHA-1 (RFC 8247 3.3): not used by ipsecd",
    (TransformType.INTEG, IntegId.DES_MAC): "MUST NOT (RFC 8247 3.3, RFC 8221 6)",
    (TransformType.INTEG, IntegId.KPDK_MD5): "MUST NOT (RFC 8247 3.3, RFC 8221 6)",
    (TransformType.DH, DhGroup.MODP_768): "MODP-768: MUST NOT (RFC 8247 3.4)",
    (TransformType.DH, DhGroup.MODP_1024): "MODP-1024: SHOULD NOT, too weak (RFC 8247 3.4)",
    (TransformType.DH, DhGroup.MODP_1536): "MODP-1536: SHOULD NOT (RFC 8247 3.4)",
    (TransformType.DH, DhGroup.MODP_1024_160): "MODP-1024-160: SHOULD NOT (RFC 8247 3.4)",
    (TransformType.DH, DhGroup.MODP_2048_224): "MODP-2048-224: SHOULD NOT (RFC 8247 3.4)",
    (TransformType.DH, DhGroup.MODP_2048_256): "MODP-2048-256: SHOULD NOT (RFC 8247 3.4)",
}

_ALLOWED: Final[dict[int, dict[int, frozenset[int]]]] = {
    ProtocolId.IKE: {
        TransformType.ENCR: frozenset(
            {EncrId.AES_CBC, EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305}
        ),
        TransformType.PRF: frozenset(_PRF_HASH),
        TransformType.INTEG: frozenset(_INTEG),
        TransformType.DH: frozenset(SUPPORTED_DH_GROUPS),
    },
    ProtocolId.ESP: {
        TransformType.ENCR: frozenset(
            {EncrId.AES_CBC, EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305}
        ),
        TransformType.INTEG: frozenset({IntegId.NONE, *_INTEG}),
        TransformType.DH: frozenset({DhGroup.NONE, *SUPPORTED_DH_GROUPS}),
        TransformType.ESN: frozenset({EsnId.NO_ESN, EsnId.ESN}),
    },
    ProtocolId.AH: {
        TransformType.INTEG: frozenset(_INTEG),
        TransformType.DH: frozenset({DhGroup.NONE, *SUPPORTED_DH_GROUPS}),
        TransformType.ESN: frozenset({EsnId.NO_ESN, EsnId.ESN}),
    },
}


def forbidden_reason(
    protocol_id: int, transform_type: int, transform_id: int, key_length: int | None = None
) -> str | None:
    """Why a transform may not be offered or accepted for ``protocol_id``; None if it
    may.  Unknown and unimplemented values are refused too ("not supported")."""
    reason = _FORBIDDEN_REASONS.get((transform_type, transform_id))
    if reason is not None:
        return reason
    table = _ALLOWED.get(protocol_id)
    if table is None:
        return f"protocol {protocol_id} is not IKE, ESP or AH"
    allowed = table.get(transform_type)
    if allowed is None or transform_id not in allowed:
        return "not supported by ipsecd"
    if transform_type == TransformType.ENCR:
        if transform_id in (EncrId.AES_CBC, EncrId.AES_GCM_16):
            if key_length not in _AES_KEY_BITS:
                # RFC 7296 3.3.5 / RFC 5282: AES transforms carry a Key Length
                return f"AES needs a Key Length of 128, 192 or 256 bits, got {key_length}"
        elif key_length is not None:
            # RFC 7634: ENCR_CHACHA20_POLY1305 has no Key Length attribute
            return "ENCR_CHACHA20_POLY1305 must not carry a Key Length attribute"
    elif key_length is not None:
        return "only encryption transforms carry a Key Length attribute"
    return None


def transform_allowed(
    protocol_id: int, transform_type: int, transform_id: int, key_length: int | None = None
) -> bool:
    """True when the transform may be offered and accepted (see module doc)."""
    return forbidden_reason(protocol_id, transform_type, transform_id, key_length) is None


def check_transform(
    protocol_id: int, transform_type: int, transform_id: int, key_length: int | None = None
) -> None:
    """Raise IkeLocalError naming the algorithm and the reason when it is not allowed
    (use on local configuration; for a peer's proposal use transform_allowed)."""
    reason = forbidden_reason(protocol_id, transform_type, transform_id, key_length)
    if reason is not None:
        names: dict[int, type[IntEnum]] = {
            TransformType.ENCR: EncrId,
            TransformType.PRF: PrfId,
            TransformType.INTEG: IntegId,
            TransformType.DH: DhGroup,
            TransformType.ESN: EsnId,
        }
        enum_type = names.get(known(TransformType, transform_type))
        name = str(transform_id)
        if enum_type is not None:
            member = known(enum_type, transform_id)
            name = getattr(member, "name", name)
        proto = known(ProtocolId, protocol_id)
        raise IkeLocalError(
            f"{getattr(proto, 'name', proto)} transform {name} is not allowed: {reason}"
        )
