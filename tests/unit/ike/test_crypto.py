"""Known-answer and property tests of ipsecd.ike.crypto."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecd.ike import crypto
from ipsecd.ike.constants import DhGroup, EncrId, IntegId, NotifyType, PrfId
from ipsecd.ike.crypto import (
    SUPPORTED_DH_GROUPS,
    IkeSuite,
    SkCipher,
    derive_child_keys,
    derive_ike_keys,
    derive_rekeyed_ike_keys,
    dh_generate,
    dh_public_length,
    encr_keymat_len,
    integ_key_len,
    modp_prime,
    prf,
    prf_output_len,
    prf_plus,
)
from ipsecd.ike.errors import (
    IkeIntegrityError,
    IkeInvalidKeError,
    IkeLocalError,
    IkeParseError,
    IkeProtocolError,
)

# --------------------------------------------------------------------------- RFC 4231

_JEFE_DATA = b"what do ya want for nothing?"
_RFC4231 = [
    # (test case, key, data, prf, expected HMAC)
    (
        1,
        b"\x0b" * 20,
        b"Hi There",
        PrfId.HMAC_SHA2_256,
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (
        2,
        b"Jefe",
        _JEFE_DATA,
        PrfId.HMAC_SHA2_256,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        2,
        b"Jefe",
        _JEFE_DATA,
        PrfId.HMAC_SHA2_384,
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
        "8e2240ca5e69e2c78b3239ecfab21649",
    ),
    (
        2,
        b"Jefe",
        _JEFE_DATA,
        PrfId.HMAC_SHA2_512,
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    ),
    (
        6,
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        PrfId.HMAC_SHA2_256,
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
]


@pytest.mark.parametrize(("case", "key", "data", "prf_id", "expected"), _RFC4231)
def test_prf_rfc4231_vectors(
    case: int, key: bytes, data: bytes, prf_id: PrfId, expected: str
) -> None:
    assert prf(prf_id, key, data).hex() == expected, f"RFC 4231 test case {case}"


def test_integrity_truncation_rfc4868() -> None:
    # RFC 4868 2.6: HMAC-SHA-256-128 etc. are the leftmost half of the HMAC output
    key = bytes(range(32))
    cipher = SkCipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, bytes(16), key)
    full = hmac.digest(key, b"abc", "sha256")
    assert cipher._icv(b"abc") == full[:16]
    for integ, size in (
        (IntegId.HMAC_SHA2_256_128, 16),
        (IntegId.HMAC_SHA2_384_192, 24),
        (IntegId.HMAC_SHA2_512_256, 32),
    ):
        c = SkCipher(EncrId.AES_CBC, 256, integ, bytes(32), bytes(integ_key_len(integ)))
        assert c.icv_size == size
        assert integ_key_len(integ) == 2 * size


# --------------------------------------------------------------------------- prf+


def _reference_prf_plus(hash_name: str, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 2.13 written out literally, as an independent reference."""
    blocks = []
    previous = b""
    for counter in range(1, 256):
        previous = hmac.new(key, previous + seed + bytes([counter]), hash_name).digest()
        blocks.append(previous)
        if sum(len(b) for b in blocks) >= length:
            break
    return b"".join(blocks)[:length]


@pytest.mark.parametrize(
    ("prf_id", "hash_name"),
    [
        (PrfId.HMAC_SHA2_256, "sha256"),
        (PrfId.HMAC_SHA2_384, "sha384"),
        (PrfId.HMAC_SHA2_512, "sha512"),
    ],
)
@pytest.mark.parametrize("length", [1, 32, 33, 200, 1000])
def test_prf_plus_matches_reference(prf_id: PrfId, hash_name: str, length: int) -> None:
    key, seed = b"K" * 40, b"seed" * 9
    assert prf_plus(prf_id, key, seed, length) == _reference_prf_plus(hash_name, key, seed, length)


