"""IkeSa handshakes between two of our engines (tests/unit/ike/harness.py): both roles,
every supported transform combination, identities, IPv6, traffic selectors, modes."""

from __future__ import annotations

import ipaddress

import pytest

from ipsecd.ike import (
    ChildSaEstablished,
    ChildSaFailed,
    Identity,
    IkeSaEstablished,
    IkeSaFailed,
    IkeState,
    Mode,
)
from ipsecd.ike.codec import parse_message
from ipsecd.ike.constants import (
    DhGroup,
    EncrId,
    ExchangeType,
    IdType,
    IntegId,
    NotifyType,
    ProtocolId,
)
from ipsecd.ike.negotiate import narrow_selectors, select_proposal

from .harness import Harness, events_of, make_configs, ts


def establish(**kw: object) -> Harness:
    ci, cr = make_configs(**kw)  # type: ignore[arg-type]
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    return h


def child_pair(h: Harness) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    ci = events_of(h.events_i, ChildSaEstablished)
    cr = events_of(h.events_r, ChildSaEstablished)
    assert len(ci) == 1 and len(cr) == 1, (h.events_i, h.events_r)
    return ci[0], cr[0]


def assert_keys_agree(a: ChildSaEstablished, b: ChildSaEstablished) -> None:
    """RFC 7296 2.17: what one end sends with, the other receives with."""
    assert a.outbound_spi == b.inbound_spi and a.inbound_spi == b.outbound_spi
    assert a.outbound_encryption_key == b.inbound_encryption_key
    assert a.inbound_encryption_key == b.outbound_encryption_key
    assert a.outbound_integrity_key == b.inbound_integrity_key
    assert a.inbound_integrity_key == b.outbound_integrity_key
    # the two directions never share a key
    if a.outbound_encryption_key:
        assert a.outbound_encryption_key != a.inbound_encryption_key
    if a.outbound_integrity_key:
        assert a.outbound_integrity_key != a.inbound_integrity_key


def test_handshake_establishes_both_sides() -> None:
    h = establish()
    r = h.responder
    assert r is not None
    assert h.initiator.state == IkeState.ESTABLISHED and r.state == IkeState.ESTABLISHED
    ei = events_of(h.events_i, IkeSaEstablished)[0]
    er = events_of(h.events_r, IkeSaEstablished)[0]
    assert (ei.spi_i, ei.spi_r) == (er.spi_i, er.spi_r)
    assert ei.initiator and not er.initiator
    assert ei.remote_id == Identity.ip("198.51.100.1")
    assert er.remote_id == Identity.ip("192.0.2.1")
    assert ei.encryption == "AES_GCM_16_256" and ei.integrity is None
    assert ei.dh_group == DhGroup.ECP_384
    # the exchanges on the wire: IKE_SA_INIT and IKE_AUTH, request/response, IDs 0 and 1
    seen = [(parse_message(p.data).exchange_type, parse_message(p.data).message_id) for p in h.wire]
    assert seen == [
        (ExchangeType.IKE_SA_INIT, 0),
        (ExchangeType.IKE_SA_INIT, 0),
        (ExchangeType.IKE_AUTH, 1),
        (ExchangeType.IKE_AUTH, 1),
    ]
    a, b = child_pair(h)
    assert_keys_agree(a, b)
    assert a.mode == Mode.TUNNEL and a.protocol == ProtocolId.ESP
    assert a.encr_id == EncrId.AES_GCM_16 and a.encr_key_bits == 256
    assert len(a.inbound_encryption_key) == 36 and a.integ_id is None
    assert (a.local_address, a.remote_address) == ("192.0.2.1", "198.51.100.1")
    assert a.local_ts == ts("10.1.0.0/16") and a.remote_ts == ts("10.2.0.0/16")
    assert b.local_ts == a.remote_ts and b.remote_ts == a.local_ts
    assert not a.encapsulation and a.encap_local_port is None
    # the next timer is the first rekey: the CHILD SA's, at 90 % of its lifetime minus
    # up to 10 % of jitter (the IKE SA's comes later, its lifetime is longer)
    child_rekey = 0.9 * 3600.0
    for sa in (h.initiator, r):
        t = sa.get_timer()
        assert t is not None and h.now + 0.9 * child_rekey - 1 <= t <= h.now + child_rekey


