"""AUTH payload signatures (ipsecd.ike.signature): RFC 7427 method 14, the older
methods 1 and 9-11, scheme choice from the peer's SIGNATURE_HASH_ALGORITHMS."""

from __future__ import annotations

import functools

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ipsecd.ike.constants import AuthMethod, HashAlgorithm, NotifyType
from ipsecd.ike.signature import (
    OUR_HASHES,
    SCHEMES,
    NoCommonScheme,
    PrivateKey,
    Scheme,
    SignatureError,
    choose_scheme,
    decode_hash_algorithms,
    encode_hash_algorithms,
    sign,
    verify,
)

OCTETS = b"InitiatorSignedOctets" * 10
ALL = frozenset(OUR_HASHES)

# RFC 7427 appendix A: the AlgorithmIdentifier encodings, as the RFC prints them
RFC7427_A = {
    "rsa-pkcs1-sha256": "300d06092a864886f70d01010b0500",  # A.1.2
    "rsa-pkcs1-sha384": "300d06092a864886f70d01010c0500",  # A.1.3
    "rsa-pkcs1-sha512": "300d06092a864886f70d01010d0500",  # A.1.4
    "ecdsa-sha256": "300a06082a8648ce3d040302",  # A.3.2
    "ecdsa-sha384": "300a06082a8648ce3d040303",  # A.3.3
    "ecdsa-sha512": "300a06082a8648ce3d040304",  # A.3.4
    "rsa-pss-sha256": (  # A.4.3
        "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a"
        "06092a864886f70d010108300d06096086480165030402010500a203020120"
    ),
    "ed25519": "300506032b6570",  # RFC 8420 / RFC 8410
}


@functools.cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, bits)


@functools.cache
def ec_key(curve: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(
        {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[curve]
    )


def key_for(scheme: Scheme) -> PrivateKey:
    if scheme.kind.name == "RSA":
        return rsa_key()
    if scheme.kind.name == "ED25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec_key({"secp384r1": "p384", "secp521r1": "p521"}.get(scheme.curve, "p256"))


def by_name(name: str) -> Scheme:
    return next(s for s in SCHEMES if s.name == name)


@pytest.mark.parametrize("name", sorted(RFC7427_A))
def test_algorithm_identifiers_are_the_rfc_encodings(name: str) -> None:
    assert by_name(name).algorithm_id.hex() == RFC7427_A[name]


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_every_scheme_signs_and_verifies(scheme: Scheme) -> None:
    key = key_for(scheme)
    data = sign(key, scheme, OCTETS)
    assert verify(key.public_key(), scheme.method, data, OCTETS, allow_legacy=True) == scheme
    with pytest.raises(SignatureError, match="does not verify"):
        verify(key.public_key(), scheme.method, data, OCTETS + b"x", allow_legacy=True)
    if not scheme.legacy:
        assert data[0] == len(scheme.algorithm_id)
        assert data[1 : 1 + data[0]] == scheme.algorithm_id


def test_older_ecdsa_methods_are_r_and_s_of_the_curve_size() -> None:
    # RFC 4754 7: r | s, each exactly as long as the curve's order, no DER
    for name, size in (("p256", 32), ("p384", 48), ("p521", 66)):
        key = ec_key(name)
        scheme = choose_scheme(key, None, allow_legacy=True)
        sig = sign(key, scheme, OCTETS)
        assert len(sig) == 2 * size
        assert scheme.method == {32: 9, 48: 10, 66: 11}[size]


def test_ecdsa_method_14_is_der() -> None:
    key = ec_key("p256")
    data = sign(key, by_name("ecdsa-sha256"), OCTETS)
    r, s = decode_dss_signature(data[1 + data[0] :])  # parses: it is DER
    assert r > 0 and s > 0


def test_choice_follows_the_peers_hashes_and_the_key() -> None:
    assert choose_scheme(ec_key("p256"), ALL, allow_legacy=False).name == "ecdsa-sha256"
    assert choose_scheme(ec_key("p384"), ALL, allow_legacy=False).name == "ecdsa-sha384"
    assert choose_scheme(ec_key("p521"), ALL, allow_legacy=False).name == "ecdsa-sha512"
    # a P-256 key with a peer that knows SHA2-384 only
    only384 = frozenset({HashAlgorithm.SHA2_384})
    assert choose_scheme(ec_key("p256"), only384, allow_legacy=False).name == "ecdsa-sha384"
    assert choose_scheme(rsa_key(), ALL, allow_legacy=False).name == "rsa-pss-sha256"
    assert choose_scheme(rsa_key(), only384, allow_legacy=False).name == "rsa-pss-sha384"
    ed = ed25519.Ed25519PrivateKey.generate()
    assert choose_scheme(ed, ALL, allow_legacy=False).name == "ed25519"
    with pytest.raises(NoCommonScheme, match="Identity hash"):
        choose_scheme(ed, only384, allow_legacy=False)
    with pytest.raises(NoCommonScheme, match="SHA1"):
        choose_scheme(rsa_key(), frozenset({HashAlgorithm.SHA1}), allow_legacy=True)
    # no SIGNATURE_HASH_ALGORITHMS from the peer: older methods, only if allowed
    with pytest.raises(NoCommonScheme, match="does not allow them") as info:
        choose_scheme(rsa_key(), None, allow_legacy=False)
    assert info.value.notify == NotifyType.AUTHENTICATION_FAILED
    assert choose_scheme(rsa_key(), None, allow_legacy=True).method == AuthMethod.RSA_SIG
    with pytest.raises(NoCommonScheme, match="Ed25519"):
        choose_scheme(ed, None, allow_legacy=True)


def test_older_methods_are_refused_unless_allowed() -> None:
    key = rsa_key()
    legacy = by_name("rsa-pkcs1-sha1 (AUTH method 1)")
    data = sign(key, legacy, OCTETS)
    with pytest.raises(SignatureError, match="older method"):
        verify(key.public_key(), AuthMethod.RSA_SIG, data, OCTETS, allow_legacy=False)


def _ds(alg_id_hex: str, sig: bytes) -> bytes:
    alg = bytes.fromhex(alg_id_hex)
    return bytes((len(alg),)) + alg + sig


def test_sha1_is_never_accepted_in_method_14() -> None:
    key = rsa_key()
    sig = key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())
    data = _ds("300d06092a864886f70d0101050500", sig)  # sha1WithRSAEncryption (A.1.1)
    with pytest.raises(SignatureError, match=r"1\.2\.840\.113549\.1\.1\.5\b"):
        verify(key.public_key(), 14, data, OCTETS, allow_legacy=True)
    # RSASSA-PSS with empty parameters means SHA-1 (RFC 4055 defaults, RFC 7427 A.4.1)
    pss_sha1 = key.sign(
        OCTETS, padding.PSS(mgf=padding.MGF1(hashes.SHA1()), salt_length=20), hashes.SHA1()
    )
    with pytest.raises(SignatureError, match="never announced"):
        verify(
            key.public_key(),
            14,
            _ds("300d06092a864886f70d01010a3000", pss_sha1),
            OCTETS,
            allow_legacy=True,
        )


def test_hashes_we_did_not_announce_are_refused() -> None:
    key = ec_key("p384")
    data = sign(key, by_name("ecdsa-sha384"), OCTETS)
    with pytest.raises(SignatureError, match="did not announce"):
        verify(
            key.public_key(),
            14,
            data,
            OCTETS,
            allow_legacy=False,
            announced=(HashAlgorithm.SHA2_256,),
        )


def test_pss_with_other_parameter_encodings_verifies() -> None:
    # hash AlgorithmIdentifiers without NULL parameters, and a salt of 20: still PSS
    key = rsa_key()
    sig = key.sign(
        OCTETS, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20), hashes.SHA256()
    )
    sha256 = "300b0609608648016503040201"
    params = f"a00d{sha256}" + f"a11a301806092a864886f70d010108{sha256}" + "a203020114"
    inner = f"06092a864886f70d01010a30{len(bytes.fromhex(params)):02x}{params}"
    alg = f"30{len(bytes.fromhex(inner)):02x}{inner}"
    scheme = verify(key.public_key(), 14, _ds(alg, sig), OCTETS, allow_legacy=False)
    assert scheme.name == "rsa-pss-sha256"


