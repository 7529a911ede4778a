"""Unit tests of ipsecd.ike.codec: structure, round trips, and every length check."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ipsecd.ike.codec import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    FragmentCollector,
    IdiPayload,
    IdrPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    RawTrafficSelector,
    SaPayload,
    SkfPayload,
    SkPayload,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TsiPayload,
    TsrPayload,
    UnknownPayload,
    VendorIdPayload,
    build_message,
    build_payloads,
    decrypt_sk,
    decrypt_skf,
    encrypt_sk,
    encrypt_skf,
    parse_header,
    parse_message,
    parse_payloads,
    payload_body,
)
from ipsecd.ike.constants import (
    AuthMethod,
    CertEncoding,
    DhGroup,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from ipsecd.ike.crypto import SkCipher
from ipsecd.ike.errors import (
    IkeError,
    IkeIntegrityError,
    IkeLocalError,
    IkeParseError,
    IkeProtocolError,
)

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("a1a2a3a4a5a6a7a8")


def _sa() -> SaPayload:
    return SaPayload(
        (
            Proposal(
                1,
                ProtocolId.IKE,
                b"",
                (
                    Transform.make(TransformType.ENCR, EncrId.AES_GCM_16, 256),
                    Transform.make(TransformType.PRF, PrfId.HMAC_SHA2_384),
                    Transform.make(TransformType.DH, DhGroup.ECP_384),
                ),
            ),
            Proposal(
                2,
                ProtocolId.IKE,
                b"",
                (
                    Transform.make(TransformType.ENCR, EncrId.AES_CBC, 128),
                    Transform.make(TransformType.PRF, PrfId.HMAC_SHA2_256),
                    Transform.make(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
                    Transform.make(TransformType.DH, DhGroup.MODP_2048),
                    # unknown transform ID and a TLV attribute are kept
                    Transform(TransformType.DH, 999, (TransformAttribute(300, b"\x01\x02\x03"),)),
                ),
            ),
        )
    )


def _all_payloads() -> tuple[Payload, ...]:
    return (
        _sa(),
        KePayload(DhGroup.CURVE25519, bytes(range(32))),
        NoncePayload(b"N" * 32),
        NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, b"\x11" * 20),
        NotifyPayload(40000, b"private", protocol_id=ProtocolId.ESP, spi=b"\x00\x00\x10\x01"),
        IdiPayload(IdType.FQDN, b"initiator.test"),
        IdrPayload(IdType.IPV6_ADDR, ipaddress.IPv6Address("fd00::2").packed),
        CertPayload(CertEncoding.X509_SIGNATURE, b"\x30\x82cert"),
        CertReqPayload(CertEncoding.X509_SIGNATURE, b"\x55" * 20),
        AuthPayload(AuthMethod.PSK, b"A" * 48),
        DeletePayload(ProtocolId.ESP, 4, (b"\x00\x00\x00\x01", b"\xff\xff\xff\xff")),
        DeletePayload(ProtocolId.IKE, 0),
        VendorIdPayload(b"ipsecd"),
        TsiPayload(
            (
                TrafficSelector.from_network("10.1.0.0/16", ip_protocol=6, start_port=443),
                RawTrafficSelector(9, 0, b"\x00\x00fc-range"),
            )
        ),
        TsrPayload((TrafficSelector.from_network("fd00:1::/64"),)),
        UnknownPayload(47, b"\x01\x00\x00\x00"),  # CP, not decoded, not critical
        NoncePayload(b"n" * 16, critical=True),  # understood: critical bit kept, ignored
    )


def _msg(payloads: tuple[Payload, ...] = (), **kw: object) -> Message:
    fields: dict[str, object] = dict(
        spi_i=SPI_I,
        spi_r=SPI_R,
        exchange_type=ExchangeType.IKE_SA_INIT,
        flags=HeaderFlag.INITIATOR,
        message_id=0,
        payloads=payloads,
    )
    fields.update(kw)
    return Message(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- round trips


def test_every_payload_roundtrips() -> None:
    msg = _msg(_all_payloads())
    data = build_message(msg)
    parsed = parse_message(data)
    assert parsed == msg
    assert build_message(parsed) == data
    assert parse_header(data).length == len(data)
    assert parse_header(data).next_payload == PayloadType.SA


def test_header_fields() -> None:
    msg = _msg(
        (NoncePayload(b"x" * 16),),
        exchange_type=ExchangeType.INFORMATIONAL,
        flags=HeaderFlag.RESPONSE,
        message_id=0xDEADBEEF,
    )
    data = build_message(msg)
    assert data[:8] == SPI_I and data[8:16] == SPI_R
    assert data[16] == PayloadType.NONCE and data[17] == 0x20 and data[18] == 37
    assert data[19] == 0x20 and data[20:24] == b"\xde\xad\xbe\xef"
    assert int.from_bytes(data[24:28], "big") == len(data) == 28 + 4 + 16
    h = parse_header(data)
    assert h.is_response and not h.is_initiator


def test_wire_layout_of_sa_and_transform_attribute() -> None:
    body = payload_body(_sa())
    # RFC 7296 3.3.1: first proposal: Last Substruc 2 (more follow), length, num 1, IKE,
    # SPI size 0, 3 transforms
    assert body[0] == 2 and body[4:8] == bytes((1, 1, 0, 3))
    # RFC 7296 3.3.2 / 3.3.5: first transform: more (3), length 12, ENCR, ID 20,
    # Key Length TV attribute 0x800e 0x0100
    assert body[8:20] == bytes.fromhex("0300000c01000014800e0100")


def test_id_payload_body_is_rest_of_id_payload() -> None:
    # RFC 7296 2.15: the signed RestOfInitIDPayload is ID Type | RESERVED(3) | data
    assert payload_body(IdiPayload(IdType.FQDN, b"a.b")) == b"\x02\x00\x00\x00a.b"


def test_unknown_codes_are_kept() -> None:
    data = build_message(_msg(_all_payloads(), exchange_type=99, flags=0x08))
    msg = parse_message(data)
    assert msg.exchange_type == 99
    notify = msg.notifies(40000)[0]
    assert notify.notify_type == 40000 and notify.spi == b"\x00\x00\x10\x01"
    sa = msg.get(SaPayload)
    assert sa is not None
    odd = sa.proposals[1].transforms[-1]
    assert odd.transform_id == 999 and odd.attributes[0].value == b"\x01\x02\x03"
    unknown = msg.get(UnknownPayload)
    assert unknown is not None and unknown.payload_type == PayloadType.CP


def test_message_helpers() -> None:
    msg = _msg(_all_payloads())
    assert msg.get(KePayload) == KePayload(DhGroup.CURVE25519, bytes(range(32)))
    assert len(msg.get_all(DeletePayload)) == 2
    assert len(msg.notifies()) == 2
    assert msg.sk is None and msg.skf is None
    assert msg.is_initiator and not msg.is_response
    tsi = msg.get(TsiPayload)
    assert tsi is not None
    ts = tsi.selectors[0]
    assert isinstance(ts, TrafficSelector)
    assert str(ts.start_address) == "10.1.0.0" and str(ts.end_address) == "10.1.255.255"
    assert ts.ts_type == 7 and ts.start_port == 443
    idr = msg.get(IdrPayload)
    assert idr is not None and idr.text() == "fd00::2"


# --------------------------------------------------------------------------- critical bit, version


def test_unknown_critical_payload_is_rejected_with_its_type() -> None:
    data = build_message(_msg((NoncePayload(b"n" * 16), UnknownPayload(200, b"??", critical=True))))
    with pytest.raises(IkeProtocolError) as info:
        parse_message(data)
    # RFC 7296 2.5 / 3.10.1: UNSUPPORTED_CRITICAL_PAYLOAD, data = the payload type octet
    assert info.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert info.value.data == bytes([200])
    assert "type 200" in str(info.value)


def test_unknown_noncritical_payload_is_skipped_and_kept() -> None:
    data = build_message(_msg((UnknownPayload(200, b"??"), NoncePayload(b"n" * 16))))
    msg = parse_message(data)
    assert msg.payloads[0] == UnknownPayload(200, b"??")
    assert build_message(msg) == data


@pytest.mark.parametrize("version", [0x10, 0x30, 0xF0])
def test_other_major_versions_are_refused(version: int) -> None:
    data = bytearray(build_message(_msg((NoncePayload(b"n" * 16),))))
    data[17] = version
    with pytest.raises(IkeProtocolError) as info:
        parse_message(bytes(data))
    assert info.value.notify == NotifyType.INVALID_MAJOR_VERSION


def test_minor_version_is_kept() -> None:
    data = bytearray(build_message(_msg((NoncePayload(b"n" * 16),))))
    data[17] = 0x21
    msg = parse_message(bytes(data))
    assert msg.minor_version == 1 and build_message(msg) == bytes(data)


# --------------------------------------------------------------------------- malformed input


def _with_payload(ptype: int, body: bytes, declared: int | None = None) -> bytes:
    """A datagram carrying one payload with a raw body (and optionally a lying length)."""
    length = 4 + len(body) if declared is None else declared
    chain = bytes((0, 0)) + struct.pack("!H", length) + body
    header = SPI_I + SPI_R + bytes((ptype, 0x20, 34, 0x08)) + bytes(4)
    return header + struct.pack("!I", 28 + len(chain)) + chain


def _parse_error(data: bytes) -> IkeParseError:
    with pytest.raises(IkeParseError) as info:
        parse_message(data)
    err = info.value
    assert err.notify == NotifyType.INVALID_SYNTAX
    assert isinstance(err, IkeError)
    return err


def test_short_datagram() -> None:
    err = _parse_error(b"\x00" * 27)
    assert err.where == "IKE header" and err.offset == 0


def test_length_field_must_match_datagram() -> None:
    data = build_message(_msg((NoncePayload(b"n" * 16),)))
    err = _parse_error(data + b"\x00")
    assert err.offset == 24 and "Length field says" in err.problem
    _parse_error(data[:-1])


def test_payload_length_below_four() -> None:
    err = _parse_error(_with_payload(PayloadType.NONCE, b"n" * 16, declared=3))
    assert err.where == "payload #1 (NONCE)" and err.offset == 30


def test_payload_length_past_end() -> None:
    err = _parse_error(_with_payload(PayloadType.NONCE, b"n" * 16, declared=200))
    assert "runs past the end" in err.problem


def test_truncated_generic_header() -> None:
    data = SPI_I + SPI_R + bytes((PayloadType.NONCE, 0x20, 34, 0x08)) + bytes(4)
    data += struct.pack("!I", 30) + b"\x00\x00"
    err = _parse_error(data)
    assert err.offset == 28 and "payload header needs 4" in err.problem


def test_bytes_after_last_payload() -> None:
    data = bytearray(build_message(_msg((NoncePayload(b"n" * 16),))) + b"junk")
    data[24:28] = struct.pack("!I", len(data))
    err = _parse_error(bytes(data))
    assert "4 bytes after the last payload" in err.problem


@pytest.mark.parametrize("size", [0, 15, 257])
def test_nonce_size_limits(size: int) -> None:
    # RFC 7296 2.10
    err = _parse_error(_with_payload(PayloadType.NONCE, b"n" * size))
    assert "16..256" in err.problem


@pytest.mark.parametrize(
    ("ptype", "body", "fragment"),
    [
        (PayloadType.SA, b"", "no proposal"),
        (PayloadType.SA, b"\x00\x00\x00\x08\x01\x01\x00", "need 8"),
        (PayloadType.SA, b"\x01\x00\x00\x08\x01\x01\x00\x00", "Last Substruc is 1"),
        (PayloadType.SA, b"\x00\x00\x00\x07\x01\x01\x00\x00", "Proposal Length 7"),
        (PayloadType.SA, b"\x00\x00\x00\x0c\x01\x01\x04\x00", "Proposal Length 12"),
        (PayloadType.SA, b"\x02\x00\x00\x08\x01\x01\x00\x00", "need 8"),  # says more follow
        (PayloadType.SA, b"\x00\x00\x00\x08\x01\x01\x00\x01", "need 8"),  # 1 transform missing
        (
            PayloadType.SA,
            b"\x00\x00\x00\x10\x01\x01\x00\x01" + b"\x03\x00\x00\x08\x01\x00\x00\x0c",
            "expected 0",
        ),
        (
            PayloadType.SA,
            b"\x00\x00\x00\x10\x01\x01\x00\x01" + b"\x00\x00\x00\x09\x01\x00\x00\x0c",
            "Transform Length 9",
        ),
        (
            PayloadType.SA,
            b"\x00\x00\x00\x14\x01\x01\x00\x01"
            + b"\x00\x00\x00\x0c\x01\x00\x00\x0c"
            + b"\x00\x0e\x00\x09",
            "Attribute Length 9",
        ),
        (
            PayloadType.SA,
            b"\x00\x00\x00\x12\x01\x01\x00\x01" + b"\x00\x00\x00\x0a\x01\x00\x00\x0c" + b"\x80\x0e",
            "need 4",
        ),
        (
            PayloadType.SA,
            b"\x00\x00\x00\x10\x01\x01\x00\x00" + b"\x00\x00\x00\x08\x01\x00\x00\x0c",
            "after 0 transforms",
        ),
        (PayloadType.SA, b"\x00\x00\x00\x08\x01\x01\x00\x00xx", "after the last proposal"),
        (PayloadType.KE, b"\x00\x13\x00", "Key Exchange header"),
        (PayloadType.IDi, b"\x02\x00", "ID header"),
        (PayloadType.IDr, b"", "ID header"),
        (PayloadType.CERT, b"", "Cert Encoding"),
        (PayloadType.CERTREQ, b"", "Cert Encoding"),
        (PayloadType.AUTH, b"\x02\x00\x00", "Auth header"),
        (PayloadType.NOTIFY, b"\x00\x00\x40", "Notify header"),
        (PayloadType.NOTIFY, b"\x03\x04\x40\x00\x00\x00", "SPI Size 4"),
        (PayloadType.DELETE, b"\x03\x04\x00", "Delete header"),
        (PayloadType.DELETE, b"\x03\x04\x00\x02\x00\x00\x00\x01", "2 SPIs of 4 bytes"),
        (PayloadType.TSi, b"\x01\x00\x00", "TS header"),
        (PayloadType.TSi, b"\x01\x00\x00\x00\x07\x00", "need 4"),
        (PayloadType.TSi, b"\x01\x00\x00\x00\x07\x00\x00\x03", "Selector Length 3"),
        (
            PayloadType.TSr,
            b"\x01\x00\x00\x00\x07\x00\x00\x0c" + bytes(8),
            "must be 16",
        ),
        (PayloadType.TSr, b"\x00\x00\x00\x00xx", "after 0 traffic selectors"),
        (PayloadType.SKF, b"\x00\x01\x00", "Fragment Number"),
        (PayloadType.SKF, b"\x00\x00\x00\x01iv", "fragment 0 of 1"),
        (PayloadType.SKF, b"\x00\x03\x00\x02iv", "fragment 3 of 2"),
    ],
)
def test_malformed_payload_bodies(ptype: int, body: bytes, fragment: str) -> None:
    err = _parse_error(_with_payload(ptype, body))
    assert fragment in str(err)
    assert err.where.startswith("payload #1")
    assert 28 <= err.offset <= 28 + 4 + len(body)


def test_error_names_nested_structure_and_absolute_offset() -> None:
    good = build_message(_msg((NoncePayload(b"n" * 16), _sa())))
    data = bytearray(good)
    # second proposal of the SA payload (after header 28 + nonce 20 + SA header 4 + prop 1)
    sa_body = 28 + 20 + 4
    first_prop_len = int.from_bytes(data[sa_body + 2 : sa_body + 4], "big")
    second = sa_body + first_prop_len
    data[second + 7] = 9  # claims 9 transforms, has 5
    err = _parse_error(bytes(data))
    assert err.where.startswith("payload #2 (SA) / proposal #2 / transform #")
    assert sa_body < err.offset < len(data)


def test_sk_must_be_last() -> None:
    sk = SkPayload(PayloadType.IDi, b"x" * 40)
    data = build_message(_msg((sk,)))
    assert parse_message(data).sk == sk
    # an SK followed by bytes is refused (RFC 7296 3.14)
    bad = bytearray(data + b"\x00" * 4)
    bad[24:28] = struct.pack("!I", len(bad))
    err = _parse_error(bytes(bad))
    assert "not the last payload" in err.problem
    with pytest.raises(IkeLocalError, match="last payload"):
        build_message(_msg((sk, NoncePayload(b"n" * 16))))


def test_sk_inside_inner_chain_is_refused() -> None:
    _, chain = build_payloads((SkPayload(0, b"x" * 20),))
    with pytest.raises(IkeParseError, match="nested"):
        parse_payloads(chain, PayloadType.SK)


# --------------------------------------------------------------------------- build errors


@pytest.mark.parametrize(
    "msg",
    [
        _msg((), spi_i=b"short"),
        _msg((), message_id=1 << 32),
        _msg((), exchange_type=256),
        _msg((KePayload(70000, b""),)),
        _msg((NotifyPayload(1 << 16),)),
        _msg((DeletePayload(ProtocolId.ESP, 4, (b"\x00\x01",)),)),
        _msg((NoncePayload(b"n" * 70000),)),
        _msg((SaPayload((Proposal(256, 1, b"", ()),)),)),
        _msg(
            (
                SaPayload(
                    (Proposal(1, 1, b"", (Transform(1, 12, (TransformAttribute(14, 1 << 16),)),)),)
                ),
            )
        ),
        _msg(
            (
                TsiPayload(
                    (
                        TrafficSelector(
                            0,
                            0,
                            65535,
                            ipaddress.ip_address("10.0.0.1"),
                            ipaddress.ip_address("fd00::1"),
                        ),
                    )
                ),
            )
        ),
    ],
)
def test_build_rejects_values_that_do_not_fit(msg: Message) -> None:
    with pytest.raises(IkeLocalError):
        build_message(msg)


# --------------------------------------------------------------------------- SK / SKF

_GCM = SkCipher(EncrId.AES_GCM_16, 256, IntegId.NONE, bytes(range(36)), b"")
_CBC = SkCipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, bytes(16), bytes(range(32)))
_INNER: tuple[Payload, ...] = (
    IdiPayload(IdType.FQDN, b"initiator.test"),
    AuthPayload(AuthMethod.PSK, b"a" * 32),
    _sa(),
    TsiPayload((TrafficSelector.from_network("10.0.0.0/8"),)),
    TsrPayload((TrafficSelector.from_network("192.0.2.0/24"),)),
)


@pytest.mark.parametrize("cipher", [_GCM, _CBC], ids=["gcm", "cbc"])
def test_encrypt_decrypt_sk(cipher: SkCipher) -> None:
    header = _msg(exchange_type=ExchangeType.IKE_AUTH, message_id=1)
    data = encrypt_sk(header, _INNER, cipher)
    msg = parse_message(data)
    assert msg.sk is not None and msg.sk.first_payload == PayloadType.IDi
    assert msg.message_id == 1 and len(msg.payloads) == 1
    assert decrypt_sk(data, msg, cipher) == _INNER
    tampered = bytearray(data)
    tampered[20] ^= 1  # message ID is authenticated
    with pytest.raises(IkeIntegrityError):
        decrypt_sk(bytes(tampered), parse_message(bytes(tampered)), cipher)


def test_encrypt_sk_with_clear_payloads_before_it() -> None:
    header = _msg((VendorIdPayload(b"clear"),), exchange_type=ExchangeType.INFORMATIONAL)
    data = encrypt_sk(header, (DeletePayload(ProtocolId.IKE, 0),), _GCM)
    msg = parse_message(data)
    assert [type(p) for p in msg.payloads] == [VendorIdPayload, SkPayload]
    assert decrypt_sk(data, msg, _GCM) == (DeletePayload(ProtocolId.IKE, 0),)


def test_empty_informational_sk() -> None:
    header = _msg(exchange_type=ExchangeType.INFORMATIONAL, flags=HeaderFlag.RESPONSE)
    data = encrypt_sk(header, (), _CBC)
    msg = parse_message(data)
    assert msg.sk is not None and msg.sk.first_payload == PayloadType.NONE
    assert decrypt_sk(data, msg, _CBC) == ()


def test_decrypt_sk_without_sk_is_local_error() -> None:
    data = build_message(_msg((NoncePayload(b"n" * 16),)))
    with pytest.raises(IkeLocalError, match="no SK"):
        decrypt_sk(data, parse_message(data), _GCM)


@pytest.mark.parametrize("cipher", [_GCM, _CBC], ids=["gcm", "cbc"])
def test_fragments_roundtrip_out_of_order_with_duplicates(cipher: SkCipher) -> None:
    header = _msg(exchange_type=ExchangeType.IKE_AUTH, message_id=1)
    frags = encrypt_skf(header, _INNER, cipher, max_datagram=120)
    assert len(frags) > 2
    assert all(len(f) <= 120 for f in frags)
    collector = FragmentCollector()
    result = None
    order = [*reversed(frags), frags[0]]
    for i, data in enumerate(order):
        msg = parse_message(data)
        assert build_message(msg) == data
        skf = msg.skf
        assert skf is not None and skf.total_fragments == len(frags)
        # RFC 7383 2.5: only fragment 1 names the first inner payload
        assert (skf.first_payload != 0) == (skf.fragment_number == 1)
        result = collector.add(skf, decrypt_skf(data, msg, cipher))
        if i < len(frags) - 1:
            assert result is None
    assert result == _INNER


def test_fragment_total_mismatch_and_reset() -> None:
    collector = FragmentCollector()
    assert collector.add(SkfPayload(0, 2, 3, b""), b"x") is None
    with pytest.raises(IkeParseError, match="Total Fragments 4"):
        collector.add(SkfPayload(0, 1, 4, b""), b"y")
    collector.reset()
    assert collector.add(SkfPayload(PayloadType.NONCE, 1, 1, b""), _nonce_chain()) == (
        NoncePayload(b"z" * 16),
    )


def _nonce_chain() -> bytes:
    return build_payloads((NoncePayload(b"z" * 16),))[1]


def test_fragment_too_small_is_local_error() -> None:
    with pytest.raises(IkeLocalError, match="too small"):
        encrypt_skf(_msg(), _INNER, _GCM, max_datagram=60)