def test_prf_plus_first_block_is_prf_of_seed_and_one() -> None:
    out = prf_plus(PrfId.HMAC_SHA2_256, b"k", b"s", 64)
    t1 = hmac.digest(b"k", b"s\x01", "sha256")
    assert out[:32] == t1
    assert out[32:] == hmac.digest(b"k", t1 + b"s\x02", "sha256")


def test_prf_plus_limit_is_255_blocks() -> None:
    assert len(prf_plus(PrfId.HMAC_SHA2_256, b"k", b"s", 255 * 32)) == 255 * 32
    with pytest.raises(IkeLocalError, match="at most 8160 bytes"):
        prf_plus(PrfId.HMAC_SHA2_256, b"k", b"s", 255 * 32 + 1)


def test_unsupported_prf_is_a_local_error() -> None:
    with pytest.raises(IkeLocalError, match="unsupported PRF 2"):
        prf(PrfId.HMAC_SHA1, b"k", b"d")


# --------------------------------------------------------------------------- key exchange

_RFC5903 = {
    DhGroup.ECP_256: dict(
        i="c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433",
        gi="dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180"
        "5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3",
        r="c6ef9c5d78ae012a011164acb397ce2088685d8f06bf9be0b283ab46476bee53",
        gr="d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63"
        "56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab",
        girx="d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de",
    ),
    DhGroup.ECP_384: dict(
        i="099f3c7034d4a2c699884d73a375a67f7624ef7c6b3c0f160647b67414dce655"
        "e35b538041e649ee3faef896783ab194",
        gi="667842d7d180ac2cde6f74f37551f55755c7645c20ef73e31634fe72b4c55ee6"
        "de3ac808acb4bdb4c88732aee95f41aa9482ed1fc0eeb9cafc4984625ccfc23f"
        "65032149e0e144ada024181535a0f38eeb9fcff3c2c947dae69b4c634573a81c",
        r="41cb0779b4bdb85d47846725fbec3c9430fab46cc8dc5060855cc9bda0aa2942"
        "e0308312916b8ed2960e4bd55a7448fc",
        gr="e558dbef53eecde3d3fccfc1aea08a89a987475d12fd950d83cfa41732bc509d"
        "0d1ac43a0336def96fda41d0774a3571dcfbec7aacf3196472169e838430367f"
        "66eebe3c6e70c416dd5f0c68759dd1fff83fa40142209dff5eaad96db9e6386c",
        girx="11187331c279962d93d604243fd592cb9d0a926f422e47187521287e7156c5c4"
        "d603135569b9e9d09cf5d4a270f59746",
    ),
    DhGroup.ECP_521: dict(
        i="0037ade9319a89f4dabdb3ef411aaccca5123c61acab57b5393dce47608172a0"
        "95aa85a30fe1c2952c6771d937ba9777f5957b2639bab072462f68c27a57382d4a52",
        gi="0015417e84dbf28c0ad3c278713349dc7df153c897a1891bd98bab4357c9ecbe"
        "e1e3bf42e00b8e380aeae57c2d107564941885942af5a7f4601723c4195d176ced3e"
        "017cae20b6641d2eeb695786d8c946146239d099e18e1d5a514c739d7cb4a10a"
        "d8a788015ac405d7799dc75e7b7d5b6cf2261a6a7f1507438bf01beb6ca3926f9582",
        r="0145ba99a847af43793fdd0e872e7cdfa16be30fdc780f97bccc3f078380201e"
        "9c677d600b343757a3bdbf2a3163e4c2f869cca7458aa4a4effc311f5cb151685eb9",
        gr="00d0b3975ac4b799f5bea16d5e13e9af971d5e9b984c9f39728b5e5739735a21"
        "9b97c356436adc6e95bb0352f6be64a6c2912d4ef2d0433ced2b6171640012d9460f"
        "015c68226383956e3bd066e797b623c27ce0eac2f551a10c2c724d9852077b87"
        "220b6536c5c408a1d2aebb8e86d678ae49cb57091f4732296579ab44fcd17f0fc56a",
        girx="01144c7d79ae6956bc8edb8e7c787c4521cb086fa64407f97894e5e6b2d79b04"
        "d1427e73ca4baa240a34786859810c06b3c715a3a8cc3151f2bee417996d19f3ddea",
    ),
}


