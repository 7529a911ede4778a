"""Regenerate the strongSwan IKEv2 captures in this folder (needs root).

    .venv/bin/python tests/data/ike/captures/regenerate.py [OUTDIR]

For every case in :data:`CASES` two charons (kernel-libipsec, host kernel) run in two
namespaces joined by veth; charon A initiates; ``tcpdump`` on A's veth records UDP 500
and 4500; every UDP payload is written as ``<case>-<nn>-<exchange>-<req|resp>.bin``
(non-ESP marker of port 4500 stripped); the IKE SA keys charon A logs at ``ike = 4``
go to ``<case>.keys.json``; ``README.md`` lists every file.  Nothing is ever kept
from a run that did not end as the case expects.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))

from tests.support.charon import Charon, CharonError, Child, Conn  # noqa: E402
from tests.support.netns import Netns, netns_pair  # noqa: E402

PSK = "ipsecd-capture-psk-0123456789"
LOG_LEVELS = {"default": 1, "ike": 4, "cfg": 1, "net": 1, "chd": 1}
EXCHANGES = {34: "ike_sa_init", 35: "ike_auth", 36: "create_child_sa", 37: "informational"}


@dataclass(frozen=True)
class Case:
    name: str
    ike_i: str  # initiator's IKE proposal
    esp: str
    ike_r: str | None = None  # responder's, when it differs
    ipv6: bool = False
    id_i: str = "initiator.test"  # FQDN
    id_r: str = "responder.test"
    psk_r: str = PSK  # responder's PSK (differs: authentication failure)
    expect_up: bool = True
    extra_child: bool = False  # a second CHILD_SA via CREATE_CHILD_SA
    child_pfs: str | None = None  # DH group appended to the second child's proposal
    delete: bool = True  # end with an INFORMATIONAL Delete of the IKE SA
    notes: str = ""
    proposals: dict[str, str] = field(default_factory=dict)


CASES = (
    Case(
        "gcm256-ecp384",
        "aes256gcm16-prfsha384-ecp384",
        "aes256gcm16",
        extra_child=True,
        child_pfs="ecp384",
        notes="IDs FQDN; second CHILD_SA with PFS (CREATE_CHILD_SA with KE); Delete",
    ),
    Case(
        "cbc256-sha256-modp2048",
        "aes256-sha256-modp2048",
        "aes256-sha256",
        id_i="192.0.2.1",
        id_r="192.0.2.2",
        notes="IDs IPv4 address; AES-CBC + HMAC-SHA2-256-128 in SK; Delete",
    ),
    Case(
        "chacha20-x25519",
        "chacha20poly1305-prfsha256-curve25519",
        "chacha20poly1305",
        id_i="@#0102030405",
        id_r="@#a0a1a2a3a4",
        extra_child=True,
        notes="IDs KEY_ID; second CHILD_SA without PFS; Delete",
    ),
    Case(
        "gcm128-ecp256-ipv6",
        "aes128gcm16-prfsha256-ecp256",
        "aes128gcm16",
        ipv6=True,
        id_i="fd00::1",
        id_r="fd00::2",
        notes="IPv6 transport, IDs IPv6 address, TS IPv6",
    ),
    Case(
        "invalid-ke",
        "aes256gcm16-prfsha384-ecp256-ecp384",
        "aes256gcm16",
        ike_r="aes256gcm16-prfsha384-ecp384",
        notes="initiator guesses ECP-256, responder answers INVALID_KE_PAYLOAD(ECP-384), retry",
    ),
    Case(
        "no-proposal",
        "aes256gcm16-prfsha384-ecp384",
        "aes256gcm16",
        ike_r="aes128-sha256-modp2048",
        expect_up=False,
        delete=False,
        notes="responder answers NO_PROPOSAL_CHOSEN",
    ),
    Case(
        "wrong-psk",
        "aes256gcm16-prfsha384-ecp384",
        "aes256gcm16",
        psk_r="a-different-psk-9876543210",
        expect_up=False,
        delete=False,
        notes="responder answers IKE_AUTH with AUTHENTICATION_FAILED (encrypted)",
    ),
)


# -- pcap ------------------------------------------------------------------------------


def read_udp_payloads(pcap: Path) -> list[tuple[str, int, str, int, bytes]]:
    """(src, sport, dst, dport, payload) of every UDP datagram in an Ethernet pcap."""
    data = pcap.read_bytes()
    if len(data) < 24:
        raise RuntimeError(f"{pcap}: not a pcap file ({len(data)} bytes)")
    magic = struct.unpack_from("<I", data)[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise RuntimeError(f"{pcap}: unexpected pcap magic {magic:#x}")
    linktype = struct.unpack_from("<I", data, 20)[0]
    if linktype != 1:
        raise RuntimeError(f"{pcap}: link type {linktype}, expected Ethernet (1)")
    out = []
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack_from("<IIII", data, off)
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        ip = frame[14:]
        if ethertype == 0x0800:
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 17:
                continue
            src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
            udp = ip[ihl:]
        elif ethertype == 0x86DD:
            if ip[6] != 17:
                continue
            import ipaddress

            src = str(ipaddress.IPv6Address(ip[8:24]))
            dst = str(ipaddress.IPv6Address(ip[24:40]))
            udp = ip[40:]
        else:
            continue
        sport, dport, length = struct.unpack_from("!HHH", udp)
        out.append((src, sport, dst, dport, udp[8:length]))
    return out


@contextlib.contextmanager
def tcpdump(ns: Netns, path: Path) -> Iterator[None]:
    proc = ns.popen(
        [
            "tcpdump",
            "-i",
            "veth0",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-s",
            "0",
            "-w",
            str(path),
            "udp port 500 or udp port 4500",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 10
        line = b""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if b"listening on" in line or not line:
                break
        if b"listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line!r}")
        yield
        time.sleep(1.0)  # let the last packets reach the file (LAB-NOTES)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- keys from charon's log -------------------------------------------------------------

_KEY_NAMES = {
    "SKEYSEED": "skeyseed",
    "shared Diffie Hellman secret": "dh_shared_secret",
    "Sk_d secret": "sk_d",
    "Sk_ai secret": "sk_ai",
    "Sk_ar secret": "sk_ar",
    "Sk_ei secret": "sk_ei",
    "Sk_er secret": "sk_er",
    "Sk_pi secret": "sk_pi",
    "Sk_pr secret": "sk_pr",
}
_DUMP_HEAD = re.compile(r"\] <[^>]*> (?P<label>.+?) => (?P<n>\d+) bytes @")
_DUMP_LINE = re.compile(r"\] <[^>]*> +\d+: (?P<hex>(?:[0-9A-F]{2} ){1,16})")


def keys_from_log(text: str) -> list[dict[str, str]]:
    """The key sets (one per IKE SA key derivation, in order) charon logged at ike=4."""
    sets: list[dict[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _DUMP_HEAD.search(lines[i])
        i += 1
        if not m or m["label"] not in _KEY_NAMES:
            continue
        n = int(m["n"])
        raw = bytearray()
        while len(raw) < n and i < len(lines):
            d = _DUMP_LINE.search(lines[i])
            if not d:
                break
            raw += bytes.fromhex(d["hex"].replace(" ", ""))
            i += 1
        if len(raw) != n:
            raise RuntimeError(f"could not read {m['label']} ({n} bytes) from charon's log")
        key = _KEY_NAMES[m["label"]]
        if key == "dh_shared_secret" or not sets or key in sets[-1]:
            sets.append({})
        sets[-1][key] = raw.hex()
    return [s for s in sets if "sk_d" in s]


# -- one case --------------------------------------------------------------------------


def run_case(case: Case, outdir: Path, work: Path) -> list[dict[str, object]]:
    if case.ipv6:
        a_ip, b_ip, a_in, b_in = "fd00::1", "fd00::2", "fd00:1::1/128", "fd00:2::1/128"
        a_in2, b_in2 = "fd00:1::2/128", "fd00:2::2/128"
    else:
        a_ip, b_ip, a_in, b_in = "192.0.2.1", "192.0.2.2", "198.51.100.1/32", "198.51.100.2/32"
        a_in2, b_in2 = "198.51.100.3/32", "198.51.100.4/32"
    rows: list[dict[str, object]] = []
    with netns_pair("iki-") as (a, b):
        for ns, inner in ((a, a_in), (b, b_in), (a, a_in2), (b, b_in2)):
            ns.run(["ip", "addr", "add", inner, "dev", "lo"])
        with (
            Charon.started(a, work / "a", log_levels=LOG_LEVELS) as ca,
            Charon.started(b, work / "b", log_levels=LOG_LEVELS) as cb,
        ):
            esp2 = case.esp + (f"-{case.child_pfs}" if case.child_pfs else "")
            children_a = [Child("c1", (a_in,), (b_in,), (case.esp,))]
            children_b = [Child("c1", (b_in,), (a_in,), (case.esp,))]
            if case.extra_child:
                children_a.append(Child("c2", (a_in2,), (b_in2,), (esp2,)))
                children_b.append(Child("c2", (b_in2,), (a_in2,), (esp2,)))
            ca.load(
                [
                    Conn(
                        "cap",
                        (a_ip,),
                        (b_ip,),
                        case.id_i,
                        case.id_r,
                        PSK,
                        (case.ike_i,),
                        tuple(children_a),
                    )
                ]
            )
            cb.load(
                [
                    Conn(
                        "cap",
                        (b_ip,),
                        (a_ip,),
                        case.id_r,
                        case.id_i,
                        case.psk_r,
                        (case.ike_r or case.ike_i,),
                        tuple(children_b),
                    )
                ]
            )
            pcap = work / f"{case.name}.pcap"
            with tcpdump(a, pcap):
                try:
                    ca.initiate("c1", ike="cap", timeout=8)
                    up = True
                except CharonError:
                    up = False
                if up != case.expect_up:
                    raise RuntimeError(
                        f"case {case.name}: expected up={case.expect_up}, got {up}\n{ca.log_tail()}"
                    )
                if up and case.extra_child:
                    ca.initiate("c2", ike="cap", timeout=8)
                if up and case.delete:
                    ca.terminate_ike("cap")
            keys = keys_from_log(ca.log_text())
    packets = read_udp_payloads(pcap)
    if not packets:
        raise RuntimeError(f"case {case.name}: nothing captured")
    for seq, (src, sport, dst, dport, payload) in enumerate(packets, 1):
        marker = False
        if sport == 4500 or dport == 4500:
            if payload == b"\xff":
                continue  # NAT keepalive (RFC 3948 2.3), not IKE
            if payload[:4] != b"\0\0\0\0":
                continue  # ESP in UDP: not ours here
            payload, marker = payload[4:], True
        _spi_i, _spi_r, _np, _ver, xchg, flags, msgid, length = struct.unpack_from(
            "!8s8sBBBBII", payload
        )
        if length != len(payload):
            raise RuntimeError(f"case {case.name}: IKE length {length} != {len(payload)}")
        kind = "resp" if flags & 0x20 else "req"
        sender = "initiator" if flags & 0x08 else "responder"
        fname = f"{case.name}-{seq:02d}-{EXCHANGES.get(xchg, str(xchg))}-{kind}.bin"
        (outdir / fname).write_bytes(payload)
        rows.append(
            {
                "file": fname,
                "exchange": EXCHANGES.get(xchg, str(xchg)),
                "message_id": msgid,
                "kind": kind,
                "sender": sender,
                "from": f"{src}:{sport}",
                "to": f"{dst}:{dport}",
                "non_esp_marker_stripped": marker,
                "length": len(payload),
            }
        )
    if keys:
        prop = case.ike_r or case.ike_i
        for row in rows:
            if row["exchange"] == "ike_sa_init":
                continue
            msg = (outdir / str(row["file"])).read_bytes()
            inner = decrypt_sk(msg, keys[-1], prop, row["sender"] == "initiator")
            name = str(row["file"]).removesuffix(".bin") + ".inner"
            (outdir / name).write_bytes(inner)
            row["inner"] = f"{name} (first payload {_find_sk(msg)[2]})"
        last = (outdir / str(rows[-1]["file"])).read_bytes()
        spi_i, spi_r = struct.unpack_from("!8s8s", last)
        doc = {
            "case": case.name,
            "ike_proposal": case.ike_r or case.ike_i,
            "note": "keys charon (initiator) logged at ike=4; one set per IKE SA derivation",
            "spi_i": spi_i.hex(),
            "spi_r": spi_r.hex(),
            "key_sets": keys,
        }
        (outdir / f"{case.name}.keys.json").write_text(json.dumps(doc, indent=2) + "\n")
    return rows


def _find_sk(msg: bytes) -> tuple[int, int, int]:
    """(offset of the SK payload, its length, its next-payload type) in an IKE message."""
    np, off = msg[16], 28
    while np != 46:
        if np == 0 or off + 4 > len(msg):
            raise ValueError("no SK payload")
        np, plen = msg[off], struct.unpack_from("!H", msg, off + 2)[0]
        off += plen
    return off, struct.unpack_from("!H", msg, off + 2)[0], msg[off]


def decrypt_sk(msg: bytes, keys: dict[str, str], proposal: str, from_initiator: bool) -> bytes:
    """The inner payloads of the SK payload of ``msg`` (RFC 7296 3.14), padding removed.

    Only used to prove the logged keys right: a wrong key or layout raises.
    """
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    off, plen, _ = _find_sk(msg)
    body = msg[off + 4 : off + plen]
    ek = bytes.fromhex(keys["sk_ei" if from_initiator else "sk_er"])
    if "gcm16" in proposal or "chacha20poly1305" in proposal:
        # RFC 5282 / RFC 7634: 8-byte IV, nonce = salt ‖ IV, AAD = header .. SK header.
        key, salt = ek[:-4], ek[-4:]
        iv, sealed = body[:8], body[8:]
        aad = msg[: off + 4]
        aead = ChaCha20Poly1305(key) if "chacha" in proposal else AESGCM(key)
        plain = aead.decrypt(salt + iv, sealed, aad)
    else:
        # RFC 7296 3.14: IV (block size) ‖ ciphertext ‖ ICV over header .. ciphertext.
        ak = bytes.fromhex(keys["sk_ai" if from_initiator else "sk_ar"])
        icv_len = 16  # HMAC-SHA2-256-128
        h = hmac.HMAC(ak, hashes.SHA256())
        h.update(msg[:-icv_len])
        if h.finalize()[:icv_len] != msg[-icv_len:]:
            raise ValueError("integrity check value does not match SK_a")
        iv, ct = body[:16], body[16:-icv_len]
        dec = Cipher(algorithms.AES(ek), modes.CBC(iv)).decryptor()
        plain = dec.update(ct) + dec.finalize()
    pad = plain[-1]
    return plain[: len(plain) - 1 - pad]


def write_readme(outdir: Path, table: dict[str, list[dict[str, object]]]) -> None:
    lines = [
        "# IKEv2 datagrams captured from strongSwan 5.9.8",
        "",
        "Produced by `regenerate.py` in this folder (run as root: "
        "`.venv/bin/python tests/data/ike/captures/regenerate.py`). Two charons "
        "(kernel-libipsec, host kernel) in two namespaces joined by veth, A = "
        "192.0.2.1 / fd00::1 initiates, B = 192.0.2.2 / fd00::2 responds, PSK "
        f"`{PSK}` (IKE auth). Captured with tcpdump on A's veth.",
        "",
        "- Each `.bin` is one UDP payload = one IKE message, starting at the IKE header.",
        "- Port 4500: the 4-byte non-ESP marker (RFC 3948 2.2) is **stripped**; the "
        "table says which files had it. charon with kernel-libipsec fakes NAT detection, "
        "so IKE_AUTH and later always float to 4500.",
        "- `<case>.keys.json`: SK_d, SK_ai/SK_ar (absent for AEAD), SK_ei/SK_er (AEAD: "
        "key ‖ 4-byte salt, RFC 5282 / RFC 7634), SK_pi/SK_pr, SKEYSEED and the DH shared "
        "secret, as charon A logged them at `ike = 4`. One set per IKE SA derivation "
        "(the INVALID_KE case derives once, after the retry). SPIs are those of the "
        "case's (last) IKE SA.",
        "- Files are named `<case>-<seq>-<exchange>-<req|resp>.bin` in capture order.",
        "- `<...>.inner`: the plaintext of the message's SK payload (the inner payload "
        "chain, padding and pad length removed), decrypted with the logged keys: this "
        "proves the keys right. Its first payload type is the SK payload's Next Payload "
        "field (given in the table).",
        "- Tests (tests/unit/ike) check these exact bytes and keys: regenerating replaces "
        "every file with a new random handshake, so update those tests in the same change.",
        "",
    ]
    for case in CASES:
        rows = table.get(case.name)
        if not rows:
            continue
        lines += [
            f"## {case.name}",
            "",
            f"IKE proposal (initiator): `{case.ike_i}`"
            + (f"; responder: `{case.ike_r}`" if case.ike_r else "")
            + f"; ESP: `{case.esp}`; IDs `{case.id_i}` / `{case.id_r}`. {case.notes}.",
            "",
            "| file | exchange | msg id | kind | sender | from → to | marker stripped "
            "| decrypted inner payloads |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['file']} | {r['exchange']} | {r['message_id']} | {r['kind']} | "
                f"{r['sender']} | {r['from']} → {r['to']} | "
                f"{'yes' if r['non_esp_marker_stripped'] else 'no'} | {r.get('inner', '')} |"
            )
        lines.append("")
    (outdir / "README.md").write_text("\n".join(lines))


def main() -> int:
    outdir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C: charon, tcpdump and the
    # namespaces are removed by the context managers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    outdir.mkdir(parents=True, exist_ok=True)
    stale = [*outdir.glob("*.bin"), *outdir.glob("*.inner"), *outdir.glob("*.keys.json")]
    for old in stale:
        old.unlink()
    table: dict[str, list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="iki-cap-") as tmp:
        for case in CASES:
            print(f"# {case.name}", file=sys.stderr, flush=True)
            table[case.name] = run_case(case, outdir, Path(tmp) / case.name)
    write_readme(outdir, table)
    print(json.dumps({k: len(v) for k, v in table.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