IKE_CIPHERS = [
    ("aes128", "sha256"),
    ("aes192", "sha256"),
    ("aes256", "sha384"),
    ("aes256", "sha512"),
    ("aes128gcm16", "prfsha256"),
    ("aes256gcm16", "prfsha384"),
    ("chacha20poly1305", "prfsha512"),
]
DH_GROUPS = {
    "modp2048": 14,
    "modp3072": 15,
    "ecp256": 19,
    "ecp384": 20,
    "ecp521": 21,
    "curve25519": 31,
}


@pytest.mark.parametrize("dh", list(DH_GROUPS))
@pytest.mark.parametrize(("encr", "mac"), IKE_CIPHERS)
def test_every_ike_transform_combination(encr: str, mac: str, dh: str) -> None:
    h = establish(ike=(f"{encr}-{mac}-{dh}",))
    ei = events_of(h.events_i, IkeSaEstablished)[0]
    er = events_of(h.events_r, IkeSaEstablished)[0]
    assert ei.dh_group == DH_GROUPS[dh] == er.dh_group
    assert ei.encryption == er.encryption
    assert (ei.integrity is None) == ("gcm" in encr or "chacha" in encr)
    assert_keys_agree(*child_pair(h))


E, In = EncrId, IntegId
ESP_CASES = [
    # proposal, IANA ENCR ID, AES key bits, key bytes (salt included), IANA INTEG ID,
    # integrity key bytes
    ("aes128-sha256", E.AES_CBC, 128, 16, In.HMAC_SHA2_256_128, 32),
    ("aes256-sha256", E.AES_CBC, 256, 32, In.HMAC_SHA2_256_128, 32),
    ("aes256-sha384", E.AES_CBC, 256, 32, In.HMAC_SHA2_384_192, 48),
    ("aes256-sha512", E.AES_CBC, 256, 32, In.HMAC_SHA2_512_256, 64),
    ("aes128gcm16", E.AES_GCM_16, 128, 20, None, 0),
    ("aes192gcm16", E.AES_GCM_16, 192, 28, None, 0),
    ("aes256gcm16", E.AES_GCM_16, 256, 36, None, 0),
    ("chacha20poly1305", E.CHACHA20_POLY1305, None, 36, None, 0),
    ("aes256gcm16-esn", E.AES_GCM_16, 256, 36, None, 0),
]


@pytest.mark.parametrize("mode", [Mode.TRANSPORT, Mode.TUNNEL])
@pytest.mark.parametrize(("esp", "encr", "bits", "key_len", "integ", "integ_len"), ESP_CASES)
def test_every_esp_transform_combination(
    esp: str, encr: int, bits: int | None, key_len: int, integ: int | None, integ_len: int,
    mode: Mode,
) -> None:  # fmt: skip
    h = establish(esp=(esp,), mode=mode, ike=("aes128gcm16-prfsha256-curve25519",))
    a, b = child_pair(h)
    assert_keys_agree(a, b)
    for ev in (a, b):
        assert ev.mode == mode and ev.protocol == ProtocolId.ESP
        assert ev.encr_id == encr and ev.encr_key_bits == bits
        assert len(ev.inbound_encryption_key) == key_len == len(ev.outbound_encryption_key)
        assert ev.integ_id == integ
        assert len(ev.inbound_integrity_key) == integ_len == len(ev.outbound_integrity_key)
        assert ev.esn == esp.endswith("-esn")


@pytest.mark.parametrize(("ah", "integ"), [("sha256", In.HMAC_SHA2_256_128),
                                           ("sha512", In.HMAC_SHA2_512_256)])  # fmt: skip
