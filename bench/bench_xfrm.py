"""XFRM at 10,000 entries: ipsecd.xfrm against iproute2, same kernel, same run.

Per round, in fresh network namespaces:

* install 10,000 policies: ipsecd.xfrm (pipelined netlink) in namespace A,
  ``ip -batch`` in namespace B;
* dump them, in namespace A: ``XfrmClient.dump_policies()`` the first time in this
  process ("cold": nothing decoded before), ``ip xfrm policy list``, and
  ``dump_policies()`` again ("steady": what the agent's reconcile loop sees, since
  unchanged policies are recognised by their bytes, see ipsecd.xfrm.decoder);
* agent reconcile of the 10,000 unchanged policies: dump policies + dump SAs +
  ``xfrm.plan(desired, [], dumped, dumped_states)``, which must plan nothing — cold in
  namespace B (the policies ``ip -batch`` installed, never dumped by this process) and
  steady in namespace A;
* 10,000 SAs: the host kernel has no ESP, so they are larval SAs (SPI reservations,
  XFRM_MSG_ALLOCSPI); ``dump_states()`` cold and steady against ``ip xfrm state list``.

Figures are medians over the rounds; ``ip`` times include starting the ``ip`` process,
as an operator or a script would run it.  Needs root.  Prints one JSON object as its
last line.
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
    Request,
    Selector,
    Template,
    XfrmClient,
    address,
    decoder,
    plan,
)
from ipsecd.xfrm.codec import encode_allocspi
from ipsecd.xfrm.errors import Op
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
    decoder.forget(name)  # what this process remembers of its dumps


def count(ns: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "xfrm", "policy", "count"], capture_output=True, text=True, check=True
    ).stdout
    # " SPD IN  0 OUT 10000 FWD 0"
    words = out.split()
    return sum(int(words[i + 1]) for i, w in enumerate(words) if w in ("IN", "OUT", "FWD"))


def ip_time(ns: str, *args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["ip", "-n", ns, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def ip_batch(ns: str, batch_file: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["ip", "-n", ns, "-batch", batch_file], check=True)
    return time.perf_counter() - t0


async def install(ns: str, pols: list[Policy]) -> float:
    async with XfrmClient(ns) as x:
        t0 = time.perf_counter()
        await x.add_policies(pols)
        return time.perf_counter() - t0


async def dump_policies(ns: str, pols: list[Policy]) -> float:
    """One dump in a new client (as the agent's reconcile opens one per run)."""
    async with XfrmClient(ns) as x:
        t0 = time.perf_counter()
        dumped = await x.dump_policies()
        took = time.perf_counter() - t0
    if len(dumped) != N or set(dumped) != set(pols):
        raise SystemExit(f"error: dump returned {len(dumped)} policies, not the {N} installed")
    return took


async def reconcile_noop(ns: str, pols: list[Policy]) -> float:
    """dump + dump states + plan against the desired state; nothing may change."""
    async with XfrmClient(ns) as x:
        t0 = time.perf_counter()
        dumped = await x.dump_policies()
        dumped_states = await x.dump_states()
        ops = plan(pols, [], dumped, dumped_states)
        took = time.perf_counter() - t0
    if ops or len(dumped) != N:
        raise SystemExit(f"error: reconcile of unchanged policies planned {len(ops)} operations")
    return took


async def reserve_spis(ns: str) -> None:
    """N larval SAs (one SPI reservation each), pipelined."""
    a, b = address("192.0.2.2"), address("192.0.2.1")
    async with XfrmClient(ns) as x:
        reqs = [
            Request(
                encode_allocspi(
                    a,
                    b,
                    Proto.ESP,
                    OWN.reqid(i % 1000),
                    x.next_seq(),
                    spi_min=0x1000 + i,
                    spi_max=0x1000 + i,
                ),
                Op.ALLOC_SPI,
                f"spi {0x1000 + i:#x}",
            )
            for i in range(N)
        ]
        errors = [e for e in await x.batch(reqs) if e is not None]
    if errors:
        raise SystemExit(f"error: {len(errors)} SPI reservations failed: {errors[0]}")


async def dump_states(ns: str) -> float:
    async with XfrmClient(ns) as x:
        t0 = time.perf_counter()
        dumped = await x.dump_states()
        took = time.perf_counter() - t0
    if len(dumped) != N:
        raise SystemExit(f"error: dump returned {len(dumped)} SAs, not the {N} reserved")
    return took


def main() -> int:
    if os.geteuid() != 0:
        print("error: bench_xfrm needs root (network namespaces, XFRM netlink)", file=sys.stderr)
        return 1
    pols, lines = policies()
    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
        batch_file = fh.name
    try:
        for _ in range(ROUNDS):
            a, b, s = ns_add(), ns_add(), ns_add()
            try:
                note("install_ipsecd_s", asyncio.run(install(a, pols)))
                note("install_ip_batch_s", ip_batch(b, batch_file))
                if count(a) != N or count(b) != N:
                    raise SystemExit(f"error: expected {N} policies in each namespace")
                # dumps, all in namespace A
                note("dump_ipsecd_cold_s", asyncio.run(dump_policies(a, pols)))
                note("dump_ip_list_s", ip_time(a, "xfrm", "policy", "list"))
                note("dump_ipsecd_s", asyncio.run(dump_policies(a, pols)))
                note("dump_ip_list_s", ip_time(a, "xfrm", "policy", "list"))
                note("dump_ipsecd_s", asyncio.run(dump_policies(a, pols)))
                # agent reconcile, nothing changed
                note("reconcile_noop_cold_s", asyncio.run(reconcile_noop(b, pols)))
                note("reconcile_noop_s", asyncio.run(reconcile_noop(a, pols)))
                note("reconcile_noop_s", asyncio.run(reconcile_noop(a, pols)))
                # SAs (larval on this kernel)
                asyncio.run(reserve_spis(s))
                note("dump_states_ipsecd_cold_s", asyncio.run(dump_states(s)))
                note("dump_states_ip_list_s", ip_time(s, "xfrm", "state", "list"))
                note("dump_states_ipsecd_s", asyncio.run(dump_states(s)))
            finally:
                ns_del(a)
                ns_del(b)
                ns_del(s)
    finally:
        os.unlink(batch_file)
    med = {k: statistics.median(v) for k, v in figures.items()}
    result: dict[str, object] = {"entries": N, "rounds": ROUNDS}
    result.update({k: round(v, 4) for k, v in med.items()})
    result["install_ratio_ip_over_ipsecd"] = round(
        med["install_ip_batch_s"] / med["install_ipsecd_s"], 2
    )
    for kind in ("", "states_"):
        ip = med[f"dump_{kind}ip_list_s"]
        result[f"dump_{kind}ratio_ip_over_ipsecd"] = round(ip / med[f"dump_{kind}ipsecd_s"], 2)
        result[f"dump_{kind}ratio_ip_over_ipsecd_cold"] = round(
            ip / med[f"dump_{kind}ipsecd_cold_s"], 2
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
