"""Our agent against OpenIKED iked, real ESP in the kernel lab: rekeys, Delete, DPD.

The same phases as test_interop_charon.py (whose harness this module uses), with iked
(tests/support/openiked.py) in namespace ``b``:

    link  our connection       who initiates       mode       family  ping
    k6    k6/iked6/ipv6        we (start eager)    tunnel     IPv6    fd00:a::1 -> fd00:b::2
                                                                      (inner /128s on lo)
    k4    k4/iked4/ipv4        iked (``active``;   transport  IPv4    192.0.2.1 -> 192.0.2.2
                               we: start passive)

(Transport mode over IPv6 is covered with pluto: it needs neighbour discovery in clear
on both ends, and XFRM bypass policies for it beside iked's own upset iked; see
peer_nd_bypass in test_interop_charon.py.)

IKE AES-CBC-256 + HMAC-SHA2-256 + MODP-2048, ESP AES-CBC-256 + HMAC-SHA2-512 (iked
installs no AES-GCM and no HMAC-SHA2-256 through PF_KEY, shared/LAB-NOTES.md).

iked has no command to rekey: it rekeys a CHILD SA when the kernel reports the soft
lifetime it set (85-95 % of ``lifetime``; measured here: from 80 %) and an IKE SA at
85-95 % of ``ikelifetime`` after it came up (measured: from 82 %).  The rekey phase
therefore goes: we rekey the CHILD SA, then the IKE SA, at once; then iked rekeys our
CHILD SA at its soft lifetime, then our IKE SA (IKED_STEPS); IKED_CHILD_LIFE and
IKED_IKE_LIFE keep those windows apart, with a few seconds on either side.  Then the
policies are reloaded with long lifetimes for the SAs of the later phases.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tests.kernel.conftest import NsPair
from tests.kernel.test_interop_charon import (
    DPD_SECONDS,
    PSK,
    Link,
    agent,
    check_captures,
    spd_for,
)
from tests.support.aio import run_async
from tests.support.capture import EgressCapture
from tests.support.openiked import Conn, Iked

IKE, ESP = "aes256-sha256-modp2048", "aes256-sha512"
OURS_IN6, IKED_IN6 = "fd00:a::1", "fd00:b::2"
#: iked's CHILD SA lifetime and IKE SA lifetime during the rekey phase (seconds).  With
#: T the time the links are up, we rekey at ~T+2 (CHILD) and ~T+4 (IKE); iked rekeys
#: our CHILD SA within T+2+[24, 28.5] and our IKE SA within T+4+[32, 38]; its next CHILD
#: rekey comes after T+50.
IKED_CHILD_LIFE, IKED_IKE_LIFE = 30, 40
IKED_STEPS = ("ours-child", "ours-ike", "peer-child", "peer-ike")


def _host(endpoint: str) -> str:
    """``ADDR:PORT`` as ``ikectl show sa`` prints it → ADDR."""
    return endpoint.rsplit(":", 1)[0].strip("[]")


class IkedPeer:
    """:class:`tests.kernel.test_interop_charon.ThirdParty` for tests/support/openiked.py;
    ``ours`` maps each link's iked policy name to our address in it."""

    name = "iked"
    #: as the responder of a CHILD SA rekey iked installs both new halves when it
    #: answers, and sends on them at once; as its initiator it removes its old inbound
    #: SA when it sends the Delete (1-2 echoes lost each time under TCG)
    answers_on_new_sa = True
    drops_old_inbound_at_delete = True

    def __init__(self, iked: Iked, ours: dict[str, str]) -> None:
        self.iked = iked
        self.ours = ours

    def children(self, link: Link) -> set[tuple[int, int]]:
        return {
            (c.spi_in, c.spi_out)
            for s in self.iked.list_sas()
            if s.established and _host(s.remote) == self.ours[link.peer_conn]
            for c in s.children
            if c.loaded
        }

    def ike_spis(self, link: Link) -> set[tuple[bytes, bytes]] | None:
        return {
            (s.ispi.to_bytes(8, "big"), s.rspi.to_bytes(8, "big"))
            for s in self.iked.list_sas()
            if s.established and _host(s.remote) == self.ours[link.peer_conn]
        }

    def rekey_child(self, link: Link) -> None:
        """Nothing to do: iked rekeys at the soft lifetime it gave the kernel."""

    def rekey_ike(self, link: Link) -> None:
        """Nothing to do: iked rekeys ``ikelifetime`` after the IKE SA came up."""

    def delete_ike(self, link: Link) -> None:
        self.iked.terminate(link.peer_conn)

    def initiate(self, link: Link) -> None:
        conn = self.iked.conns[link.peer_conn]
        if conn.auto == "start":
            # an active policy whose SA the peer deleted is initiated again only by
            # iked's periodic timer (60 s); a reload initiates it at once
            self.iked.load([conn])
        self.iked.initiate(link.peer_conn, timeout=120)

    def kill(self) -> None:
        proc = self.iked.proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        return self.iked.log_tail(lines)


