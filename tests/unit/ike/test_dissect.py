"""Our IKEv2 messages as Wireshark sees them (issue #16): a whole exchange between two
of our endpoints (IKE_SA_INIT, IKE_AUTH, a CHILD SA rekey, an IKE SA rekey, Delete),
written to a pcap and dissected by ``tshark`` with the IKE SAs' keys in its IKEv2
decryption table.

Every packet must dissect as ISAKMP version 2.0 without a malformed-packet or error
expert item, and every Encrypted payload must decrypt (its inner payloads appear).
The keys exist only in this test's temporary directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ipsecd.ike.constants import EncrId, IntegId
from ipsecd.ike.crypto import SkCipher
from ipsecd.ike.sa import IkeSa

from .harness import make_configs
from .pair import Pair, Wire

TSHARK_HINT = (
    "tshark is not installed: `apt-get install tshark` (Debian; answer 'no' to capture "
    "by non-root users, or set DEBIAN_FRONTEND=noninteractive), or `make deps`"
)

#: Wireshark's names in the ikev2_decryption_table UAT (packet-isakmp.c: the value
#: strings of its "Encryption algorithm" and "Integrity algorithm" fields).
_ENCR = {
    (EncrId.AES_CBC, 128): "AES-CBC-128 [RFC3602]",
    (EncrId.AES_CBC, 192): "AES-CBC-192 [RFC3602]",
    (EncrId.AES_CBC, 256): "AES-CBC-256 [RFC3602]",
    (EncrId.AES_GCM_16, 128): "AES-GCM-128 with 16 octet ICV [RFC5282]",
    (EncrId.AES_GCM_16, 192): "AES-GCM-192 with 16 octet ICV [RFC5282]",
    (EncrId.AES_GCM_16, 256): "AES-GCM-256 with 16 octet ICV [RFC5282]",
}
_INTEG = {
    IntegId.NONE: "NONE [RFC4306]",
    IntegId.HMAC_SHA2_256_128: "HMAC_SHA2_256_128 [RFC4868]",
    IntegId.HMAC_SHA2_384_192: "HMAC_SHA2_384_192 [RFC4868]",
    IntegId.HMAC_SHA2_512_256: "HMAC_SHA2_512_256 [RFC4868]",
}
#: Payloads we send inside SK, as tshark -V names them (packet-isakmp.c payload types).
_INNER_NAMES = (
    "Identification - Initiator",
    "Identification - Responder",
    "Authentication",
    "Security Association",
    "Nonce",
    "Key Exchange",
    "Traffic Selector - Initiator",
    "Traffic Selector - Responder",
    "Delete",
    "Notify",
)


# --------------------------------------------------------------------------- pcap


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(w: Wire, ident: int) -> bytes:
    """Ethernet II / IPv4 (RFC 791) / UDP (RFC 768) around one datagram."""
    src = bytes(int(x) for x in w.src[0].split("."))
    dst = bytes(int(x) for x in w.dst[0].split("."))
    udp_len = 8 + len(w.data)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", w.src[1], w.dst[1], udp_len, 0) + w.data
    udp_sum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ident, 0x4000, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    macs = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
    return macs + b"\x08\x00" + ip + udp


def write_pcap(path: Path, wire: list[Wire]) -> None:
    """libpcap format, LINKTYPE_ETHERNET, microsecond timestamps."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, w in enumerate(wire, start=1):
        frame = _frame(w, i)
        sec, usec = int(w.deliver_at), round((w.deliver_at % 1) * 1e6) % 1_000_000
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


# --------------------------------------------------------------------------- keys


def _uat_record(sa: IkeSa) -> str:
    """One ikev2_decryption_table record: SPIi, SPIr, SK_ei, SK_er, encryption
    algorithm, SK_ai, SK_ar, integrity algorithm (RFC 7296 2.14 key names)."""
    assert sa.keys is not None
    mine, theirs = sa.keys.out_cipher, sa.keys.in_cipher
    ci, cr = (mine, theirs) if sa.initiator else (theirs, mine)
    fields = [
        sa.spi_i.hex(),
        sa.spi_r.hex(),
        ci.encr_key.hex(),
        cr.encr_key.hex(),
        _ENCR[(EncrId(ci.encr_id), _bits(ci))],
        ci.integ_key.hex(),
        cr.integ_key.hex(),
        _INTEG[IntegId(ci.integ_id)],
    ]
    # UAT text: byte fields as bare hex, enumerations as quoted strings
    return ",".join(f'"{f}"' if " " in f else f for f in fields)