@pytest.mark.parametrize("group", sorted(_RFC5903))
def test_ecp_rfc5903_vectors(group: DhGroup) -> None:
    v = _RFC5903[group]
    ini = crypto._dh_from_private(group, bytes.fromhex(v["i"]))
    res = crypto._dh_from_private(group, bytes.fromhex(v["r"]))
    # RFC 5903 7: KE data is x || y with no 0x04 prefix
    assert ini.public.hex() == v["gi"]
    assert res.public.hex() == v["gr"]
    assert len(ini.public) == dh_public_length(group)
    # RFC 5903 7 / errata 9: the shared secret is the x coordinate only
    assert ini.shared_secret(res.public).hex() == v["girx"]
    assert res.shared_secret(ini.public).hex() == v["girx"]


def test_x25519_rfc7748_vector() -> None:
    # RFC 7748 6.1
    alice = crypto._dh_from_private(
        DhGroup.CURVE25519,
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
    )
    bob = crypto._dh_from_private(
        DhGroup.CURVE25519,
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
    )
    assert alice.public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob.public.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert alice.shared_secret(bob.public).hex() == shared
    assert bob.shared_secret(alice.public).hex() == shared


def _is_probable_prime(n: int) -> bool:
    if n % 2 == 0:
        return n == 2
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_modp_primes_match_rfc_text_and_are_safe_primes() -> None:
    # RFC 2409 6.1 group 1 (fully printed in RFC 7296 B.1): checks the pi computation
    g1 = modp_prime(768)
    assert f"{g1:x}".upper().endswith("F44C42E9A63A3620FFFFFFFFFFFFFFFF")
    # RFC 3526 3 (group 14) and 4 (group 15): leading and trailing words
    p14, p15 = modp_prime(2048), modp_prime(3072)
    assert p14.bit_length() == 2048 and p15.bit_length() == 3072
    assert f"{p14:X}".startswith("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1")
    assert f"{p14:X}".endswith("15728E5A8AACAA68FFFFFFFFFFFFFFFF")
    assert f"{p15:X}".endswith("4B82D120A93AD2CAFFFFFFFFFFFFFFFF")
    for p in (p14, p15):
        assert _is_probable_prime(p) and _is_probable_prime((p - 1) // 2)


@pytest.mark.parametrize("group", SUPPORTED_DH_GROUPS)
def test_dh_roundtrip_every_group(group: DhGroup) -> None:
    a, b = dh_generate(group), dh_generate(group)
    assert len(a.public) == dh_public_length(group)
    s = a.shared_secret(b.public)
    assert s == b.shared_secret(a.public)
    expected_len = {
        DhGroup.ECP_256: 32,
        DhGroup.ECP_384: 48,
        DhGroup.ECP_521: 66,
        DhGroup.CURVE25519: 32,
        DhGroup.MODP_2048: 256,
        DhGroup.MODP_3072: 384,
    }[group]
    assert len(s) == expected_len


@pytest.mark.parametrize("group", [DhGroup.MODP_2048, DhGroup.MODP_3072])
def test_modp_rejects_out_of_range_values(group: DhGroup) -> None:
    pair = dh_generate(group)
    n = dh_public_length(group)
    p = modp_prime(n * 8)
    for bad in (0, 1, p - 1, p, p + 1, (1 << (8 * n)) - 1):
        with pytest.raises(IkeInvalidKeError, match="out of range") as info:
            pair.shared_secret(bad.to_bytes(n, "big"))
        assert info.value.notify == NotifyType.INVALID_SYNTAX
    # RFC 6989 2: for safe-prime MODP groups the range check is the whole test; a value
    # just inside the range is accepted
    assert len(pair.shared_secret((p - 2).to_bytes(n, "big"))) == n


@pytest.mark.parametrize("group", SUPPORTED_DH_GROUPS)
def test_wrong_length_public_value_is_invalid_syntax(group: DhGroup) -> None:
    pair = dh_generate(group)
    with pytest.raises(IkeInvalidKeError, match="must be") as info:
        pair.shared_secret(pair.public + b"\x00")
    assert isinstance(info.value, IkeProtocolError)
    assert info.value.notify == 7  # INVALID_SYNTAX


@pytest.mark.parametrize("group", [DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.ECP_521])
def test_ecp_rejects_point_not_on_curve(group: DhGroup) -> None:
    pair = dh_generate(group)
    other = bytearray(dh_generate(group).public)
    other[-1] ^= 1  # y changed: (x, y') is not on the curve
    with pytest.raises(IkeInvalidKeError, match="not a point on the curve"):
        pair.shared_secret(bytes(other))
    with pytest.raises(IkeInvalidKeError):
        pair.shared_secret(bytes(len(other)))  # the point (0, 0)


def test_x25519_rejects_low_order_point() -> None:
    pair = dh_generate(DhGroup.CURVE25519)
    for low_order in (bytes(32), b"\x01" + bytes(31)):
        with pytest.raises(IkeInvalidKeError, match="all-zero"):
            pair.shared_secret(low_order)


def test_unsupported_group_is_local_error() -> None:
    with pytest.raises(IkeLocalError, match="MODP_1024"):
        dh_generate(DhGroup.MODP_1024)


# --------------------------------------------------------------------------- key derivation


def _hmac_prf(name: str, key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, name)


@pytest.mark.parametrize(
    ("suite", "lens"),
    [
        (
            IkeSuite(EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_384, IntegId.NONE, DhGroup.ECP_384),
            (48, 0, 36),
        ),
        (
            IkeSuite(
                EncrId.AES_CBC,
                256,
                PrfId.HMAC_SHA2_256,
                IntegId.HMAC_SHA2_256_128,
                DhGroup.MODP_2048,
            ),
            (32, 32, 32),
        ),
        (
            IkeSuite(
                EncrId.CHACHA20_POLY1305,
                None,
                PrfId.HMAC_SHA2_512,
                IntegId.NONE,
                DhGroup.CURVE25519,
            ),
            (64, 0, 36),
        ),
        (
            IkeSuite(
                EncrId.AES_CBC, 128, PrfId.HMAC_SHA2_512, IntegId.HMAC_SHA2_512_256, DhGroup.ECP_521
            ),
            (64, 64, 16),
        ),
    ],
)
def test_derive_ike_keys_layout(suite: IkeSuite, lens: tuple[int, int, int]) -> None:
    p_len, a_len, e_len = lens
    ni, nr, si, sr, g = b"\x01" * 32, b"\x02" * 32, b"I" * 8, b"R" * 8, b"\x99" * 48
    keys = derive_ike_keys(suite, g, ni, nr, si, sr)
    name = {5: "sha256", 6: "sha384", 7: "sha512"}[suite.prf_id]
    # RFC 7296 2.14, computed independently here
    skeyseed = _hmac_prf(name, ni + nr, g)
    total = 3 * p_len + 2 * a_len + 2 * e_len
    km = _reference_prf_plus(name, skeyseed, ni + nr + si + sr, total)
    parts = [p_len, a_len, a_len, e_len, e_len, p_len, p_len]
    expected = []
    off = 0
    for n in parts:
        expected.append(km[off : off + n])
        off += n
    got = [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr]
    assert got == expected
    assert encr_keymat_len(suite.encr_id, suite.encr_key_bits) == e_len
    assert prf_output_len(suite.prf_id) == p_len
    # the two directions' ciphers use different keys and interoperate with themselves
    ci, cr = keys.initiator_cipher(), keys.responder_cipher()
    sealed = ci.seal(b"prefix", b"inner payloads")
    assert ci.open(b"prefix", sealed) == b"inner payloads"
    with pytest.raises(IkeIntegrityError):
        cr.open(b"prefix", sealed)


def test_rekeyed_ike_keys_use_old_sk_d_and_old_prf() -> None:
    suite = IkeSuite(EncrId.AES_GCM_16, 128, PrfId.HMAC_SHA2_256, IntegId.NONE, DhGroup.ECP_256)
    old_d = b"D" * 64
    keys = derive_rekeyed_ike_keys(
        PrfId.HMAC_SHA2_512, old_d, suite, b"g" * 32, b"n" * 16, b"m" * 16, b"i" * 8, b"r" * 8
    )
    # RFC 7296 2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), old PRF
    skeyseed = hmac.digest(old_d, b"g" * 32 + b"n" * 16 + b"m" * 16, "sha512")
    km = _reference_prf_plus("sha256", skeyseed, b"n" * 16 + b"m" * 16 + b"i" * 8 + b"r" * 8, 32)
    assert keys.sk_d == km


def test_child_keys_order_and_pfs() -> None:
    sk_d, ni, nr = b"d" * 32, b"i" * 32, b"r" * 32
    keys = derive_child_keys(
        PrfId.HMAC_SHA2_256,
        sk_d,
        ni,
        nr,
        encr_id=EncrId.AES_CBC,
        encr_key_bits=128,
        integ_id=IntegId.HMAC_SHA2_256_128,
    )
    # RFC 7296 2.17: KEYMAT = prf+(SK_d, Ni | Nr); i->r first, encr before integ
    km = _reference_prf_plus("sha256", sk_d, ni + nr, 2 * (16 + 32))
    assert keys.encr_i == km[:16]
    assert keys.integ_i == km[16:48]
    assert keys.encr_r == km[48:64]
    assert keys.integ_r == km[64:96]
    pfs = derive_child_keys(
        PrfId.HMAC_SHA2_256,
        sk_d,
        ni,
        nr,
        encr_id=EncrId.AES_GCM_16,
        encr_key_bits=256,
        integ_id=IntegId.NONE,
        shared_secret=b"G" * 32,
    )
    km2 = _reference_prf_plus("sha256", sk_d, b"G" * 32 + ni + nr, 72)
    assert (pfs.encr_i, pfs.encr_r) == (km2[:36], km2[36:72])  # key + 4-byte salt
    assert pfs.integ_i == pfs.integ_r == b""
    ah = derive_child_keys(
        PrfId.HMAC_SHA2_256,
        sk_d,
        ni,
        nr,
        encr_id=None,
        encr_key_bits=None,
        integ_id=IntegId.HMAC_SHA2_512_256,
    )
    assert len(ah.integ_i) == len(ah.integ_r) == 64 and ah.encr_i == b""


def test_child_keys_reject_aead_with_integrity() -> None:
    with pytest.raises(IkeLocalError, match="AEAD"):
        derive_child_keys(
            PrfId.HMAC_SHA2_256,
            b"d" * 32,
            b"i" * 16,
            b"r" * 16,
            encr_id=EncrId.AES_GCM_16,
            encr_key_bits=128,
            integ_id=IntegId.HMAC_SHA2_256_128,
        )


# --------------------------------------------------------------------------- SK ciphers

_CIPHERS = [
    pytest.param(
        lambda: SkCipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, b"e" * 16, b"a" * 32),
        id="aes128-sha256",
    ),
    pytest.param(
        lambda: SkCipher(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192, b"e" * 32, b"a" * 48),
        id="aes256-sha384",
    ),
    pytest.param(
        lambda: SkCipher(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256, b"e" * 32, b"a" * 64),
        id="aes256-sha512",
    ),
    pytest.param(
        lambda: SkCipher(EncrId.AES_GCM_16, 128, IntegId.NONE, b"e" * 20, b""), id="aes128gcm16"
    ),
    pytest.param(
        lambda: SkCipher(EncrId.AES_GCM_16, 256, IntegId.NONE, b"e" * 36, b""), id="aes256gcm16"
    ),
    pytest.param(
        lambda: SkCipher(EncrId.CHACHA20_POLY1305, None, IntegId.NONE, b"e" * 36, b""),
        id="chacha20poly1305",
    ),
]


