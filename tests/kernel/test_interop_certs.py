"""Our agent authenticating with X.509 certificates against charon, pluto and iked (#11).

Real ESP in the kernel lab.  Our agent runs standalone in namespace ``a`` (SPD ``peer``
statements, ``auth certificate``, its certificate, key and CA given as ``--cert``,
``--key``, ``--ca``: ``AgentOptions.node_files``; charon's c6 names its own ``cert``
and ``key`` in the SPD), the third-party daemon in ``b``.  Every end-entity
certificate comes from one intermediate CA under one root, made for the real current
time (the daemons check certificates against their clock; pki.NOW is a fixed 2025
instant); ours name our addresses (subjectAltName IP entries: our IKE identity is our
address), the daemons' their FQDN.  Every end sends its chain (end entity +
intermediate) and trusts the root (iked also the intermediate: it reads only the
first CERT payload, see tests/support/openiked.py).

    test     link (ours)        who initiates  keys         mode, family
    charon   c4/charon4/ipv4    we             ECDSA P-256  transport, IPv4
             c6/charon6/ipv6    charon         RSA 3072     tunnel, IPv6
    pluto    l4/pluto4/ipv4     we             RSA 3072     transport, IPv4
             l6/pluto6/ipv6     pluto          RSA 3072     transport, IPv6
    iked     k6/iked6/ipv6      we             ECDSA P-256  tunnel, IPv6
             k4/iked4/ipv4      iked           ECDSA P-256  transport, IPv4

IKE fragmentation (RFC 7383) wherever it can be: our agent runs with
``ike_fragment_size`` 576 (``--ike-fragment-size 576``), charon with
``charon.fragment_size = 576`` and ``fragmentation = yes``, iked with ``set
fragmentation``; pluto fragments once it has received fragments, or with
``fragmentation=force`` (l6, where it sends first).  Both namespaces drop every IP
fragment on the way in (nftables, :data:`NO_IP_FRAGMENTS`), so a message that does not
fit one datagram arrives only as IKE fragments; the RSA chains (~2 KB of IKE_AUTH) do
not fit the veth's 1,500 bytes.

Each test checks, per link: IKE and CHILD SAs up and both ends listing the same CHILD
SA SPIs (``Interop.settled``, from test_interop_charon.py), 20 echoes with none lost,
egress captures on both ends with the echoes only as ESP with those SPIs and no clear
echo, no IP fragment on the wire, our IKE_AUTH in SKF fragments of at most 576 bytes
and the peer's within its fragment size (in fragments but for iked's ~1,260-byte
answer over IPv6), charon's log showing both directions ("splitting IKE message ...
into N fragments" for what it sent, "received fragment #k of N" for what we sent), our
status naming the peer's signature scheme and certificate subject (``peer_auth``,
``peer_certificate``), and charon's and pluto's logs naming our scheme and identity.
Figures (handshake times, fragment counts per direction, pings) are printed for the
issue notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.credentials import NodeFiles
from agent.daemon import Daemon
from tests.kernel.conftest import NsPair
from tests.kernel.test_interop_charon import (
    CHARON_ID,
    CHARON_TUNING,
    AgentLog,
    CharonPeer,
    Interop,
    Link,
    ThirdParty,
    check_captures,
    nd_bypassed,
    peer_nd_bypass,
    spd_for,
    until,
)
from tests.kernel.test_interop_libreswan import PlutoPeer
from tests.kernel.test_interop_openiked import IkedPeer
from tests.support import pki
from tests.support.agents import options, ping, running, write_private
from tests.support.aio import run_async
from tests.support.capture import EgressCapture, Packet, PacketKind
from tests.support.charon import LAB_PLUGINS, Charon, Child
from tests.support.charon import Certs as CharonCerts
from tests.support.charon import Conn as CharonConn
from tests.support.libreswan import Certs as PlutoCerts
from tests.support.libreswan import Conn as PlutoConn
from tests.support.libreswan import Pluto
from tests.support.nat import nft
from tests.support.netns import Netns
from tests.support.openiked import Certs as IkedCerts
from tests.support.openiked import Conn as IkedConn
from tests.support.openiked import Iked

#: Our --ike-fragment-size and charon.fragment_size: the whole IP datagram (RFC 791's
#: minimum), so that every IKE_AUTH with a chain is fragmented.
FRAGMENT_SIZE = 576
ETHERNET = 14
PINGS = 20
#: Bound on a link coming up (TCG: the first SA with an algorithm loads crypto modules).
UP_TIMEOUT = 150.0

#: Every IP fragment dropped on the way in, before any reassembly (conntrack's defrag
#: hook sits at -400): an IKE message that does not fit one datagram gets through only
#: as IKE fragments.  The counters tell how many were dropped.
NO_IP_FRAGMENTS = """table inet ipsecd_nofrag {
    chain prerouting {
        type filter hook prerouting priority -500; policy accept;
        ip frag-off & 0x3fff != 0 counter drop
        exthdr frag exists counter drop
    }
}
"""

# ---------------------------------------------------------------------------- the PKI


@dataclass(frozen=True)
class Lab:
    """The test PKI: one root, one intermediate, the end entities (see the module doc)."""

    root: pki.Issued
    inter: pki.Issued
    ours_ecdsa: pki.Issued
    ours_rsa: pki.Issued
    charon_ecdsa: pki.Issued
    charon_rsa: pki.Issued
    pluto_rsa: pki.Issued
    iked_ecdsa: pki.Issued


@functools.cache
def lab_pki() -> Lab:
    """Made once per run (three RSA 3072 keys cost seconds under TCG), valid from a day
    before the real current time."""
    now = time.time()
    ca_valid = {"not_before": now - pki.DAY, "not_after": now + 3650 * pki.DAY}
    ee_valid = {"not_before": now - pki.DAY, "not_after": now + 30 * pki.DAY}
    root = pki.ca("interop root CA", **ca_valid)  # type: ignore[arg-type]
    inter = pki.ca("interop nodes CA", issuer=root, path_len=0, **ca_valid)  # type: ignore[arg-type]
    ours = ("192.0.2.1", "fd00::1")

    def ee(cn: str, key: str, **names: Any) -> pki.Issued:
        return pki.end_entity(inter, cn, key=key, **names, **ee_valid)

    return Lab(
        root,
        inter,
        ours_ecdsa=ee("ours ecdsa", "p256", ips=ours),
        ours_rsa=ee("ours rsa", "rsa3072", ips=ours),
        charon_ecdsa=ee("charon.test ecdsa", "p256", dns=(CHARON_ID,)),
        charon_rsa=ee("charon.test rsa", "rsa3072", dns=(CHARON_ID,)),
        pluto_rsa=ee("pluto.test", "rsa3072", dns=("pluto.test",)),
        iked_ecdsa=ee("iked.test", "p256", dns=("iked.test",)),
    )


def our_files(tmp: Path, name: str, issued: pki.Issued) -> NodeFiles:
    """Our chain (end entity, intermediate), key (0600) and CA (the root) as files."""
    lab = lab_pki()
    cert = pki.write_pem(tmp / f"{name}.pem", issued.cert, lab.inter.cert)
    key = pki.write_key(tmp / f"{name}.key", issued.key)
    ca = pki.write_pem(tmp / "root.pem", lab.root.cert)
    return NodeFiles(cert, key, ca)


# ---------------------------------------------------------------------------- helpers


def drop_ip_fragments(*namespaces: Netns) -> None:
    for ns in namespaces:
        nft(ns, NO_IP_FRAGMENTS)


def dropped_fragments(ns: Netns) -> int:
    """Packets the NO_IP_FRAGMENTS rules dropped in ``ns`` so far."""
    nft_bin = shutil.which("nft") or "/usr/sbin/nft"
    out = ns.run([nft_bin, "list", "table", "inet", "ipsecd_nofrag"]).stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


@dataclass(frozen=True)
class IkeDatagram:
    src: str
    dst: str
    length: int  # the IP datagram (the capture's frame minus the Ethernet header)
    exchange: int  # 34 IKE_SA_INIT, 35 IKE_AUTH, 36 CREATE_CHILD_SA, 37 INFORMATIONAL
    first_payload: int  # 46 SK, 53 SKF (RFC 7383 2.5)

    @property
    def fragment(self) -> bool:
        return self.first_payload == 53


def ike_datagrams(packets: Iterable[Packet]) -> list[IkeDatagram]:
    """The IKE messages in ``packets`` (Ethernet frames), with their header fields."""
    out = []
    for p in packets:
        if p.kind is not PacketKind.IKE:
            continue
        ip = p.data[ETHERNET:]
        udp = (ip[0] & 0x0F) * 4 if p.version == 4 else 40
        ike = ip[udp + 8 :]
        if 4500 in (p.sport, p.dport):
            ike = ike[4:]  # the non-ESP marker (RFC 3948 2.2)
        if len(ike) < 28:
            continue
        out.append(IkeDatagram(p.src, p.dst, p.length - ETHERNET, ike[18], ike[16]))
    return out


@dataclass(frozen=True)
class Wire:
    """One link on the wire: our address, theirs, the largest IKE datagram they may
    send, and whether their IKE_AUTH must come in fragments (False: it may fit one
    datagram of that size)."""

    ours: str
    theirs: str
    their_size: int = FRAGMENT_SIZE
    their_fragments: bool = True


def check_wire(label: str, ours: list[Packet], theirs: list[Packet], links: Sequence[Wire]) -> None:
    """No IP fragment on the wire; for each link our IKE_AUTH in SKF fragments within
    FRAGMENT_SIZE-byte datagrams, theirs within their size (in fragments if told)."""
    ike = ike_datagrams(ours + theirs)
    assert ike, f"[{label}] no IKE datagram captured"
    ip_fragments = [p for p in ours + theirs if p.kind is PacketKind.FRAGMENT]
    assert not ip_fragments, f"[{label}] IP fragments on the wire: {ip_fragments[:3]}"
    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for lk in links:
        for src, dst in ((lk.ours, lk.theirs), (lk.theirs, lk.ours)):
            sent = [d for d in ike if d.src == src and d.dst == dst]
            counts[f"{src} -> {dst}"] = sum(1 for d in sent if d.fragment)
            sizes[f"{src} -> {dst}"] = max((d.length for d in sent), default=0)
    print(
        f"[{label}] SKF datagrams (retransmissions included): {counts}; "
        f"largest IKE datagrams: {sizes}"
    )
    for lk in links:
        for src, dst, limit, needed in (
            (lk.ours, lk.theirs, FRAGMENT_SIZE, True),
            (lk.theirs, lk.ours, lk.their_size, lk.their_fragments),
        ):
            frags = [d for d in ike if d.src == src and d.dst == dst and d.fragment]
            assert sizes[f"{src} -> {dst}"] <= limit, (label, src, dst, sizes)
            assert {d.exchange for d in frags} <= {35}, (label, src, frags)
            assert len(frags) >= 2 or not needed, (label, src, dst, "no IKE fragments")


def check_status(daemon: Daemon, expected: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Our status names each connection's peer signature scheme and certificate
    subject: ``expected`` = {connection: (peer_auth pattern, subject)}; returns the
    schemes seen."""
    conns = {c["name"]: c for c in daemon.status()["connections"]}
    assert set(conns) == set(expected), (sorted(conns), sorted(expected))
    for name, (auth, subject) in expected.items():
        c = conns[name]
        seen = (c.get("state"), c.get("peer_auth"), c.get("peer_certificate"))
        assert seen[0] == "up" and re.fullmatch(auth, str(seen[1])) and seen[2] == subject, (
            f"our status of {name}: {seen}, expected ('up', {auth!r}, {subject!r})"
        )
    return {n: str(c.get("peer_auth")) for n, c in conns.items()}