def _bits(cipher: SkCipher) -> int:
    return cipher.encr_key_bits or 0


def _tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.fail(TSHARK_HINT)
    return path


def _frames(text: str) -> list[str]:
    parts = text.split("\nFrame ")
    return [p for p in parts if p.strip()]


@pytest.mark.parametrize(
    ("ike", "esp", "encap"),
    [
        ("aes128gcm16-prfsha256-ecp256", "aes128gcm16", False),
        ("aes256-sha256-ecp256", "aes256-sha256", True),
    ],
    ids=["gcm-port500", "cbc-port4500"],
)
def test_tshark_dissects_and_decrypts_a_whole_exchange(
    tmp_path: Path, ike: str, esp: str, encap: bool
) -> None:
    tshark = _tshark()
    ci, cr = make_configs(ike=(ike,), esp=(esp,))
    ci = dataclasses.replace(ci, force_encapsulation=encap)
    p = Pair([ci], [cr])
    p.initiate("a", ci)
    p.settle()
    (sa,) = p.sas("a")
    assert sa.rekey_child(sa.children[0].inbound_spi, p.now)  # CREATE_CHILD_SA + Delete
    p.settle()
    (sa,) = p.sas("b")
    assert sa.rekey_ike(p.now)  # CREATE_CHILD_SA (new SPIs, new keys) + Delete
    p.settle()
    (sa,) = p.sas("a")
    sa.delete(p.now)  # INFORMATIONAL with the IKE SA's Delete
    p.settle()
    assert not p.sas("a") and not p.sas("b")

    # every IKE SA of side a (the first one and the rekeyed one) with its keys
    sas = {id(s): s for who in ("a",) for _, s, _ in p.events[who] if s.keys is not None}
    assert len(sas) == 2, "expected the first IKE SA and the one its rekey made"
    records = [_uat_record(s) for s in sas.values()]
    (tmp_path / "ikev2_decryption_table").write_text("\n".join(records) + "\n")
    pcap = tmp_path / "exchange.pcap"
    write_pcap(pcap, p.wire)
    if encap:
        assert any(w.dst[1] == 4500 and w.data[:4] == bytes(4) for w in p.wire)

    args = [tshark, "-n", "-r", str(pcap), "-V"]
    for record in records:
        args += ["-o", f"uat:ikev2_decryption_table:{record}"]
    # a private home: no personal preferences or tables of whoever runs the test
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "LC_ALL": "C.UTF-8"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    frames = _frames(proc.stdout)
    decrypted = 0
    assert len(frames) == len(p.wire), (len(frames), len(p.wire))
    for i, (text, w) in enumerate(zip(frames, p.wire, strict=True), start=1):
        where = f"frame {i} ({len(w.data)} bytes {w.src}->{w.dst})"
        assert "Internet Security Association and Key Management Protocol" in text, where
        assert "Version: 2.0" in text, where
        assert "Malformed Packet" not in text, where
        assert "[Expert Info (Error" not in text, f"{where}:\n{text}"
        exchange = w.data[4 + 18] if w.src[1] == 4500 else w.data[18]  # RFC 3948 2.2 marker
        if exchange != 34:  # everything after IKE_SA_INIT is in an SK payload
            assert "Payload: Encrypted and Authenticated (46)" in text, where
            assert "Decrypted Data" in text, f"{where}: not decrypted\n{text}"
            assert "incorrect" not in text, f"{where}: integrity check failed\n{text}"
            inner = text[text.index("Decrypted Data") :]
            names = re.findall(r"^\s+Payload: (.+?) \(\d+\)", inner, re.M)
            if not names:  # an answer with no payload: only padding was encrypted
                assert "Pad Length" in inner, f"{where}: nothing decrypted\n{text}"
            assert set(names) <= set(_INNER_NAMES) | {"Transform", "Proposal"}, names
            decrypted += len(names)
    assert decrypted >= 20, "too few inner payloads were decrypted"
