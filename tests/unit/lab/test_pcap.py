"""The pcap reader of tests/support/capture.py, on hand-built capture files."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from tests.support.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    EgressCapture,
    Packet,
    PacketKind,
    PcapError,
    kinds,
    parse_pcap,
    read_pcap,
)

A4, B4 = "192.0.2.1", "192.0.2.2"
A6, B6 = "fd00::1", "fd00::2"
MAC = bytes.fromhex("020000000001") + bytes.fromhex("020000000002")


# ---------------------------------------------------------------- builders


def pcap(
    frames: list[bytes],
    *,
    linktype: int = LINKTYPE_ETHERNET,
    order: str = "<",
    nanos: bool = False,
) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)
    for i, frame in enumerate(frames):
        out += struct.pack(order + "IIII", 1_700_000_000 + i, 500, len(frame), len(frame))
        out += frame
    return out


def eth(ip: bytes, *, vlan: int | None = None) -> bytes:
    ethertype = b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd"
    tag = b"\x81\x00" + struct.pack("!H", vlan) if vlan is not None else b""
    return MAC + tag + ethertype + ip


def ipv4(proto: int, body: bytes, *, src: str = A4, dst: str = B4, frag: int = 0) -> bytes:
    return (
        struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 1, frag, 64, proto, 0)
        + ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + body
    )


def ipv6(nxt: int, body: bytes, *, src: str = A6, dst: str = B6) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(body), nxt, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + body
    )


def esp(spi: int) -> bytes:
    return struct.pack("!II", spi, 1) + bytes(24)


def ah(spi: int) -> bytes:
    return struct.pack("!BBHII", 4, 4, 0, spi, 1) + bytes(12)


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


ECHO_REQUEST = bytes([8, 0, 0, 0]) + bytes(60)
ECHO6_REQUEST = bytes([128, 0, 0, 0]) + bytes(60)


def one(frame: bytes, *, linktype: int = LINKTYPE_ETHERNET) -> Packet:
    packets = parse_pcap(pcap([frame], linktype=linktype))
    assert len(packets) == 1
    return packets[0]


# ---------------------------------------------------------------- classification


def test_esp_over_ipv4_with_its_spi_and_addresses() -> None:
    p = one(eth(ipv4(50, esp(0x0A0B0001))))
    assert (p.kind, p.version, p.src, p.dst, p.proto, p.spi) == (
        PacketKind.ESP,
        4,
        A4,
        B4,
        50,
        0x0A0B0001,
    )
    assert p.protected and not p.is_echo


def test_ah_over_ipv6_with_its_spi() -> None:
    p = one(eth(ipv6(51, ah(0x1234))))
    assert (p.kind, p.version, p.src, p.dst, p.spi) == (PacketKind.AH, 6, A6, B6, 0x1234)
    assert p.protected


def test_clear_icmp_and_icmpv6_echoes_are_told_apart_from_other_icmp() -> None:
    echo4 = one(eth(ipv4(1, ECHO_REQUEST)))
    echo6 = one(eth(ipv6(58, ECHO6_REQUEST)))
    neighbour_solicitation = one(eth(ipv6(58, bytes([135]) + bytes(23))))
    unreachable = one(eth(ipv4(1, bytes([3, 1, 0, 0]) + bytes(4))))
    assert (echo4.kind, echo4.icmp_type, echo4.is_echo) == (PacketKind.ICMP, 8, True)
    assert (echo6.kind, echo6.icmp_type, echo6.is_echo) == (PacketKind.ICMPV6, 128, True)
    assert neighbour_solicitation.kind is PacketKind.ICMPV6 and not neighbour_solicitation.is_echo
    assert unreachable.kind is PacketKind.ICMP and not unreachable.is_echo
    assert not echo4.protected


@pytest.mark.parametrize(
    ("payload", "kind", "spi"),
    [
        (esp(0xC0FFEE), PacketKind.ESP_IN_UDP, 0xC0FFEE),  # RFC 3948 2.1
        (bytes(4) + b"IKE header...", PacketKind.IKE, None),  # RFC 3948 2.2 non-ESP marker
        (b"\xff", PacketKind.NAT_KEEPALIVE, None),  # RFC 3948 2.3
        (b"\x01\x02", PacketKind.UDP, None),  # too short to be ESP
    ],
)
def test_udp_4500_is_split_by_its_first_bytes(
    payload: bytes, kind: PacketKind, spi: int | None
) -> None:
    for sport, dport in ((4500, 4500), (40000, 4500), (4500, 40000)):
        p = one(eth(ipv4(17, udp(sport, dport, payload))))
        assert (p.kind, p.spi, p.sport, p.dport) == (kind, spi, sport, dport)
    assert one(eth(ipv6(17, udp(4500, 4500, payload)))).kind is kind


def test_ike_on_500_and_plain_udp_and_tcp() -> None:
    assert one(eth(ipv4(17, udp(500, 500, bytes(28))))).kind is PacketKind.IKE
    plain = one(eth(ipv4(17, udp(5353, 53, b"query"))))
    assert (plain.kind, plain.sport, plain.dport) == (PacketKind.UDP, 5353, 53)
    tcp = one(eth(ipv6(6, struct.pack("!HH", 40000, 5432) + bytes(16))))
    assert (tcp.kind, tcp.sport, tcp.dport) == (PacketKind.TCP, 40000, 5432)


def test_ipv6_extension_headers_are_walked_to_the_upper_layer() -> None:
    hop_by_hop = bytes([60, 0]) + bytes(6)  # next: destination options, 8 bytes
    dest_opts = bytes([50, 0]) + bytes(6)  # next: ESP
    p = one(eth(ipv6(0, hop_by_hop + dest_opts + esp(77))))
    assert (p.kind, p.proto, p.spi) == (PacketKind.ESP, 50, 77)
    first_fragment = struct.pack("!BBHI", 58, 0, 0x0001, 9)  # offset 0, more fragments
    assert one(eth(ipv6(44, first_fragment + ECHO6_REQUEST))).is_echo
    later_fragment = struct.pack("!BBHI", 58, 0, (100 << 3), 9)
    assert one(eth(ipv6(44, later_fragment + bytes(16)))).kind is PacketKind.FRAGMENT


def test_a_non_first_ipv4_fragment_has_no_upper_layer_header() -> None:
    p = one(eth(ipv4(50, bytes(16), frag=185)))
    assert (p.kind, p.spi) == (PacketKind.FRAGMENT, None)


def test_non_ip_and_truncated_frames() -> None:
    arp = MAC + b"\x08\x06" + bytes(28)
    assert one(arp).kind is PacketKind.NON_IP
    assert one(MAC[:10]).kind is PacketKind.TRUNCATED
    short_esp = one(eth(ipv4(50, b"\x00\x00")))
    assert short_esp.kind is PacketKind.TRUNCATED and short_esp.src == A4
    assert one(eth(ipv4(1, b"")[:12])).kind is PacketKind.TRUNCATED


# ---------------------------------------------------------------- link types and file format


def test_vlan_tagged_ethernet() -> None:
    assert one(eth(ipv4(50, esp(5)), vlan=42)).spi == 5


def test_linux_cooked_captures_and_raw_ip() -> None:
    sll = struct.pack("!HHH8sH", 4, 1, 6, bytes(8), 0x0800) + ipv4(50, esp(6))
    sll2 = struct.pack("!HHIHBB8s", 0x86DD, 0, 2, 1, 4, 6, bytes(8)) + ipv6(51, ah(7))
    assert one(sll, linktype=LINKTYPE_LINUX_SLL).spi == 6
    assert one(sll2, linktype=LINKTYPE_LINUX_SLL2).kind is PacketKind.AH
    assert one(ipv6(58, ECHO6_REQUEST), linktype=LINKTYPE_RAW).is_echo


def test_both_byte_orders_and_nanosecond_timestamps() -> None:
    frame = eth(ipv4(50, esp(9)))
    little = parse_pcap(pcap([frame, frame]))
    big = parse_pcap(pcap([frame, frame], order=">"))
    nanos = parse_pcap(pcap([frame], nanos=True))
    assert little == big
    assert little[0].time == pytest.approx(1_700_000_000.0005)
    assert little[1].time == pytest.approx(1_700_000_001.0005)
    assert nanos[0].time == pytest.approx(1_700_000_000.0000005)
    assert little[0].length == len(frame) and little[0].data == frame


def test_kinds_counts_a_whole_capture(tmp_path: Path) -> None:
    frames = [eth(ipv4(50, esp(1))), eth(ipv4(50, esp(1))), eth(ipv4(1, ECHO_REQUEST))]
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap(frames))
    assert kinds(read_pcap(path)) == {PacketKind.ESP: 2, PacketKind.ICMP: 1}
    assert parse_pcap(pcap([])) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xa1\xb2", "too short"),
        (b"\x0a\x0d\x0d\x0a" + bytes(28), "pcapng is not read here"),
        (pcap([eth(ipv4(50, esp(1)))])[:-3], "cut short"),
        (pcap([eth(ipv4(50, esp(1)))])[:30], "record header cut short"),
        (pcap([b"x"], linktype=147), "unsupported pcap link type 147"),
    ],
)
def test_broken_files_raise_pcap_error(data: bytes, message: str) -> None:
    with pytest.raises(PcapError, match=message):
        parse_pcap(data)


# ---------------------------------------------------------------- the tcpdump command line


def test_egress_capture_command_line() -> None:
    cap = EgressCapture("veth0", "/tmp/x.pcap", netns="klab-abc", bpf=["esp", "or", "icmp"])
    argv = cap.argv()
    assert argv[:4] == [argv[0], "netns", "exec", "klab-abc"]
    tcpdump = argv[4:]
    assert tcpdump[tcpdump.index("-Q") + 1] == "out"
    assert tcpdump[tcpdump.index("-Z") + 1] == "root"
    assert tcpdump[tcpdump.index("-w") + 1] == "/tmp/x.pcap"
    assert "--immediate-mode" in tcpdump and tcpdump[-3:] == ["esp", "or", "icmp"]
    assert EgressCapture("eth0", "/tmp/y.pcap").argv()[1:3] == ["-i", "eth0"]
    with pytest.raises(ValueError, match="direction"):
        EgressCapture("eth0", "/tmp/y.pcap", direction="sideways")
    with pytest.raises(RuntimeError, match="call stop"):
        _ = cap.packets


def test_dropped_packets_are_read_from_tcpdumps_summary() -> None:
    cap = EgressCapture("veth0", "/tmp/x.pcap")
    assert cap.dropped is None
    cap._stderr += ["tcpdump: listening on veth0\n", "7 packets captured\n"]
    cap._stderr += ["9 packets received by filter\n", "2 packets dropped by kernel\n"]
    assert cap.dropped == 2
