"""The one table of Linux (crypto API) algorithm names.

Project rule: kernel algorithm names live only in :mod:`ipsecd.xfrm`.  The IKE engine
speaks IANA transform IDs, the SPD speaks setkey(8) names; both become XFRM algorithm
attributes (:class:`~.model.Aead`, :class:`~.model.Crypt`, :class:`~.model.Auth`)
here and nowhere else.  (:mod:`.model`'s helpers ``aes_gcm``, ``aes_cbc``,
``hmac_sha2``, ``chacha20_poly1305`` build the same values; a unit test keeps them in
step with this table.)

* :func:`child_sa_algorithms`: a negotiated CHILD SA's transform IDs and keys →
  attributes; :func:`child_sa_algorithm_names` for status display.
* :func:`setkey_encryption` / :func:`setkey_integrity`: the canonical setkey names of
  :mod:`ipsecd.spd` (``aes-gcm-16``, ``hmac-sha2-256``, ...) → attributes.  Which
  names the SPD accepts, their key sizes and which are forbidden is the SPD's business
  (:mod:`ipsecd.spd.algorithms`); this module only knows how the kernel spells them.

Errors never contain key material: only IDs, names and lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

from .consts import Proto
from .errors import XfrmInvalid, XfrmUnsupported
from .model import AES_GCM, CHACHA20_POLY1305, Aead, Auth, Crypt

__all__ = [
    "AUTH_HMAC_SHA2_256_128",
    "AUTH_HMAC_SHA2_384_192",
    "AUTH_HMAC_SHA2_512_256",
    "ENCR_AES_CBC",
    "ENCR_AES_GCM_16",
    "ENCR_CHACHA20_POLY1305",
    "child_sa_algorithm_names",
    "child_sa_algorithms",
    "setkey_encryption",
    "setkey_integrity",
]

# ------------------------------------------------------------------ IKEv2 (IANA) IDs

#: IKEv2 Transform Type 1 (encryption) IDs ipsecd installs (RFC 7296 3.3.2).
ENCR_AES_CBC = 12  # RFC 3602
ENCR_AES_GCM_16 = 20  # RFC 4106
ENCR_CHACHA20_POLY1305 = 28  # RFC 7634
#: IKEv2 Transform Type 3 (integrity) IDs ipsecd installs (RFC 4868).
AUTH_NONE = 0
AUTH_HMAC_SHA2_256_128 = 12
AUTH_HMAC_SHA2_384_192 = 13
AUTH_HMAC_SHA2_512_256 = 14

_AES_KEY_BITS = (128, 192, 256)
_SALT = 4  # RFC 4106 8.1 and RFC 7634 2: the ESP key ends with a 4-octet salt


@dataclass(frozen=True, slots=True)
class _Encr:
    iana: str  # the registry's name, for messages
    kernel: str
    aead: bool
    icv_bits: int = 0


@dataclass(frozen=True, slots=True)
class _Integ:
    iana: str
    kernel: str
    key_bytes: int  # RFC 4868 2.1.1: the key is as long as the hash output
    trunc_bits: int  # RFC 4868 2.3: truncated to half the output


_ENCR: dict[int, _Encr] = {
    ENCR_AES_CBC: _Encr("ENCR_AES_CBC", "cbc(aes)", aead=False),
    # RFC 4106 8.1 / RFC 5282: the _16 variant carries a 16-octet (128-bit) ICV
    ENCR_AES_GCM_16: _Encr("ENCR_AES_GCM_16", AES_GCM, aead=True, icv_bits=128),
    # RFC 7634 2: 256-bit key, 16-octet tag
    ENCR_CHACHA20_POLY1305: _Encr(
        "ENCR_CHACHA20_POLY1305", CHACHA20_POLY1305, aead=True, icv_bits=128
    ),
}
_INTEG: dict[int, _Integ] = {
    AUTH_HMAC_SHA2_256_128: _Integ("AUTH_HMAC_SHA2_256_128", "hmac(sha256)", 32, 128),
    AUTH_HMAC_SHA2_384_192: _Integ("AUTH_HMAC_SHA2_384_192", "hmac(sha384)", 48, 192),
    AUTH_HMAC_SHA2_512_256: _Integ("AUTH_HMAC_SHA2_512_256", "hmac(sha512)", 64, 256),
}

# IDs that are registered but that ipsecd refuses, with the reason (named in errors).
# RFC 8221 5 (ESP encryption) and 6 (ESP/AH integrity) requirement levels.
_ENCR_REFUSED: dict[int, str] = {
    1: "ENCR_DES_IV64 is forbidden (RFC 8221 5: MUST NOT)",
    2: "ENCR_DES is forbidden (RFC 8221 5: MUST NOT)",
    3: "ENCR_3DES must not be used for new SAs (RFC 8221 5: SHOULD NOT; 64-bit block)",
    7: "ENCR_BLOWFISH is forbidden (RFC 8221 5: MUST NOT)",
    9: "ENCR_DES_IV32 is forbidden (RFC 8221 5: MUST NOT)",
    11: "ENCR_NULL (integrity-only ESP) is not installed for negotiated CHILD SAs",
    13: "ENCR_AES_CTR is not installed for negotiated CHILD SAs",
    14: "ENCR_AES_CCM_8 is not installed for negotiated CHILD SAs",
    15: "ENCR_AES_CCM_12 is not installed for negotiated CHILD SAs",
    16: "ENCR_AES_CCM_16 is not installed for negotiated CHILD SAs",
    18: "ENCR_AES_GCM_8 (8-octet ICV) is not installed for negotiated CHILD SAs",
    19: "ENCR_AES_GCM_12 (12-octet ICV) is not installed for negotiated CHILD SAs",
    21: "ENCR_NULL_AUTH_AES_GMAC is not installed for negotiated CHILD SAs",
}
_INTEG_REFUSED: dict[int, str] = {
    1: "AUTH_HMAC_MD5_96 is forbidden (RFC 8221 6: MUST NOT)",
    2: "AUTH_HMAC_SHA1_96 is not installed for negotiated CHILD SAs (RFC 8221 6: MUST-)",
    3: "AUTH_DES_MAC is forbidden (RFC 8221 6: MUST NOT)",
    4: "AUTH_KPDK_MD5 is forbidden (RFC 8221 6: MUST NOT)",
    5: "AUTH_AES_XCBC_96 is not installed for negotiated CHILD SAs",
}
_ENCR_HINT = (
    "negotiate ENCR_AES_GCM_16 (20), ENCR_CHACHA20_POLY1305 (28) or ENCR_AES_CBC (12) "
    "with AUTH_HMAC_SHA2_*"
)
_INTEG_HINT = (
    "negotiate AUTH_HMAC_SHA2_256_128 (12), AUTH_HMAC_SHA2_384_192 (13) or "
    "AUTH_HMAC_SHA2_512_256 (14)"
)


def _encr(encr_id: int) -> _Encr:
    e = _ENCR.get(encr_id)
    if e is None:
        why = _ENCR_REFUSED.get(encr_id, f"encryption transform ID {encr_id} is unknown")
        raise XfrmUnsupported(
            f"CHILD SA encryption transform {encr_id}: {why}; {_ENCR_HINT}",
            target=f"ENCR {encr_id}",
        )
    return e


def _integ(integ_id: int) -> _Integ:
    i = _INTEG.get(integ_id)
    if i is None:
        why = _INTEG_REFUSED.get(integ_id, f"integrity transform ID {integ_id} is unknown")
        raise XfrmUnsupported(
            f"CHILD SA integrity transform {integ_id}: {why}; {_INTEG_HINT}",
            target=f"INTEG {integ_id}",
        )
    return i


def _invalid(what: str) -> XfrmInvalid:
    return XfrmInvalid(f"CHILD SA algorithms: {what}", op="map CHILD SA algorithms")


def child_sa_algorithms(
    protocol: Proto,
    encr_id: int | None,
    encr_key_bits: int | None,
    integ_id: int | None,
    encr_key: bytes,
    integ_key: bytes,
) -> tuple[Aead | None, Crypt | None, Auth | None]:
    """XFRM attributes ``(aead, crypt, auth)`` of one direction of a negotiated CHILD SA.

    ``encr_id`` / ``integ_id`` are IKEv2 transform IDs (IANA Transform Types 1 and 3;
    ``integ_id`` None or 0 means none), ``encr_key_bits`` the Key Length attribute of
    AES (bits, without salt; None for ChaCha20), the keys as derived by RFC 7296 2.17
    (AEAD keys end with their 4-byte salt).

    ESP: an AEAD (AES-GCM-16, ChaCha20-Poly1305) alone, or AES-CBC with HMAC-SHA2.  AH:
    no encryption, HMAC-SHA2 only.  Unknown or refused IDs raise
    :class:`XfrmUnsupported` naming the ID; inconsistent arguments (wrong key length,
    AEAD with an integrity transform, ...) :class:`XfrmInvalid`.
    """
    integ = None if not integ_id else _integ(integ_id)
    if integ is not None and len(integ_key) != integ.key_bytes:
        raise _invalid(
            f"{integ.iana} needs a {integ.key_bytes * 8}-bit key (RFC 4868 2.1.1), "
            f"got {len(integ_key) * 8} bits"
        )
    if integ is None and integ_key:
        raise _invalid(f"an integrity key ({len(integ_key)} bytes) without an integrity ID")
    auth = None if integ is None else Auth(integ.kernel, integ_key, integ.trunc_bits)
    if protocol == Proto.AH:
        if encr_id is not None or encr_key:
            raise _invalid(f"AH has no encryption, got ENCR {encr_id}")
        if auth is None:
            raise _invalid(f"AH needs an integrity transform; {_INTEG_HINT}")
        return None, None, auth
    if protocol != Proto.ESP:
        raise XfrmUnsupported(
            f"CHILD SA protocol {protocol.name}: only ESP and AH SAs are negotiated",
            target=protocol.name,
        )
    if encr_id is None:
        raise _invalid(f"an ESP SA needs an encryption transform; {_ENCR_HINT}")
    encr = _encr(encr_id)
    if encr_id == ENCR_CHACHA20_POLY1305:
        # RFC 7634 2: a fixed 256-bit key; IKEv2 sends no Key Length attribute for it
        if encr_key_bits not in (None, 256):
            raise _invalid(f"{encr.iana} has a fixed 256-bit key, got {encr_key_bits}")
        bits = 256
    else:
        # RFC 7296 3.3.5: AES transforms carry the Key Length attribute
        if encr_key_bits not in _AES_KEY_BITS:
            raise _invalid(f"{encr.iana} key length must be 128, 192 or 256, got {encr_key_bits}")
        bits = encr_key_bits
    want = bits // 8 + (_SALT if encr.aead else 0)
    if len(encr_key) != want:
        salt = f" + {_SALT * 8}-bit salt" if encr.aead else ""
        raise _invalid(
            f"{encr.iana} with a {bits}-bit key{salt} needs {want} key bytes, got {len(encr_key)}"
        )
    if encr.aead:
        if auth is not None:
            # RFC 7296 3.3: combined-mode ciphers take no integrity algorithm
            raise _invalid(f"{encr.iana} is an AEAD and takes no integrity ({integ_id})")
        return Aead(encr.kernel, encr_key, encr.icv_bits), None, None
    if auth is None:
        # RFC 8221: ESP encryption without integrity protection is not offered
        raise _invalid(f"{encr.iana} needs an integrity transform; {_INTEG_HINT}")
    return None, Crypt(encr.kernel, encr_key), auth


def child_sa_algorithm_names(
    encr_id: int | None, integ_id: int | None
) -> tuple[str | None, str | None]:
    """Kernel names ``(encryption, integrity)`` for status display, e.g.
    ``("rfc4106(gcm(aes))", None)``; None where there is none.  Unknown or refused IDs
    raise :class:`XfrmUnsupported`, as in :func:`child_sa_algorithms`."""
    encr = None if encr_id is None else _encr(encr_id).kernel
    integ = None if not integ_id else _integ(integ_id).kernel
    return encr, integ


# ------------------------------------------------------------------ setkey names

#: Canonical setkey encryption name → (kernel name, AEAD ICV bits or 0 for a cipher).
#: RFC 4106 8.1 / RFC 4543 / RFC 7634: 16-octet ICVs; RFC 3686: CTR carries a nonce.
_SETKEY_ENC: dict[str, tuple[str, int]] = {
    "aes-cbc": ("cbc(aes)", 0),
    "aes-ctr": ("rfc3686(ctr(aes))", 0),
    "aes-gcm-16": (AES_GCM, 128),
    "aes-gmac": ("rfc4543(gcm(aes))", 128),
    "chacha20-poly1305": (CHACHA20_POLY1305, 128),
    "camellia-cbc": ("cbc(camellia)", 0),
    "null": ("ecb(cipher_null)", 0),  # RFC 8221 5: ENCR_NULL (integrity-only ESP)
}
#: Canonical setkey integrity name → (kernel name, truncation bits).
#: RFC 4868 2.3 (HMAC-SHA-256/384/512 truncated to half), RFC 2404 (SHA-1, 96),
#: RFC 3566 (AES-XCBC-MAC, 96).
_SETKEY_AUTH: dict[str, tuple[str, int]] = {
    "hmac-sha2-256": ("hmac(sha256)", 128),
    "hmac-sha2-384": ("hmac(sha384)", 192),
    "hmac-sha2-512": ("hmac(sha512)", 256),
    "hmac-sha1": ("hmac(sha1)", 96),
    "aes-xcbc-mac": ("xcbc(aes)", 96),
    "null": ("digest_null", 0),
}
_SETKEY_COMP = frozenset({"deflate", "lzs"})


def _setkey_unknown(name: str, kind: str, table: dict[str, tuple[str, int]]) -> XfrmUnsupported:
    if name in _SETKEY_COMP:
        why = "IPComp SAs are not supported by ipsecd's XFRM layer"
    else:
        why = f"no Linux XFRM {kind} algorithm for it (known: {', '.join(sorted(table))})"
    return XfrmUnsupported(f"setkey algorithm {name!r}: {why}", target=name)


def setkey_encryption(name: str, key: bytes) -> Aead | Crypt:
    """The XFRM attribute of a canonical setkey ``-E`` name (as in
    ``ipsecd.spd.ManualSa.enc``): :class:`Aead` for combined-mode ciphers (the key
    ends with its salt), else :class:`Crypt`."""
    got = _SETKEY_ENC.get(name)
    if got is None:
        raise _setkey_unknown(name, "encryption", _SETKEY_ENC)
    kernel, icv = got
    return Aead(kernel, key, icv) if icv else Crypt(kernel, key)


def setkey_integrity(name: str, key: bytes) -> Auth:
    """The XFRM attribute of a canonical setkey ``-A`` name (``null``: no integrity,
    ``digest_null``)."""
    got = _SETKEY_AUTH.get(name)
    if got is None:
        raise _setkey_unknown(name, "integrity", _SETKEY_AUTH)
    kernel, trunc = got
    return Auth(kernel, key, trunc)
