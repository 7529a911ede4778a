"""Prometheus metrics of real daemons, scraped over HTTP (docs/operations.md "Metrics"):
a controller on real etcd and two agents in network namespaces in cluster mode.

The values follow the state: a pushed revision moves the agents' applied revision and
the controller's current revision, each ack adds to the push->ack histogram, a refused
revision shows as rejected on the node and as a failed ack on the controller, the IKE
SAs the agents negotiate appear per connection and peer (the host kernel has no ESP:
every CHILD SA fails to install, which the metrics count too), a policy deleted
behind the agent's back is drift.  No secret of the policy appears in any scrape, and
every metric name the Grafana dashboard queries is exported by these daemons."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agent.daemon import Daemon
from controller.server import Controller
from ipsecd import xfrm
from tests.integration.controller.harness import address, start_controller, stop_controller
from tests.support.agents import CHECKOUT, options, running
from tests.support.aio import run_async
from tests.support.etcd import EtcdProcess
from tests.support.metrics import PREFIXES, Scrape, dashboard_exprs, expr_metric_names, scrape
from tests.support.netns import Netns, netns_pair

PSK = "metrics-test-psk-7d1c0a"
POLICY = f"""
defaults {{ policy discard; }}
connection mesh {{ between all and all; mode transport; auth psk "{PSK}"; }}
bypass tcp port 1111;
bypass icmp6 type 135;
bypass icmp6 type 136;
"""
BAD = POLICY + (
    "sa esp 0x1000 from 192.0.2.1 to 192.0.2.2 { mode tunnel; enc aes-gcm-16 secret:nope; }\n"
)


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with netns_pair("imt-") as p:
        yield p


async def eventually(
    what: str, get: Callable[[], Awaitable[Scrape]], pred: Callable[[Scrape], bool], timeout: float
) -> Scrape:
    """Scrape until ``pred`` holds (bounded); fail with the last scrape's text."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await get()
        if pred(got):
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last scrape:\n{got.text}")
        await asyncio.sleep(0.2)


def delete_one_policy(ns: Netns) -> None:
    """What an operator's ``ip xfrm policy delete`` does to one of ipsecd's policies."""
    with xfrm.Xfrm(ns.name) as x:
        ours = [p for p in x.dump_policies() if xfrm.DEFAULT_OWNERSHIP.owns_policy(p)]
        x.delete_policy(ours[0])


def agent_address(d: Daemon) -> str:
    assert d.metrics.server is not None, "the agent serves no metrics"
    return d.metrics.server.address