async def pings(daemon: Daemon, links: Sequence[Link], label: str) -> list[Any]:
    """PINGS echoes over every link at once; none may be lost."""
    ns = Netns(str(daemon.opts.netns))
    results = await asyncio.gather(
        *(ping(ns, lk.ping_dst, count=PINGS, interval=0.05) for lk in links)
    )
    for lk, r in zip(links, results, strict=True):
        print(f"[{label}] {lk.label}: ping {r.sent} sent, {r.lost} lost")
        assert r.sent == PINGS and r.lost == 0, r.output
    return list(results)


async def _ready(daemon: Daemon, links: Sequence[Link]) -> bool:
    return daemon.applied is not None and all(lk.conn in daemon.supervisor.conns for lk in links)


@contextlib.asynccontextmanager
async def agent(
    ns: Netns,
    tmp: Path,
    spd_text: str,
    addresses: tuple[str, ...],
    links: Sequence[Link],
    peer: ThirdParty,
    node_files: NodeFiles,
) -> AsyncIterator[Interop]:
    """Our agent, standalone, in ``ns``: certificates (``node_files``: --cert, --key,
    --ca) and ``--ike-fragment-size`` FRAGMENT_SIZE (test_interop_charon.agent with
    those options)."""
    spd = write_private(tmp / "policy.spd", spd_text)
    log = AgentLog(tmp / "agent.log")
    with log.attached():
        opts = options("ours", ns, tmp, spd_file=spd, addresses=addresses,
                       node_files=node_files, ike_fragment_size=FRAGMENT_SIZE)  # fmt: skip
        async with running([opts]) as daemons:
            daemon = daemons["ours"]
            interop = Interop(daemon, peer, links, log)
            with interop.diagnostics():
                await until(lambda: _ready(daemon, links), 120, "our agent's policy applied")
                yield interop


