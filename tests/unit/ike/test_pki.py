"""Certificate validation (ipsecd.ike.pki): path building, RFC 4945 profile, CRLs,
identities, CERTREQ data, our credentials.

Every refusal is checked for its CertFailure and for a message that names the
certificate at fault by its subject."""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.ike.config import Identity
from ipsecd.ike.constants import IdType
from ipsecd.ike.errors import IkeLocalError, IkePeerError
from ipsecd.ike.pki import (
    MAX_INTERMEDIATES,
    CertFailure,
    CertificateError,
    LocalCredentials,
    TrustStore,
    check_identity,
    describe,
    id_matches,
    identity_of,
    load_pem_certificates,
    load_pem_crls,
)
from tests.support.pki import (
    DAY,
    NOW,
    Issued,
    ca,
    crl,
    end_entity,
    make_key,
    name,
    resign_legacy,
    write_key,
)

GOOD_KEYS = ["p256", "p384", "p521", "rsa2048", "rsa3072", "ed25519"]


@pytest.fixture(scope="module")
def root() -> Issued:
    return ca("Test Root CA")


@pytest.fixture(scope="module")
def inter(root: Issued) -> Issued:
    return ca("Test Intermediate CA", issuer=root)


def refused(
    store: TrustStore,
    ee: Issued | x509.Certificate,
    chain: list[x509.Certificate] | None = None,
    *,
    now: float = NOW,
) -> CertificateError:
    cert = ee.cert if isinstance(ee, Issued) else ee
    with pytest.raises(CertificateError) as info:
        store.validate(cert, chain or [], now)
    return info.value


def assert_names(err: CertificateError, cert: Issued | x509.Certificate) -> None:
    c = cert.cert if isinstance(cert, Issued) else cert
    assert c.subject.rfc4514_string() in err.message
    assert err.certificate == c


# --------------------------------------------------------------------------- good paths


@pytest.mark.parametrize("kind", GOOD_KEYS)
def test_direct_chain_of_each_key_type(kind: str) -> None:
    root = ca(f"Root {kind}", key=kind)
    ee = end_entity(root, f"peer-{kind}.test", key=kind)
    assert TrustStore((root.cert,)).validate(ee.cert, [], NOW) == root.cert


@pytest.mark.parametrize("kind", GOOD_KEYS)
def test_chain_with_intermediate_of_each_key_type(kind: str, root: Issued) -> None:
    inter = ca(f"Intermediate {kind}", issuer=root, key=kind)
    ee = end_entity(inter, f"leaf-{kind}.test", key=kind)
    store = TrustStore((root.cert,))
    assert store.validate(ee.cert, [inter.cert], NOW) == root.cert


def test_intermediates_in_any_order_with_unrelated_extras(root: Issued) -> None:
    i1 = ca("Level 1 CA", issuer=root)
    i2 = ca("Level 2 CA", issuer=i1)
    ee = end_entity(i2, "deep.test")
    stranger = ca("Unrelated CA")
    store = TrustStore((root.cert,))
    assert store.validate(ee.cert, [stranger.cert, i1.cert, ee.cert, i2.cert], NOW) == root.cert


def test_anchor_sent_by_the_peer_is_ignored_and_ours_used(root: Issued, inter: Issued) -> None:
    ee = end_entity(inter, "sends-root.test")
    store = TrustStore((root.cert,))
    assert store.validate(ee.cert, [root.cert, inter.cert], NOW) == root.cert


def test_names_in_other_string_types_still_chain() -> None:
    printable = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "Printable Root", _ASN1Type.PrintableString)]
    )
    utf8 = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "Printable Root", _ASN1Type.UTF8String)]
    )
    root = ca(subject=printable, key="p256")
    ee = end_entity(root, "typed.test")
    # the end entity names its issuer with a UTF8String: same name, other DER
    retyped = _reissue_with_issuer(ee, root, utf8)
    assert retyped.issuer.public_bytes() != root.cert.subject.public_bytes()
    assert TrustStore((root.cert,)).validate(retyped, [], NOW) == root.cert


def _reissue_with_issuer(ee: Issued, signer: Issued, issuer: x509.Name) -> x509.Certificate:
    c = ee.cert
    builder = (
        x509.CertificateBuilder()
        .subject_name(c.subject)
        .issuer_name(issuer)
        .public_key(c.public_key())  # type: ignore[arg-type]
        .serial_number(c.serial_number)
        .not_valid_before(c.not_valid_before_utc)
        .not_valid_after(c.not_valid_after_utc)
    )
    for ext in c.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(signer.key, hashes.SHA256())  # type: ignore[arg-type]


