"""ipsecd.xfrm.algorithms: IKEv2 transform IDs and setkey names → XFRM attributes."""

from __future__ import annotations

import pytest

from ipsecd import xfrm
from ipsecd.spd.algorithms import AUTH, COMP, ENC
from ipsecd.xfrm import Aead, Auth, Crypt, Proto, XfrmInvalid, XfrmUnsupported
from ipsecd.xfrm.algorithms import (
    AUTH_HMAC_SHA2_256_128,
    AUTH_HMAC_SHA2_384_192,
    AUTH_HMAC_SHA2_512_256,
    ENCR_AES_CBC,
    ENCR_AES_GCM_16,
    ENCR_CHACHA20_POLY1305,
    child_sa_algorithm_names,
    child_sa_algorithms,
    setkey_encryption,
    setkey_integrity,
)
from ipsecd.xfrm.model import aes_cbc, aes_gcm, chacha20_poly1305, hmac_sha2

# Recognisable key bytes: no error text may contain them in any spelling.
MARK = bytes.fromhex("c0ffee") * 30


def key(n: int) -> bytes:
    return MARK[:n]


def assert_no_key(text: str) -> None:
    for k in (MARK[:3].hex(), repr(MARK[:3])[2:-1], "c0ffee", "192, 255, 238"):
        assert k not in text, f"key material {k!r} in {text!r}"


INTEG = [
    (AUTH_HMAC_SHA2_256_128, "hmac(sha256)", 32, 128),
    (AUTH_HMAC_SHA2_384_192, "hmac(sha384)", 48, 192),
    (AUTH_HMAC_SHA2_512_256, "hmac(sha512)", 64, 256),
]


def test_iana_ids_are_the_registry_values() -> None:
    assert (ENCR_AES_CBC, ENCR_AES_GCM_16, ENCR_CHACHA20_POLY1305) == (12, 20, 28)
    assert (AUTH_HMAC_SHA2_256_128, AUTH_HMAC_SHA2_384_192, AUTH_HMAC_SHA2_512_256) == (
        12,
        13,
        14,
    )


def test_public_from_the_package() -> None:
    assert xfrm.child_sa_algorithms is child_sa_algorithms
    assert xfrm.child_sa_algorithm_names is child_sa_algorithm_names
    assert xfrm.setkey_encryption is setkey_encryption
    assert xfrm.setkey_integrity is setkey_integrity


# ------------------------------------------------------------------ CHILD SA: ESP AEAD


