"""Our agent against Libreswan pluto, real ESP in the kernel lab: rekeys, Delete, DPD.

The same phases as test_interop_charon.py (whose harness this module uses), with
pluto (tests/support/libreswan.py) in namespace ``b``:

    link  our connection       who initiates       mode       family  ping
    l4    l4/pluto4/ipv4       we (start eager)    tunnel     IPv4    198.51.100.1 -> .2
                                                                      (inner /32s on lo)
    l6    l6/pluto6/ipv6       pluto (we: start    transport  IPv6    fd00::1 -> fd00::2
                               passive)

IKE AES-CBC-256 + HMAC-SHA2-256 + ECP-256, ESP AES-CBC-256 + HMAC-SHA2-256 (without
PFS: pluto's ``pfs=no`` then, see the fixture).  pluto rekeys on command (``whack
--rekey-ipsec`` / ``--rekey-ike``, asynchronous), deletes with ``whack --terminate``.
whack shows no IKE SPIs: the adapter counts pluto's established IKE SAs instead.

Measured here: as the responder of our CHILD SA rekey, pluto installs its new outbound
SA and sends on it when it answers ("responder rekeyed Child SA ... ESP=>0x<new>"),
~0.1 s under TCG before our engine has the answer and the new inbound SA is in our
kernel; the echoes it answers in that window are lost (3-7 per rekey here), and the
harness counts them apart (``answers_on_new_sa``).  pluto installs IPv6 neighbour
discovery bypass policies of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.kernel.conftest import NsPair
from tests.kernel.test_interop_charon import (
    DPD_SECONDS,
    PSK,
    Link,
    agent,
    check_captures,
    nd_bypassed,
    peer_nd_bypass,
    spd_for,
)
from tests.support.aio import run_async
from tests.support.capture import EgressCapture
from tests.support.libreswan import Conn, Pluto

IKE, ESP = "aes256-sha256-ecp256", "aes256-sha256"
OURS_IN4, PLUTO_IN4 = "198.51.100.1", "198.51.100.2"
#: How long pluto may take to revive a connection whose IKE SA we deleted (a bound).
REVIVE_WAIT = 30.0


class PlutoPeer:
    """:class:`tests.kernel.test_interop_charon.ThirdParty` for tests/support/libreswan.py."""

    name = "pluto"
    #: Libreswan's responder installs both new halves when it answers a CHILD SA rekey
    #: (log: "responder rekeyed Child SA ... ESP=>0x<new>"), and sends on them at once
    answers_on_new_sa = True
    #: as rekey initiator it lost no echo in the lab runs
    drops_old_inbound_at_delete = False

    def __init__(self, pluto: Pluto) -> None:
        self.pluto = pluto
        #: Connections pluto initiated and keeps up (revives) until it terminates them.
        self._kept_up: set[str] = set()

    def children(self, link: Link) -> set[tuple[int, int]]:
        """The installed CHILD SAs of ``link``; none while pluto holds more (or less)
        than one established IKE SA for it (an IKE rekey not finished yet): whack
        shows no IKE SPIs to compare with ours."""
        sas = [s for s in self.pluto.list_sas() if s.conn == link.peer_conn and s.established]
        if len(sas) != 1:
            return set()
        return {
            (c.spi_in, c.spi_out)
            for s in sas
            for c in s.children
            if "ESTABLISHED" in c.state and c.spi_in and c.spi_out
        }

    def ike_spis(self, link: Link) -> set[tuple[bytes, bytes]] | None:
        return None

    def rekey_child(self, link: Link) -> None:
        self.pluto.rekey_child(link.peer_conn)

    def rekey_ike(self, link: Link) -> None:
        self.pluto.rekey_ike(link.peer_conn)

    def delete_ike(self, link: Link) -> None:
        self.pluto.terminate(link.peer_conn)  # the connection stays down
        self._kept_up.discard(link.peer_conn)

    def initiate(self, link: Link) -> None:
        """pluto revives a connection it initiated when the peer deletes its IKE SA
        ("connection is supposed to remain up; schedule EVENT_REVIVE_CONNS"): then wait
        for that, as a second initiate would add a second CHILD SA."""
        if link.peer_conn in self._kept_up:
            deadline = time.monotonic() + REVIVE_WAIT
            while not self.children(link):
                if time.monotonic() > deadline:
                    raise AssertionError(f"pluto did not revive {link.peer_conn}")
                time.sleep(0.5)
            return
        self.pluto.initiate(link.peer_conn, timeout=120)
        self._kept_up.add(link.peer_conn)

    def kill(self) -> None:
        proc = self.pluto.proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        return self.pluto.log_tail(lines)


def our_connection(name: str, peer: str, body: str, start: str = "eager") -> str:
    return (
        f'connection {name} {{ between all and {peer}; {body} auth psk "{PSK}";\n'
        f"    ike lab lifetime 1h; esp lab lifetime 1h; dpd {DPD_SECONDS}s; start {start}; }}"
    )


@run_async(900)
async def test_agent_with_pluto_rekeys_delete_dpd(
    ns_pair: NsPair, tmp_path: Path, egress_capture: Callable[..., EgressCapture]
) -> None:
    a, b = ns_pair  # a: our agent 192.0.2.1 / fd00::1; b: pluto 192.0.2.2 / fd00::2
    assert a.addr4 and a.addr6 and b.addr4 and b.addr6
    # IPv4 tunnel: inner addresses on lo; pluto's updown routes its side (leftsourceip)
    a.run(["ip", "addr", "add", f"{OURS_IN4}/32", "dev", "lo"])
    b.run(["ip", "addr", "add", f"{PLUTO_IN4}/32", "dev", "lo"])
    a.run(["ip", "route", "add", f"{PLUTO_IN4}/32", "dev", "veth0", "src", OURS_IN4])
    links = [
        Link("l4/pluto4/ipv4", "l4", True, "tunnel", 4, PLUTO_IN4),
        Link("l6/pluto6/ipv6", "l6", False, "transport", 6, b.addr6),
    ]
    spd = spd_for(
        [
            f"proposal ike lab {IKE};\nproposal esp lab {ESP};",
            f"peer pluto4 {{ address {b.addr4}; id fqdn:pluto4.test; }}",
            f"peer pluto6 {{ address {b.addr6}; id fqdn:pluto6.test; }}",
        ],
        [
            our_connection(
                "l4", "pluto4", f"tunnel; traffic from {OURS_IN4}/32 to {PLUTO_IN4}/32;"
            ),
            our_connection("l6", "pluto6", "mode transport;", "passive"),
        ],
    )
    common = {"ike_proposals": (IKE,), "esp_proposals": (ESP,)}
    peer_nd_bypass(b)  # l6 is transport mode over IPv6
    with Pluto.started(b, tmp_path / "pluto") as pluto:
        pluto.load(
            [
                Conn("l4", b.addr4, a.addr4, "pluto4.test", a.addr4, PSK, mode="tunnel",
                     local_ts=(f"{PLUTO_IN4}/32",), remote_ts=(f"{OURS_IN4}/32",), **common),
                Conn("l6", b.addr6, a.addr6, "pluto6.test", a.addr6, PSK, mode="transport",
                     **common),
            ]
        )  # fmt: skip
        peer = PlutoPeer(pluto)
        started = time.monotonic()
        async with agent(a, tmp_path, spd, (a.addr4, a.addr6), links, peer) as ix:
            await asyncio.to_thread(peer.initiate, links[1])  # l6: pluto initiates
            await ix.all_settled()
            print(f"[pluto] both links up after {time.monotonic() - started:.1f} s")
            caps = [egress_capture(a), egress_capture(b)]
            flows = await ix.rekey_phase()
            ours, theirs = [await asyncio.to_thread(c.stop) for c in caps]
            check_captures(
                "pluto", ours, theirs, ix, flows.values(), dropped=sum(c.dropped or 0 for c in caps)
            )
            assert nd_bypassed(b), "the ND bypass policies are gone"
            assert ix.figures["rekeys"] == {"child_rekeyed": 4, "ike_rekeyed": 4}, ix.figures
            t0 = time.monotonic()
            await ix.delete_phase()
            await ix.quick_ping()
            print(f"[pluto] Delete phase {time.monotonic() - t0:.1f} s")
            await ix.dpd_phase()