def connection(name: str, peer: str, body: str, auth: str = "", start: str = "eager") -> str:
    return (
        f"connection {name} {{ between all and {peer}; {body} auth certificate{auth};\n"
        f"    ike lab lifetime 1h; esp lab lifetime 1h; dpd 30s; start {start}; }}"
    )


def proposals(ike: str, esp: str) -> str:
    return f"proposal ike lab {ike};\nproposal esp lab {esp};"


# ---------------------------------------------------------------------------- charon

CHARON_IKE, CHARON_ESP = "aes256gcm16-prfsha384-ecp384", "aes256gcm16"
OURS_IN6, CHARON_IN6 = "fd00:a::1", "fd00:b::2"


def charon_fragments(log: str, conn: str) -> tuple[list[int], int]:
    """From charon's log, for connection ``conn``'s IKE SAs: how many fragments each
    message charon split had, and how many of our fragments it received.  Lines of an
    IKE SA before it has its connection are ``<N>``, after ``<conn|N>``."""
    ids = set(re.findall(rf"<{re.escape(conn)}\|(\d+)>", log))
    lines = [
        ln
        for ln in log.splitlines()
        if (m := re.search(r"<(?:[^|>]+\|)?(\d+)>", ln)) and m[1] in ids
    ]
    text = "\n".join(lines)
    split = [
        int(n)
        for n in re.findall(r"splitting IKE message \(\d+ bytes\) into (\d+) fragments", text)
    ]
    received = len(re.findall(r"received fragment #\d+ of \d+", text))
    return split, received