@pytest.mark.parametrize("make", _CIPHERS)
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100])
def test_sk_cipher_roundtrip_and_tamper(make: object, size: int) -> None:
    cipher: SkCipher = make()  # type: ignore[operator]
    plaintext = bytes(range(size))
    body = cipher.seal(b"hdr", plaintext)
    assert len(body) == cipher.sealed_length(size)
    assert cipher.open(b"hdr", body) == plaintext
    for i in (0, len(body) // 2, len(body) - 1):  # IV, ciphertext, ICV
        bad = bytearray(body)
        bad[i] ^= 0x80
        with pytest.raises(IkeIntegrityError):
            cipher.open(b"hdr", bytes(bad))
    with pytest.raises(IkeIntegrityError):
        cipher.open(b"hdX", body)  # prefix (AAD / ICV input) is covered
    with pytest.raises(IkeIntegrityError):
        cipher.open(b"hdr", body[:-1])


def test_chacha20_poly1305_rfc8439_aead_vector() -> None:
    # RFC 8439 2.8.2: salt (constant) 07000000, IV 4041424344454647 (RFC 7634 nonce layout)
    key = bytes(range(0x80, 0xA0))
    cipher = SkCipher(
        EncrId.CHACHA20_POLY1305, None, IntegId.NONE, key + bytes.fromhex("07000000"), b""
    )
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
        b"future, sunscreen would be it."
    )
    expected_ct = (
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
        "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
        "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
    )
    iv = bytes.fromhex("4041424344454647")
    nonce = bytes.fromhex("07000000") + iv
    assert cipher._aead().encrypt(nonce, plaintext, aad).hex() == (
        expected_ct + "1ae10b594f09e26a7e902ecbd0600691"
    )
    # through seal(): IV first, then the same keystream over plaintext | pad length 0
    body = cipher.seal(aad, plaintext, iv=iv)
    assert body[:8] == iv
    assert body[8 : 8 + len(plaintext)].hex() == expected_ct
    assert cipher.open(aad, body) == plaintext


