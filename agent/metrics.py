"""The agent's Prometheus metrics (``--metrics-listen HOST:PORT``; the table of every
metric is in docs/operations.md "Metrics").

Almost everything is read at scrape time from state the agent keeps anyway (the
supervisor's connections and counters, the IKE endpoint's statistics, the policy in
force, the stream), on the agent's event loop (:class:`ipsecd.metrics_common.LoopCollector`).
The kernel is read at scrape time too, through the kernel writer
(:meth:`agent.writer.KernelWriter.inspect`): one dump of the SAD and SPD gives the
SAs' byte and packet counters and the drift (entries a reconcile would change), and
``/proc/net/xfrm_stat`` of the agent's namespace gives the kernel's XFRM error
counters.  The only thing counted as it happens is why negotiations failed: the
engine's events pass through :meth:`AgentMetrics.tap` on their way to the supervisor.

Label cardinality is bounded by the policy, never by traffic or by the peers' say:

* SA traffic is summed per connection, peer and direction, over every SA of that
  connection, current and past (an SPI label would make a new series at every
  rekey); the bytes of an SA that is gone are kept, so the counters only grow.
* ``peer`` (a node name) makes a node's series grow with the cluster (one per
  peer); ``--metrics-by-peer no`` drops it, the sums per connection stay.
* failure reasons are Notify names (RFC 7296 3.10.1), ``timeout`` or ``local``;
  kernel error names are the kernel's fixed list.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

import ipsecd
from ipsecd import xfrm
from ipsecd.gcpolicy import GcKeeper
from ipsecd.ike.constants import NotifyType
from ipsecd.ike.events import ChildSaFailed, IkeSaFailed
from ipsecd.metrics_common import LoopCollector, MetricsServer, new_registry, parse_listen

from .ike_driver import EventSink

if TYPE_CHECKING:
    from ipsecd.ike import IkeSa
    from ipsecd.ike.events import Event

    from .daemon import Daemon

__all__ = ["CONNECTION_STATES", "AgentMetrics", "failure_reason"]

log = logging.getLogger("ipsecd.agent.metrics")

#: Connection states (agent/supervisor.py Conn.state) -> label values.
CONNECTION_STATES = {
    "up": "up",
    "up (no CHILD SA)": "up_no_child_sa",
    "connecting": "connecting",
    "waiting for peer": "waiting_for_peer",
    "on demand": "on_demand",
    "down": "down",
    "unusable": "unusable",
}
HEALTH = ("ok", "degraded", "failing", "no policy")

#: (connection, peer) or (connection,) with --metrics-by-peer no
ConnKey = tuple[str, ...]


def failure_reason(notify: int | None, *, ike: bool) -> str:
    """A bounded label for a failed negotiation: the Notify's name, else ``timeout``
    (an IKE SA the peer never answered) or ``local`` (a CHILD SA refused here, e.g.
    by the kernel)."""
    if notify is None:
        return "timeout" if ike else "local"
    try:
        return NotifyType(notify).name.lower()
    except ValueError:
        return "other"  # a value no RFC we know defines: not a label of the peer's choice


class AgentMetrics:
    """The agent's metrics (see the module doc): ``tap`` the engine events always,
    ``start`` serving only when asked."""

    def __init__(self, daemon: Daemon, *, by_peer: bool = True) -> None:
        self.daemon = daemon
        self.by_peer = by_peer
        #: (sa, reason) -> failed negotiations
        self.failures: Counter[tuple[str, str]] = Counter()
        #: SA id -> (its connection key and direction, bytes, packets) at the last scrape
        self._sa_last: dict[tuple[int, int, str], tuple[tuple[str, ...], int, int]] = {}
        #: bytes and packets of SAs gone since, per connection key and direction
        self._retired: dict[tuple[str, ...], list[int]] = {}
        self.server: MetricsServer | None = None
        self.gc: GcKeeper | None = None  # set by agent/main.py (process-wide)

    # ------------------------------------------------------------------ events
    def tap(self, sink: EventSink) -> EventSink:
        """``sink`` (the supervisor), with the failures counted on the way."""

        async def observed(batch: list[tuple[IkeSa, Event]]) -> None:
            for _sa, ev in batch:
                if isinstance(ev, IkeSaFailed):
                    self.failures["ike", failure_reason(ev.notify, ike=True)] += 1
                elif isinstance(ev, ChildSaFailed):
                    self.failures["child", failure_reason(ev.notify, ike=False)] += 1
            await sink(batch)

        return observed

    # ------------------------------------------------------------------ serving
    async def start(self, listen: str) -> str:
        """Serve ``/metrics`` on ``listen`` (HOST:PORT); returns the address bound."""
        host, port = parse_listen(listen)
        registry = new_registry()
        registry.register(LoopCollector(self.gather, asyncio.get_running_loop()))
        server = MetricsServer(registry, host, port)
        await asyncio.to_thread(server.start)
        self.server = server
        log.info("metrics on http://%s/metrics", server.address)
        return server.address

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.aclose()

    # ------------------------------------------------------------------ the scrape
    def _key(self, connection: str, peer: str) -> ConnKey:
        return (connection, peer) if self.by_peer else (connection,)

    @property
    def _conn_labels(self) -> list[str]:
        return ["connection", "peer"] if self.by_peer else ["connection"]

    async def gather(self) -> list[Metric]:
        d = self.daemon
        out: list[Metric] = []
        out += self._policy(d)
        out += self._connections(d)
        out += self._negotiations(d)
        out += await self._kernel(d)
        out += self._stream(d)
        if self.gc is not None:
            out += self.gc.metric_families("ipsecd")
        return out

    def _policy(self, d: Daemon) -> list[Metric]:
        info = GaugeMetricFamily(
            "ipsecd_info", "The agent: node name, mode, version (always 1)",
            labels=["node", "mode", "version"],
        )  # fmt: skip
        mode = "cluster" if d.opts.cluster else "standalone"
        info.add_metric([d.opts.node, mode, ipsecd.__version__], 1)
        applied = d.applied
        rev = GaugeMetricFamily(
            "ipsecd_policy_applied_revision",
            "Controller revision of the policy in force (0: none, or standalone mode)",
            value=applied.revision if applied else 0,
        )
        received = GaugeMetricFamily(
            "ipsecd_policy_controller_revision",
            "Newest revision the controller sent or announced on the stream (cluster mode; "
            "above the applied one: this node is behind or refused it)",
            value=d.controller_revision,
        )
        at = GaugeMetricFamily(
            "ipsecd_policy_applied_timestamp_seconds",
            "When the policy in force was applied (Unix time)",
        )
        if applied is not None:
            at.add_metric([], applied.at)
        rejected = GaugeMetricFamily(
            "ipsecd_policy_rejected",
            "1 when the last policy offered was refused (the previous one stays in force)",
            value=1 if d.policy_error else 0,
        )
        status = d.health()
        health = GaugeMetricFamily(
            "ipsecd_health",
            "The agent's health as ipsecctl status shows it (1 for the current one)",
            labels=["health"],
        )
        for h in HEALTH:
            health.add_metric([h], 1 if status == h else 0)
        return [info, rev, received, at, rejected, health]

    def _connections(self, d: Daemon) -> list[Metric]:
        from ipsecd.ike.states import IkeState

        states = GaugeMetricFamily(
            "ipsecd_connections", "IKE connections of this node by state", labels=["state"]
        )
        ike = GaugeMetricFamily("ipsecd_ike_sas", "Established IKE SAs", labels=self._conn_labels)
        child = GaugeMetricFamily(
            "ipsecd_child_sas", "CHILD SAs installed in the kernel (in/out pairs)",
            labels=self._conn_labels,
        )  # fmt: skip
        by_state: Counter[str] = Counter()
        ike_n: Counter[ConnKey] = Counter()
        child_n: Counter[ConnKey] = Counter()
        for conn in d.supervisor.conns.values():
            by_state[CONNECTION_STATES.get(conn.state, "other")] += 1
            key = self._key(conn.ike.connection, conn.ike.peer)
            ike_n[key] += sum(1 for s in conn.sas if s.state == IkeState.ESTABLISHED)
            child_n[key] += len(conn.children)
        for label in CONNECTION_STATES.values():
            states.add_metric([label], by_state[label])
        for key in sorted(ike_n):
            ike.add_metric(list(key), ike_n[key])
            child.add_metric(list(key), child_n[key])
        return [states, ike, child]

    def _negotiations(self, d: Daemon) -> list[Metric]:
        counters = d.supervisor.counters
        neg = CounterMetricFamily(
            "ipsecd_negotiations",
            "IKE and CHILD SA negotiations (rekeys included) by outcome; reason: the Notify "
            "of a failure (RFC 7296 3.10.1), timeout, local",
            labels=["sa", "outcome", "reason"],
        )
        neg.add_metric(["ike", "established", "none"], counters.get("ike_established", 0))
        neg.add_metric(["child", "established", "none"], counters.get("child_established", 0))
        for (sa, reason), n in sorted(self.failures.items()):
            neg.add_metric([sa, "failed", reason], n)
        rekeys = CounterMetricFamily(
            "ipsecd_rekeys", "SAs replaced by a rekey (either side started it)", labels=["sa"]
        )
        rekeys.add_metric(["ike"], counters.get("ike_rekeyed", 0))
        rekeys.add_metric(["child"], counters.get("child_rekeyed", 0))
        install = CounterMetricFamily(
            "ipsecd_child_sa_install_failures",
            "Negotiated CHILD SAs the kernel refused to install",
            value=counters.get("install_failed", 0),
        )
        endpoint = CounterMetricFamily(
            "ipsecd_ike_datagrams",
            'What the IKE endpoint did with received datagrams (docs/limits.md "IKE"), '
            "and queue_overrun: dropped before it (the worker's queue was full)",
            labels=["event"],
        )
        for name, n in sorted(d.driver.endpoint.stats.as_dict().items()):
            endpoint.add_metric([name], n)
        endpoint.add_metric(["queue_overrun"], d.driver.overruns)
        return [neg, rekeys, install, endpoint]

    async def _kernel(self, d: Daemon) -> list[Metric]:
        errors = CounterMetricFamily(
            "ipsecd_kernel_errors", "XFRM netlink requests of the agent the kernel refused",
            value=d.writer.errors,
        )  # fmt: skip
        policies = GaugeMetricFamily(
            "ipsecd_kernel_policies",
            "XFRM policies the policy in force puts in the kernel",
            value=len(d.desired.policies) if d.desired is not None else 0,
        )
        drift = GaugeMetricFamily(
            "ipsecd_kernel_drift",
            "Entries of ipsecd's bands that differ from what the agent wants (the changes a "
            "reconcile would make: someone edited the kernel), and 1 for a default policy "
            "that differs",
            labels=["object"],
        )
        sa_bytes = CounterMetricFamily(
            "ipsecd_sa_bytes", "Bytes through the connection's CHILD SAs, all SAs since start "
            "(the kernel's SA counters)", labels=[*self._conn_labels, "direction"],
        )  # fmt: skip
        sa_packets = CounterMetricFamily(
            "ipsecd_sa_packets", "Packets through the connection's CHILD SAs, all SAs since "
            "start (the kernel's SA counters)", labels=[*self._conn_labels, "direction"],
        )  # fmt: skip
        xstat = CounterMetricFamily(
            "ipsecd_xfrm_errors",
            "The kernel's XFRM error counters of the agent's network namespace "
            "(/proc/net/xfrm_stat; names as the kernel's Documentation/networking/xfrm_proc)",
            labels=["error"],
        )
        out: list[Metric] = [errors, policies, drift, sa_bytes, sa_packets, xstat]
        try:
            view = await d.writer.inspect()
        except (xfrm.XfrmError, RuntimeError) as exc:
            log.warning("metrics: the kernel could not be read: %s", exc)
            return out
        if view.drift is not None:
            for kind, n in sorted(view.drift.items()):
                drift.add_metric([kind], n)
        for key, (nbytes, npackets) in sorted(self._traffic(d, view.states).items()):
            sa_bytes.add_metric(list(key), nbytes)
            sa_packets.add_metric(list(key), npackets)
        try:
            counters = await asyncio.to_thread(xfrm.xfrm_stat, d.opts.netns)
        except xfrm.XfrmError as exc:  # no CONFIG_XFRM_STATISTICS: no samples
            log.debug("metrics: %s", exc)
        else:
            for name, n in sorted(counters.items()):
                xstat.add_metric([name], n)
        return out

    def _traffic(
        self, d: Daemon, states: Iterable[xfrm.State]
    ) -> dict[tuple[str, ...], tuple[int, int]]:
        """Bytes and packets per connection key and direction: the SAs in the kernel
        now plus every SA of the connection seen before and gone since."""
        by_reqid: dict[int, ConnKey] = {}
        for conn in d.supervisor.conns.values():
            by_reqid[conn.reqid] = self._key(conn.ike.connection, conn.ike.peer)
        local = d.writer.local
        seen: dict[tuple[int, int, str], tuple[tuple[str, ...], int, int]] = {}
        for st in states:
            key = by_reqid.get(st.reqid)
            if key is None or st.current is None:
                continue
            direction = "in" if st.dst in local else "out"
            seen[(st.spi, int(st.proto), str(st.dst))] = (
                (*key, direction),
                st.current.bytes,
                st.current.packets,
            )
        for sa_id, (labels, nbytes, npackets) in self._sa_last.items():
            if sa_id not in seen:
                total = self._retired.setdefault(labels, [0, 0])
                total[0] += nbytes
                total[1] += npackets
        self._sa_last = seen
        # a connection no longer in the policy: its series go
        live = set(by_reqid.values())
        self._retired = {k: v for k, v in self._retired.items() if k[:-1] in live}
        out: dict[tuple[str, ...], tuple[int, int]] = {
            k: (v[0], v[1]) for k, v in self._retired.items()
        }
        for labels, nbytes, npackets in seen.values():
            b, p = out.get(labels, (0, 0))
            out[labels] = (b + nbytes, p + npackets)
        return out

    def _stream(self, d: Daemon) -> list[Metric]:
        stream: Any = d.stream
        up = GaugeMetricFamily(
            "ipsecd_stream_connected",
            "1 while the stream to a controller is up (cluster mode)",
        )
        connects = CounterMetricFamily(
            "ipsecd_stream_connects",
            "Streams to a controller established since start (more than 1: reconnections)",
        )
        if stream is not None:
            up.add_metric([], 1 if stream.connected else 0)
            connects.add_metric([], stream.connects)
        elif d.opts.cluster:
            up.add_metric([], 0)
            connects.add_metric([], 0)
        return [up, connects]