def test_pinned_self_signed_end_entity_must_be_byte_identical() -> None:
    pinned = ca("Pinned Peer", ca_flag=None, key_cert_sign=None)
    store = TrustStore((pinned.cert,))
    assert store.validate(pinned.cert, [], NOW) == pinned.cert
    # same name and key, but another certificate: not pinned
    twin = ca("Pinned Peer", key=pinned.key, ca_flag=None, key_cert_sign=None)
    assert twin.cert != pinned.cert
    other = ca("Self Signed Stranger", ca_flag=None, key_cert_sign=None)
    err = refused(store, other)
    assert err.failure is CertFailure.UNKNOWN_CA
    assert "self-signed" in err.message and "pin" in err.message
    assert_names(err, other)


def test_pinned_certificate_is_still_checked_for_expiry() -> None:
    pinned = ca("Old Pinned", ca_flag=None, key_cert_sign=None, not_after=NOW - DAY)
    err = refused(TrustStore((pinned.cert,)), pinned)
    assert err.failure is CertFailure.EXPIRED
    assert_names(err, pinned)


# --------------------------------------------------------------------------- validity


def test_expired_end_entity(root: Issued) -> None:
    ee = end_entity(root, "expired.test", not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    err = refused(TrustStore((root.cert,)), ee)
    assert err.failure is CertFailure.EXPIRED
    assert_names(err, ee)
    assert "renew" in err.message


def test_not_yet_valid_end_entity(root: Issued) -> None:
    ee = end_entity(root, "future.test", not_before=NOW + DAY, not_after=NOW + 10 * DAY)
    err = refused(TrustStore((root.cert,)), ee)
    assert err.failure is CertFailure.NOT_YET_VALID
    assert_names(err, ee)
    assert "clock" in err.message


def test_validity_bounds_are_inclusive(root: Issued) -> None:
    ee = end_entity(root, "edges.test", not_before=NOW - 10, not_after=NOW + 10)
    store = TrustStore((root.cert,))
    store.validate(ee.cert, [], NOW - 10)
    store.validate(ee.cert, [], NOW + 10)
    assert refused(store, ee, now=NOW + 11).failure is CertFailure.EXPIRED


def test_expired_intermediate(root: Issued) -> None:
    inter = ca("Expired Intermediate", issuer=root, not_after=NOW - DAY)
    ee = end_entity(inter, "under-expired.test")
    err = refused(TrustStore((root.cert,)), ee, [inter.cert])
    assert err.failure is CertFailure.EXPIRED
    assert_names(err, inter)


def test_expired_anchor() -> None:
    root = ca("Expired Root", not_before=NOW - 100 * DAY, not_after=NOW - DAY)
    ee = end_entity(root, "under-expired-root.test")
    err = refused(TrustStore((root.cert,)), ee)
    assert err.failure is CertFailure.EXPIRED
    assert_names(err, root)
    assert "trust anchor" in err.message


# --------------------------------------------------------------------------- trust


def test_unknown_ca(root: Issued) -> None:
    other_root = ca("Some Other Root")
    ee = end_entity(other_root, "stranger.test")
    err = refused(TrustStore((root.cert,)), ee)
    assert err.failure is CertFailure.UNKNOWN_CA
    assert_names(err, ee)
    assert "Some Other Root" in err.message


def test_missing_intermediate_is_unknown_ca(root: Issued, inter: Issued) -> None:
    ee = end_entity(inter, "no-chain.test")
    err = refused(TrustStore((root.cert,)), ee)
    assert err.failure is CertFailure.UNKNOWN_CA
    assert "intermediates" in err.message


def test_bad_signature_same_issuer_name_other_key(root: Issued) -> None:
    forger = make_key("p256", "forger")
    ee = end_entity(root, "forged.test", sign_with=forger)
    err = refused(TrustStore((root.cert,)), ee)
    assert err.failure is CertFailure.BAD_SIGNATURE
    assert_names(err, ee)


def test_bad_signature_on_intermediate(root: Issued) -> None:
    inter = ca("Forged Intermediate", issuer=root, sign_with=make_key("p256", "forger2"))
    ee = end_entity(inter, "under-forged.test")
    err = refused(TrustStore((root.cert,)), ee, [inter.cert])
    assert err.failure is CertFailure.BAD_SIGNATURE
    assert_names(err, inter)


def test_two_cas_with_the_same_name() -> None:
    a = ca("Shared Name CA", key=make_key("p256", "shared a"))
    b = ca("Shared Name CA", key=make_key("p384", "shared b"))
    ee_a = end_entity(a, "a.test", serial=77)
    ee_b = end_entity(b, "b.test", serial=77)
    store = TrustStore((a.cert, b.cert))
    assert store.validate(ee_a.cert, [], NOW) == a.cert
    assert store.validate(ee_b.cert, [], NOW) == b.cert
    # A's CRL revokes serial 77: only A's certificate, B's has the same serial
    revoked = store.with_crls([crl(a, [77])])
    assert refused(revoked, ee_a).failure is CertFailure.REVOKED
    assert revoked.validate(ee_b.cert, [], NOW) == b.cert
    # and an impostor of that name in the middle does not hide the real intermediate
    real = ca("Shared Intermediate", issuer=a)
    fake = ca("Shared Intermediate", issuer=b)
    leaf = end_entity(real, "leaf.test")
    assert TrustStore((a.cert,)).validate(leaf.cert, [fake.cert, real.cert], NOW) == a.cert


def test_ca_without_ca_flag(root: Issued) -> None:
    for flag in (False, None):
        inter = ca(f"Not A CA {flag}", issuer=root, ca_flag=flag)
        ee = end_entity(inter, "under-not-ca.test")
        err = refused(TrustStore((root.cert,)), ee, [inter.cert])
        assert err.failure is CertFailure.NOT_A_CA
        assert_names(err, inter)
        assert "cA=TRUE" in err.message


def test_ca_without_key_cert_sign(root: Issued) -> None:
    inter = ca("No Cert Sign CA", issuer=root, key_cert_sign=False)
    ee = end_entity(inter, "under-no-certsign.test")
    err = refused(TrustStore((root.cert,)), ee, [inter.cert])
    assert err.failure is CertFailure.KEY_USAGE
    assert_names(err, inter)


def test_path_len_constraint_exceeded() -> None:
    root = ca("PathLen Zero Root", path_len=0)
    inter = ca("Below PathLen Zero", issuer=root)
    ee = end_entity(inter, "too-deep.test")
    err = refused(TrustStore((root.cert,)), ee, [inter.cert])
    assert err.failure is CertFailure.PATH_TOO_LONG
    assert_names(err, root)
    assert "pathLenConstraint" in err.message
    # directly under it is fine
    assert TrustStore((root.cert,)).validate(end_entity(root, "ok.test").cert, [], NOW)


def test_path_len_one_allows_one_intermediate() -> None:
    root = ca("PathLen One Root", path_len=1)
    i1 = ca("PL1 Level 1", issuer=root)
    i2 = ca("PL1 Level 2", issuer=i1)
    store = TrustStore((root.cert,))
    assert store.validate(end_entity(i1, "one.test").cert, [i1.cert], NOW) == root.cert
    err = refused(store, end_entity(i2, "two.test"), [i1.cert, i2.cert])
    assert err.failure is CertFailure.PATH_TOO_LONG


def test_max_path(root: Issued) -> None:
    chain = [root]
    for n in range(3):
        chain.append(ca(f"Max Path Level {n}", issuer=chain[-1]))
    ee = end_entity(chain[-1], "max-path.test")
    certs = [c.cert for c in chain[1:]]
    assert TrustStore((root.cert,), max_path=3).validate(ee.cert, certs, NOW) == root.cert
    err = refused(TrustStore((root.cert,), max_path=2), ee, certs)
    assert err.failure is CertFailure.PATH_TOO_LONG
    assert "max_path" in err.message
    assert ee.subject in err.message


def test_too_many_certificates_sent(root: Issued) -> None:
    ee = end_entity(root, "chatty.test")
    junk = [ca(f"Junk {n}").cert for n in range(MAX_INTERMEDIATES + 1)]
    err = refused(TrustStore((root.cert,)), ee, junk)
    assert err.failure is CertFailure.MALFORMED
    assert_names(err, ee)


# --------------------------------------------------------------------------- profile


def test_key_usage_without_digital_signature(root: Issued) -> None:
    ee = end_entity(root, "encipher-only.test", digital_signature=False)
    err = refused(TrustStore((root.cert,)), ee)
    assert err.failure is CertFailure.KEY_USAGE
    assert_names(err, ee)
    assert "digitalSignature" in err.message


def test_key_usage_non_repudiation_or_absent_is_fine(root: Issued) -> None:
    ku = x509.KeyUsage(False, True, False, False, False, False, False, False, False)
    nr = end_entity(root, "nonrep.test", digital_signature=None, extra=[(ku, True)])
    bare = end_entity(root, "no-ku.test", digital_signature=None)
    store = TrustStore((root.cert,))
    store.validate(nr.cert, [], NOW)
    store.validate(bare.cert, [], NOW)


def test_eku_code_signing_only(root: Issued) -> None:
    ee = end_entity(root, "codesign.test", eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    err = refused(TrustStore((root.cert,)), ee)
    assert err.failure is CertFailure.EXTENDED_KEY_USAGE
    assert_names(err, ee)
    assert "codeSigning" in err.message


@pytest.mark.parametrize(
    "eku",
    [
        None,
        [x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")],
        [ExtendedKeyUsageOID.SERVER_AUTH],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE],
        [ExtendedKeyUsageOID.CODE_SIGNING, x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")],
    ],
    ids=["none", "ipsecIKE", "serverAuth", "clientAuth", "any", "codeSigning+ipsecIKE"],
)
def test_eku_accepted(root: Issued, eku: list[x509.ObjectIdentifier] | None) -> None:
    ee = end_entity(root, "eku.test", eku=eku)
    TrustStore((root.cert,)).validate(ee.cert, [], NOW)


def test_unknown_critical_extension(root: Issued) -> None:
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    ee = end_entity(root, "critical.test", extra=[(odd, True)])
    err = refused(TrustStore((root.cert,)), ee)
    assert err.failure is CertFailure.MALFORMED
    assert_names(err, ee)
    assert "1.3.6.1.4.1.99999.1" in err.message
    fine = end_entity(root, "noncritical.test", extra=[(odd, False)])
    TrustStore((root.cert,)).validate(fine.cert, [], NOW)


@pytest.mark.parametrize("critical", [True, False])
def test_name_constraints_are_refused_not_ignored(root: Issued, critical: bool) -> None:
    nc = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
    )
    inter = ca(f"Constrained CA {critical}", issuer=root, extra=[(nc, critical)])
    ee = end_entity(inter, "host.example.com", dns=("host.example.com",))
    err = refused(TrustStore((root.cert,)), ee, [inter.cert])
    assert err.failure is CertFailure.MALFORMED
    assert_names(err, inter)
    assert "nameConstraints" in err.message


def test_rsa_1024_end_entity() -> None:
    root = ca("RSA Root", key="rsa2048")
    ee = end_entity(root, "rsa1024.test", key="rsa1024")
    err = refused(TrustStore((root.cert,)), ee)
    assert err.failure is CertFailure.WEAK_KEY
    assert_names(err, ee)
    assert "1024-bit" in err.message


def test_rsa_1024_intermediate(root: Issued) -> None:
    inter = ca("Weak Intermediate", issuer=root, key="rsa1024")
    ee = end_entity(inter, "under-weak.test")
    err = refused(TrustStore((root.cert,)), ee, [inter.cert])
    assert err.failure is CertFailure.WEAK_KEY
    assert_names(err, inter)


def test_small_curve_and_dsa(root: Issued) -> None:
    p224 = end_entity(root, "p224.test", key="p224")
    err = refused(TrustStore((root.cert,)), p224)
    assert err.failure is CertFailure.WEAK_KEY
    assert_names(err, p224)
    dsa_ee = end_entity(root, "dsa.test", key="dsa")
    err = refused(TrustStore((root.cert,)), dsa_ee)
    assert err.failure is CertFailure.UNSUPPORTED_KEY
    assert_names(err, dsa_ee)


@pytest.mark.parametrize("legacy", ["sha1", "md5"])
def test_sha1_or_md5_signed_end_entity(legacy: str) -> None:
    root = ca("RSA Legacy Root", key="rsa2048")
    ee = end_entity(root, f"{legacy}.test")
    old = resign_legacy(ee.cert, root.key, legacy)  # type: ignore[arg-type]
    assert old.signature_hash_algorithm is not None
    assert old.signature_hash_algorithm.name == legacy
    err = refused(TrustStore((root.cert,)), old)
    assert err.failure is CertFailure.BAD_SIGNATURE
    assert_names(err, old)
    assert ("SHA-1" if legacy == "sha1" else "MD5") in err.message


def test_sha1_self_signature_of_the_anchor_is_fine() -> None:
    root = ca("SHA1 Self-Signed Root", key="rsa2048")
    old_root = resign_legacy(root.cert, root.key, "sha1")  # type: ignore[arg-type]
    ee = end_entity(root, "under-sha1-root.test")
    assert TrustStore((old_root,)).validate(ee.cert, [], NOW) == old_root


# --------------------------------------------------------------------------- revocation


def test_revoked_end_entity(root: Issued) -> None:
    ee = end_entity(root, "revoked.test")
    entry = (ee.cert.serial_number, NOW - 3 * DAY, x509.ReasonFlags.key_compromise)
    store = TrustStore((root.cert,), crls=(crl(root, [entry]),))
    err = refused(store, ee)
    assert err.failure is CertFailure.REVOKED
    assert_names(err, ee)
    assert describe(ee.cert).split("serial ")[1].rstrip(")") in err.message
    assert "2025-06-12" in err.message and "key_compromise" in err.message


def test_revoked_intermediate(root: Issued) -> None:
    inter = ca("Revoked Intermediate", issuer=root)
    ee = end_entity(inter, "under-revoked.test")
    store = TrustStore((root.cert,), crls=(crl(root, [inter.cert.serial_number]),))
    err = refused(store, ee, [inter.cert])
    assert err.failure is CertFailure.REVOKED
    assert_names(err, inter)


def test_crl_of_an_intermediate_revokes_its_end_entity(root: Issued, inter: Issued) -> None:
    ee = end_entity(inter, "revoked-by-inter.test")
    store = TrustStore((root.cert,), crls=(crl(inter, [ee.cert.serial_number]),))
    assert refused(store, ee, [inter.cert]).failure is CertFailure.REVOKED


def test_other_serials_and_missing_crls_are_not_revoked(root: Issued) -> None:
    ee = end_entity(root, "fine.test")
    store = TrustStore((root.cert,), crls=(crl(root, [ee.cert.serial_number + 1]),))
    assert store.validate(ee.cert, [], NOW) == root.cert
    assert TrustStore((root.cert,)).validate(ee.cert, [], NOW) == root.cert


def test_crl_with_bad_signature_is_ignored(root: Issued, inter: Issued) -> None:
    ee = end_entity(root, "forged-crl.test")
    forged = crl(root, [ee.cert.serial_number], sign_with=make_key("p256", "crl forger"))
    store = TrustStore((root.cert,), crls=(forged,))
    assert store.validate(ee.cert, [], NOW) == root.cert
    problems = store.crl_problems(NOW)
    assert len(problems) == 1 and "does not verify" in problems[0]
    # a forged CRL in an intermediate's name shows up once a validation met it
    leaf = end_entity(inter, "forged-inter-crl.test")
    forged2 = crl(inter, [leaf.cert.serial_number], sign_with=make_key("p256", "crl forger"))
    store2 = TrustStore((root.cert,), crls=(forged2,))
    assert store2.crl_problems(NOW) == ()
    assert store2.validate(leaf.cert, [inter.cert], NOW) == root.cert
    (problem,) = store2.crl_problems(NOW)
    assert inter.subject in problem and "does not verify" in problem


def test_stale_crl_lenient_is_used_and_logged_once(
    root: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    ee = end_entity(root, "stale-ok.test")
    stale = crl(root, [12345], last_update=NOW - 20 * DAY, next_update=NOW - 10 * DAY)
    store = TrustStore((root.cert,), crls=(stale,))
    with caplog.at_level(logging.WARNING, logger="ipsecd.ike.pki"):
        assert store.validate(ee.cert, [], NOW) == root.cert
        assert store.validate(ee.cert, [], NOW) == root.cert
    warnings = [r for r in caplog.records if "stale" in r.getMessage()]
    assert len(warnings) == 1
    assert any("stale" in p and "still used" in p for p in store.crl_problems(NOW))
    # a stale CRL still revokes
    revoked = end_entity(root, "stale-revoked.test")
    old = crl(
        root, [revoked.cert.serial_number], last_update=NOW - 20 * DAY, next_update=NOW - 10 * DAY
    )
    store = store.with_crls([old])
    assert refused(store, revoked).failure is CertFailure.REVOKED


def test_stale_crl_strict(root: Issued) -> None:
    ee = end_entity(root, "stale-strict.test")
    stale = crl(root, [], last_update=NOW - 20 * DAY, next_update=NOW - 10 * DAY)
    store = TrustStore((root.cert,), crls=(stale,), strict_crl=True)
    err = refused(store, ee)
    assert err.failure is CertFailure.CRL_STALE
    assert_names(err, ee)
    assert "fresh CRL" in err.message
    # a fresh CRL next to the stale one is enough
    fresh = crl(root, [], number=2)
    assert store.with_crls([stale, fresh]).validate(ee.cert, [], NOW) == root.cert


def test_crl_not_yet_valid_is_ignored(root: Issued) -> None:
    ee = end_entity(root, "future-crl.test")
    future = crl(root, [ee.cert.serial_number], last_update=NOW + DAY, next_update=NOW + 9 * DAY)
    store = TrustStore((root.cert,), crls=(future,))
    assert store.validate(ee.cert, [], NOW) == root.cert
    assert any("not valid before" in p for p in store.crl_problems(NOW))


def test_with_crls_keeps_the_anchors(root: Issued) -> None:
    store = TrustStore((root.cert,), max_path=2, strict_crl=True)
    new = store.with_crls([crl(root, [1])])
    assert new.anchors == store.anchors and new.max_path == 2 and new.strict_crl
    assert len(new.crls) == 1 and store.crls == ()


# --------------------------------------------------------------------------- CERTREQ


def test_certreq_data_is_sha1_of_spki_and_anchors_for_round_trips() -> None:
    a, b, c = ca("CR Root A"), ca("CR Root B", key="rsa2048"), ca("CR Root C", key="ed25519")
    store = TrustStore((a.cert, b.cert, c.cert))
    data = store.certreq_data()

    def spki_sha1(cert: x509.Certificate) -> bytes:
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha1(spki).digest()

    assert data == b"".join(spki_sha1(x.cert) for x in (a, b, c))
    assert store.anchors_for(data) == (a.cert, b.cert, c.cert)
    unknown = hashlib.sha1(b"no such key").digest()
    assert store.anchors_for(unknown + spki_sha1(c.cert) + spki_sha1(a.cert)) == (c.cert, a.cert)
    assert store.anchors_for(data + b"\x00") == ()
    assert store.anchors_for(data[:19]) == ()
    assert store.anchors_for(b"") == ()


def test_certreq_data_names_each_key_once() -> None:
    key = make_key("p256", "reissued root")
    old = ca("Reissued Root", key=key, not_before=NOW - 900 * DAY, not_after=NOW + DAY)
    new = ca("Reissued Root", key=key)
    store = TrustStore((old.cert, new.cert))
    assert len(store.certreq_data()) == 20
    assert store.anchors_for(store.certreq_data()) == (old.cert, new.cert)


# --------------------------------------------------------------------------- identities


@pytest.fixture(scope="module")
def named(root: Issued) -> Issued:
    return end_entity(
        root,
        "named.test",
        dns=("Named.Test", "*.wild.test"),
        ips=("192.0.2.7", "fd00::7"),
        emails=("Alice@Example.TEST",),
    )


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        (Identity.ip("192.0.2.7"), True),
        (Identity.ip("192.0.2.8"), False),
        (Identity.ip("fd00::7"), True),
        (Identity.ip("fd00::8"), False),
        (Identity.fqdn("named.test"), True),
        (Identity.fqdn("NAMED.TEST"), True),
        (Identity.fqdn("other.test"), False),
        (Identity.fqdn("host.wild.test"), False),  # no wildcard expansion
        (Identity.fqdn("*.wild.test"), True),  # a literal match
        (Identity.rfc822("Alice@example.test"), True),  # domain case ignored
        (Identity.rfc822("alice@example.test"), False),  # local part case kept
        (Identity.rfc822("bob@example.test"), False),
        (Identity.parse("dn:CN=named.test,O=ipsecd tests"), True),
        (Identity.parse("dn:CN=other.test,O=ipsecd tests"), False),
        (Identity.parse("dn:CN=NAMED.TEST,O=ipsecd tests"), False),  # case counts
        (Identity.key_id(b"named.test"), False),
        (Identity(IdType.DER_ASN1_GN, b"\x30\x00"), False),
    ],
    ids=str,
)
def test_id_matches(named: Issued, identity: Identity, expected: bool) -> None:
    assert id_matches(named.cert, identity) is expected
    if expected:
        check_identity(named.cert, identity)
    else:
        with pytest.raises(CertificateError) as info:
            check_identity(named.cert, identity)
        assert info.value.failure is CertFailure.ID_MISMATCH
        assert_names(info.value, named)
        assert "fqdn:Named.Test" in info.value.message


def test_fqdn_and_address_ids_do_not_match_the_subject_cn(root: Issued) -> None:
    ee = end_entity(root, "cn-only.test")  # no subjectAltName at all
    assert not id_matches(ee.cert, Identity.fqdn("cn-only.test"))
    assert id_matches(ee.cert, identity_of(ee.cert))


def test_dn_matches_der_and_parsed_equal_names(root: Issued) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Typed", _ASN1Type.PrintableString),
            x509.NameAttribute(NameOID.COMMON_NAME, "typed.test", _ASN1Type.PrintableString),
        ]
    )
    ee = end_entity(root, "typed.test", subject=subject)
    ident = identity_of(ee.cert)
    assert ident.type == IdType.DER_ASN1_DN and ident.data == subject.public_bytes()
    parsed = Identity.parse("dn:CN=typed.test,O=Typed,C=CH")  # UTF8String values
    assert parsed.data != ident.data
    assert id_matches(ee.cert, parsed) and id_matches(ee.cert, ident)
    # RDN order counts
    assert not id_matches(ee.cert, Identity.parse("dn:C=CH,O=Typed,CN=typed.test"))
    assert str(ident) == "dn:CN=typed.test,O=Typed,C=CH"


