"""Egress packet capture for tests: tcpdump into a pcap file, and a pure-Python reader.

Why egress only: in tunnel mode the kernel re-injects the decrypted inner packet on the
interface it arrived on, so an *ingress* capture shows clear-text packets that never
crossed the wire.  What a node *sends* (``tcpdump -Q out``) is what an eavesdropper
sees; capture it on both ends.

Typical use (inside the kernel lab, in a namespace made by tests/support/netns.py)::

    with EgressCapture("veth0", tmp_path / "a.pcap", netns=a.name) as cap:
        a.run(["ping", "-c3", b.addr4])
    assert cap.count(PacketKind.ESP) >= 3 and not cap.echoes()

Details that matter (measured, see shared/LAB-NOTES.md):

* ``--immediate-mode`` and ``-U``: packets reach the file as they are seen;
* a short settle time before stopping, or the last packets are lost;
* ``-Z root``: Debian's tcpdump drops privileges before opening the ``-w`` file.

The reader understands the classic pcap format (both byte orders, micro- and
nanosecond timestamps) with Ethernet, Linux cooked (SLL, SLL2) and raw IP links, and
classifies each packet: ESP, AH, ESP in UDP, IKE, NAT keepalive, ICMP, ICMPv6, ...
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import enum
import ipaddress
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

# --------------------------------------------------------------------------- pcap reader

# Classic pcap magic numbers, as read little-endian (the file's byte order decides).
_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
_VLAN_TAGS = (0x8100, 0x88A8)

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
# IPv6 extension headers walked over to find the upper-layer protocol (RFC 8200 4).
_IPV6_EXT = {0, 43, 60}  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_IPV6_NONE = 59

IKE_PORT = 500
NAT_T_PORT = 4500

ICMP_ECHO = {0, 8}  # echo reply, echo request (RFC 792)
ICMPV6_ECHO = {128, 129}  # echo request, echo reply (RFC 4443 4.1, 4.2)


class PcapError(ValueError):
    """The capture file is not a classic pcap file, or is cut short."""


class PacketKind(enum.Enum):
    """What a captured packet is, as seen on the wire."""

    ESP = "esp"  # IP protocol 50
    AH = "ah"  # IP protocol 51
    ESP_IN_UDP = "esp-in-udp"  # UDP 4500 with a non-zero SPI first (RFC 3948 2.1)
    IKE = "ike"  # UDP 500, or UDP 4500 behind the zero non-ESP marker (RFC 3948 2.2)
    NAT_KEEPALIVE = "nat-keepalive"  # UDP 4500 carrying the single byte 0xFF (RFC 3948 2.3)
    ICMP = "icmp"
    ICMPV6 = "icmpv6"
    UDP = "udp"
    TCP = "tcp"
    FRAGMENT = "fragment"  # a non-first IP fragment: no upper-layer header to read
    OTHER_IP = "other-ip"
    NON_IP = "non-ip"  # ARP and other link-layer protocols
    TRUNCATED = "truncated"  # too short for the headers it announces


PROTECTED = frozenset({PacketKind.ESP, PacketKind.AH, PacketKind.ESP_IN_UDP})


@dataclass(frozen=True, slots=True)
class Packet:
    """One captured packet, decoded down to its outermost upper-layer header.

    ``src``/``dst`` are empty for non-IP frames; ``proto`` is the upper-layer protocol
    number (after IPv6 extension headers), -1 for non-IP.  ``spi`` is set for ESP, AH
    and ESP in UDP; ``icmp_type`` for ICMP and ICMPv6; ports for UDP and TCP.
    """

    time: float
    kind: PacketKind
    version: int = 0
    src: str = ""
    dst: str = ""
    proto: int = -1
    spi: int | None = None
    icmp_type: int | None = None
    sport: int | None = None
    dport: int | None = None
    length: int = 0
    data: bytes = field(default=b"", repr=False)

    @property
    def is_echo(self) -> bool:
        """A ping request or reply in clear text (ICMP or ICMPv6)."""
        if self.kind is PacketKind.ICMP:
            return self.icmp_type in ICMP_ECHO
        if self.kind is PacketKind.ICMPV6:
            return self.icmp_type in ICMPV6_ECHO
        return False

    @property
    def protected(self) -> bool:
        """ESP, AH or ESP in UDP: the payload is IPsec-protected."""
        return self.kind in PROTECTED


def parse_pcap(data: bytes) -> list[Packet]:
    """Decode a whole classic pcap file."""
    if len(data) < 24:
        raise PcapError(f"pcap file too short for its 24-byte header ({len(data)} bytes)")
    (magic,) = struct.unpack_from("<I", data)
    if magic in (_MAGIC_US, _MAGIC_NS):
        order = "<"
    else:
        order = ">"
        (magic,) = struct.unpack_from(">I", data)
        if magic not in (_MAGIC_US, _MAGIC_NS):
            raise PcapError(
                f"not a classic pcap file (magic {data[:4].hex()}); pcapng is not read here: "
                "capture with tcpdump -w, which writes classic pcap"
            )
    scale = 1e-9 if magic == _MAGIC_NS else 1e-6
    major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack_from(
        order + "HHiIII", data, 4
    )
    if major != 2:
        raise PcapError(f"unsupported pcap version {major}")
    linktype &= 0x0FFFFFFF  # the upper bits carry FCS information
    packets = []
    offset = 24
    while offset < len(data):
        if offset + 16 > len(data):
            raise PcapError(f"pcap record header cut short at byte {offset}")
        sec, frac, incl, orig = struct.unpack_from(order + "IIII", data, offset)
        offset += 16
        if offset + incl > len(data):
            raise PcapError(f"pcap record at byte {offset - 16} announces {incl} bytes, cut short")
        frame = data[offset : offset + incl]
        offset += incl
        packets.append(decode_frame(linktype, frame, time=sec + frac * scale, length=orig))
    return packets


def read_pcap(path: Path | str) -> list[Packet]:
    """Decode a classic pcap file from disk."""
    return parse_pcap(Path(path).read_bytes())


def decode_frame(linktype: int, frame: bytes, *, time: float = 0.0, length: int = 0) -> Packet:
    """Classify one link-layer frame."""
    ethertype: int | None
    if linktype == LINKTYPE_ETHERNET:
        ethertype, off = _read_u16(frame, 12), 14
        while ethertype in _VLAN_TAGS:  # 802.1Q / 802.1ad tags
            ethertype, off = _read_u16(frame, off + 2), off + 4
    elif linktype == LINKTYPE_LINUX_SLL:
        ethertype, off = _read_u16(frame, 14), 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        ethertype, off = _read_u16(frame, 0), 20
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        version = frame[0] >> 4 if frame else 0
        ethertype, off = {4: ETH_P_IP, 6: ETH_P_IPV6}.get(version, 0), 0
    else:
        raise PcapError(f"unsupported pcap link type {linktype}")
    base = Packet(time=time, kind=PacketKind.NON_IP, length=length or len(frame), data=frame)
    if ethertype is None:
        return _replace(base, kind=PacketKind.TRUNCATED)
    if ethertype == ETH_P_IP:
        return _decode_ipv4(base, frame[off:])
    if ethertype == ETH_P_IPV6:
        return _decode_ipv6(base, frame[off:])
    return base


def _read_u16(buf: bytes, off: int) -> int | None:
    if off + 2 > len(buf):
        return None
    return int.from_bytes(buf[off : off + 2], "big")


def _replace(p: Packet, **changes: Any) -> Packet:
    return dataclasses.replace(p, **changes)


def _decode_ipv4(base: Packet, ip: bytes) -> Packet:
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return _replace(base, kind=PacketKind.TRUNCATED, version=4)
    ihl = (ip[0] & 0x0F) * 4
    proto = ip[9]
    pkt = _replace(
        base,
        version=4,
        proto=proto,
        src=str(ipaddress.IPv4Address(ip[12:16])),
        dst=str(ipaddress.IPv4Address(ip[16:20])),
    )
    if len(ip) < ihl or ihl < 20:
        return _replace(pkt, kind=PacketKind.TRUNCATED)
    if struct.unpack_from("!H", ip, 6)[0] & 0x1FFF:  # fragment offset (RFC 791 3.1)
        return _replace(pkt, kind=PacketKind.FRAGMENT)
    return _decode_upper(pkt, proto, ip[ihl:])


def _decode_ipv6(base: Packet, ip: bytes) -> Packet:
    if len(ip) < 40 or ip[0] >> 4 != 6:
        return _replace(base, kind=PacketKind.TRUNCATED, version=6)
    pkt = _replace(
        base,
        version=6,
        src=str(ipaddress.IPv6Address(ip[8:24])),
        dst=str(ipaddress.IPv6Address(ip[24:40])),
    )
    nxt, off = ip[6], 40
    for _ in range(16):  # a bounded walk over the extension headers (RFC 8200 4.1)
        if nxt in _IPV6_EXT:
            if off + 2 > len(ip):
                return _replace(pkt, kind=PacketKind.TRUNCATED, proto=nxt)
            nxt, off = ip[off], off + (ip[off + 1] + 1) * 8
        elif nxt == _IPV6_FRAGMENT:
            if off + 8 > len(ip):
                return _replace(pkt, kind=PacketKind.TRUNCATED, proto=nxt)
            if struct.unpack_from("!H", ip, off + 2)[0] >> 3:  # RFC 8200 4.5
                return _replace(pkt, kind=PacketKind.FRAGMENT, proto=ip[off])
            nxt, off = ip[off], off + 8
        else:
            break
    if nxt == _IPV6_NONE or off > len(ip):
        return _replace(pkt, kind=PacketKind.OTHER_IP, proto=nxt)
    return _decode_upper(_replace(pkt, proto=nxt), nxt, ip[off:])


def _decode_upper(pkt: Packet, proto: int, body: bytes) -> Packet:
    truncated = _replace(pkt, kind=PacketKind.TRUNCATED)
    if proto == IPPROTO_ESP:  # RFC 4303 2: the SPI opens the ESP header
        if len(body) < 4:
            return truncated
        return _replace(pkt, kind=PacketKind.ESP, spi=int.from_bytes(body[:4], "big"))
    if proto == IPPROTO_AH:  # RFC 4302 2: next header, length, reserved, then the SPI
        if len(body) < 8:
            return truncated
        return _replace(pkt, kind=PacketKind.AH, spi=int.from_bytes(body[4:8], "big"))
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        if not body:
            return truncated
        kind = PacketKind.ICMP if proto == IPPROTO_ICMP else PacketKind.ICMPV6
        return _replace(pkt, kind=kind, icmp_type=body[0])
    if proto == IPPROTO_TCP:
        if len(body) < 4:
            return truncated
        sport, dport = struct.unpack_from("!HH", body)
        return _replace(pkt, kind=PacketKind.TCP, sport=sport, dport=dport)
    if proto == IPPROTO_UDP:
        if len(body) < 8:
            return truncated
        sport, dport = struct.unpack_from("!HH", body)
        pkt = _replace(pkt, kind=PacketKind.UDP, sport=sport, dport=dport)
        return _decode_udp_payload(pkt, body[8:])
    return _replace(pkt, kind=PacketKind.OTHER_IP)


def _decode_udp_payload(pkt: Packet, payload: bytes) -> Packet:
    ports = {pkt.sport, pkt.dport}
    if NAT_T_PORT in ports:
        if payload == b"\xff":  # RFC 3948 2.3
            return _replace(pkt, kind=PacketKind.NAT_KEEPALIVE)
        if payload[:4] == b"\0\0\0\0" and len(payload) >= 4:  # RFC 3948 2.2 non-ESP marker
            return _replace(pkt, kind=PacketKind.IKE)
        if len(payload) >= 8:  # RFC 3948 2.1: an ESP header (SPI, sequence number)
            return _replace(pkt, kind=PacketKind.ESP_IN_UDP, spi=int.from_bytes(payload[:4], "big"))
        return pkt
    if IKE_PORT in ports:
        return _replace(pkt, kind=PacketKind.IKE)
    return pkt


def kinds(packets: Iterable[Packet]) -> Counter[PacketKind]:
    """How many packets of each kind."""
    return Counter(p.kind for p in packets)


# --------------------------------------------------------------------------- tcpdump


class CaptureError(RuntimeError):
    """tcpdump could not start or stop; the message carries its stderr."""


TCPDUMP = shutil.which("tcpdump") or "/usr/bin/tcpdump"
IP = shutil.which("ip") or "/usr/sbin/ip"
_live: set[EgressCapture] = set()


class EgressCapture:
    """``tcpdump -Q out`` on one interface, optionally inside a network namespace.

    ``start()`` returns once tcpdump is listening; ``stop()`` waits ``settle`` seconds
    so the last packets are written, stops tcpdump and returns the decoded packets
    (also kept in ``.packets``).  Used as a context manager it starts on entry, stops
    on a normal exit and kills tcpdump on an exception.  Every tcpdump still running
    at interpreter exit is killed.
    """

    def __init__(
        self,
        interface: str,
        path: Path | str,
        *,
        netns: str | None = None,
        bpf: Sequence[str] = (),
        direction: str = "out",
        settle: float = 1.0,
        start_timeout: float = 30.0,
    ) -> None:
        if direction not in ("in", "out", "inout"):
            raise ValueError(f"direction must be in, out or inout, not {direction!r}")
        self.interface = interface
        self.path = Path(path)
        self.netns = netns
        self.bpf = tuple(bpf)
        self.direction = direction
        self.settle = settle
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None
        self._packets: list[Packet] | None = None

    def __repr__(self) -> str:
        where = f" in netns {self.netns}" if self.netns else ""
        return f"<EgressCapture {self.interface}{where} -> {self.path}>"

    def argv(self) -> list[str]:
        cmd = [TCPDUMP, "-i", self.interface, "-Q", self.direction, "--immediate-mode", "-U"]
        cmd += ["-n", "-Z", "root", "-w", str(self.path), *self.bpf]
        return [IP, "netns", "exec", self.netns, *cmd] if self.netns else cmd

    @property
    def stderr(self) -> str:
        """What tcpdump said (its "N packets captured / dropped by kernel" summary)."""
        return "".join(self._stderr)

    @property
    def dropped(self) -> int | None:
        """Packets the kernel dropped before tcpdump read them (None until stopped)."""
        found = re.search(r"(\d+) packets? dropped by kernel", self.stderr)
        return int(found.group(1)) if found else None

    @property
    def packets(self) -> list[Packet]:
        if self._packets is None:
            raise RuntimeError(f"{self!r}: call stop() before reading the packets")
        return self._packets

    def count(self, kind: PacketKind, *, src: str | None = None) -> int:
        """Packets of ``kind`` (sent from ``src`` if given)."""
        return sum(1 for p in self.packets if p.kind is kind and src in (None, p.src))

    def echoes(self) -> list[Packet]:
        """ICMP/ICMPv6 echo requests and replies seen in clear text."""
        return [p for p in self.packets if p.is_echo]

    def start(self) -> EgressCapture:
        if self._proc is not None:
            raise RuntimeError(f"{self!r} already started")
        if not Path(TCPDUMP).exists():
            raise CaptureError("tcpdump not found: `apt-get install tcpdump` (or `make deps`)")
        self._proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _live.add(self)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._listening.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise CaptureError(
                    f"{self!r}: tcpdump did not start listening within {self.start_timeout:g} s "
                    f"(exit status {self._proc.returncode}): {self.stderr.strip()}"
                )
        return self

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode(errors="replace")
            self._stderr.append(line)
            if "listening on" in line:
                self._listening.set()

    def stop(self) -> list[Packet]:
        """Let the last packets reach the file, stop tcpdump, decode the capture."""
        if self._proc is None:
            raise RuntimeError(f"{self!r} was never started")
        if self._proc.poll() is None:
            time.sleep(self.settle)
            self._proc.send_signal(signal.SIGINT)  # tcpdump flushes and exits on INT
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.close()
                raise CaptureError(f"{self!r}: tcpdump ignored SIGINT for 15 s") from None
        self.close()
        if self._proc.returncode not in (0, -signal.SIGINT):
            raise CaptureError(
                f"{self!r}: tcpdump exited {self._proc.returncode}: {self.stderr.strip()}"
            )
        self._packets = read_pcap(self.path)
        return self._packets

    def close(self) -> None:
        """Kill tcpdump if it still runs; idempotent."""
        _live.discard(self)
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._proc.stderr is not None:
            self._proc.stderr.close()

    def __enter__(self) -> EgressCapture:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.stop()
        else:
            self.close()


@atexit.register
def _kill_leftovers() -> None:
    for cap in list(_live):
        cap.close()
