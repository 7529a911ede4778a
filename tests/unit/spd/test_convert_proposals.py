"""Proposal translation for ``ipsecctl convert``: strongSwan and Libreswan spellings ->
SPD transforms that both the SPD validator and the IKE engine accept, or a warning."""

from __future__ import annotations

import pytest

from ipsecd.ike.config import parse_child_proposal, parse_ike_proposal
from ipsecd.ike.constants import ProtocolId
from ipsecd.spd import load_text
from ipsecd.spd.convert.common import dn_to_rfc4514, parse_identity
from ipsecd.spd.convert.proposals import MAX_TRANSFORMS, translate


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("aes256gcm16-prfsha384-ecp384", "ike", ["aes256gcm16-prfsha384-ecp384"]),
        ("aes256-sha2_256-modp2048", "ike", ["aes256-sha256-modp2048"]),
        ("aes256-sha256-modp3072!", "ike", ["aes256-sha256-modp3072"]),
        ("aes128gcm128-prfsha256-x25519", "ike", ["aes128gcm16-prfsha256-curve25519"]),
        ("aes128gcm16-prfsha512-ecp521", "ike", ["aes128gcm16-prfsha512-ecp521"]),
        ("aes192-sha384-modp3072", "ike", ["aes192-sha384-modp3072"]),
        ("aes256-sha512-sha256-modp2048", "ike",
         ["aes256-sha512-modp2048", "aes256-sha256-modp2048"]),
        ("aes256-aes128-sha256-prfsha384-ecp256", "ike",
         ["aes256-sha256-prfsha384-ecp256", "aes128-sha256-prfsha384-ecp256"]),
        ("chacha20poly1305-prfsha256-curve25519", "ike",
         ["chacha20poly1305-prfsha256-curve25519"]),
        ("aes256gcm16-prfsha384-ecp384, aes256-sha256-modp2048", "ike",
         ["aes256gcm16-prfsha384-ecp384", "aes256-sha256-modp2048"]),
        ("aes256gcm16", "esp", ["aes256gcm16"]),
        ("aes256gcm16-ecp384", "esp", ["aes256gcm16-ecp384"]),
        ("aes128-sha256", "esp", ["aes128-sha256"]),
        ("aes256-sha2_512-modp3072-noesn", "esp", ["aes256-sha512-modp3072"]),
        ("aes256gcm16-aes128gcm16", "esp", ["aes256gcm16", "aes128gcm16"]),
        ("sha256", "ah", ["sha256"]),
        ("sha384-ecp256", "ah", ["sha384-ecp256"]),
    ],
)  # fmt: skip
def test_strongswan_spellings(text: str, kind: str, expected: list[str]) -> None:
    out = translate(text, kind, "strongswan")
    assert out.transforms == expected
    assert out.warnings == []


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("aes256-sha2_256;dh19", "ike", ["aes256-sha256-ecp256"]),
        ("aes256-sha2_256-dh14", "ike", ["aes256-sha256-modp2048"]),
        ("aes_gcm256-sha2_512;dh20", "ike", ["aes256gcm16-prfsha512-ecp384"]),
        ("aes_gcm_16_128-sha2_256-dh31", "ike", ["aes128gcm16-prfsha256-curve25519"]),
        ("aes_gcm_c_256-sha2_384;modp3072", "ike", ["aes256gcm16-prfsha384-modp3072"]),
        ("aes256-sha2;dh15", "ike", ["aes256-sha256-modp3072"]),
        ("aes_gcm+chacha20_poly1305-sha2_256;dh19+dh31", "ike",
         ["aes256gcm16-prfsha256-ecp256", "aes256gcm16-prfsha256-curve25519",
          "chacha20poly1305-prfsha256-ecp256", "chacha20poly1305-prfsha256-curve25519"]),
        ("aes_gcm256", "esp", ["aes256gcm16"]),
        ("aes_gcm_16_256-null", "esp", ["aes256gcm16"]),
        ("aes_gcm128", "esp", ["aes128gcm16"]),
        ("aes128-sha2_512+sha2_256", "esp", ["aes128-sha512", "aes128-sha256"]),
        ("aes-sha2_256;dh19", "esp", ["aes256-sha256-ecp256"]),  # aes: 256-bit keys
        ("sha2_256", "ah", ["sha256"]),
    ],
)  # fmt: skip
def test_libreswan_spellings(text: str, kind: str, expected: list[str]) -> None:
    out = translate(text, kind, "libreswan")
    assert out.transforms == expected
    assert out.warnings == []