def test_bad_pad_length_after_valid_icv_is_parse_error() -> None:
    cipher = SkCipher(EncrId.AES_GCM_16, 128, IntegId.NONE, b"k" * 20, b"")
    iv = b"\x00" * 8
    body = iv + cipher._aead().encrypt(b"k" * 4 + iv, b"ab\x05", b"p")
    with pytest.raises(IkeParseError, match="Pad Length 5"):
        cipher.open(b"p", body)


def test_sk_cipher_rejects_wrong_key_sizes() -> None:
    with pytest.raises(IkeLocalError, match="needs 20"):
        SkCipher(EncrId.AES_GCM_16, 128, IntegId.NONE, b"k" * 16, b"")
    with pytest.raises(IkeLocalError, match="integrity key"):
        SkCipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, b"k" * 16, b"a" * 16)
    with pytest.raises(IkeLocalError, match="AEAD"):
        SkCipher(EncrId.AES_GCM_16, 128, IntegId.HMAC_SHA2_256_128, b"k" * 20, b"a" * 32)


# --------------------------------------------------------------------------- PSK auth, NAT-D


def test_psk_auth_and_maced_id_rfc7296_2_15() -> None:
    psk, octets = b"secret", b"message|nonce|macedid"
    inner = hmac.digest(psk, b"Key Pad for IKEv2", "sha256")
    assert crypto.psk_auth_data(PrfId.HMAC_SHA2_256, psk, octets) == hmac.digest(
        inner, octets, "sha256"
    )
    assert crypto.maced_id(PrfId.HMAC_SHA2_384, b"p" * 48, b"\x02\x00\x00\x00a") == (
        hmac.digest(b"p" * 48, b"\x02\x00\x00\x00a", "sha384")
    )