@pytest.mark.parametrize("mode", [Mode.TRANSPORT, Mode.TUNNEL])
def test_ah_child_sa(ah: str, integ: int, mode: Mode) -> None:
    h = establish(esp=(ah,), protocol=ProtocolId.AH, mode=mode)
    a, b = child_pair(h)
    assert_keys_agree(a, b)
    assert a.protocol == b.protocol == ProtocolId.AH
    assert a.encr_id is None and a.inbound_encryption_key == b""
    assert a.integ_id == integ and a.mode == mode


@pytest.mark.parametrize(
    ("i_id", "r_id"),
    [
        (Identity.ip("192.0.2.1"), Identity.ip("198.51.100.1")),
        (Identity.ip("fd00::1"), Identity.ip("fd00::2")),
        (Identity.fqdn("left.example"), Identity.fqdn("right.example")),
        (Identity.key_id(b"\x01\x02node-a"), Identity.key_id(b"node-b")),
        (Identity.parse("keyid:@a"), Identity.parse("fqdn:b.example")),
    ],
)
def test_identity_types(i_id: Identity, r_id: Identity) -> None:
    h = establish(i_id=i_id, r_id=r_id)
    ei = events_of(h.events_i, IkeSaEstablished)[0]
    er = events_of(h.events_r, IkeSaEstablished)[0]
    assert ei.remote_id == r_id and er.remote_id == i_id
    assert ei.local_id == i_id


def test_ipv6_outer_and_inner_addresses() -> None:
    i_addr, r_addr = ("fd00:1::1", 500), ("fd00:2::1", 500)
    ci, cr = make_configs(
        i_addr=i_addr,
        r_addr=r_addr,
        i_local_ts=ts("fd00:10::/64"),
        i_remote_ts=ts("fd00:20::/64"),
    )
    h = Harness(ci, [cr], i_addr=i_addr, r_addr=r_addr)
    h.start()
    h.run_until_established()
    a, b = child_pair(h)
    assert_keys_agree(a, b)
    assert a.remote_address == "fd00:2::1" and a.local_ts == ts("fd00:10::/64")
    assert events_of(h.events_i, IkeSaEstablished)[0].remote_id.type == IdType.IPV6_ADDR


def test_responder_picks_connection_by_peer_identity() -> None:
    """Several candidate connections for one address: IKE_AUTH picks the one whose
    remote_id matches IDi and authenticates with its PSK."""
    ci, cr = make_configs(i_id=Identity.fqdn("b.example"), psk=b"psk for b" * 3)
    _, other = make_configs(i_id=Identity.fqdn("a.example"), psk=b"psk for a" * 3)
    other = type(other)(**{**_fields(other), "name": "conn-a", "child": other.child})
    h = Harness(ci, [other, cr])
    h.start()
    h.run_until_established()
    er = events_of(h.events_r, IkeSaEstablished)[0]
    assert er.remote_id == Identity.fqdn("b.example")
    assert er.connection == "conn"


def _fields(cfg: object) -> dict[str, object]:
    return {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}  # type: ignore[attr-defined]


def test_responder_prefers_its_own_proposal_order() -> None:
    h = establish(
        ike=("aes128-sha256-modp2048", "aes256gcm16-prfsha384-ecp384"),
        r_ike=("aes256gcm16-prfsha384-ecp384", "aes128-sha256-modp2048"),
    )
    # the initiator's KE was for group 14, the responder wants 20: one retry
    assert events_of(h.events_i, IkeSaEstablished)[0].dh_group == 20


# ------------------------------------------------------------------ traffic selectors


def test_traffic_selectors_are_narrowed() -> None:
    """RFC 7296 2.9: the responder narrows to its policy; both ends agree."""
    h = establish(
        i_local_ts=ts("10.1.0.0/16"),
        i_remote_ts=ts("10.0.0.0/8"),
        r_local_ts=ts("10.2.0.0/16"),
        r_remote_ts=ts("10.1.2.0/24"),
    )
    a, b = child_pair(h)
    assert a.local_ts == ts("10.1.2.0/24") and a.remote_ts == ts("10.2.0.0/16")
    assert b.local_ts == ts("10.2.0.0/16") and b.remote_ts == ts("10.1.2.0/24")


