"""``ipsecd -l``: log packets that match no selector (Tru64 ipsecd(8) ``-l``).

Outbound: under ``policy discard`` the agent installs a catch-all outbound policy at
the lowest priority of its band whose template no SA will ever satisfy
(:data:`UNMATCHED_REQID`); a packet that matches nothing else hits it, is dropped as
the default policy would drop it, and the kernel reports its flow in an ACQUIRE
(once per flow per ``xfrm_acq_expires`` seconds, the kernel's own rate limit).  Each
one is logged (rate-limited) with addresses, protocol, ports and direction, to the
``ipsecd.unmatched`` logger (syslog's auth facility with ``-l``).

Inbound: Linux says nothing per packet about inbound traffic that matches no policy;
the kernel's counters (/proc/net/xfrm_stat XfrmInNoPols) are logged as a count per
minute instead (docs/operations.md "Logging").
"""

from __future__ import annotations

import asyncio
import logging
import time

from ipsecd import xfrm

__all__ = ["UNMATCHED_REQID", "UnmatchedLogger", "catch_all_policies"]

log = logging.getLogger("ipsecd.unmatched")

#: The reqid of the catch-all template: never negotiated (bottom of the band's
#: "plain unique" range, docs/architecture.md "Ownership").
UNMATCHED_REQID = xfrm.DEFAULT_OWNERSHIP.reqid_max - 1023
#: Log lines per second (burst) for unmatched packets.
RATE = 10.0
BURST = 20.0


def catch_all_policies(ownership: xfrm.Ownership = xfrm.DEFAULT_OWNERSHIP) -> list[xfrm.Policy]:
    """The lowest-priority outbound policies that turn unmatched packets into ACQUIREs."""
    tmpl = xfrm.Template(
        xfrm.Proto.ESP, xfrm.Mode.TRANSPORT, reqid=UNMATCHED_REQID, level=xfrm.Level.REQUIRE
    )
    return [
        xfrm.Policy(
            xfrm.Selector.of(net, net),
            xfrm.Dir.OUT,
            priority=ownership.priority_max,
            templates=(tmpl,),
        )
        for net in ("0.0.0.0/0", "::/0")
    ]


class UnmatchedLogger:
    """See the module doc."""

    def __init__(self, netns: str | None = None, interval: float = 60.0) -> None:
        self.netns = netns
        self.interval = interval
        self._tokens = BURST
        self._at = time.monotonic()
        self.suppressed = 0
        self.logged = 0
        #: Set by the agent when the policy asks for it (and drops unmatched packets).
        self.enabled = False

    def acquire(self, ev: xfrm.AcquireRequested) -> None:
        if not self.enabled or not any(t.reqid == UNMATCHED_REQID for t in ev.policy.templates):
            return
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._at) * RATE)
        self._at = now
        if self._tokens < 1:
            self.suppressed += 1
            return
        self._tokens -= 1
        sel = ev.selector
        ports = ""
        if sel.proto in (6, 17, 132):
            ports = f" port {sel.sport or 0} -> {sel.dport or 0}"
        elif sel.proto in (1, 58):
            ports = f" type {sel.sport or 0} code {sel.dport or 0}"
        extra = f" ({self.suppressed} more not logged)" if self.suppressed else ""
        self.suppressed = 0
        self.logged += 1
        log.warning(
            "unmatched packet dropped: out %s -> %s proto %d%s%s",
            sel.src.network_address,
            sel.dst.network_address,
            sel.proto,
            ports,
            extra,
        )

    async def run(self) -> None:
        previous: dict[str, int] | None = None
        while True:
            try:
                now = xfrm.xfrm_stat(self.netns)
            except xfrm.XfrmError as exc:
                log.warning("cannot read the kernel's XFRM counters: %s", exc)
                return
            if previous is not None and self.enabled:
                inbound = now.get("XfrmInNoPols", 0) - previous.get("XfrmInNoPols", 0)
                if inbound > 0:
                    log.warning(
                        "unmatched packets dropped: %d inbound in the last %.0f s "
                        "(the kernel does not say which)",
                        inbound,
                        self.interval,
                    )
            previous = now
            await asyncio.sleep(self.interval)
