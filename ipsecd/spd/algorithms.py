"""Algorithm tables: setkey(8) names, key lengths, and what RFC 8221 / RFC 8247 allow.

``Verdict.status`` is ``ok``, ``warn`` (allowed but discouraged) or ``forbid`` (an
error: a MUST NOT, or a SHOULD NOT we refuse for new SAs).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AUTH",
    "COMP",
    "ENC",
    "IKE_DH",
    "IKE_ENC",
    "IKE_INTEG",
    "IKE_PRF",
    "AlgInfo",
    "key_bits_text",
]


@dataclass(frozen=True, slots=True)
class AlgInfo:
    name: str  # canonical name used in NodeConfig
    key_bits: tuple[int, ...] | range  # allowed key lengths in bits
    status: str = "ok"  # ok | warn | forbid
    reason: str = ""
    hint: str = ""
    aead: bool = False


_GOOD_ENC = "use aes-gcm-16 (AEAD, RFC 4106) or aes-cbc with hmac-sha2-256"
_GOOD_AUTH = "use hmac-sha2-256 (or hmac-sha2-512)"

# setkey -E names.  AES-CTR/GCM/GMAC and ChaCha20 keys carry a 32-bit salt/nonce.
ENC: dict[str, AlgInfo] = {
    # RFC 8221 5: ENCR_AES_CBC MUST, ENCR_AES_GCM_16 MUST, CHACHA20_POLY1305 SHOULD
    "aes-cbc": AlgInfo("aes-cbc", (128, 192, 256)),
    "rijndael-cbc": AlgInfo("aes-cbc", (128, 192, 256)),
    "aes-ctr": AlgInfo("aes-ctr", (160, 224, 288)),
    "aes-gcm-16": AlgInfo("aes-gcm-16", (160, 224, 288), aead=True),
    "aes-gmac": AlgInfo("aes-gmac", (160, 224, 288), aead=True),
    "chacha20-poly1305": AlgInfo("chacha20-poly1305", (288,), aead=True),
    # RFC 8221 5: ENCR_NULL MUST (integrity-only ESP); needs an authentication algorithm.
    "null": AlgInfo("null", range(0, 2049)),
    "camellia-cbc": AlgInfo(
        "camellia-cbc",
        (128, 192, 256),
        "warn",
        "camellia-cbc is not among the RFC 8221 recommendations",
        _GOOD_ENC,
    ),
    # RFC 8221 5: ENCR_DES MUST NOT, ENCR_DES_IV32/IV64 MUST NOT
    "des-cbc": AlgInfo(
        "des-cbc", (64,), "forbid", "DES is forbidden (RFC 8221 5: MUST NOT)", _GOOD_ENC
    ),
    "des-deriv": AlgInfo(
        "des-deriv", (64,), "forbid", "DES is forbidden (RFC 8221 5: MUST NOT)", _GOOD_ENC
    ),
    "des-32iv": AlgInfo(
        "des-32iv",
        (64,),
        "forbid",
        "DES with a 32-bit IV is forbidden (RFC 8221 5: MUST NOT)",
        _GOOD_ENC,
    ),
    # RFC 8221 5: ENCR_3DES SHOULD NOT -- refused for new SAs (64-bit block, Sweet32)
    "3des-cbc": AlgInfo(
        "3des-cbc",
        (192,),
        "forbid",
        "3DES must not be used for new SAs (RFC 8221 5: SHOULD NOT; 64-bit block)",
        _GOOD_ENC,
    ),
    "3des-deriv": AlgInfo(
        "3des-deriv",
        (192,),
        "forbid",
        "3DES must not be used for new SAs (RFC 8221 5: SHOULD NOT)",
        _GOOD_ENC,
    ),
    # RFC 8221 5: ENCR_BLOWFISH MUST NOT; CAST/Twofish are not in the list at all
    "blowfish-cbc": AlgInfo(
        "blowfish-cbc",
        range(40, 449),
        "forbid",
        "Blowfish is forbidden (RFC 8221 5: MUST NOT)",
        _GOOD_ENC,
    ),
    "cast128-cbc": AlgInfo(
        "cast128-cbc",
        range(40, 129),
        "forbid",
        "CAST-128 has a 64-bit block and is not allowed by RFC 8221",
        _GOOD_ENC,
    ),
    "twofish-cbc": AlgInfo(
        "twofish-cbc", range(0, 257), "forbid", "Twofish is not allowed by RFC 8221", _GOOD_ENC
    ),
    "simple": AlgInfo(
        "simple",
        (0,),
        "forbid",
        "'simple' is the obsolete spelling of null encryption from RFC 1827 ESP",
        "use -E null with -A hmac-sha2-256",
    ),
}

# setkey -A names (ESP integrity or AH).
AUTH: dict[str, AlgInfo] = {
    # RFC 8221 6: AUTH_HMAC_SHA2_256_128 MUST, AUTH_HMAC_SHA2_512_256 SHOULD
    "hmac-sha2-256": AlgInfo("hmac-sha2-256", (256,)),
    "hmac-sha256": AlgInfo("hmac-sha2-256", (256,)),
    "hmac-sha2-384": AlgInfo("hmac-sha2-384", (384,)),
    "hmac-sha384": AlgInfo("hmac-sha2-384", (384,)),
    "hmac-sha2-512": AlgInfo("hmac-sha2-512", (512,)),
    "hmac-sha512": AlgInfo("hmac-sha2-512", (512,)),
    # RFC 8221 6: AUTH_AES_XCBC_96 SHOULD (constrained devices)
    "aes-xcbc-mac": AlgInfo("aes-xcbc-mac", (128,)),
    # RFC 8221 6: AUTH_HMAC_SHA1_96 MUST- (still allowed, being phased out)
    "hmac-sha1": AlgInfo(
        "hmac-sha1",
        (160,),
        "warn",
        "hmac-sha1 is being phased out (RFC 8221 6: MUST-)",
        _GOOD_AUTH,
    ),
    "hmac-ripemd160": AlgInfo(
        "hmac-ripemd160",
        (160,),
        "forbid",
        "hmac-ripemd160 is not allowed by RFC 8221",
        _GOOD_AUTH,
    ),
    # RFC 8221 6: AUTH_HMAC_MD5_96 MUST NOT, AUTH_KPDK_MD5 MUST NOT
    "hmac-md5": AlgInfo(
        "hmac-md5",
        (128,),
        "forbid",
        "MD5 is forbidden (RFC 8221 6: AUTH_HMAC_MD5_96 MUST NOT)",
        _GOOD_AUTH,
    ),
    "keyed-md5": AlgInfo(
        "keyed-md5",
        (128,),
        "forbid",
        "keyed MD5 is forbidden (RFC 8221 6: AUTH_KPDK_MD5 MUST NOT)",
        _GOOD_AUTH,
    ),
    "keyed-sha1": AlgInfo(
        "keyed-sha1", (160,), "forbid", "keyed SHA-1 is not an RFC 8221 algorithm", _GOOD_AUTH
    ),
    "tcp-md5": AlgInfo(
        "tcp-md5",
        range(8, 641),
        "forbid",
        "tcp-md5 is the BSD TCP signature option, not IPsec",
        _GOOD_AUTH,
    ),
    # RFC 8221 6: AUTH_NONE only together with an AEAD cipher (checked by the caller)
    "null": AlgInfo("null", range(0, 2049)),
}

COMP: dict[str, AlgInfo] = {
    "deflate": AlgInfo("deflate", (0,)),
    "lzs": AlgInfo("lzs", (0,)),
    "oui": AlgInfo(
        "oui",
        (0,),
        "forbid",
        "the 'oui' compression algorithm is not supported on Linux",
        "use -C deflate",
    ),
}

_GOOD_IKE = "use e.g. aes256gcm16-prfsha256-ecp256 or aes256-sha256-modp3072"

# Proposal transform keywords (strongSwan-like spelling), IKE and ESP/AH.
# RFC 8247 2.1 (IKE encryption) / RFC 8221 5 (ESP).
IKE_ENC: dict[str, AlgInfo] = {
    "aes128": AlgInfo("aes128-cbc", (128,)),
    "aes192": AlgInfo("aes192-cbc", (192,)),
    "aes256": AlgInfo("aes256-cbc", (256,)),
    "aes128ctr": AlgInfo("aes128-ctr", (128,)),
    "aes256ctr": AlgInfo("aes256-ctr", (256,)),
    "aes128gcm16": AlgInfo("aes128-gcm16", (128,), aead=True),
    "aes256gcm16": AlgInfo("aes256-gcm16", (256,), aead=True),
    "aes128gcm": AlgInfo("aes128-gcm16", (128,), aead=True),
    "aes256gcm": AlgInfo("aes256-gcm16", (256,), aead=True),
    # RFC 8247 2.1 / RFC 8221 5: AES-GCM with an 8-octet ICV is only for constrained use
    "aes128gcm8": AlgInfo(
        "aes128-gcm8",
        (128,),
        "warn",
        "AES-GCM with an 8-octet ICV is discouraged (RFC 8221 5)",
        "use aes128gcm16",
        aead=True,
    ),
    "aes256gcm12": AlgInfo(
        "aes256-gcm12",
        (256,),
        "warn",
        "AES-GCM with a 12-octet ICV is discouraged (RFC 8221 5)",
        "use aes256gcm16",
        aead=True,
    ),
    "chacha20poly1305": AlgInfo("chacha20-poly1305", (256,), aead=True),
    "null": AlgInfo("null", (0,)),
    "3des": AlgInfo(
        "3des",
        (192,),
        "forbid",
        "3DES must not be used for new SAs (RFC 8221 5, RFC 8247 2.1)",
        _GOOD_IKE,
    ),
    "des": AlgInfo("des", (64,), "forbid", "DES is forbidden (RFC 8247 2.1: MUST NOT)", _GOOD_IKE),
    "blowfish": AlgInfo(
        "blowfish", (128,), "forbid", "Blowfish is forbidden (RFC 8221 5: MUST NOT)", _GOOD_IKE
    ),
}

# RFC 8247 2.3 (IKE integrity) / RFC 8221 6 (ESP/AH integrity)
IKE_INTEG: dict[str, AlgInfo] = {
    "sha256": AlgInfo("hmac-sha2-256", (256,)),
    "sha384": AlgInfo("hmac-sha2-384", (384,)),
    "sha512": AlgInfo("hmac-sha2-512", (512,)),
    "aesxcbc": AlgInfo("aes-xcbc-mac", (128,)),
    "sha1": AlgInfo(
        "hmac-sha1",
        (160,),
        "warn",
        "SHA-1 integrity is being phased out (RFC 8247 2.3: MUST-)",
        "use sha256",
    ),
    "md5": AlgInfo(
        "hmac-md5",
        (128,),
        "forbid",
        "MD5 is forbidden (RFC 8247 2.3: AUTH_HMAC_MD5_96 MUST NOT)",
        "use sha256",
    ),
}

# RFC 8247 2.2 (IKE PRF)
IKE_PRF: dict[str, AlgInfo] = {
    "prfsha256": AlgInfo("prf-hmac-sha2-256", (0,)),
    "prfsha384": AlgInfo("prf-hmac-sha2-384", (0,)),
    "prfsha512": AlgInfo("prf-hmac-sha2-512", (0,)),
    "prfaesxcbc": AlgInfo("prf-aes128-xcbc", (0,)),
    "prfsha1": AlgInfo(
        "prf-hmac-sha1",
        (0,),
        "warn",
        "PRF_HMAC_SHA1 is being phased out (RFC 8247 2.2: MUST-)",
        "use prfsha256",
    ),
    "prfmd5": AlgInfo(
        "prf-hmac-md5",
        (0,),
        "forbid",
        "PRF_HMAC_MD5 is forbidden (RFC 8247 2.2: MUST NOT)",
        "use prfsha256",
    ),
}

# RFC 8247 2.4 (Diffie-Hellman groups)
IKE_DH: dict[str, AlgInfo] = {
    "modp2048": AlgInfo("modp2048", (0,)),
    "modp3072": AlgInfo("modp3072", (0,)),
    "modp4096": AlgInfo("modp4096", (0,)),
    "modp6144": AlgInfo("modp6144", (0,)),
    "modp8192": AlgInfo("modp8192", (0,)),
    "ecp256": AlgInfo("ecp256", (0,)),
    "ecp384": AlgInfo("ecp384", (0,)),
    "ecp521": AlgInfo("ecp521", (0,)),
    "curve25519": AlgInfo("curve25519", (0,)),
    "x25519": AlgInfo("curve25519", (0,)),
    "curve448": AlgInfo("curve448", (0,)),
    "modp1024": AlgInfo(
        "modp1024", (0,), "warn", "MODP-1024 is too weak (RFC 8247 2.4: SHOULD NOT)", "use modp3072"
    ),
    "modp1536": AlgInfo(
        "modp1536", (0,), "warn", "MODP-1536 is too weak (RFC 8247 2.4: SHOULD NOT)", "use modp3072"
    ),
    "modp768": AlgInfo(
        "modp768", (0,), "forbid", "MODP-768 is forbidden (RFC 8247 2.4: MUST NOT)", "use modp3072"
    ),
}


def key_bits_text(bits: tuple[int, ...] | range) -> str:
    if isinstance(bits, range):
        return f"{bits.start} to {bits.stop - 1} bits"
    return "/".join(str(b) for b in bits) + " bits"