def test_nat_detection_hash_rfc7296_2_23() -> None:
    got = crypto.nat_detection_hash(b"i" * 8, b"\x00" * 8, bytes([192, 0, 2, 1]), 500)
    assert got == hashlib.sha1(b"i" * 8 + b"\x00" * 8 + b"\xc0\x00\x02\x01\x01\xf4").digest()


# --------------------------------------------------------------------------- secrecy


def test_no_key_bytes_in_repr_or_errors() -> None:
    suite = IkeSuite(EncrId.AES_CBC, 256, PrfId.HMAC_SHA2_256, IntegId.HMAC_SHA2_256_128, 19)
    keys = derive_ike_keys(suite, b"\x42" * 32, b"\x43" * 32, b"\x44" * 32, b"i" * 8, b"r" * 8)
    child = derive_child_keys(
        PrfId.HMAC_SHA2_256,
        keys.sk_d,
        b"n" * 32,
        b"m" * 32,
        encr_id=EncrId.AES_GCM_16,
        encr_key_bits=256,
        integ_id=IntegId.NONE,
    )
    pair = dh_generate(DhGroup.ECP_256)
    secrets = [
        keys.sk_d,
        keys.sk_ai,
        keys.sk_ar,
        keys.sk_ei,
        keys.sk_er,
        keys.sk_pi,
        keys.sk_pr,
        child.encr_i,
        child.encr_r,
    ]
    texts = [repr(keys), str(keys), repr(child), repr(keys.initiator_cipher()), repr(pair)]
    # errors raised while holding keys
    cipher = keys.responder_cipher()
    try:
        cipher.open(b"x", b"\x00" * 64)
    except IkeIntegrityError as exc:
        texts.append(str(exc))
    try:
        SkCipher(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128, keys.sk_ei[:5], keys.sk_ai)
    except IkeLocalError as exc:
        texts.append(str(exc))
    for text in texts:
        for secret in secrets:
            for form in (secret.hex(), repr(secret)[2:-1], secret.hex().upper()):
                assert form[:16] not in text, f"key material leaked into {text!r}"
    assert "_private" not in repr(pair)


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("proto", "ttype", "tid", "bits"),
    [
        (1, 1, EncrId.DES, None),
        (1, 1, EncrId.DES3, None),
        (3, 1, EncrId.DES3, None),
        (1, 1, EncrId.NULL, None),
        (3, 1, EncrId.NULL, None),
        (1, 2, PrfId.HMAC_MD5, None),
        (1, 2, PrfId.HMAC_SHA1, None),
        (1, 3, IntegId.HMAC_MD5_96, None),
        (3, 3, IntegId.HMAC_SHA1_96, None),
        (1, 4, DhGroup.MODP_768, None),
        (1, 4, DhGroup.MODP_1024, None),
        (1, 4, DhGroup.MODP_1536, None),
        (1, 4, DhGroup.MODP_2048_224, None),
        (1, 1, EncrId.AES_CBC, None),  # AES without Key Length
        (1, 1, EncrId.AES_CBC, 64),
        (1, 1, EncrId.CHACHA20_POLY1305, 256),  # RFC 7634: no Key Length attribute
        (2, 1, EncrId.AES_GCM_16, 128),  # AH has no encryption
        (1, 1, 999, None),  # unknown
        (1, 5, 0, None),  # ESN is not an IKE transform
    ],
)
def test_policy_refuses(proto: int, ttype: int, tid: int, bits: int | None) -> None:
    assert not crypto.transform_allowed(proto, ttype, tid, bits)
    with pytest.raises(IkeLocalError, match="not allowed"):
        crypto.check_transform(proto, ttype, tid, bits)