def test_disjoint_traffic_selectors_give_ts_unacceptable() -> None:
    h = establish(r_local_ts=ts("172.16.0.0/12"))
    # the IKE SA survives (RFC 7296 1.2); the CHILD SA fails on both ends
    assert h.initiator.state == IkeState.ESTABLISHED
    fi = events_of(h.events_i, ChildSaFailed)
    fr = events_of(h.events_r, ChildSaFailed)
    assert [f.notify for f in fi] == [NotifyType.TS_UNACCEPTABLE]
    assert [f.notify for f in fr] == [NotifyType.TS_UNACCEPTABLE]
    assert not events_of(h.events_i, ChildSaEstablished)


def test_narrow_selectors_ports_and_protocols() -> None:
    from ipsecd.ike.config import TrafficSelector

    web = TrafficSelector.from_cidr("10.0.0.0/8", ip_protocol=6, port=443)
    got = narrow_selectors(ts("10.1.0.0/16"), (web,))
    assert got == (TrafficSelector.from_cidr("10.1.0.0/16", ip_protocol=6, port=443),)
    udp = TrafficSelector.from_cidr("10.1.0.0/16", ip_protocol=17)
    assert narrow_selectors((udp,), (web,)) == ()
    v6 = TrafficSelector.from_cidr("fd00::/8")
    assert narrow_selectors((v6,), ts("10.0.0.0/8")) == ()
    assert ipaddress.ip_address("10.1.0.0") == got[0].start


# ------------------------------------------------------------------ modes


def test_transport_mode_when_both_want_it() -> None:
    h = establish(
        mode=Mode.TRANSPORT, i_local_ts=ts("192.0.2.1/32"), i_remote_ts=ts("198.51.100.1/32")
    )
    a, b = child_pair(h)
    assert a.mode == b.mode == Mode.TRANSPORT


def test_transport_requested_but_responder_wants_tunnel() -> None:
    """RFC 7296 1.3.1: the responder answers tunnel; our initiator insists on the
    configured transport mode, reports the failure and deletes the CHILD SA."""
    h = establish(mode=Mode.TRANSPORT, r_mode=Mode.TUNNEL)
    h.run()
    assert [type(e).__name__ for e in h.events_i] == ["IkeSaEstablished", "ChildSaFailed"]
    assert "tunnel mode" in events_of(h.events_i, ChildSaFailed)[0].reason
    names_r = [type(e).__name__ for e in h.events_r]
    assert names_r == ["IkeSaEstablished", "ChildSaEstablished", "ChildSaDeleted"]
    assert h.initiator.state == IkeState.ESTABLISHED
    r = h.responder
    assert r is not None and r.child_sas == ()


def test_tunnel_requested_but_responder_wants_transport() -> None:
    h = establish(mode=Mode.TUNNEL, r_mode=Mode.TRANSPORT)
    assert [f.notify for f in events_of(h.events_i, ChildSaFailed)] == [
        NotifyType.NO_PROPOSAL_CHOSEN
    ]
    assert [f.notify for f in events_of(h.events_r, ChildSaFailed)] == [
        NotifyType.NO_PROPOSAL_CHOSEN
    ]
    assert h.initiator.state == IkeState.ESTABLISHED


def test_no_common_child_proposal_keeps_ike_sa() -> None:
    h = establish(esp=("aes256gcm16",), r_esp=("aes128-sha256",))
    assert h.initiator.state == IkeState.ESTABLISHED
    assert [f.notify for f in events_of(h.events_i, ChildSaFailed)] == [
        NotifyType.NO_PROPOSAL_CHOSEN
    ]
    assert not events_of(h.events_i, IkeSaFailed)


