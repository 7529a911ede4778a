"""The connection configuration model: identities, selectors, proposals, validation."""

from __future__ import annotations

import ipaddress

import pytest

from ipsecd.ike import (
    ChildConfig,
    Identity,
    IkeConfig,
    IkeLocalError,
    Mode,
    RetransmitConfig,
    TrafficSelector,
    parse_child_proposal,
    parse_ike_proposal,
)
from ipsecd.ike.config import DEFAULT_CHILD_PROPOSALS, DEFAULT_IKE_PROPOSALS, selectors
from ipsecd.ike.constants import (
    DhGroup,
    EncrId,
    EsnId,
    IdType,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)


@pytest.mark.parametrize(
    ("text", "kind", "data", "shown"),
    [
        ("192.0.2.1", IdType.IPV4_ADDR, bytes([192, 0, 2, 1]), "192.0.2.1"),
        ("fd00::1", IdType.IPV6_ADDR, ipaddress.ip_address("fd00::1").packed, "fd00::1"),
        ("node-a.example", IdType.FQDN, b"node-a.example", "node-a.example"),
        ("fqdn:192.0.2.1", IdType.FQDN, b"192.0.2.1", "192.0.2.1"),
        ("keyid:0a0b", IdType.KEY_ID, b"\x0a\x0b", "keyid:0a0b"),
        ("keyid:@abc", IdType.KEY_ID, b"abc", "keyid:616263"),
    ],
)
def test_identity_parse(text: str, kind: IdType, data: bytes, shown: str) -> None:
    ident = Identity.parse(text)
    assert (ident.type, ident.data, str(ident)) == (kind, data, shown)


def test_identity_errors_name_the_problem() -> None:
    with pytest.raises(IkeLocalError, match="hex digits"):
        Identity.parse("keyid:zz")
    with pytest.raises(IkeLocalError, match="not an IP address"):
        Identity.ip("300.1.1.1")
    with pytest.raises(IkeLocalError, match="not ASCII"):
        Identity.fqdn("nœud.example")
    with pytest.raises(IkeLocalError, match="exactly 4 bytes"):
        Identity(IdType.IPV4_ADDR, b"\x01\x02")
    with pytest.raises(IkeLocalError, match="empty"):
        Identity(IdType.KEY_ID, b"")


def test_traffic_selector_construction_and_text() -> None:
    web = TrafficSelector.from_cidr("10.0.0.0/24", ip_protocol=6, port=443)
    assert (web.start, web.end) == (
        ipaddress.ip_address("10.0.0.0"),
        ipaddress.ip_address("10.0.0.255"),
    )
    assert str(web) == "10.0.0.0/24 proto 6 port 443"
    assert str(TrafficSelector.host("fd00::1")) == "fd00::1/128"
    assert str(TrafficSelector.any(6)) == "::/0"
    odd = TrafficSelector(
        ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.5"), 17, 1000, 2000
    )
    assert str(odd) == "10.0.0.1-10.0.0.5 proto 17 ports 1000-2000"
    assert selectors(["10.0.0.0/8", "fd00::/8"])[1].version == 6


def test_traffic_selector_containment_and_intersection() -> None:
    big = TrafficSelector.from_cidr("10.0.0.0/8")
    small = TrafficSelector.from_cidr("10.1.0.0/16", ip_protocol=6, ports=(80, 90))
    assert big.contains(small) and not small.contains(big)
    assert big.intersect(small) == small
    assert small.intersect(TrafficSelector.from_cidr("10.1.0.0/16", ip_protocol=17)) is None
    assert small.intersect(TrafficSelector.from_cidr("10.1.0.0/16", port=100)) is None
    assert big.intersect(TrafficSelector.from_cidr("11.0.0.0/8")) is None
    assert big.intersect(TrafficSelector.any(6)) is None


def test_traffic_selector_validation() -> None:
    v4, v6 = ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv6Address("fd00::1")
    with pytest.raises(IkeLocalError, match="same IP version"):
        TrafficSelector(v4, v6)  # type: ignore[arg-type]
    with pytest.raises(IkeLocalError, match="after end"):
        TrafficSelector(ipaddress.IPv4Address("10.0.0.9"), v4)
    with pytest.raises(IkeLocalError, match="port range"):
        TrafficSelector(v4, v4, 6, 90, 80)
    with pytest.raises(IkeLocalError, match="IP protocol"):
        TrafficSelector(v4, v4, 256)
    with pytest.raises(IkeLocalError, match="address/prefix"):
        TrafficSelector.from_cidr("10.0.0.0/33")
    with pytest.raises(IkeLocalError, match="not an IP address"):
        TrafficSelector.host("nowhere")