def test_empty_subject_matches_no_dn(root: Issued) -> None:
    ee = end_entity(root, "x", subject=x509.Name([]), dns=("empty-subject.test",))
    assert not id_matches(ee.cert, Identity(IdType.DER_ASN1_DN, b"\x30\x00"))
    assert id_matches(ee.cert, Identity.fqdn("empty-subject.test"))
    with pytest.raises(IkeLocalError, match="empty subject"):
        identity_of(ee.cert)


def test_identity_parse_and_str_round_trip() -> None:
    for text in ("dn:CN=host,O=Example Org", "email:user@example.org"):
        ident = Identity.parse(text)
        assert str(ident) == text
        assert Identity.parse(str(ident)) == ident
    assert Identity.parse("email:user@example.org").type == IdType.RFC822_ADDR
    assert Identity.dn(name("host")).type == IdType.DER_ASN1_DN
    for bad in ("dn:not a dn", "email:nobody", "email:@x", "dn:"):
        with pytest.raises(IkeLocalError):
            Identity.parse(bad)


# --------------------------------------------------------------------------- our credentials


def test_local_credentials_key_mismatch_names_the_certificate(root: Issued) -> None:
    ee = end_entity(root, "mine.test")
    wrong = make_key("p256", "not mine")
    with pytest.raises(IkeLocalError) as info:
        LocalCredentials((ee.cert,), wrong)  # type: ignore[arg-type]
    assert ee.subject in str(info.value) and "does not belong" in str(info.value)
    secret = f"{wrong.private_numbers().private_value:x}"  # type: ignore[union-attr]
    assert secret not in str(info.value)