def our_connection(name: str, peer: str, body: str, start: str = "eager") -> str:
    return (
        f'connection {name} {{ between all and {peer}; {body} auth psk "{PSK}";\n'
        f"    ike lab lifetime 1h; esp lab lifetime 1h; dpd {DPD_SECONDS}s; start {start}; }}"
    )


@run_async(900)
async def test_agent_with_iked_rekeys_delete_dpd(
    ns_pair: NsPair, tmp_path: Path, egress_capture: Callable[..., EgressCapture]
) -> None:
    a, b = ns_pair  # a: our agent 192.0.2.1 / fd00::1; b: iked 192.0.2.2 / fd00::2
    assert a.addr4 and a.addr6 and b.addr4 and b.addr6
    # IPv6 tunnel: inner addresses on lo; iked adds no routes, so both sides get one
    a.run(["ip", "addr", "add", f"{OURS_IN6}/128", "dev", "lo", "nodad"])
    b.run(["ip", "addr", "add", f"{IKED_IN6}/128", "dev", "lo", "nodad"])
    a.run(["ip", "-6", "route", "add", f"{IKED_IN6}/128", "dev", "veth0", "src", OURS_IN6])
    b.run(["ip", "-6", "route", "add", f"{OURS_IN6}/128", "dev", "veth0", "src", IKED_IN6])
    links = [
        Link("k6/iked6/ipv6", "k6", True, "tunnel", 6, IKED_IN6),
        Link("k4/iked4/ipv4", "k4", False, "transport", 4, b.addr4),
    ]
    spd = spd_for(
        [
            f"proposal ike lab {IKE};\nproposal esp lab {ESP};",
            f"peer iked6 {{ address {b.addr6}; id fqdn:iked6.test; }}",
            f"peer iked4 {{ address {b.addr4}; id fqdn:iked4.test; }}",
        ],
        [
            our_connection(
                "k6", "iked6", f"tunnel; traffic from {OURS_IN6}/128 to {IKED_IN6}/128;"
            ),
            our_connection("k4", "iked4", "mode transport;", "passive"),
        ],
    )
    timers = {"ikelifetime": IKED_IKE_LIFE, "salifetime": IKED_CHILD_LIFE}
    conns = [
        Conn("k6", b.addr6, a.addr6, "iked6.test", a.addr6, PSK, ike_proposals=(IKE,),
             esp_proposals=(ESP,), mode="tunnel", local_ts=(f"{IKED_IN6}/128",),
             remote_ts=(f"{OURS_IN6}/128",), **timers),
        Conn("k4", b.addr4, a.addr4, "iked4.test", a.addr4, PSK, ike_proposals=(IKE,),
             esp_proposals=(ESP,), mode="transport", auto="start", **timers),
    ]  # fmt: skip
    with Iked.started(b, tmp_path / "iked") as iked:
        peer = IkedPeer(iked, {"k6": a.addr6, "k4": a.addr4})
        started = time.monotonic()
        async with agent(a, tmp_path, spd, (a.addr4, a.addr6), links, peer) as ix:
            # k4: iked initiates as soon as its active policy is loaded
            await asyncio.to_thread(iked.load, conns)
            await ix.all_settled()
            print(f"[iked] both links up after {time.monotonic() - started:.1f} s")
            caps = [egress_capture(a), egress_capture(b)]
            flows = await ix.rekey_phase(IKED_STEPS)
            ours, theirs = [await asyncio.to_thread(c.stop) for c in caps]
            check_captures(
                "iked", ours, theirs, ix, flows.values(), dropped=sum(c.dropped or 0 for c in caps)
            )
            assert ix.figures["rekeys"] == {"child_rekeyed": 4, "ike_rekeyed": 4}, ix.figures
            # long lifetimes from now on: no rekey of iked's own in the later phases
            calm = [replace(c, ikelifetime=0, salifetime=3600) for c in conns]
            await asyncio.to_thread(iked.load, calm)
            t0 = time.monotonic()
            await ix.delete_phase()
            await ix.quick_ping()
            print(f"[iked] Delete phase {time.monotonic() - t0:.1f} s")
            await ix.dpd_phase()