def test_libreswan_fills_in_what_a_proposal_leaves_out() -> None:
    out = translate("aes_gcm256", "ike", "libreswan")
    assert out.transforms is not None
    assert out.transforms[0] == "aes256gcm16-prfsha512-ecp256"
    assert len(out.transforms) == 12  # 2 PRFs x 6 DH groups
    assert any("names no PRF" in n for n in out.notes)
    assert any("names no DH group" in n for n in out.notes)
    esp = translate("aes256", "esp", "libreswan")
    assert esp.transforms == ["aes256-sha512", "aes256-sha256"]


@pytest.mark.parametrize(
    ("text", "kind"),
    [("aes256-sha2_256;dh22", "ike"), ("aes_gcm256-dh22", "esp"), ("sha2_256-dh22", "ah"),
     ("aes256-aes_cmac;dh14", "ike")],
)  # fmt: skip
def test_a_named_algorithm_that_is_dropped_is_not_replaced_by_defaults(
    text: str, kind: str
) -> None:
    """Libreswan fills in what a proposal leaves out, never what it names."""
    out = translate(text, kind, "libreswan", pfs_groups=["ecp256"])
    assert out.transforms is None
    assert any("can be carried" in w for w in out.warnings), out.warnings


def test_pfs_groups_are_added_to_child_proposals() -> None:
    out = translate("aes_gcm256,aes256-sha2_256", "esp", "libreswan", pfs_groups=["ecp256"])
    assert out.transforms == ["aes256gcm16-ecp256", "aes256-sha256-ecp256"]
    keeps = translate("aes_gcm256-dh20", "esp", "libreswan", pfs_groups=["ecp256"])
    assert keeps.transforms == ["aes256gcm16-ecp384"]


@pytest.mark.parametrize(
    ("text", "kind", "style", "kept", "warning"),
    [
        ("3des-sha1-modp1024, aes256-sha256-modp2048", "ike", "strongswan",
         ["aes256-sha256-modp2048"], "3DES must not be used"),
        ("aes256-md5-modp2048, aes256-sha256-modp2048", "ike", "strongswan",
         ["aes256-sha256-modp2048"], "MD5 is forbidden"),
        ("aes256-sha256-modp768, aes256-sha256-modp2048", "ike", "strongswan",
         ["aes256-sha256-modp2048"], "MODP-768 is forbidden"),
        ("aes256ccm16-prfsha256-ecp256, aes256gcm16-prfsha256-ecp256", "ike", "strongswan",
         ["aes256gcm16-prfsha256-ecp256"], "AES-CCM is not supported"),
        ("camellia256-sha256-modp2048, aes256-sha256-modp2048", "ike", "strongswan",
         ["aes256-sha256-modp2048"], "'camellia256' is not among the SPD's algorithms"),
        ("aes256-sha256-ecp256bp, aes256-sha256-ecp256", "ike", "strongswan",
         ["aes256-sha256-ecp256"], "Brainpool curves are not supported"),
        ("aes256-sha256-modp2048s256, aes256-sha256-modp2048", "ike", "strongswan",
         ["aes256-sha256-modp2048"], "RFC 5114"),
        ("aes256-sha256-modp2048-mlkem768, aes256-sha256-modp3072", "ike", "strongswan",
         ["aes256-sha256-modp2048", "aes256-sha256-modp3072"], "RFC 9370"),
        ("aes256-sha256-modp8192, aes256-sha256-modp2048", "ike", "strongswan",
         ["aes256-sha256-modp2048"], "does not implement 'modp8192'"),
        ("aes256gcm16-sha256-ecp256", "esp", "strongswan",
         ["aes256gcm16-ecp256"], "AEAD cipher takes no integrity"),
        ("aes256gcm16-ecp256", "ike", "strongswan", None, "needs a PRF"),
        ("aes256-sha256", "ike", "strongswan", None, "needs a DH group"),
        ("aes256", "esp", "strongswan", None, "without an integrity algorithm"),
        ("aes256gcm16-esn", "esp", "strongswan", ["aes256gcm16"], "(esn) are not carried"),
        ("aes_ccm, aes_gcm256", "esp", "libreswan", ["aes256gcm16"], "AES-CCM"),
        ("aes256-sha2_256;dh22, aes256-sha2_256;dh14", "ike", "libreswan",
         ["aes256-sha256-modp2048"], "RFC 5114"),
        ("aes256-sha2_256-frobnicate", "esp", "libreswan",
         ["aes256-sha256"], "unknown algorithm 'frobnicate'"),
    ],
)  # fmt: skip
def test_what_cannot_be_carried_is_dropped_with_the_reason(
    text: str, kind: str, style: str, kept: list[str] | None, warning: str
) -> None:
    out = translate(text, kind, style)
    assert out.transforms == kept
    assert any(warning in w for w in out.warnings), out.warnings


