"""Regenerate the RFC 7383 fragmentation captures in this folder (needs root).

    .venv/bin/python tests/data/ike/fragments/regenerate.py [OUTDIR]

Two charons (kernel-libipsec, host kernel) in two namespaces joined by veth, as in
../captures/regenerate.py (whose pcap reader, tcpdump wrapper and key-log parser are
reused), but with ``charon.fragment_size`` so small that every IKE_AUTH message is
split into SKF fragments (RFC 7383).  Charon A initiates, adds a second CHILD_SA with
PFS (CREATE_CHILD_SA with KE), then deletes the IKE SA.  ``chd = 4`` makes charon log
the CHILD_SA key material (RFC 7296 2.17) and ``ike = 4`` the NAT-D hash inputs.
Every UDP payload is written as ``<case>-<nn>-<exchange>-<req|resp>.bin`` (non-ESP
marker stripped), the keys charon A logged as ``<case>.keys.json``.  Nothing is kept
from a run that did not fragment.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
sys.path.insert(0, str(ROOT))

from tests.support.charon import Charon, Child, Conn  # noqa: E402
from tests.support.netns import netns_pair  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "_captures", HERE.parent / "captures" / "regenerate.py"
)
assert _spec is not None and _spec.loader is not None
_captures = importlib.util.module_from_spec(_spec)
sys.modules["_captures"] = _captures
_spec.loader.exec_module(_captures)

PSK = "ipsecd-fragment-psk-0123456789"
FRAGMENT_SIZE = 200  # bytes of IP datagram per fragment (charon.fragment_size)
PFS_GROUP = "ecp256"  # second CHILD_SA: CREATE_CHILD_SA with KE (RFC 7296 2.17 PFS)
CASES = {
    "frag-gcm256-ecp384": ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
    "frag-cbc256-sha256-ecp256": ("aes256-sha256-ecp256", "aes256-sha256"),
}
EXCHANGES = {34: "ike_sa_init", 35: "ike_auth", 36: "create_child_sa", 37: "informational"}


_CHILD_LABELS = {
    "encryption initiator key": "encr_i",
    "encryption responder key": "encr_r",
    "integrity initiator key": "integ_i",
    "integrity responder key": "integ_r",
}


def dumps_from_log(text: str) -> list[tuple[str, str]]:
    """Every (label, hex) chunk dump charon wrote to its log, in order."""
    out: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _captures._DUMP_HEAD.search(lines[i])
        i += 1
        if not m:
            continue
        n = int(m["n"])
        raw = bytearray()
        while len(raw) < n and i < len(lines):
            d = _captures._DUMP_LINE.search(lines[i])
            if not d:
                break
            raw += bytes.fromhex(d["hex"].replace(" ", ""))
            i += 1
        if len(raw) == n:
            out.append((m["label"], raw.hex()))
    return out


def child_keys_from_log(text: str) -> list[dict[str, str]]:
    """CHILD_SA key material charon logged at chd=4 (RFC 7296 2.17): per CHILD_SA the
    prf+ seed ([g^ir |] Ni | Nr), the PFS DH secret when there is one, and the keys."""
    sets: list[dict[str, str]] = []
    dh: str | None = None
    for label, value in dumps_from_log(text):
        if label == "DH secret":
            dh = value
        elif label == "seed":
            sets.append({"seed": value, **({"dh_secret": dh} if dh else {})})
            dh = None
        elif label in _CHILD_LABELS and sets:
            sets[-1][_CHILD_LABELS[label]] = value
    return sets


def natd_from_log(text: str) -> list[dict[str, str]]:
    """(SPIi | SPIr | IP | port, SHA-1 of it) pairs charon logged (RFC 7296 2.23)."""
    pairs: list[dict[str, str]] = []
    chunk: str | None = None
    for label, value in dumps_from_log(text):
        if label == "natd_chunk":
            chunk = value
        elif label == "natd_hash" and chunk is not None:
            pairs.append({"chunk": chunk, "hash": value})
            chunk = None
    return pairs


def run_case(name: str, ike: str, esp: str, outdir: Path, work: Path) -> list[str]:
    files: list[str] = []
    with netns_pair("ikc-") as (a, b):
        for ns, addrs in (
            (a, ("198.51.100.1/32", "198.51.100.3/32")),
            (b, ("198.51.100.2/32", "198.51.100.4/32")),
        ):
            for addr in addrs:
                ns.run(["ip", "addr", "add", addr, "dev", "lo"])
        esp2 = f"{esp}-{PFS_GROUP}"
        tuning = {"fragment_size": str(FRAGMENT_SIZE)}
        levels = {**_captures.LOG_LEVELS, "chd": 4}
        with (
            Charon.started(a, work / "a", log_levels=levels, tuning=tuning) as ca,
            Charon.started(b, work / "b", log_levels=levels, tuning=tuning) as cb,
        ):
            frag = {"fragmentation": "yes"}
            ca.load(
                [
                    Conn(
                        "frag",
                        ("192.0.2.1",),
                        ("192.0.2.2",),
                        "initiator.fragments.test",
                        "responder.fragments.test",
                        PSK,
                        (ike,),
                        (
                            Child("c1", ("198.51.100.1/32",), ("198.51.100.2/32",), (esp,)),
                            Child("c2", ("198.51.100.3/32",), ("198.51.100.4/32",), (esp2,)),
                        ),
                        extra=frag,
                    )
                ]
            )
            cb.load(
                [
                    Conn(
                        "frag",
                        ("192.0.2.2",),
                        ("192.0.2.1",),
                        "responder.fragments.test",
                        "initiator.fragments.test",
                        PSK,
                        (ike,),
                        (
                            Child("c1", ("198.51.100.2/32",), ("198.51.100.1/32",), (esp,)),
                            Child("c2", ("198.51.100.4/32",), ("198.51.100.3/32",), (esp2,)),
                        ),
                        extra=frag,
                    )
                ]
            )
            pcap = work / f"{name}.pcap"
            with _captures.tcpdump(a, pcap):
                ca.initiate("c1", ike="frag", timeout=8)
                ca.initiate("c2", ike="frag", timeout=8)
                ca.terminate_ike("frag")
            log = ca.log_text()
            keys = _captures.keys_from_log(log)
    fragmented = 0
    for seq, (_src, sport, _dst, dport, payload) in enumerate(_captures.read_udp_payloads(pcap), 1):
        if 4500 in (sport, dport):
            if payload[:4] != b"\0\0\0\0":
                continue  # NAT keepalive or ESP in UDP
            payload = payload[4:]
        xchg, flags = payload[18], payload[19]
        if payload[16] == 53:
            fragmented += 1
        kind = "resp" if flags & 0x20 else "req"
        fname = f"{name}-{seq:02d}-{EXCHANGES.get(xchg, str(xchg))}-{kind}.bin"
        (outdir / fname).write_bytes(payload)
        files.append(fname)
    child_keys = child_keys_from_log(log)
    if fragmented < 4 or not keys or len(child_keys) != 2:
        raise RuntimeError(
            f"{name}: {fragmented} SKF datagrams, {len(keys)} IKE key sets, "
            f"{len(child_keys)} CHILD key sets"
        )
    last = (outdir / files[-1]).read_bytes()
    spi_i, spi_r = struct.unpack_from("!8s8s", last)
    doc = {
        "case": name,
        "ike_proposal": ike,
        "psk": PSK,
        "fragment_size": FRAGMENT_SIZE,
        "spi_i": spi_i.hex(),
        "spi_r": spi_r.hex(),
        "esp_proposal": esp,
        "pfs_group": PFS_GROUP,
        "key_sets": keys,
        "child_key_sets": child_keys,
        "natd": natd_from_log(log),
    }
    (outdir / f"{name}.keys.json").write_text(json.dumps(doc, indent=2) + "\n")
    return files


def main() -> int:
    outdir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    outdir.mkdir(parents=True, exist_ok=True)
    for old in [*outdir.glob("*.bin"), *outdir.glob("*.keys.json")]:
        old.unlink()
    made: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ikc-frag-") as tmp:
        for name, (ike, esp) in CASES.items():
            made[name] = len(run_case(name, ike, esp, outdir, Path(tmp) / name))
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
