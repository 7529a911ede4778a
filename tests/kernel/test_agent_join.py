"""Three nodes join by token and form their mesh with ``auth certificate`` over real
ESP; ``ipsecctl node remove c`` then reaches the other agents by itself (issue #12;
docs/security.md "Joining a node", "Revocation").

* a controller serving mTLS from an ``init`` state directory (plus its join port), a
  token from ``ipsecctl token create --uses 3``; each agent joins with it (its own
  key, the CA pinned by the token) and uses the certificate it got for the stream and
  for IKE;
* push -> every IKE and CHILD SA of the mesh up, authenticated by ECDSA signatures;
  pings cross as ESP;
* ``ipsecctl node remove c``: the CRL reaches a and b over their streams (their state
  directory's crl.pem lists c's certificate), their IKE and CHILD SAs with c go, c's
  stream is closed and its reconnections refused, c leaves the node directory;
* a new IKE_SA_INIT/IKE_AUTH with c fails authentication: a is given c back in its
  directory (as a peer whose configuration still names c would have it) and initiates
  to c: c's certificate is refused as revoked, no SA comes up, the traffic stays
  blocked.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.join import JoinedFiles
from controller.main import mtls_security
from controller.statedir import StateDir, init_state
from ipsecd.jointoken import JoinToken
from ipsecd.spd import NodeInfo
from tests.integration.controller.clirun import ipsecctl
from tests.integration.controller.harness import address, start_controller, stop_controller
from tests.support.agents import options, ping, running
from tests.support.aio import run_async, wait_until
from tests.support.capture import PacketKind
from tests.support.etcd import start_etcd
from tests.support.netns import netns_star

ADDRS = {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.3"}
SPD = """
defaults { policy discard; esp_trans_deflev require; }
connection mesh { between all and all; mode transport; }
"""


def _up(d: Any, peers: int) -> bool:
    conns = d.status()["connections"]
    return len(conns) == peers and all(
        c["state"] == "up" and c["peer_auth"] == "ecdsa-sha256" and c["children"] for c in conns
    )


def _with(d: Any, remote: str) -> list[Any]:
    """The established IKE SAs of ``d`` with ``remote``."""
    return [s for s in d.driver.sas if s.established and s.config.remote_address == remote]


def _serials(path: Path) -> set[int]:
    return {e.serial_number for e in x509.load_pem_x509_crl(path.read_bytes())}


@run_async(1200)
async def test_nodes_join_by_token_and_a_removed_node_is_refused(
    lab: None, tmp_path: Path, egress_capture: Any
) -> None:
    etcd = start_etcd(tmp_path)
    state = tmp_path / "ctl"
    init_state(state)
    admin = StateDir(state).admin_conf
    c = await start_controller(
        etcd,
        "r1",
        "/lab/",
        security=mtls_security(state),
        revocation_interval=0.5,
        ping_interval=1.0,
        ping_timeout=6.0,
    )
    env = {"IPSECCTL_CONTROLLER": address(c)}
    try:
        made = await ipsecctl("token", "create", "--uses", "3", config=admin, env=env, timeout=120)
        assert made.code == 0, made
        token = JoinToken.parse(made.out.strip())
        addrs = [[f"{ADDRS[n]}/24"] for n in "abc"]
        with netns_star("kjn-", addrs) as (_switch, nodes):
            ns = dict(zip("abc", nodes, strict=True))
            opts = [
                options(
                    n,
                    ns[n],
                    tmp_path,
                    controllers=(address(c),),
                    addresses=(ADDRS[n],),
                    join_token=token,
                    join_port=c.join_port,
                    joined=True,
                    node_files=JoinedFiles(tmp_path / f"agent-{n}").node_files(),
                    credential_check=1.0,
                )
                for n in "abc"
            ]
            files = {o.node: JoinedFiles(o.state_dir) for o in opts}
            async with running(opts) as daemons:
                await wait_until(
                    lambda: all(
                        d.stream is not None and d.stream.connected for d in daemons.values()
                    ),
                    300,
                    "three joined agents streaming",
                )
                assert all(f.present() for f in files.values())
                t0 = time.monotonic()
                out = await c.repo.push(SPD, filename="mesh.spd", author="lab")
                assert out.accepted
                await wait_until(
                    lambda: all(_up(d, 2) for d in daemons.values()), 300, "the mesh up"
                )
                took = time.monotonic() - t0
                print(f"\npush -> mesh of joined nodes up (certificates): {took:.1f} s")
                cap = egress_capture(ns["a"])
                for dst in ("b", "c"):
                    r = await ping(ns["a"], ADDRS[dst], count=5, interval=0.2)
                    assert r.lost == 0, r.output
                packets = cap.stop()
                assert {p.dst for p in packets if p.kind == PacketKind.ESP} >= {
                    ADDRS["b"],
                    ADDRS["c"],
                }
                assert not [p for p in packets if p.is_echo], "clear-text echo on the wire"

                # ipsecctl node remove c: revocation reaches a and b by itself
                c_serial = x509.load_pem_x509_certificates(files["c"].cert.read_bytes())[
                    0
                ].serial_number
                t1 = time.monotonic()
                removed = await ipsecctl("node", "remove", "c", config=admin, env=env, timeout=120)
                assert removed.code == 0, removed
                for n in "ab":
                    await wait_until(
                        lambda n=n: files[n].crl.exists() and c_serial in _serials(files[n].crl),
                        60,
                        f"the CRL revoking c in {n}'s state directory",
                    )
                print(f"node remove -> CRL on a and b: {time.monotonic() - t1:.1f} s")
                for n in "ab":
                    await wait_until(
                        lambda n=n: not _with(daemons[n], ADDRS["c"]),
                        60,
                        f"{n}'s IKE SAs with c gone",
                    )
                    await wait_until(
                        lambda n=n: len(daemons[n].status()["connections"]) == 1,
                        60,
                        f"c out of {n}'s directory",
                    )
                await wait_until(lambda: "c" not in c.hub.streams, 60, "c's stream closed")
                assert "c" not in c.view.records
                # a ping to c finds no SA: blocked, never in clear
                blocked = await ping(ns["a"], ADDRS["c"], count=5, interval=0.2)
                assert blocked.received == 0

                # a fresh IKE_SA_INIT/IKE_AUTH with c fails authentication on a
                da = daemons["a"]
                da.directory.append(NodeInfo("c", (ipaddress.ip_address(ADDRS["c"]),), {}))
                await da._reapply()

                def refused() -> bool:
                    conn = next(
                        (x for x in da.status()["connections"] if x["remote"] == ADDRS["c"]), None
                    )
                    return conn is not None and "revoked" in (conn["last_error"] or "").lower()

                await wait_until(refused, 120, "a refusing c's revoked certificate")
                assert not _with(da, ADDRS["c"])
                blocked = await ping(ns["a"], ADDRS["c"], count=5, interval=0.2)
                assert blocked.received == 0
                # the others are unaffected
                r = await ping(ns["a"], ADDRS["b"], count=5, interval=0.2)
                assert r.lost == 0, r.output
    finally:
        await stop_controller(c)
        etcd.stop(kill=True)