@pytest.mark.parametrize(
    ("proto", "ttype", "tid", "bits"),
    [
        (1, 1, EncrId.AES_CBC, 128),
        (1, 1, EncrId.AES_CBC, 256),
        (1, 1, EncrId.AES_GCM_16, 256),
        (1, 1, EncrId.CHACHA20_POLY1305, None),
        (1, 2, PrfId.HMAC_SHA2_256, None),
        (1, 2, PrfId.HMAC_SHA2_512, None),
        (1, 3, IntegId.HMAC_SHA2_384_192, None),
        (1, 4, DhGroup.MODP_2048, None),
        (1, 4, DhGroup.CURVE25519, None),
        (3, 1, EncrId.AES_GCM_16, 128),
        (3, 3, IntegId.NONE, None),
        (3, 4, DhGroup.NONE, None),
        (3, 5, 1, None),
        (2, 3, IntegId.HMAC_SHA2_256_128, None),
    ],
)
def test_policy_allows(proto: int, ttype: int, tid: int, bits: int | None) -> None:
    assert crypto.forbidden_reason(proto, ttype, tid, bits) is None
    crypto.check_transform(proto, ttype, tid, bits)


def test_policy_reason_cites_rfc() -> None:
    reason = crypto.forbidden_reason(1, 4, DhGroup.MODP_1024)
    assert reason is not None and "RFC 8247" in reason
    with pytest.raises(IkeLocalError, match="IKE transform MODP_1024"):
        crypto.check_transform(1, 4, DhGroup.MODP_1024)