def test_parse_ike_proposal() -> None:
    p = parse_ike_proposal("aes256-sha384-modp3072")
    kinds = [(t.type, t.id, t.key_length) for t in p.transforms]
    assert kinds == [
        (TransformType.ENCR, EncrId.AES_CBC, 256),
        (TransformType.INTEG, IntegId.HMAC_SHA2_384_192, None),
        (TransformType.DH, DhGroup.MODP_3072, None),
        (TransformType.PRF, PrfId.HMAC_SHA2_384, None),
    ]
    g = parse_ike_proposal("chacha20poly1305-prfsha256-x25519")
    assert g.of_type(TransformType.ENCR)[0].key_length is None
    assert g.of_type(TransformType.DH)[0].id == DhGroup.CURVE25519
    assert str(g) == "CHACHA20_POLY1305-HMAC_SHA2_256-CURVE25519"


def test_parse_child_proposal_defaults_to_no_esn() -> None:
    p = parse_child_proposal("aes128gcm16")
    assert p.of_type(TransformType.ESN)[0].id == EsnId.NO_ESN
    assert parse_child_proposal("aes128gcm16-esn").of_type(TransformType.ESN)[0].id == EsnId.ESN
    ah = parse_child_proposal("sha512", ProtocolId.AH)
    assert ah.of_type(TransformType.INTEG)[0].id == IntegId.HMAC_SHA2_512_256
    with pytest.raises(IkeLocalError, match="needs integrity"):
        parse_child_proposal("aes256")
    with pytest.raises(IkeLocalError, match="needs an integrity algorithm"):
        parse_child_proposal("esn", ProtocolId.AH)


def test_defaults_are_valid_and_strong() -> None:
    assert str(DEFAULT_IKE_PROPOSALS[0]).startswith("AES_GCM_16_256")
    assert all(p.of_type(TransformType.ENCR) for p in DEFAULT_CHILD_PROPOSALS)


def _child() -> ChildConfig:
    return ChildConfig(local_ts=selectors(["10.1.0.0/16"]), remote_ts=selectors(["10.2.0.0/16"]))


def test_ike_config_validation_names_the_field() -> None:
    me = Identity.parse("a.example")
    with pytest.raises(IkeLocalError, match="psk is empty"):
        IkeConfig("c", me, None, b"", _child())
    with pytest.raises(IkeLocalError, match="remote_address 'peer'"):
        IkeConfig("c", me, None, b"k" * 16, _child(), remote_address="peer")
    with pytest.raises(IkeLocalError, match="nonce_length"):
        IkeConfig("c", me, None, b"k" * 16, _child(), nonce_length=8)
    with pytest.raises(IkeLocalError, match="ike_proposals is empty"):
        IkeConfig("c", me, None, b"k" * 16, _child(), ike_proposals=())
    with pytest.raises(IkeLocalError, match="name is empty"):
        IkeConfig("", me, None, b"k" * 16, _child())


def test_child_config_validation() -> None:
    ts = selectors(["10.0.0.0/8"])
    with pytest.raises(IkeLocalError, match="at least one selector"):
        ChildConfig(local_ts=(), remote_ts=ts)
    with pytest.raises(IkeLocalError, match="ESP or AH"):
        ChildConfig(local_ts=ts, remote_ts=ts, protocol=ProtocolId.IKE)
    with pytest.raises(IkeLocalError, match="AH has no encryption"):
        ChildConfig(local_ts=ts, remote_ts=ts, protocol=ProtocolId.AH)
    with pytest.raises(IkeLocalError, match="rekey_time"):
        ChildConfig(local_ts=ts, remote_ts=ts, lifetime=100, rekey_time=200)
    c = ChildConfig(local_ts=ts, remote_ts=ts, lifetime=100, mode=Mode.TRANSPORT)
    assert c.soft_lifetime == pytest.approx(90)


def test_retransmit_config() -> None:
    cfg = RetransmitConfig()
    assert [round(cfg.delay(n), 2) for n in (1, 2, 3)] == [1.0, 1.6, 2.56]
    assert cfg.delay(20) == 30.0  # capped
    # RFC 7296 2.4: "several minutes" and a dozen or so tries before giving up
    assert 180 <= cfg.give_up_after() <= 300 and cfg.max_retransmits >= 10
    with pytest.raises(IkeLocalError, match="timeout > 0"):
        RetransmitConfig(timeout=0)
    with pytest.raises(IkeLocalError, match="limit"):
        RetransmitConfig(limit=0)


def test_psk_is_not_in_repr() -> None:
    cfg = IkeConfig("c", Identity.parse("a.example"), None, b"very-secret-psk-value", _child())
    assert "very-secret" not in repr(cfg) and "very-secret" not in str(cfg)