def test_ecdsa_with_null_parameters_is_recognised_by_its_oid() -> None:
    key = ec_key("p256")
    sig = key.sign(OCTETS, ec.ECDSA(hashes.SHA256()))
    data = _ds("300c06082a8648ce3d0403020500", sig)
    assert verify(key.public_key(), 14, data, OCTETS, allow_legacy=False).name == "ecdsa-sha256"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x20abc", b"\x03\x30\x01\x06sig", b"\x02\x31\x00sig", b"\x05\x30\x03\x02\x01\x00sig"],
    ids=["empty", "short", "truncated-oid", "not-a-sequence", "no-oid"],
)
def test_malformed_auth_data_is_an_authentication_failure(data: bytes) -> None:
    with pytest.raises(SignatureError) as info:
        verify(ec_key("p256").public_key(), 14, data, OCTETS, allow_legacy=True)
    assert info.value.notify == NotifyType.AUTHENTICATION_FAILED


def test_key_type_must_match_the_scheme() -> None:
    data = sign(ec_key("p256"), by_name("ecdsa-sha256"), OCTETS)
    with pytest.raises(SignatureError, match="RSA key"):
        verify(rsa_key().public_key(), 14, data, OCTETS, allow_legacy=False)
    legacy = sign(ec_key("p256"), by_name("ecdsa-256-sha256 (AUTH method 9)"), OCTETS)
    with pytest.raises(SignatureError, match="needs a secp256r1 key"):
        verify(ec_key("p384").public_key(), 9, legacy, OCTETS, allow_legacy=True)
    with pytest.raises(SignatureError, match="not a signature method"):
        verify(ec_key("p256").public_key(), AuthMethod.PSK, b"x" * 32, OCTETS, allow_legacy=True)


def test_short_rsa_keys_are_refused() -> None:
    small = rsa.generate_private_key(65537, 1024)
    data = sign(small, by_name("rsa-pss-sha256"), OCTETS)
    with pytest.raises(SignatureError, match="1024 bits"):
        verify(small.public_key(), 14, data, OCTETS, allow_legacy=False)


def test_hash_algorithms_notify_data() -> None:
    data = encode_hash_algorithms(OUR_HASHES)
    assert data.hex() == "0002000300040005"
    assert decode_hash_algorithms(data) == ALL
    assert decode_hash_algorithms(data + b"\x01") == ALL  # trailing odd byte ignored
    assert decode_hash_algorithms(b"\x00\x09") == frozenset({9})  # unknown kept