@run_async(400)
async def test_charon_ecdsa_and_rsa_chains_both_roles_in_ike_fragments(
    ns_pair: NsPair, tmp_path: Path, egress_capture: Callable[..., EgressCapture]
) -> None:
    lab = lab_pki()
    a, b = ns_pair  # a: our agent 192.0.2.1 / fd00::1; b: charon 192.0.2.2 / fd00::2
    assert a.addr4 and a.addr6 and b.addr4 and b.addr6
    a.run(["ip", "addr", "add", f"{OURS_IN6}/128", "dev", "lo", "nodad"])
    b.run(["ip", "addr", "add", f"{CHARON_IN6}/128", "dev", "lo", "nodad"])
    a.run(["ip", "-6", "route", "add", f"{CHARON_IN6}/128", "dev", "veth0", "src", OURS_IN6])
    b.run(["ip", "-6", "route", "add", f"{OURS_IN6}/128", "dev", "veth0", "src", CHARON_IN6])
    drop_ip_fragments(a, b)
    links = [
        Link("c4/charon4/ipv4", "c4", True, "transport", 4, b.addr4),
        Link("c6/charon6/ipv6", "c6", False, "tunnel", 6, CHARON_IN6),
    ]
    files = our_files(tmp_path, "ours-ecdsa", lab.ours_ecdsa)  # --cert/--key/--ca
    rsa = our_files(tmp_path, "ours-rsa", lab.ours_rsa)  # c6's own (SPD cert/key)
    spd = spd_for(
        [
            proposals(CHARON_IKE, CHARON_ESP),
            f"peer charon4 {{ address {b.addr4}; id fqdn:{CHARON_ID}; }}",
            f"peer charon6 {{ address {b.addr6}; id fqdn:{CHARON_ID}; }}",
        ],
        [
            connection("c4", "charon4", "mode transport;"),
            connection(
                "c6",
                "charon6",
                f"tunnel; traffic from {OURS_IN6}/128 to {CHARON_IN6}/128;",
                f' cert "{rsa.cert}" key "{rsa.key}"',
                "passive",
            ),
        ],
    )

    def certs(issued: pki.Issued) -> CharonCerts:
        return CharonCerts(issued.pem, issued.key_pem, (lab.inter.pem,), (lab.root.pem,))

    frag = {"fragmentation": "yes"}
    charon_conns = [
        CharonConn("c4", (b.addr4,), (a.addr4,), CHARON_ID, a.addr4, "", (CHARON_IKE,),
                   (Child("c4", esp_proposals=(CHARON_ESP,), mode="transport"),),
                   extra=frag, certs=certs(lab.charon_ecdsa)),
        CharonConn("c6", (b.addr6,), (a.addr6,), CHARON_ID, a.addr6, "", (CHARON_IKE,),
                   (Child("c6", (f"{CHARON_IN6}/128",), (f"{OURS_IN6}/128",),
                          (CHARON_ESP,), mode="tunnel"),),
                   extra=frag, certs=certs(lab.charon_rsa)),
    ]  # fmt: skip
    tuning = {**CHARON_TUNING, "fragment_size": str(FRAGMENT_SIZE)}
    caps = [egress_capture(a), egress_capture(b)]  # from the first IKE_SA_INIT on
    with Charon.started(b, tmp_path / "charon", plugins=LAB_PLUGINS, tuning=tuning) as charon:
        charon.load(charon_conns)
        peer = CharonPeer(charon)
        started = time.monotonic()
        async with agent(a, tmp_path, spd, (a.addr4, a.addr6), links, peer, files) as ix:
            await ix.settled(links[0], timeout=UP_TIMEOUT)
            up4 = time.monotonic() - started
            t0 = time.monotonic()
            await asyncio.to_thread(peer.initiate, links[1])  # c6: charon initiates
            await ix.settled(links[1], timeout=UP_TIMEOUT)
            up6 = time.monotonic() - t0
            print(
                f"[charon] c4 (we initiate, ECDSA) up {up4:.1f} s after our agent started; "
                f"c6 (charon initiates, RSA) up {up6:.1f} s after charon's initiate"
            )
            results = await pings(ix.daemon, links, "charon")
            check_status(
                ix.daemon,
                {
                    links[0].conn: ("ecdsa-sha256", lab.charon_ecdsa.subject),
                    links[1].conn: ("rsa-pkcs1-sha256", lab.charon_rsa.subject),
                },
            )
            ours, theirs = [await asyncio.to_thread(c.stop) for c in caps]
            check_captures(
                "charon", ours, theirs, ix, results, dropped=sum(c.dropped or 0 for c in caps)
            )
            check_wire("charon", ours, theirs, [Wire(a.addr4, b.addr4), Wire(a.addr6, b.addr6)])
            log = charon.log_text()
            for conn, who, scheme in (
                ("c4", a.addr4, "ECDSA_WITH_SHA256_DER"),
                ("c6", a.addr6, "RSA_EMSA_PSS_SHA2_256"),
            ):
                assert re.search(
                    rf"<{conn}\|\d+> authentication of '{re.escape(who)}' with {scheme}\S* "
                    "successful",
                    log,
                ), f"charon did not authenticate {who} with {scheme}"
                split, received = charon_fragments(log, conn)
                print(
                    f"[charon] {conn}: charon split {len(split)} message(s) into {split} "
                    f"fragments; it received {received} fragments of ours"
                )
                assert split and min(split) >= 2, (conn, split)
                assert received >= 2, (conn, received)
            drops = [dropped_fragments(ns) for ns in (a, b)]
            print(f"[charon] IP fragments dropped by nftables (ours, charon's): {drops}")