def test_local_credentials_repr_hides_the_key(root: Issued, inter: Issued) -> None:
    ee = end_entity(inter, "repr.test")
    creds = LocalCredentials((ee.cert, inter.cert), ee.key)  # type: ignore[arg-type]
    text = repr(creds)
    assert "key" not in text.lower().replace("chain", "")
    assert "PRIVATE" not in text and "EllipticCurvePrivateKey" not in text
    assert f"{ee.key.private_numbers().private_value}" not in text  # type: ignore[union-attr]
    assert creds.certificate == ee.cert and creds.intermediates == (inter.cert,)
    assert creds.identity == identity_of(ee.cert)


def test_local_credentials_refuses_weak_and_unsupported_keys() -> None:
    root = ca("LC RSA Root", key="rsa2048")
    weak = end_entity(root, "weak-mine.test", key="rsa1024")
    with pytest.raises(IkeLocalError, match="1024-bit"):
        LocalCredentials((weak.cert,), weak.key)  # type: ignore[arg-type]
    dsa_ee = end_entity(root, "dsa-mine.test", key="dsa")
    with pytest.raises(IkeLocalError, match="DSA"):
        LocalCredentials((dsa_ee.cert,), dsa_ee.key)  # type: ignore[arg-type]


def test_local_credentials_chain_order_and_emptiness(root: Issued, inter: Issued) -> None:
    ee = end_entity(inter, "order.test")
    with pytest.raises(IkeLocalError, match="out of order"):
        LocalCredentials((ee.cert, root.cert, inter.cert), ee.key)  # type: ignore[arg-type]
    with pytest.raises(IkeLocalError, match="empty"):
        LocalCredentials((), ee.key)  # type: ignore[arg-type]
    # the anchor may end the chain
    LocalCredentials((ee.cert, inter.cert, root.cert), ee.key)  # type: ignore[arg-type]


