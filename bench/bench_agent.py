"""The node agent's memory with N peers, and its reconcile of unchanged policies.

    .venv/bin/python bench/bench_agent.py [--peers N]

* ``rss``: an ``ipsecd`` process (standalone, ``-f``) in namespace A whose SPD names N
  peers; the peers are N addresses in namespace B answered by one of our IKE drivers
  (in this process).  The agent initiates to every peer (it has the lower address);
  once every IKE SA is up, its RSS (VmRSS, VmHWM from /proc) is read, and compared with
  the same agent enforcing an SPD without peers.  The host kernel has no ESP, so the
  CHILD SAs are negotiated but refused by the kernel: the figure is the agent's IKE
  side (N IKE SAs, N connections, N policies), not the kernel's.
* ``reconcile``: the agent's no-op reconcile of 10,000 unchanged policies is
  bench/bench_xfrm.py's (dump + plan, with ``ip xfrm policy list`` beside it).

Prints one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.netns import netns_pair  # noqa: E402

PSK = "bench-agent-psk-0123456789abcdef"


def _peer_ip(i: int) -> str:
    return f"192.0.{2 + (10 + i) // 250}.{(10 + i) % 250 + 1}"


def _spd(peers: int) -> str:
    if peers == 0:
        return "defaults { policy none; }\n"
    return (
        "defaults { policy none; }\n"
        "nodes me name a;\n"
        "nodes others label role=peer;\n"
        f'connection mesh {{ between me and others; mode transport; auth psk "{PSK}"; }}\n'
    )


def _nodes(peers: int) -> str:
    lines = ["a 192.0.2.1"]
    lines += [f"p{i} {_peer_ip(i)} role=peer" for i in range(peers)]
    return "\n".join(lines) + "\n"


def _rss(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])  # kB
    return out


def _status(sock: Path) -> dict[str, Any] | None:
    from agent.status import StatusError, query

    try:
        return query(sock, timeout=5)
    except StatusError:
        return None


async def _measure(peers: int, work: Path) -> dict[str, Any]:
    from agent.connections import ike_config
    from agent.ike_driver import IkeDriver
    from ipsecd import spd
    from ipsecd.ike import EndpointLimits

    spd_file = work / f"p{peers}.spd"
    spd_file.write_text(_spd(peers))
    os.chmod(spd_file, 0o600)
    nodes = work / f"p{peers}.nodes"
    nodes.write_text(_nodes(peers))
    # the peers' side: the same SPD compiled for each peer node, answered by one driver
    policy = spd.load_file(spd_file)
    directory = spd.load_nodes_file(nodes)
    configs = []
    for node in directory[1:]:
        for conn in spd.compile_node(policy, node, directory).connections:
            made = ike_config(conn, {})
            assert not hasattr(made, "reason"), made
            configs.append(made)
    with netns_pair("iba-", addrs_a=("192.0.2.1/22",), addrs_b=("192.0.2.2/22",)) as (a, b):
        for i in range(peers):
            b.run(["ip", "addr", "add", f"{_peer_ip(i)}/22", "dev", "veth0"])
        big = 10**6
        limits = EndpointLimits(
            cookie_threshold=big,
            cookie_threshold_ip=big,
            block_threshold_ip=big,
            init_burst=big,
            init_rate=float(big),
        )
        async with IkeDriver(configs, netns=b.name, ipv6=False, limits=limits):
            state = work / f"agent-{peers}"
            sock = state / "ipsecd.sock"
            argv = [
                sys.executable,
                "-m",
                "agent.main",
                "-f",
                str(spd_file),
                "--nodes",
                str(nodes),
                "--node",
                "a",
                "--netns",
                a.name,
                "--state-dir",
                str(state),
                "--socket",
                str(sock),
                "--addresses",
                "192.0.2.1",
                "-m",
                "quiet",
            ]
            t0 = time.monotonic()
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                up = 0
                for _ in range(600):
                    st = await asyncio.to_thread(_status, sock)
                    if st is not None and st.get("applied"):
                        up = sum(1 for c in st["connections"] if c["state"].startswith("up"))
                        if up >= peers:
                            break
                    if proc.poll() is not None:
                        raise RuntimeError(f"the agent exited {proc.returncode}")
                    await asyncio.sleep(0.5)
                elapsed = time.monotonic() - t0
                if up < peers:
                    raise RuntimeError(f"only {up} of {peers} IKE SAs came up")
                await asyncio.sleep(2)  # let the CHILD SA refusals settle
                mem = _rss(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
    return {
        "peers": peers,
        "ike_sas": up,
        "seconds_to_all_up": round(elapsed, 1),
        "rss_kb": mem["VmRSS"],
        "hwm_kb": mem["VmHWM"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=100)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("error: bench_agent needs root (network namespaces)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="iba-bench-") as tmp:
        base = asyncio.run(_measure(0, Path(tmp)))
        many = asyncio.run(_measure(args.peers, Path(tmp)))
    per_peer = (many["rss_kb"] - base["rss_kb"]) / max(1, args.peers)
    print(
        json.dumps(
            {
                "unit": "agent RSS (kB) with N peers",
                "baseline": base,
                "with_peers": many,
                "per_peer_kb": round(per_peer, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
