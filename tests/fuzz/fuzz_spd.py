"""Fuzz target: the SPD language (docs/spd.md, ipsecd/spd).

    python tests/fuzz/fuzz_spd.py [libFuzzer options] [CORPUS_DIR ...]

The input, decoded as UTF-8 (invalid sequences replaced), is an SPD text.

Invariants: ``load_text`` returns a Policy or raises :class:`~ipsecd.spd.SpdError`,
never through its last-resort guard (an "internal error" diagnostic is a bug caught
late), every diagnostic renders; a policy that loads compiles for every node of a
fixed directory (examples/cluster.nodes and an IPv6-only node) and passes
``check_expanded`` without any exception; ``compile_node`` refuses a node only for
the documented reason (a peer of the same name); the compiled configuration renders.

Seeds: tests/data/spd (corpus, error cases) and examples/; the language's keywords
are the libFuzzer dictionary.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.common import REPO, Finding, instrumented, run

with instrumented("ipsecd"):
    from ipsecd.spd import (
        NodeInfo,
        SpdError,
        check_expanded,
        compile_node,
        load_nodes_text,
        load_text,
    )

__all__ = ["fuzz_one", "seeds"]

DATA = REPO / "tests" / "data" / "spd"
EXAMPLES = REPO / "examples"
NODES: list[NodeInfo] = load_nodes_text(
    (EXAMPLES / "cluster.nodes").read_text() + "node-v6 fd00::d role=db zone=right\n",
    "fuzz.nodes",
)
WORDS = [
    "spdadd",
    "add",
    "flush",
    "spdflush",
    "-P",
    "in",
    "out",
    "fwd",
    "ipsec",
    "none",
    "discard",
    "require",
    "use",
    "unique",
    "default",
    "esp",
    "ah",
    "tunnel",
    "transport",
    "-E",
    "-A",
    "-m",
    "-u",
    "aes-gcm-16",
    "hmac-sha256",
    "connection",
    "between",
    "all",
    "and",
    "nodes",
    "label",
    "address",
    "defaults",
    "policy",
    "proposal",
    "ike",
    "esp",
    "bypass",
    "port",
    "from",
    "to",
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "any",
    "secret:",
    "auth",
    "psk",
    "certificate",
    "lifetime",
    "dpd",
    "mode",
    "traffic",
    "peer",
    "prio",
    "priority",
    "dfbit",
    "ecn",
    "log",
    "unmatched",
    "esp_trans_deflev",
    "esp_net_deflev",
    "ah_trans_deflev",
    "ah_net_deflev",
    "def_policy",
    "message",
    "debug",
    "clear",
    "set",
    "copy",
    "on",
    "off",
    "8h",
    "1h",
    "30s",
    "aes256gcm16-prfsha384-ecp384",
    "aes256-sha256",
    "aes256gcm16",
    "{",
    "}",
    ";",
    ",",
    "=",
    "$",
    "@self",
    "@peer",
    "192.0.2.1",
    "10.0.0.0/8",
    "fd00::/8",
    "[80]",
    "0x",
]


def fuzz_one(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        policy = load_text(text, "fuzz.spd")
    except SpdError as exc:
        if not exc.diagnostics:
            raise Finding("SpdError without diagnostics") from None
        for d in exc.diagnostics:
            d.render()
            if "internal error" in d.message:
                raise Finding(f"load_text's last-resort guard caught: {d.message}") from exc
        return
    policy.canonical()
    for node in NODES:
        try:
            cfg = compile_node(policy, node, NODES)
        except SpdError as exc:
            if not all("name of a peer" in d.message for d in exc.diagnostics):
                raise
            continue
        cfg.to_dict()
        cfg.to_text()
    for d in check_expanded(policy, NODES):
        d.render()


def seeds() -> list[bytes]:
    files = sorted(DATA.glob("corpus/*.conf")) + sorted(DATA.glob("errors/*.spd"))
    files += sorted(EXAMPLES.glob("*.spd")) + sorted(EXAMPLES.glob("*.conf"))
    return [f.read_bytes() for f in files]


if __name__ == "__main__":
    run("spd", fuzz_one, seeds, max_len=4096, words=(w.encode() for w in WORDS))