def test_suite_rejects_forbidden_or_inconsistent() -> None:
    with pytest.raises(IkeLocalError, match="HMAC_SHA1"):
        IkeSuite(EncrId.AES_CBC, 128, PrfId.HMAC_SHA1, IntegId.HMAC_SHA2_256_128, 14)
    with pytest.raises(IkeLocalError, match="AEAD"):
        IkeSuite(EncrId.AES_GCM_16, 128, PrfId.HMAC_SHA2_256, IntegId.HMAC_SHA2_256_128, 14)
    with pytest.raises(IkeLocalError, match="needs an integrity"):
        IkeSuite(EncrId.AES_CBC, 128, PrfId.HMAC_SHA2_256, IntegId.NONE, 14)


# --------------------------------------------------------------------------- encodings


def test_modp_shared_secret_is_padded_to_modulus_length() -> None:
    # RFC 7296 2.14: g^ir is represented with leading zeros to the modulus length.
    # Private values 2 and 3 give g^6 = 64: almost all leading zeros.
    a = crypto._dh_from_private(DhGroup.MODP_2048, b"\x02")
    b = crypto._dh_from_private(DhGroup.MODP_2048, b"\x03")
    assert a.public == (4).to_bytes(256, "big")  # RFC 7296 3.4: KE data padded as well
    assert a.shared_secret(b.public) == (64).to_bytes(256, "big")


def test_ecp_values_keep_leading_zero_bytes() -> None:
    b = crypto._dh_from_private(DhGroup.ECP_256, b"\x03")
    for x in range(2, 3000):
        a = crypto._dh_from_private(DhGroup.ECP_256, x.to_bytes(2, "big"))
        secret = a.shared_secret(b.public)
        if secret[0] == 0:
            # RFC 5903 7: fixed-length x coordinate, leading zeros kept
            assert len(secret) == 32 and secret == b.shared_secret(a.public)
            return
    pytest.fail("no shared secret with a leading zero byte among 3000 scalars")


@settings(max_examples=60, deadline=None, database=None)
@given(
    plaintext=st.binary(max_size=300),
    prefix=st.binary(max_size=60),
    which=st.integers(0, len(_CIPHERS) - 1),
)
def test_seal_open_property(plaintext: bytes, prefix: bytes, which: int) -> None:
    cipher: SkCipher = _CIPHERS[which].values[0]()  # type: ignore[operator]
    body = cipher.seal(prefix, plaintext)
    assert len(body) == cipher.sealed_length(len(plaintext))
    assert cipher.open(prefix, body) == plaintext


@settings(max_examples=60, deadline=None, database=None)
@given(
    key=st.binary(max_size=80),
    seed=st.binary(max_size=100),
    length=st.integers(0, 600),
    prf_id=st.sampled_from([PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512]),
)
def test_prf_plus_property(key: bytes, seed: bytes, length: int, prf_id: PrfId) -> None:
    name = {5: "sha256", 6: "sha384", 7: "sha512"}[prf_id]
    out = prf_plus(prf_id, key, seed, length)
    assert out == _reference_prf_plus(name, key, seed, length)
    # prefix property: a longer output starts with the shorter one
    assert prf_plus(prf_id, key, seed, length + 7)[:length] == out