def test_local_credentials_from_pem(inter: Issued, tmp_path: Path) -> None:
    ee = end_entity(inter, "pem.test", key="rsa2048")
    creds = LocalCredentials.from_pem(ee.pem + inter.pem, ee.key_pem)
    assert creds.chain == (ee.cert, inter.cert)
    encrypted = ee.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass"),
    )
    with pytest.raises(IkeLocalError, match="encrypted"):
        LocalCredentials.from_pem(ee.pem, encrypted, where="/etc/ipsecd/key.pem")
    with pytest.raises(IkeLocalError, match=r"/etc/ipsecd/key\.pem"):
        LocalCredentials.from_pem(ee.pem, b"garbage", where="/etc/ipsecd/key.pem")
    other = end_entity(inter, "other-pem.test")
    with pytest.raises(IkeLocalError, match="does not belong"):
        LocalCredentials.from_pem(ee.pem, other.key_pem)
    path = write_key(tmp_path / "key.pem", ee.key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert isinstance(LocalCredentials.from_pem(ee.pem, path.read_bytes()).key, rsa.RSAPrivateKey)


# --------------------------------------------------------------------------- loading


def test_load_pem_certificates(root: Issued, inter: Issued) -> None:
    both = load_pem_certificates(root.pem + b"junk between\n" + inter.pem, where="ca.pem")
    assert both == (root.cert, inter.cert)
    with pytest.raises(IkeLocalError, match=r"ca\.pem: no PEM certificate"):
        load_pem_certificates(b"nothing here", where="ca.pem")
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(IkeLocalError, match=r"ca\.pem"):
        load_pem_certificates(broken, where="ca.pem")


def test_load_crls_pem_and_der(root: Issued, inter: Issued) -> None:
    a, b = crl(root, [1]), crl(inter, [2])
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (a, b))
    assert load_pem_crls(pem, where="crl.pem") == (a, b)
    der = a.public_bytes(serialization.Encoding.DER)
    assert load_pem_crls(der, where="crl.der") == (a,)
    for bad in (b"", b"not a crl", b"-----BEGIN CERTIFICATE-----\n", der[:-5]):
        with pytest.raises(IkeLocalError, match=r"crl\.x"):
            load_pem_crls(bad, where="crl.x")