@pytest.mark.parametrize("bits", [128, 192, 256])
@pytest.mark.parametrize("integ", [None, 0])
def test_aes_gcm_16(bits: int, integ: int | None) -> None:
    k = key(bits // 8 + 4)  # RFC 4106 8.1: key + 4-byte salt
    got = child_sa_algorithms(Proto.ESP, 20, bits, integ, k, b"")
    assert got == (Aead("rfc4106(gcm(aes))", k, 128), None, None)
    assert got[0] == aes_gcm(k)  # the model helper spells it the same


def test_chacha20_poly1305() -> None:
    k = key(36)
    for bits in (None, 256):
        got = child_sa_algorithms(Proto.ESP, 28, bits, None, k, b"")
        assert got == (Aead("rfc7539esp(chacha20,poly1305)", k, 128), None, None)
        assert got[0] == chacha20_poly1305(k)


@pytest.mark.parametrize(
    ("encr", "bits", "size"),
    [(20, 128, 16), (20, 128, 21), (20, 256, 32), (28, None, 32), (28, None, 40)],
)
def test_aead_key_length_must_include_the_salt(encr: int, bits: int | None, size: int) -> None:
    with pytest.raises(XfrmInvalid, match=f"got {size}") as info:
        child_sa_algorithms(Proto.ESP, encr, bits, None, key(size), b"")
    assert "salt" in str(info.value)
    assert_no_key(str(info.value))


@pytest.mark.parametrize("bits", [None, 0, 64, 160, 512])
def test_aes_key_length_attribute_is_checked(bits: int | None) -> None:
    with pytest.raises(XfrmInvalid, match="128, 192 or 256"):
        child_sa_algorithms(Proto.ESP, 20, bits, None, key(20), b"")
    with pytest.raises(XfrmInvalid, match="128, 192 or 256"):
        child_sa_algorithms(Proto.ESP, 12, bits, 12, key(16), key(32))


def test_chacha_has_a_fixed_key_length() -> None:
    with pytest.raises(XfrmInvalid, match="fixed 256-bit key, got 128"):
        child_sa_algorithms(Proto.ESP, 28, 128, None, key(36), b"")


@pytest.mark.parametrize("encr", [20, 28])
def test_aead_takes_no_integrity(encr: int) -> None:
    bits = 256 if encr == 20 else None
    with pytest.raises(XfrmInvalid, match="AEAD and takes no integrity"):
        child_sa_algorithms(Proto.ESP, encr, bits, 12, key(36), key(32))
    with pytest.raises(XfrmInvalid, match="integrity key"):
        child_sa_algorithms(Proto.ESP, encr, bits, None, key(36), key(32))


# ------------------------------------------------------------------ CHILD SA: ESP CBC


@pytest.mark.parametrize("bits", [128, 192, 256])
@pytest.mark.parametrize(("integ", "kernel", "ikey", "trunc"), INTEG)
def test_aes_cbc_with_hmac_sha2(bits: int, integ: int, kernel: str, ikey: int, trunc: int) -> None:
    ek, ik = key(bits // 8), key(ikey)
    got = child_sa_algorithms(Proto.ESP, 12, bits, integ, ek, ik)
    assert got == (None, Crypt("cbc(aes)", ek), Auth(kernel, ik, trunc))
    assert got[1] == aes_cbc(ek) and got[2] == hmac_sha2(ikey * 8, ik)


def test_aes_cbc_key_must_match_its_length_attribute() -> None:
    with pytest.raises(XfrmInvalid, match="needs 32 key bytes, got 16") as info:
        child_sa_algorithms(Proto.ESP, 12, 256, 12, key(16), key(32))
    assert_no_key(str(info.value))


@pytest.mark.parametrize("integ", [None, 0])
def test_aes_cbc_needs_integrity(integ: int | None) -> None:
    with pytest.raises(XfrmInvalid, match="ENCR_AES_CBC needs an integrity transform"):
        child_sa_algorithms(Proto.ESP, 12, 128, integ, key(16), b"")


@pytest.mark.parametrize(("integ", "kernel", "ikey", "trunc"), INTEG)
def test_integrity_key_length(integ: int, kernel: str, ikey: int, trunc: int) -> None:
    with pytest.raises(XfrmInvalid, match=f"needs a {ikey * 8}-bit key") as info:
        child_sa_algorithms(Proto.ESP, 12, 128, integ, key(16), key(ikey - 1))
    assert_no_key(str(info.value))


def test_esp_needs_encryption() -> None:
    with pytest.raises(XfrmInvalid, match="ESP SA needs an encryption transform"):
        child_sa_algorithms(Proto.ESP, None, None, 12, b"", key(32))


# ------------------------------------------------------------------ CHILD SA: AH


@pytest.mark.parametrize(("integ", "kernel", "ikey", "trunc"), INTEG)
def test_ah(integ: int, kernel: str, ikey: int, trunc: int) -> None:
    ik = key(ikey)
    assert child_sa_algorithms(Proto.AH, None, None, integ, b"", ik) == (
        None,
        None,
        Auth(kernel, ik, trunc),
    )


def test_ah_takes_no_encryption_and_needs_integrity() -> None:
    with pytest.raises(XfrmInvalid, match="AH has no encryption, got ENCR 12"):
        child_sa_algorithms(Proto.AH, 12, 128, 12, key(16), key(32))
    with pytest.raises(XfrmInvalid, match="AH has no encryption"):
        child_sa_algorithms(Proto.AH, None, None, 12, key(16), key(32))
    with pytest.raises(XfrmInvalid, match="AH needs an integrity transform"):
        child_sa_algorithms(Proto.AH, None, None, None, b"", b"")


def test_other_protocols_are_unsupported() -> None:
    with pytest.raises(XfrmUnsupported, match="COMP"):
        child_sa_algorithms(Proto.COMP, None, None, None, b"", b"")


# ------------------------------------------------------------------ refused IDs


@pytest.mark.parametrize(
    ("encr", "text"),
    [
        (1, "ENCR_DES_IV64 is forbidden"),
        (2, "ENCR_DES is forbidden"),
        (3, "ENCR_3DES must not be used"),
        (7, "ENCR_BLOWFISH is forbidden"),
        (9, "ENCR_DES_IV32 is forbidden"),
        (11, "ENCR_NULL"),
        (13, "ENCR_AES_CTR"),
        (14, "ENCR_AES_CCM_8"),
        (18, "ENCR_AES_GCM_8"),
        (19, "ENCR_AES_GCM_12"),
        (21, "GMAC"),
        (23, "transform ID 23 is unknown"),
        (1024, "transform ID 1024 is unknown"),
    ],
)
def test_unknown_or_refused_encryption_names_the_id(encr: int, text: str) -> None:
    with pytest.raises(XfrmUnsupported, match=text) as info:
        child_sa_algorithms(Proto.ESP, encr, 128, 12, key(16), key(32))
    msg = str(info.value)
    assert f"transform {encr}:" in msg and "ENCR_AES_GCM_16 (20)" in msg  # what to use
    assert_no_key(msg)
    with pytest.raises(XfrmUnsupported, match=f"transform {encr}:"):
        child_sa_algorithm_names(encr, None)


@pytest.mark.parametrize(
    ("integ", "text"),
    [
        (1, "AUTH_HMAC_MD5_96 is forbidden"),
        (2, "AUTH_HMAC_SHA1_96"),
        (3, "AUTH_DES_MAC is forbidden"),
        (4, "AUTH_KPDK_MD5 is forbidden"),
        (5, "AUTH_AES_XCBC_96"),
        (9, "transform ID 9 is unknown"),
        (15, "transform ID 15 is unknown"),
    ],
)
def test_unknown_or_refused_integrity_names_the_id(integ: int, text: str) -> None:
    for proto, encr, bits, ek in ((Proto.ESP, 12, 128, key(16)), (Proto.AH, None, None, b"")):
        with pytest.raises(XfrmUnsupported, match=text) as info:
            child_sa_algorithms(proto, encr, bits, integ, ek, key(32))
        msg = str(info.value)
        assert f"transform {integ}:" in msg and "AUTH_HMAC_SHA2_256_128 (12)" in msg
        assert_no_key(msg)
    with pytest.raises(XfrmUnsupported, match=f"transform {integ}:"):
        child_sa_algorithm_names(12, integ)


# ------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("encr", "integ", "names"),
    [
        (20, None, ("rfc4106(gcm(aes))", None)),
        (20, 0, ("rfc4106(gcm(aes))", None)),
        (28, None, ("rfc7539esp(chacha20,poly1305)", None)),
        (12, 12, ("cbc(aes)", "hmac(sha256)")),
        (12, 13, ("cbc(aes)", "hmac(sha384)")),
        (12, 14, ("cbc(aes)", "hmac(sha512)")),
        (None, 12, (None, "hmac(sha256)")),
        (None, None, (None, None)),
    ],
)
def test_names_for_display(
    encr: int | None, integ: int | None, names: tuple[str | None, str | None]
) -> None:
    assert child_sa_algorithm_names(encr, integ) == names


# ------------------------------------------------------------------ setkey names


SETKEY_ENC = {
    "aes-cbc": Crypt("cbc(aes)", b"k"),
    "aes-ctr": Crypt("rfc3686(ctr(aes))", b"k"),
    "aes-gcm-16": Aead("rfc4106(gcm(aes))", b"k", 128),
    "aes-gmac": Aead("rfc4543(gcm(aes))", b"k", 128),
    "chacha20-poly1305": Aead("rfc7539esp(chacha20,poly1305)", b"k", 128),
    "camellia-cbc": Crypt("cbc(camellia)", b"k"),
    "null": Crypt("ecb(cipher_null)", b"k"),
}
SETKEY_AUTH = {
    "hmac-sha2-256": Auth("hmac(sha256)", b"k", 128),
    "hmac-sha2-384": Auth("hmac(sha384)", b"k", 192),
    "hmac-sha2-512": Auth("hmac(sha512)", b"k", 256),
    "hmac-sha1": Auth("hmac(sha1)", b"k", 96),
    "aes-xcbc-mac": Auth("xcbc(aes)", b"k", 96),
    "null": Auth("digest_null", b"k", 0),
}


@pytest.mark.parametrize("name", sorted(SETKEY_ENC))
def test_setkey_encryption(name: str) -> None:
    assert setkey_encryption(name, b"k") == SETKEY_ENC[name]


@pytest.mark.parametrize("name", sorted(SETKEY_AUTH))
def test_setkey_integrity(name: str) -> None:
    assert setkey_integrity(name, b"k") == SETKEY_AUTH[name]


def test_every_name_the_spd_accepts_is_mapped_and_aead_agrees() -> None:
    for info in ENC.values():
        if info.status != "forbid":
            got = setkey_encryption(info.name, b"")
            assert isinstance(got, Aead) == info.aead, info.name
    for info in AUTH.values():
        if info.status != "forbid":
            assert isinstance(setkey_integrity(info.name, b""), Auth)


def test_setkey_unknown_and_ipcomp_names() -> None:
    with pytest.raises(XfrmUnsupported, match="'des-cbc': no Linux XFRM encryption"):
        setkey_encryption("des-cbc", key(8))
    with pytest.raises(XfrmUnsupported, match="'aes-cbc': no Linux XFRM integrity"):
        setkey_integrity("aes-cbc", key(16))
    for info in (i for i in COMP.values() if i.status != "forbid"):
        with pytest.raises(XfrmUnsupported, match="IPComp SAs are not supported"):
            setkey_encryption(info.name, b"")


def test_setkey_errors_and_reprs_carry_no_key() -> None:
    with pytest.raises(XfrmUnsupported) as info:
        setkey_encryption("twofish-cbc", key(32))
    assert_no_key(str(info.value))
    assert_no_key(repr(setkey_encryption("aes-gcm-16", key(20))))
    assert_no_key(repr(setkey_integrity("hmac-sha2-256", key(32))))