# ---------------------------------------------------------------------------- pluto

PLUTO_IKE, PLUTO_ESP = "aes256-sha256-ecp256", "aes256-sha256"
#: pluto's IKE fragment sizes (not configurable): 576 bytes over IPv4, 1,280 over IPv6.
PLUTO_FRAGMENT = {4: 576, 6: 1280}


@run_async(300)
async def test_pluto_rsa_chains_from_nss_both_roles(
    ns_pair: NsPair, tmp_path: Path, egress_capture: Callable[..., EgressCapture]
) -> None:
    """RSA 3072 both ways, pluto's certificate and key in its NSS database (PKCS#12
    through pk12util), its intermediate sent with ``sendca=all``.  We initiate l4;
    pluto initiates l6 with ``fragmentation=force`` (by default pluto sends its first
    IKE_AUTH request whole, IP-fragmented, and IKE-fragments only the retransmission).

    l6 relies on our default ``sendcert always``: pluto, initiating without a
    ``rightca``, sends no CERTREQ, so with ``sendcert ifasked`` (our default before
    this test) our certificate was not sent and pluto failed ("authentication failed:
    no certificate matched RSASSA-PSS with SHA2_256 and 'fd00::1'"; see
    tests/support/libreswan.py)."""
    lab = lab_pki()
    a, b = ns_pair
    assert a.addr4 and a.addr6 and b.addr4 and b.addr6
    drop_ip_fragments(a, b)
    peer_nd_bypass(b)  # l6 is transport mode over IPv6
    links = [
        Link("l4/pluto4/ipv4", "l4", True, "transport", 4, b.addr4),
        Link("l6/pluto6/ipv6", "l6", False, "transport", 6, b.addr6),
    ]
    spd = spd_for(
        [proposals(PLUTO_IKE, PLUTO_ESP),
         f"peer pluto4 {{ address {b.addr4}; id fqdn:pluto.test; }}",
         f"peer pluto6 {{ address {b.addr6}; id fqdn:pluto.test; }}"],
        [connection("l4", "pluto4", "mode transport;"),
         connection("l6", "pluto6", "mode transport;", "", "passive")],
    )  # fmt: skip
    files = our_files(tmp_path, "ours-rsa", lab.ours_rsa)
    nss = PlutoCerts("pluto", lab.pluto_rsa.pem, lab.pluto_rsa.key_pem, (lab.inter.pem,),
                     (lab.root.pem,))  # fmt: skip
    common: dict[str, Any] = {"ike_proposals": (PLUTO_IKE,), "esp_proposals": (PLUTO_ESP,),
                              "mode": "transport", "cert": "pluto"}  # fmt: skip
    caps = [egress_capture(a), egress_capture(b)]
    with Pluto.started(b, tmp_path / "pluto", certs=[nss]) as pluto:
        pluto.load([
            PlutoConn("l4", b.addr4, a.addr4, "pluto.test", a.addr4, "", **common),
            PlutoConn("l6", b.addr6, a.addr6, "pluto.test", a.addr6, "",
                      extra={"fragmentation": "force"}, **common),
        ])  # fmt: skip
        peer = PlutoPeer(pluto)
        started = time.monotonic()
        async with agent(a, tmp_path, spd, (a.addr4, a.addr6), links, peer, files) as ix:
            await ix.settled(links[0], timeout=UP_TIMEOUT)
            up4 = time.monotonic() - started
            t0 = time.monotonic()
            await asyncio.to_thread(peer.initiate, links[1])
            await ix.settled(links[1], timeout=UP_TIMEOUT)
            up6 = time.monotonic() - t0
            print(f"[pluto] l4 (we initiate) up {up4:.1f} s after our agent started; l6 (pluto "
                  f"initiates) up {up6:.1f} s after whack --initiate")  # fmt: skip
            results = await pings(ix.daemon, links, "pluto")
            # pluto picks the hash: SHA2-256 as responder, SHA2-512 as initiator here
            schemes = check_status(
                ix.daemon, {lk.conn: (r"rsa-pss-sha\d+", lab.pluto_rsa.subject) for lk in links}
            )
            print(f"[pluto] our status: pluto authenticated with {schemes}")
            ours, theirs = [await asyncio.to_thread(c.stop) for c in caps]
            check_captures(
                "pluto", ours, theirs, ix, results, dropped=sum(c.dropped or 0 for c in caps)
            )
            wires = [Wire(a.addr4, b.addr4, PLUTO_FRAGMENT[4]),
                     Wire(a.addr6, b.addr6, PLUTO_FRAGMENT[6])]  # fmt: skip
            check_wire("pluto", ours, theirs, wires)
            said = re.findall(r"authenticated peer '([^']*)' digital signature using peer "
                              r"certificate '([^']*)' issued by CA '([^']*)'",
                              pluto.log_text())  # fmt: skip
            print(f"[pluto] {said}")
            assert {how for how, _, _ in said} == {"3072-bit RSASSA-PSS with SHA2_256"}, said
            assert {who for _, who, _ in said} == {a.addr4, a.addr6}, said
            assert nd_bypassed(b), "the ND bypass policies are gone"
            print(f"[pluto] IP fragments dropped: {[dropped_fragments(ns) for ns in (a, b)]}")


