"""The controller's Prometheus metrics (``--metrics-listen HOST:PORT``; the table of
every metric is in docs/operations.md "Metrics").

Read at scrape time, on the controller's event loop
(:class:`ipsecd.metrics_common.LoopCollector`), from what the replica keeps anyway:
its agent streams and their pending bytes (:mod:`controller.hub`), the newest
revision, the cluster's nodes as its registry watch sees them (records, connections,
replicas: every replica reports the same cluster-wide values), leadership, the etcd
client's retry and failure counts.  Counted as they happen, by a few calls from
controller/server.py: stream connections (snapshot or resume), acknowledgements, and
the push-to-ack latency — from the moment this replica saw the revision become current
(or the agent's stream connected, when that was later) to the agent's Ack.

Rollouts do not exist yet: no rollout metric is exported until they do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

import ipsecd
from ipsecd.gcpolicy import GcKeeper
from ipsecd.metrics_common import LoopCollector, MetricsServer, new_registry, parse_listen
from ipsecd.v1 import types_pb2

if TYPE_CHECKING:
    from controller.server import Controller

__all__ = ["PUSH_ACK_BUCKETS", "ControllerMetrics"]

_log = logging.getLogger(__name__)

#: Seconds; bench/bench_controller.py measured 0.18 s (p50) for 1,000 agents and
#: 1.2 s for 5,000 on the development machine.
PUSH_ACK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Publication times kept (revisions pushed in a row faster than agents ack them).
_PUBLISHED_KEPT = 64
HEALTH: dict[int, str] = {
    types_pb2.HEALTH_OK: "ok",
    types_pb2.HEALTH_DEGRADED: "degraded",
    types_pb2.HEALTH_FAILING: "failing",
}


class ControllerMetrics:
    """One replica's metrics.  The event calls are cheap and always made; ``start``
    serves them over HTTP."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self.registry: CollectorRegistry = new_registry()
        self.push_ack = Histogram(
            "ipsecd_controller_push_ack_seconds",
            "From a revision becoming current on this replica (or the agent's stream "
            "connecting, if later) to the agent's Ack of it",
            buckets=PUSH_ACK_BUCKETS,
            registry=self.registry,
        )
        self.acks: Counter[str] = Counter()
        self.connects: Counter[str] = Counter()
        self._published: dict[int, float] = {}
        self._connected: dict[str, float] = {}
        self.server: MetricsServer | None = None
        self.gc: GcKeeper | None = None  # set by controller/main.py (process-wide)

    # ------------------------------------------------------------------ events
    def published(self, revision: int) -> None:
        """``revision`` became the newest this replica fans out."""
        self._published[revision] = time.monotonic()
        if len(self._published) > _PUBLISHED_KEPT:
            for old in sorted(self._published)[:-_PUBLISHED_KEPT]:
                del self._published[old]

    def connected(self, node: str, *, resumed: bool) -> None:
        self._connected[node] = time.monotonic()
        self.connects["resume" if resumed else "snapshot"] += 1

    def disconnected(self, node: str) -> None:
        """The node's stream left this replica (else, with nodes coming and going under
        new names, the connect times would pile up: the soak run found it)."""
        self._connected.pop(node, None)

    def acked(self, node: str, revision: int, ok: bool) -> None:
        self.acks["ok" if ok else "failed"] += 1
        if not ok:
            return
        start = max(self._published.get(revision, 0.0), self._connected.get(node, 0.0))
        if start:
            self.push_ack.observe(max(0.0, time.monotonic() - start))

    # ------------------------------------------------------------------ serving
    async def start(self, listen: str) -> str:
        """Serve ``/metrics`` on ``listen`` (HOST:PORT); returns the address bound."""
        host, port = parse_listen(listen)
        self.registry.register(LoopCollector(self.gather, asyncio.get_running_loop()))
        server = MetricsServer(self.registry, host, port)
        await asyncio.to_thread(server.start)
        self.server = server
        _log.info("metrics on http://%s/metrics", server.address)
        return server.address

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.aclose()

    # ------------------------------------------------------------------ the scrape
    async def gather(self) -> list[Metric]:
        c = self.c
        info = GaugeMetricFamily(
            "ipsecd_controller_info", "This replica: id, version (always 1)",
            labels=["replica", "version"],
        )  # fmt: skip
        info.add_metric([c.config.replica_id, ipsecd.__version__], 1)
        leader = GaugeMetricFamily(
            "ipsecd_controller_leader", "1 while this replica is the elected leader",
            value=1 if c.is_leader else 0,
        )  # fmt: skip
        latest = c.hub.latest
        current = latest.revision if latest is not None else 0
        revision = GaugeMetricFamily(
            "ipsecd_controller_current_revision",
            "The current policy revision as this replica fans it out (0: none pushed yet)",
            value=current,
        )
        streams = GaugeMetricFamily(
            "ipsecd_controller_agent_streams", "Agent streams this replica serves",
            value=len(c.hub.streams),
        )  # fmt: skip
        pending = GaugeMetricFamily(
            "ipsecd_controller_stream_pending_bytes",
            "Bytes waiting for agents on this replica's streams (writes in progress and "
            "queued messages; a stuck agent holds at most one policy)",
            value=sum(s.pending_bytes() for s in c.hub.streams.values()),
        )
        connects = CounterMetricFamily(
            "ipsecd_controller_stream_connects",
            "Agent streams accepted: snapshot (the agent got the full state) or resume "
            "(it had a revision this replica knows)",
            labels=["kind"],
        )
        for kind in ("snapshot", "resume"):
            connects.add_metric([kind], self.connects[kind])
        dropped = CounterMetricFamily(
            "ipsecd_controller_streams_dropped_stalled",
            "Agent streams dropped because one write stayed pending (--stream-drain-timeout)",
            value=c.dropped_stalled,
        )
        sent = CounterMetricFamily(
            "ipsecd_controller_stream_sent_bytes",
            "Bytes of messages written to agent streams (before HTTP/2 framing)",
            value=c.hub.sent.bytes,
        )
        fanout = GaugeMetricFamily(
            "ipsecd_controller_fanout_seconds",
            "From the newest revision becoming current on this replica until every stream "
            "had taken it (handed to gRPC), for the last revision that got that far",
            value=c.hub.sent.fanout_seconds,
        )
        directory = GaugeMetricFamily(
            "ipsecd_controller_directory_version",
            "Version of the node directory as this replica sends it (an etcd revision)",
            value=c.hub.directory_version,
        )
        acks = CounterMetricFamily(
            "ipsecd_controller_acks",
            "Acks from agents on this replica: ok (revision applied) or failed (refused)",
            labels=["result"],
        )
        for result in ("ok", "failed"):
            acks.add_metric([result], self.acks[result])
        return [
            info,
            leader,
            revision,
            streams,
            pending,
            connects,
            dropped,
            sent,
            fanout,
            directory,
            acks,
            *self._nodes(current),
            *self._etcd(),
            *self._gc(),
        ]

    def _gc(self) -> list[Metric]:
        return [] if self.gc is None else self.gc.metric_families("ipsecd_controller")

    def _nodes(self, current: int) -> list[Metric]:
        view = self.c.view
        nodes = GaugeMetricFamily(
            "ipsecd_controller_nodes",
            "Nodes in the registry (cluster-wide, as this replica's watch sees it): "
            "connected to some replica or not",
            labels=["state"],
        )
        connected = sum(1 for n in view.records if n in view.conns)
        nodes.add_metric(["connected"], connected)
        nodes.add_metric(["disconnected"], len(view.records) - connected)
        health = GaugeMetricFamily(
            "ipsecd_controller_nodes_health",
            "Nodes by the health of their last report (cluster-wide)",
            labels=["health"],
        )
        by_health: Counter[str] = Counter()
        behind = 0
        for rec in view.records.values():
            st: dict[str, Any] = rec.get("status") or {}
            by_health[HEALTH.get(int(st.get("health", 0)), "unknown")] += 1
            if current and int(st.get("applied_revision", 0)) < current:
                behind += 1
        for h in ("ok", "degraded", "failing", "unknown"):
            health.add_metric([h], by_health[h])
        lagging = GaugeMetricFamily(
            "ipsecd_controller_nodes_behind",
            "Nodes whose last applied revision is older than the current one (cluster-wide)",
            value=behind,
        )
        replicas = GaugeMetricFamily(
            "ipsecd_controller_replicas", "Controller replicas alive (holding a lease)",
            value=len(view.replicas),
        )  # fmt: skip
        return [nodes, health, lagging, replicas]

    def _etcd(self) -> list[Metric]:
        store = self.c.store
        retries = CounterMetricFamily(
            "ipsecd_controller_etcd_retries",
            "etcd requests that failed transiently (leader change, timeout) and were retried",
        )
        failures = CounterMetricFamily(
            "ipsecd_controller_etcd_failures",
            "etcd operations that failed for good, by kind: unreachable, refused, too-large, "
            "transient (a watch), gave-up (retry budget spent), outcome-unknown",
            labels=["kind"],
        )
        requests = CounterMetricFamily(
            "ipsecd_controller_etcd_requests",
            "etcd operations asked by this replica (not counting retries), by operation",
            labels=["op"],
        )
        asked = getattr(store, "requests", None)
        if isinstance(asked, Counter):
            for op, count in sorted(asked.items()):
                requests.add_metric([op], count)
        n = getattr(store, "retries", None)
        if isinstance(n, int):
            retries.add_metric([], n)
        counts = getattr(store, "failures", None)
        if isinstance(counts, Counter):
            kinds = (
                "unreachable",
                "refused",
                "too-large",
                "transient",
                "gave-up",
                "outcome-unknown",
            )
            for kind in kinds:
                failures.add_metric([kind], counts[kind])
        return [retries, failures, requests]