# --------------------------------------------------------------------------- contract


def test_certificate_error_is_a_peer_error_with_a_short_code(root: Issued) -> None:
    ee = end_entity(root, "expired-again.test", not_after=NOW - DAY, not_before=NOW - 2 * DAY)
    err = refused(TrustStore((root.cert,)), ee)
    assert isinstance(err, IkePeerError)
    assert str(err).endswith("[expired]")
    assert all(f.value == f.value.lower() and " " not in f.value for f in CertFailure)


def test_trust_store_arguments_are_checked(root: Issued) -> None:
    with pytest.raises(IkeLocalError):
        TrustStore((root.pem,))  # type: ignore[arg-type]
    with pytest.raises(IkeLocalError):
        TrustStore((root.cert,), max_path=-1)
    assert TrustStore([root.cert]).anchors == (root.cert,)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- robustness

_FUZZ_ROOT = ca("Fuzz Root")
_FUZZ_INTER = ca("Fuzz Intermediate", issuer=_FUZZ_ROOT)
_FUZZ_EE = end_entity(_FUZZ_INTER, "fuzz.test", dns=("fuzz.test",))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    which=st.sampled_from(["ee", "inter"]),
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_damaged_certificates_only_raise_certificate_error(
    which: str, edits: list[tuple[int, int]]
) -> None:
    """Whatever parses as a certificate, validate() answers or raises CertificateError."""
    target = _FUZZ_EE if which == "ee" else _FUZZ_INTER
    data = bytearray(target.cert.public_bytes(serialization.Encoding.DER))
    for offset, value in edits:
        data[offset % len(data)] = value
    try:
        with warnings.catch_warnings():  # e.g. a serial number that is not positive
            warnings.simplefilter("ignore")
            damaged = x509.load_der_x509_certificate(bytes(data))
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
        return
    ee, inter = (damaged, _FUZZ_INTER.cert) if which == "ee" else (_FUZZ_EE.cert, damaged)
    store = TrustStore((_FUZZ_ROOT.cert,), crls=(crl(_FUZZ_INTER, [5]),))
    try:
        store.validate(ee, [inter], NOW)
    except CertificateError as err:
        assert err.message
    for ident in (Identity.fqdn("fuzz.test"), Identity.ip("192.0.2.1"), Identity.rfc822("a@b")):
        id_matches(ee, ident)
    id_matches(ee, Identity(IdType.DER_ASN1_DN, b"\x30\x03\x31\x01\x00"))
    with pytest.raises(CertificateError):
        check_identity(ee, Identity.fqdn("not-named.test"))


def test_stores_and_credentials_compare_and_hash_by_value(root: Issued) -> None:
    """IkeConfig is a frozen dataclass: what it holds must hash, and equal configs must
    compare equal after a reload (the agent diffs revisions)."""
    a = TrustStore((root.cert,), crls=(crl(root, [1]),))
    b = a.with_crls(list(a.crls))
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != a.with_crls([crl(root, [2], number=2)])
    ee = end_entity(root, "hash.test")
    creds = LocalCredentials((ee.cert,), ee.key)  # type: ignore[arg-type]
    assert hash(creds) == hash(LocalCredentials((ee.cert,), ee.key))  # type: ignore[arg-type]