def test_esp_offered_to_ah_responder() -> None:
    h = establish(
        esp=("sha256",), protocol=ProtocolId.AH, r_protocol=ProtocolId.ESP, r_esp=("aes256gcm16",)
    )
    assert [f.notify for f in events_of(h.events_r, ChildSaFailed)] == [
        NotifyType.NO_PROPOSAL_CHOSEN
    ]


def test_select_proposal_prefers_ours_and_skips_unknown_types() -> None:
    from ipsecd.ike import codec
    from ipsecd.ike.config import parse_ike_proposal
    from ipsecd.ike.negotiate import wire_proposals as _wire_proposals

    theirs = list(
        _wire_proposals(
            [
                parse_ike_proposal("aes128-sha256-modp2048"),
                parse_ike_proposal("aes256gcm16-prfsha384-ecp384"),
            ],
            ProtocolId.IKE,
            b"",
        )
    )
    ours = [
        parse_ike_proposal("aes256gcm16-prfsha384-ecp384"),
        parse_ike_proposal("aes128-sha256-modp2048"),
    ]
    got = select_proposal(theirs, ours, ProtocolId.IKE, with_dh=True)
    assert got is not None and got[0].num == 2
    # an unknown transform type (99) makes a proposal unacceptable (RFC 7296 3.3.6)
    odd = codec.Proposal(2, ProtocolId.IKE, b"", (*theirs[1].transforms, codec.Transform(99, 1)))
    got = select_proposal([theirs[0], odd], ours, ProtocolId.IKE, with_dh=True)
    assert got is not None and got[0].num == 1
    # forbidden algorithms are never accepted (RFC 8247)
    weak = codec.Proposal(
        1,
        ProtocolId.IKE,
        b"",
        (
            codec.Transform.make(1, 3),  # 3DES
            codec.Transform.make(2, 2),  # PRF HMAC-SHA1
            codec.Transform.make(3, 2),  # HMAC-SHA1-96
            codec.Transform.make(4, 2),  # MODP-1024
        ),
    )
    assert select_proposal([weak], ours, ProtocolId.IKE, with_dh=True) is None
    # a type offered only with forbidden algorithms does not silently disappear
    gcm_sha1 = codec.Proposal(
        1, ProtocolId.IKE, b"", (*theirs[1].transforms, codec.Transform.make(3, 2))
    )
    assert select_proposal([gcm_sha1], ours, ProtocolId.IKE, with_dh=True) is None


def test_spi_allocator_supplies_inbound_spis() -> None:
    """The agent can take CHILD SA SPIs from the kernel (XFRM ALLOCSPI)."""
    ci, cr = make_configs()
    h = Harness(
        ci,
        [cr],
        spi_allocator_i=lambda proto: 0x1000 + int(proto),
        spi_allocator_r=lambda proto: 0x2000,
    )
    h.start()
    h.run_until_established()
    a, b = child_pair(h)
    assert (a.inbound_spi, b.inbound_spi) == (0x1003, 0x2000)


@pytest.mark.parametrize("side", ["i", "r"])
@pytest.mark.parametrize("fault", ["raises", "reserved"])
def test_failing_spi_allocator_fails_cleanly(side: str, fault: str) -> None:
    def broken(proto: ProtocolId) -> int:
        if fault == "raises":
            raise OSError("ALLOCSPI: no space")
        return 7  # RFC 4303 2.1: SPIs 1..255 are reserved

    ci, cr = make_configs()
    if side == "i":
        h = Harness(ci, [cr], spi_allocator_i=broken)
    else:
        h = Harness(ci, [cr], spi_allocator_r=broken)
    h.start()
    h.run()
    r = h.responder
    assert r is not None and h.initiator.internal_errors == 0 == r.internal_errors
    if side == "i":
        assert h.initiator.state == IkeState.FAILED
        assert "SPI" in events_of(h.events_i, IkeSaFailed)[0].reason
    else:
        assert h.initiator.established
        assert events_of(h.events_i, ChildSaFailed)[0].notify == NotifyType.NO_ADDITIONAL_SAS
