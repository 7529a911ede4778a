"""Install 10,000 XFRM policies: ipsecd.xfrm (pipelined netlink) vs `ip -batch`.

Same policies, same kernel, same run; each tool gets a fresh network namespace per
round.  Also times a full dump of the 10,000 policies (ipsecd.xfrm vs
`ip xfrm policy list`).  Needs root.  Prints one JSON object as its last line.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time

from ipsecd.xfrm import (
    Action,
    Dir,
    Mode,
    Policy,
    Proto,
    Selector,
    Template,
    XfrmClient,
    address,
)
from ipsecd.xfrm.ownership import DEFAULT_OWNERSHIP as OWN

N = 10_000
ROUNDS = 3
TUN_A, TUN_B = "192.0.2.1", "198.51.100.1"


def policies() -> tuple[list[Policy], list[str]]:
    """N policies (a mix: transport ESP, tunnel ESP, block) and the same as ip lines."""
    pols: list[Policy] = []
    lines: list[str] = []
    for i in range(N):
        src = f"10.{i // 256}.{i % 256}.0/24"
        dst = f"172.16.{i // 256}.{i % 256}/32"
        prio = OWN.priority(i % 100)
        reqid = OWN.reqid(i)
        sel = Selector.of(src, dst, 6, None, 443)
        base = f"xfrm policy add src {src} dst {dst} proto tcp dport 443 dir out priority {prio}"
        kind = i % 3
        if kind == 0:
            pols.append(
                Policy(sel, Dir.OUT, Action.ALLOW, prio, (Template(Proto.ESP, reqid=reqid),))
            )
            lines.append(f"{base} tmpl proto esp reqid {reqid} mode transport")
        elif kind == 1:
            pols.append(
                Policy(
                    sel,
                    Dir.OUT,
                    Action.ALLOW,
                    prio,
                    (
                        Template(
                            Proto.ESP, Mode.TUNNEL, address(TUN_A), address(TUN_B), reqid=reqid
                        ),
                    ),
                )
            )
            lines.append(f"{base} tmpl src {TUN_A} dst {TUN_B} proto esp reqid {reqid} mode tunnel")
        else:
            pols.append(Policy(sel, Dir.OUT, Action.BLOCK, prio))
            lines.append(f"{base} action block")
    return pols, lines


def ns_add() -> str:
    name = f"ipx-b{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def ns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False)


def count(ns: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "xfrm", "policy", "count"], capture_output=True, text=True, check=True
    ).stdout
    # " SPD IN  0 OUT 10000 FWD 0"
    words = out.split()
    return sum(int(words[i + 1]) for i, w in enumerate(words) if w in ("IN", "OUT", "FWD"))


async def ours(ns: str, pols: list[Policy]) -> tuple[float, float]:
    async with XfrmClient(ns) as x:
        t0 = time.perf_counter()
        await x.add_policies(pols)
        t1 = time.perf_counter()
        dumped = await x.dump_policies()
        t2 = time.perf_counter()
    if len(dumped) != N or set(dumped) != set(pols):
        raise SystemExit(f"error: dump returned {len(dumped)} policies, not the {N} installed")
    return t1 - t0, t2 - t1


def theirs(ns: str, batch_file: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    subprocess.run(["ip", "-n", ns, "-batch", batch_file], check=True)
    t1 = time.perf_counter()
    subprocess.run(
        ["ip", "-n", ns, "xfrm", "policy", "list"], check=True, stdout=subprocess.DEVNULL
    )
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main() -> int:
    if os.geteuid() != 0:
        print("error: bench_xfrm needs root (network namespaces, XFRM netlink)", file=sys.stderr)
        return 1
    pols, lines = policies()
    add_ours, add_ip, dump_ours, dump_ip = [], [], [], []
    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
        batch_file = fh.name
    try:
        for _ in range(ROUNDS):
            a, b = ns_add(), ns_add()
            try:
                t_add, t_dump = asyncio.run(ours(a, pols))
                i_add, i_dump = theirs(b, batch_file)
                if count(a) != N or count(b) != N:
                    raise SystemExit(f"error: expected {N} policies in each namespace")
            finally:
                ns_del(a)
                ns_del(b)
            add_ours.append(t_add)
            add_ip.append(i_add)
            dump_ours.append(t_dump)
            dump_ip.append(i_dump)
    finally:
        os.unlink(batch_file)
    med = statistics.median
    result = {
        "policies": N,
        "rounds": ROUNDS,
        "install_ipsecd_s": round(med(add_ours), 4),
        "install_ip_batch_s": round(med(add_ip), 4),
        "install_ratio_ip_over_ipsecd": round(med(add_ip) / med(add_ours), 2),
        "dump_ipsecd_s": round(med(dump_ours), 4),
        "dump_ip_list_s": round(med(dump_ip), 4),
        "dump_ratio_ip_over_ipsecd": round(med(dump_ip) / med(dump_ours), 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
