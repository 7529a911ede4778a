"""The kernel lab itself works: real ESP between two namespaces, seen on the wire.

Uses iproute2 (`ip xfrm`) on purpose, not the ipsecd library, so a failure here points
at the lab (VM, modules, namespaces, capture), not at ipsecd.xfrm.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.kernel.conftest import NsPair, ip_batch
from tests.support.capture import EgressCapture, PacketKind, kinds
from tests.support.netns import Netns

SPI_AB = 0x0A0B0001
SPI_BA = 0x0A0B0002
PING = ["ping", "-c", "3", "-i", "0.2", "-W", "5"]


def test_running_in_the_lab_vm_with_esp() -> None:
    assert os.environ.get("IPSECD_LAB") == "1"
    assert os.geteuid() == 0
    proc = subprocess.run(["modprobe", "esp4"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"modprobe esp4 failed: {proc.stderr.strip()}"
    modules = Path("/proc/modules").read_text(encoding="ascii")
    assert any(line.startswith("esp4 ") for line in modules.splitlines())
    # The guest's temporary directory is writable (the root filesystem is not).
    assert os.access(os.environ["TMPDIR"], os.W_OK)


def _redact(xfrm_output: str) -> str:
    """`ip xfrm state` output without the key material (for assertion messages)."""
    return re.sub(r"0x[0-9a-f]{16,}", "0x<key>", xfrm_output)


def _transport_sas(
    here: Netns, there: Netns, out: tuple[int, str], inb: tuple[int, str]
) -> list[str]:
    """ESP transport SAs and policies for ``here``; ``out``/``inb`` are (SPI, key hex)."""
    assert here.addr4 and there.addr4
    src, dst = here.addr4, there.addr4
    aead = "aead 'rfc4106(gcm(aes))'"
    return [
        f"xfrm state add src {src} dst {dst} proto esp spi {out[0]:#x} reqid 1 "
        f"mode transport {aead} 0x{out[1]} 128",
        f"xfrm state add src {dst} dst {src} proto esp spi {inb[0]:#x} reqid 2 "
        f"mode transport {aead} 0x{inb[1]} 128",
        f"xfrm policy add src {src}/32 dst {dst}/32 dir out "
        f"tmpl src {src} dst {dst} proto esp reqid 1 mode transport",
        f"xfrm policy add src {dst}/32 dst {src}/32 dir in "
        f"tmpl src {dst} dst {src} proto esp reqid 2 mode transport",
    ]


def test_esp_transport_ping_is_encrypted_on_the_wire(
    ns_pair: NsPair, egress_capture: Callable[..., EgressCapture]
) -> None:
    a, b = ns_pair
    assert a.addr4 and b.addr4

    # Control: without SAs the capture sees the pings in clear text.  This is what
    # makes the "no clear text" assertion below able to fail.
    cap = egress_capture(a)
    a.run([*PING, b.addr4])
    clear = cap.stop()
    assert [p for p in clear if p.is_echo and p.src == a.addr4], kinds(clear)

    # 20 bytes = AES-128 key + 4-byte salt (RFC 4106 8.1); fresh for every run.
    ab, ba = (SPI_AB, secrets.token_hex(20)), (SPI_BA, secrets.token_hex(20))
    ip_batch(a, _transport_sas(a, b, out=ab, inb=ba))
    ip_batch(b, _transport_sas(b, a, out=ba, inb=ab))
    states = a.run(["ip", "xfrm", "state"]).stdout
    assert "rfc4106(gcm(aes))" in states and f"{SPI_AB:#010x}" in states, _redact(states)

    cap_a, cap_b = egress_capture(a), egress_capture(b)
    a.run([*PING, b.addr4])
    sent_a, sent_b = cap_a.stop(), cap_b.stop()

    esp_a = [p for p in sent_a if p.kind is PacketKind.ESP and p.src == a.addr4]
    esp_b = [p for p in sent_b if p.kind is PacketKind.ESP and p.src == b.addr4]
    assert len(esp_a) >= 3 and {p.spi for p in esp_a} == {SPI_AB}, kinds(sent_a)
    assert len(esp_b) >= 3 and {p.spi for p in esp_b} == {SPI_BA}, kinds(sent_b)
    assert not [p for p in sent_a + sent_b if p.is_echo], "clear-text ICMP echo on the wire"

    # The kernel counted the pings on the outbound SA: ESP really carried them.
    sa = ["src", a.addr4, "dst", b.addr4, "proto", "esp", "spi", f"{SPI_AB:#x}"]
    stats = a.run(["ip", "-s", "xfrm", "state", "get", *sa]).stdout
    counted = re.search(r"lifetime current:\s*\d+\(bytes\), (\d+)\(packets\)", stats)
    assert counted and int(counted.group(1)) >= 3, _redact(stats)
