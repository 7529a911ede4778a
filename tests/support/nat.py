"""A NAT between namespaces, for NAT traversal tests (RFC 7296 2.23, RFC 3948).

Three namespaces in a row::

    inside                      nat                                     outside
    veth0 198.51.100.2/24 ──── veth0 198.51.100.1/24
    (default via .1)            veth1 192.0.2.1/24 (masquerade) ──── veth1 192.0.2.2/24

The ``nat`` namespace forwards IPv4 and rewrites the source of everything leaving on
its outside link to its own address 192.0.2.1 (nftables ``masquerade``; ``random``
also rewrites the source ports, as carrier-grade NATs do), so a peer in ``outside``
sees the ``inside`` host as 192.0.2.1 and a port of the NAT's choice.  The ``outside``
host needs no route back: 192.0.2.1 is on its link.

Typical use (root; the kernel lab or the host)::

    with nat_topology("klab-") as t:
        t.inside.run(["ping", "-c1", t.outside.addr4])

Prerequisite: Debian ``nftables`` (the ``nft`` command; `make deps` installs it).
Every namespace is removed on exit, whatever happened.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.netns import Netns, NetnsError, create, delete, link_pair

__all__ = ["INSIDE", "NAT_INSIDE", "NAT_OUTSIDE", "OUTSIDE", "NatTopology", "nat_topology"]

INSIDE, NAT_INSIDE = "198.51.100.2", "198.51.100.1"
NAT_OUTSIDE, OUTSIDE = "192.0.2.1", "192.0.2.2"
NFT_HINT = "nft not found: `apt-get install nftables` (or `make deps`)"


@dataclass
class NatTopology:
    """``inside`` reaches ``outside`` only through ``nat``, which masquerades it."""

    inside: Netns
    nat: Netns
    outside: Netns


def ruleset(out_ifname: str, *, random_ports: bool) -> str:
    """The nftables source NAT of the ``nat`` namespace (``nft -f -``)."""
    flags = " random" if random_ports else ""
    return (
        "table ip ipsecd_nat {\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        f'        oifname "{out_ifname}" masquerade{flags}\n'
        "    }\n"
        "}\n"
    )


def nft(ns: Netns, source: str) -> None:
    """Load an nftables ruleset (on stdin) into ``ns``; raise with nft's message."""
    nft_bin = shutil.which("nft") or "/usr/sbin/nft"
    proc = subprocess.run(
        ns.argv([nft_bin, "-f", "-"]),
        input=source,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        raise NetnsError(f"in netns {ns.name}: nft -f - failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def nat_topology(prefix: str, *, random_ports: bool = True) -> Iterator[NatTopology]:
    """Make the three namespaces (see the module doc); remove them on exit."""
    if shutil.which("nft") is None and not shutil.which("/usr/sbin/nft"):
        raise NetnsError(NFT_HINT)
    made: list[Netns] = []
    try:
        for _ in range(3):
            made.append(create(prefix))
        inside, nat, outside = made
        link_pair(inside, nat, addrs_a=(f"{INSIDE}/24",), addrs_b=(f"{NAT_INSIDE}/24",),
                  ifname="veth0")  # fmt: skip
        link_pair(nat, outside, addrs_a=(f"{NAT_OUTSIDE}/24",), addrs_b=(f"{OUTSIDE}/24",),
                  ifname="veth1")  # fmt: skip
        nat.ifname, nat.addr4 = "veth1", NAT_OUTSIDE
        inside.run(["ip", "route", "add", "default", "via", NAT_INSIDE])
        nat.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        nft(nat, ruleset("veth1", random_ports=random_ports))
        yield NatTopology(inside, nat, outside)
    finally:
        for ns in made:
            delete(ns)