def test_every_transform_is_accepted_by_the_spd_and_the_engine() -> None:
    for text, kind in [
        ("aes128gcm16-aes256gcm16-chacha20poly1305-prfsha256-prfsha384-prfsha512-"
         "ecp256-ecp384-curve25519", "ike"),
        ("aes128-aes192-aes256-sha256-sha384-sha512-modp2048-modp3072", "ike"),
        ("aes128gcm16-aes256gcm16-chacha20poly1305-ecp256-modp3072", "esp"),
    ]:  # fmt: skip
        out = translate(text, kind, "strongswan")
        assert out.transforms is not None and len(out.transforms) <= MAX_TRANSFORMS
        load_text(f"proposal {kind} p {', '.join(out.transforms)};\n", "p.spd")
        for t in out.transforms:
            if kind == "ike":
                parse_ike_proposal(t)
            else:
                parse_child_proposal(t, ProtocolId.ESP)


def test_too_many_combinations_are_cut() -> None:
    out = translate(
        "aes128-aes192-aes256-sha256-sha384-sha512-prfsha256-prfsha384-prfsha512-"
        "modp2048-modp3072-ecp256-ecp384",
        "ike",
        "strongswan",
    )
    assert out.transforms is not None and len(out.transforms) == MAX_TRANSFORMS
    assert any("first 32 are kept" in w for w in out.warnings)


def test_default_keyword() -> None:
    assert translate("default", "ike", "strongswan").transforms is None
    mixed = translate("aes256gcm16-prfsha256-ecp256, default", "ike", "strongswan")
    assert mixed.transforms == ["aes256gcm16-prfsha256-ecp256"]
    assert any("'default'" in w for w in mixed.warnings)


def test_nothing_left_falls_back_to_the_spd_defaults_with_a_warning() -> None:
    out = translate("3des-md5-modp1024", "ike", "strongswan")
    assert out.transforms is None
    assert any("the SPD's default proposals are used" in w for w in out.warnings)


def test_kept_although_the_engine_cannot_run_them() -> None:
    out = translate("aes256-sha1-modp2048", "ike", "strongswan")
    assert out.transforms == ["aes256-sha1-modp2048"]
    assert any("unusable" in w and "'sha1'" in w for w in out.warnings)


@pytest.mark.parametrize(
    ("text", "style", "kind", "spd"),
    [
        ("192.0.2.1", "strongswan", "address", "192.0.2.1"),
        ("2001:db8::1", "strongswan", "address", "2001:db8::1"),
        ("gw.example.net", "strongswan", "fqdn", "fqdn:gw.example.net"),
        ("@gw.example.net", "libreswan", "fqdn", "fqdn:gw.example.net"),
        ("fqdn:GW.example.net", "strongswan", "fqdn", "fqdn:gw.example.net"),
        ("@#0a0b0c", "strongswan", "keyid", "keyid:0a0b0c"),
        ("keyid:0A0B", "strongswan", "keyid", "keyid:0a0b"),
        ("C=CH, O=strongSwan, CN=moon", "strongswan", "dn", '"CN=moon, O=strongSwan, C=CH"'),
        ("/C=US/O=Example/CN=db", "libreswan", "dn", '"CN=db, O=Example, C=US"'),
        ("C=CH, O=x, E=ops@example.org, CN=gw", "strongswan", "dn",
         '"CN=gw, 1.2.840.113549.1.9.1=ops@example.org, O=x, C=CH"'),
        ("%any", "strongswan", "any", None),
        ("%fromcert", "libreswan", "any", None),
        ("carol@example.org", "strongswan", "email", None),
    ],
)  # fmt: skip
def test_identities(text: str, style: str, kind: str, spd: str | None) -> None:
    ident = parse_identity(text, style)
    assert (ident.kind, ident.spd) == (kind, spd)
    if spd is not None:
        load_text(f"peer p {{ address 203.0.113.1; id {spd}; }}\n", "p.spd")


def test_dn_with_an_escaped_comma() -> None:
    assert dn_to_rfc4514("C=DE, O=Example\\, Inc., CN=gw") == "CN=gw, O=Example\\, Inc., C=DE"
    assert dn_to_rfc4514("CN") is None
    assert dn_to_rfc4514("XX=1, CN=gw") is None