# ---------------------------------------------------------------------------- iked

IKED_IKE, IKED_ESP = "aes256-sha256-modp2048", "aes256-sha512"
OURS_IN6_K, IKED_IN6 = "fd00:a::1", "fd00:b::2"
#: iked's IKE fragment sizes (not configurable): 576 bytes over IPv4, 1,280 over IPv6.
IKED_FRAGMENT = {4: 576, 6: 1280}


@run_async(300)
async def test_iked_ecdsa_chains_both_roles(
    ns_pair: NsPair, tmp_path: Path, egress_capture: Callable[..., EgressCapture]
) -> None:
    """ECDSA P-256 both ways; iked's key is its local.key, its certificate and
    intermediate in its own /etc/iked; ``set fragmentation``.  We initiate k6 (IPv6
    tunnel, iked ``passive``), iked initiates k4 (IPv4 transport, ``active``).

    iked 7.2 sends its intermediate but ignores every CERT payload after the first
    ("multiple cert payloads, ignoring"): with only the root among its CAs it refused
    our chain ("ca_validate_cert: /O=ipsecd tests/CN=ours ecdsa unable to get local
    issuer certificate", AUTHENTICATION_FAILED), so our intermediate is one of its CAs
    here; we still send it (and check iked's)."""
    lab = lab_pki()
    a, b = ns_pair
    assert a.addr4 and a.addr6 and b.addr4 and b.addr6
    a.run(["ip", "addr", "add", f"{OURS_IN6_K}/128", "dev", "lo", "nodad"])
    b.run(["ip", "addr", "add", f"{IKED_IN6}/128", "dev", "lo", "nodad"])
    a.run(["ip", "-6", "route", "add", f"{IKED_IN6}/128", "dev", "veth0", "src", OURS_IN6_K])
    b.run(["ip", "-6", "route", "add", f"{OURS_IN6_K}/128", "dev", "veth0", "src", IKED_IN6])
    drop_ip_fragments(a, b)
    links = [
        Link("k6/iked6/ipv6", "k6", True, "tunnel", 6, IKED_IN6),
        Link("k4/iked4/ipv4", "k4", False, "transport", 4, b.addr4),
    ]
    spd = spd_for(
        [proposals(IKED_IKE, IKED_ESP),
         f"peer iked6 {{ address {b.addr6}; id fqdn:iked.test; }}",
         f"peer iked4 {{ address {b.addr4}; id fqdn:iked.test; }}"],
        [connection("k6", "iked6", f"tunnel; traffic from {OURS_IN6_K}/128 to {IKED_IN6}/128;"),
         connection("k4", "iked4", "mode transport;", start="passive")],
    )  # fmt: skip
    files = our_files(tmp_path, "ours-ecdsa", lab.ours_ecdsa)
    # iked 7.2 reads only the first CERT payload (our end entity): it needs our
    # intermediate among its CAs (tests/support/openiked.py)
    certs = IkedCerts(lab.iked_ecdsa.pem, lab.iked_ecdsa.key_pem, (lab.inter.pem,),
                      (lab.root.pem, lab.inter.pem))  # fmt: skip
    common: dict[str, Any] = {"ike_proposals": (IKED_IKE,), "esp_proposals": (IKED_ESP,),
                              "auth": "sig"}  # fmt: skip
    k6 = IkedConn(
        "k6",
        b.addr6,
        a.addr6,
        "iked.test",
        a.addr6,
        "",
        mode="tunnel",
        local_ts=(f"{IKED_IN6}/128",),
        remote_ts=(f"{OURS_IN6_K}/128",),
        **common,
    )
    k4 = IkedConn("k4", b.addr4, a.addr4, "iked.test", a.addr4, "", mode="transport",
                  auto="start", **common)  # fmt: skip
    caps = [egress_capture(a), egress_capture(b)]
    with Iked.started(b, tmp_path / "iked", certs=certs, globals_=("set fragmentation",)) as iked:
        iked.load([k6])  # passive: waits for us
        peer = IkedPeer(iked, {"k6": a.addr6, "k4": a.addr4})
        started = time.monotonic()
        async with agent(a, tmp_path, spd, (a.addr4, a.addr6), links, peer, files) as ix:
            await ix.settled(links[0], timeout=UP_TIMEOUT)
            up6 = time.monotonic() - started
            t0 = time.monotonic()
            await asyncio.to_thread(iked.load, [k4])  # active: iked initiates at once
            await ix.settled(links[1], timeout=UP_TIMEOUT)
            print(f"[iked] k6 (we initiate) up {up6:.1f} s after our agent started; k4 (iked "
                  f"initiates) up {time.monotonic() - t0:.1f} s after iked loaded it")  # fmt: skip
            results = await pings(ix.daemon, links, "iked")
            check_status(
                ix.daemon, {lk.conn: ("ecdsa-sha256", lab.iked_ecdsa.subject) for lk in links}
            )
            ours, theirs = [await asyncio.to_thread(c.stop) for c in caps]
            check_captures(
                "iked", ours, theirs, ix, results, dropped=sum(c.dropped or 0 for c in caps)
            )
            # iked's IKE_AUTH response over IPv6 (~1,260 bytes with its chain) fits
            # its 1,280 bytes: one datagram
            wires = [Wire(a.addr4, b.addr4, IKED_FRAGMENT[4]),
                     Wire(a.addr6, b.addr6, IKED_FRAGMENT[6], their_fragments=False)]  # fmt: skip
            check_wire("iked", ours, theirs, wires)
            said = [ln.strip() for ln in iked.log_text().splitlines()
                    if re.search(r"multiple cert payloads|supplemental cert type", ln)]  # fmt: skip
            print(f"[iked] {len(said)} log lines about CERT payloads, e.g. {said[:2]}")
            print(f"[iked] IP fragments dropped: {[dropped_fragments(ns) for ns in (a, b)]}")