@run_async(240)
async def test_metrics_follow_the_cluster(
    pair: tuple[Netns, Netns], tmp_path: Path, etcd_session: EtcdProcess
) -> None:
    a, b = pair
    c: Controller = await start_controller(etcd_session, "r1", f"/mt{os.getpid()}-{id(tmp_path)}/")
    ctl = await c.metrics.start("127.0.0.1:0")
    opts = [
        options(
            name,
            ns,
            tmp_path,
            controllers=(address(c),),
            insecure=True,
            addresses=addrs,
            metrics_listen="127.0.0.1:0",
        )
        for name, ns, addrs in (
            ("a", a, ("192.0.2.1", "fd00::1")),
            ("b", b, ("192.0.2.2", "fd00::2")),
        )
    ]
    try:
        async with running(opts) as daemons:
            da = daemons["a"]
            for d in daemons.values():
                while d.metrics.server is None:  # started by run(), after the IKE sockets
                    await asyncio.sleep(0.02)
            ma = agent_address(da)

            def agent_scrape() -> Awaitable[Scrape]:
                return scrape(ma)

            def ctl_scrape() -> Awaitable[Scrape]:
                return scrape(ctl)

            # before any push: nothing applied, the stream up
            s = await eventually(
                "a's stream", agent_scrape, lambda s: s.value("ipsecd_stream_connected") == 1, 30
            )
            assert s.value("ipsecd_policy_applied_revision") == 0
            assert s.value("ipsecd_stream_connects_total") == 1
            assert s.value("ipsecd_info", node="a", mode="cluster") == 1
            assert s.value("ipsecd_health", health="no policy") == 1
            cs = await eventually(
                "two streams",
                ctl_scrape,
                lambda s: s.value("ipsecd_controller_agent_streams") == 2,
                30,
            )
            assert cs.value("ipsecd_controller_current_revision") == 0
            assert cs.value("ipsecd_controller_push_ack_seconds_count") == 0
            assert cs.value("ipsecd_controller_stream_connects_total", kind="snapshot") == 2

            # push revision 1: applied on both nodes, each ack observed
            out = await c.repo.push(POLICY, filename="p.spd", author="test")
            assert out.accepted
            s = await eventually(
                "revision 1 on a",
                agent_scrape,
                lambda s: s.value("ipsecd_policy_applied_revision") == 1,
                60,
            )
            assert s.value("ipsecd_policy_controller_revision") == 1
            assert s.value("ipsecd_policy_rejected") == 0
            assert (s.value("ipsecd_policy_applied_timestamp_seconds") or 0) > 0
            assert s.value("ipsecd_kernel_policies") == len(da.desired.policies) > 0  # type: ignore[union-attr]
            cs = await eventually(
                "two acks of revision 1",
                ctl_scrape,
                lambda s: s.value("ipsecd_controller_push_ack_seconds_count") == 2,
                60,
            )
            assert cs.value("ipsecd_controller_current_revision") == 1
            assert cs.value("ipsecd_controller_acks_total", result="ok") == 2
            assert cs.value("ipsecd_controller_push_ack_seconds_bucket", le="+Inf") == 2
            assert (cs.value("ipsecd_controller_push_ack_seconds_sum") or 0) > 0
            cs = await eventually(
                "both nodes at revision 1 in the registry",
                ctl_scrape,
                lambda s: (
                    s.value("ipsecd_controller_nodes", state="connected") == 2
                    and s.value("ipsecd_controller_nodes_behind") == 0
                ),
                30,
            )
            assert cs.value("ipsecd_controller_leader") == 1
            assert cs.value("ipsecd_controller_replicas") == 1
            assert cs.value("ipsecd_controller_etcd_failures_total", kind="gave-up") == 0

            # IKE: the mesh's IKE SAs come up per connection and peer; every CHILD SA
            # fails to install (no ESP in the host kernel) and is counted as such
            s = await eventually(
                "a's IKE SAs with b",
                agent_scrape,
                lambda s: (
                    (s.value("ipsecd_ike_sas", connection="mesh", peer="b") or 0) >= 2
                    and (s.value("ipsecd_child_sa_install_failures_total") or 0) >= 1
                ),
                60,
            )
            # b answers IKE_AUTH: its refused CHILD SAs are reported failed (reason local)
            # and deleted; a (initiator) hears the Delete before its own install fails
            await eventually(
                "b's failed CHILD SAs",
                lambda: scrape(agent_address(daemons["b"])),
                lambda s: (
                    (s.value("ipsecd_negotiations_total", sa="child", reason="local") or 0) >= 1
                ),
                60,
            )
            assert (s.value("ipsecd_negotiations_total", sa="ike", outcome="established") or 0) >= 1
            assert s.value("ipsecd_child_sas", connection="mesh", peer="b") == 0
            assert (s.value("ipsecd_ike_datagrams_total", event="received") or 0) >= 1
            assert s.value("ipsecd_xfrm_errors_total", error="XfrmInNoStates") is not None
            assert s.labelsets("ipsecd_ike_sas") == [{"connection": "mesh", "peer": "b"}]

            # drift: none, then one of a's policies deleted behind the agent's back
            assert s.value("ipsecd_kernel_drift", object="policy") == 0
            assert s.value("ipsecd_kernel_drift", object="default") == 0
            await asyncio.to_thread(delete_one_policy, a)
            s = await agent_scrape()
            assert s.value("ipsecd_kernel_drift", object="policy") == 1

            # a revision node a cannot apply: rejected there, a failed ack at the controller
            out = await c.repo.push(BAD, filename="p.spd", author="test")
            assert out.accepted
            s = await eventually(
                "the refusal", agent_scrape, lambda s: s.value("ipsecd_policy_rejected") == 1, 60
            )
            assert s.value("ipsecd_policy_applied_revision") == 1
            assert s.value("ipsecd_policy_controller_revision") == 2
            assert s.value("ipsecd_health", health="degraded") == 1
            cs = await eventually(
                "two failed acks",
                ctl_scrape,
                lambda s: s.value("ipsecd_controller_acks_total", result="failed") == 2,
                60,
            )
            assert cs.value("ipsecd_controller_push_ack_seconds_count") == 2  # ok acks only

            # behind, and failing from the nack (or degraded once the node reports its view)
            def unhealthy(s: Scrape) -> float:
                return sum(
                    s.value("ipsecd_controller_nodes_health", health=h) or 0
                    for h in ("failing", "degraded")
                )

            cs = await eventually(
                "both nodes behind and unhealthy",
                ctl_scrape,
                lambda s: s.value("ipsecd_controller_nodes_behind") == 2 and unhealthy(s) == 2,
                30,
            )

            # no secret in any scrape
            for text in (s.text, cs.text):
                assert PSK not in text and PSK.encode().hex() not in text

            # the dashboard queries only what these daemons export
            names = s.series_names() | cs.series_names()
            for title, expr in dashboard_exprs():
                used = expr_metric_names(expr)
                assert used, f"panel {title!r}: no ipsecd metric in {expr!r}"
                missing = used - names
                assert not missing, f"panel {title!r} queries {missing}, not exported"
            assert all(n.startswith(PREFIXES) for n in names)
            # and every metric of ours is in the docs' tables
            docs = (CHECKOUT / "docs" / "operations.md").read_text(encoding="utf-8")
            for scraped in (s, cs):
                for line in scraped.text.splitlines():
                    if line.startswith("# TYPE ipsecd_"):
                        name = line.split()[2].removesuffix("_created")  # the histogram's
                        assert f"| `{name}` |" in docs, f"{name} is not in docs/operations.md"
    finally:
        await stop_controller(c)
    assert c.metrics.server is None  # stopped with the controller
