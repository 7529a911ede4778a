"""The agent daemon on the host kernel (real namespaces, real XFRM policies, real etcd
and gRPC for cluster mode; the host has no ESP, so IKE-negotiated SAs are covered in
the kernel lab, tests/kernel/test_agent_*.py).

Standalone (Tru64 ipsecd(8)): the SPD file is enforced, SIGHUP rereads it, an invalid
file keeps the current policy, every accepted change keeps the previous file as the
backup, an invalid file at start falls back to the backup, ``-b`` starts from it.
Cluster: the agent follows the controller, acknowledges what it applied (or why not),
keeps the last revision on disk (0600) and enforces it at the next start without a
controller.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from agent.daemon import Daemon, local_addresses
from agent.status import StatusError, query
from ipsecd import xfrm
from tests.integration.controller.harness import address, start_controller, stop_controller
from tests.support.agents import options, running, write_private
from tests.support.aio import run_async, wait_until
from tests.support.etcd import EtcdProcess
from tests.support.netns import Netns, netns_pair

T = TypeVar("T")
PREFIX = "iag-"
POLICY = """
defaults {{ policy discard; }}
connection mesh {{ between all and all; mode transport; auth psk "daemon-test-psk-0123"; }}
bypass tcp port {port};
bypass icmp6 type 135;
bypass icmp6 type 136;
"""
NODES = "a 192.0.2.1,fd00::1\nb 192.0.2.2,fd00::2\n"


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with netns_pair(PREFIX) as p:
        yield p


def kernel_policies(ns: Netns) -> list[xfrm.Policy]:
    def dump() -> list[xfrm.Policy]:
        with xfrm.Xfrm(ns.name) as x:
            return [p for p in x.dump_policies() if xfrm.DEFAULT_OWNERSHIP.owns_policy(p)]

    return _off_loop(dump)


def ports(policies: list[xfrm.Policy]) -> set[int]:
    return {p.selector.dport for p in policies if p.selector.proto == 6 and p.selector.dport}


def default_of(ns: Netns) -> xfrm.DefaultPolicy:
    def get() -> xfrm.DefaultPolicy:
        with xfrm.Xfrm(ns.name) as x:
            return x.get_default_policy()

    return _off_loop(get)


def _off_loop(fn: Callable[[], T]) -> T:
    """The sync XFRM wrapper runs its own loop: call it from a thread of its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@run_async(120)
async def test_standalone_enforces_reloads_and_keeps_the_backup(
    pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    a, _b = pair
    spd = write_private(tmp_path / "ipsec.spd", POLICY.format(port=1111))
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    backup = tmp_path / "ipsec.spd.bak"
    opts = options("a", a, tmp_path, spd_file=spd, nodes_file=nodes)
    async with running([opts]) as daemons:
        d = daemons["a"]
        await wait_until(lambda: d.applied is not None, 30, "the first policy applied")
        assert ports(kernel_policies(a)) == {1111}
        assert default_of(a).outbound == xfrm.DefaultAction.BLOCK  # "IP secure" mode
        assert backup.read_text() == spd.read_text()  # the first accepted file
        assert backup.stat().st_mode & 0o777 == 0o600
        # the status socket answers, root only
        status = await asyncio.to_thread(query, opts.socket_path)
        assert status["applied"]["source"] == str(spd) and status["mode"] == "standalone"
        assert opts.socket_path.stat().st_mode & 0o777 == 0o600
        # an accepted change: applied by diff, the previous file becomes the backup
        first_text = spd.read_text()
        write_private(spd, POLICY.format(port=2222))
        d.reload()
        await wait_until(lambda: ports(kernel_policies(a)) == {2222}, 30, "the reload")
        assert backup.read_text() == first_text
        # an invalid file: the current policy stays, the error names the place
        write_private(spd, POLICY.format(port=3333) + "\nbypass nonsense here;\n")
        d.reload()
        await wait_until(lambda: d.policy_error is not None, 30, "the refusal")
        assert f"{spd}:" in str(d.policy_error) and "error:" in str(d.policy_error)
        assert ports(kernel_policies(a)) == {2222}
        assert backup.read_text() == first_text
        status = await asyncio.to_thread(query, opts.socket_path)
        assert status["health"] != "ok" and status["policy_error"]
    # at the next start the invalid file falls back to the backup, loudly
    async with running([opts]) as daemons:
        d = daemons["a"]
        await wait_until(lambda: d.applied is not None, 30, "the backup applied")
        assert d.applied is not None and d.applied.source == str(backup)
        assert ports(kernel_policies(a)) == {1111}
    # -b starts from the backup even with a good file
    write_private(spd, POLICY.format(port=4444))
    opts.use_backup = True
    async with running([opts]) as daemons:
        d = daemons["a"]
        await wait_until(lambda: d.applied is not None, 30, "the backup (-b)")
        assert d.applied is not None and d.applied.source == str(backup)
        opts.use_backup = False
        d.reload()  # the next reload reads the normal file
        await wait_until(lambda: ports(kernel_policies(a)) == {4444}, 30, "the reload")
    # the agent stopped: the kernel still enforces (no flush, default block)
    assert ports(kernel_policies(a)) == {4444}
    assert default_of(a).outbound == xfrm.DefaultAction.BLOCK
    with pytest.raises(StatusError, match="no agent socket"):
        query(opts.socket_path)


@run_async(180)
async def test_cluster_mode_follows_acknowledges_and_survives_the_controller(
    pair: tuple[Netns, Netns], tmp_path: Path, etcd_session: EtcdProcess
) -> None:
    a, _b = pair
    c = await start_controller(etcd_session, "r1", f"/t{os.getpid()}-{id(tmp_path)}/")
    opts = options(
        "a",
        a,
        tmp_path,
        controllers=(address(c),),
        insecure=True,
        addresses=("192.0.2.1", "fd00::1"),
        labels={"role": "web"},
    )
    try:
        async with running([opts]) as daemons:
            d = daemons["a"]
            out = await c.repo.push(POLICY.format(port=1111), filename="p.spd", author="test")
            assert out.accepted and out.revision is not None
            await wait_until(
                lambda: d.applied is not None and d.applied.revision == 1, 60, "revision 1 applied"
            )
            assert ports(kernel_policies(a)) == {1111}

            def acked() -> bool:
                record = c.view.records.get("a", {})
                return bool(record.get("status", {}).get("applied_revision") == 1)

            await wait_until(acked, 30, "the ack in the node registry")
            saved = tmp_path / "agent-a" / "last-applied.json"
            assert json.loads(saved.read_text())["revision"] == 1
            assert saved.stat().st_mode & 0o777 == 0o600
            # the node directory is saved with its version, to be resumed after a restart
            await wait_until(
                lambda: (
                    c.hub.directory_version > 0
                    and d.directory_version == c.hub.directory_version
                    and json.loads(saved.read_text()).get("directory_version")
                    == d.directory_version
                ),
                30,
                "the directory version saved",
            )
            dir_version, dir_digest = c.hub.directory_version, c.hub.feed.digest()
            # a revision this node cannot apply (a secret it does not have) is
            # acknowledged with the reason; the node keeps revision 1
            bad = (
                POLICY.format(port=2222) + "sa esp 0x1000 from 192.0.2.1 to 192.0.2.2 "
                "{ mode tunnel; enc aes-gcm-16 secret:nope; }\n"
            )
            out = await c.repo.push(bad, filename="p.spd", author="test")
            assert out.accepted
            await wait_until(lambda: d.policy_error is not None, 60, "the refusal")
            assert "nope" in str(d.policy_error)
            assert d.applied is not None and d.applied.revision == 1
            assert ports(kernel_policies(a)) == {1111}
            # the live status through the controller is the agent's own status
            detail = json.loads(d.node_status().detail)
            assert detail["node"] == "a" and detail["applied"]["revision"] == 1
    finally:
        await stop_controller(c)
    # no controller: the saved revision is enforced at start all the same
    opts.controllers = ("127.0.0.1:1",)
    async with running([opts]) as daemons:
        d = daemons["a"]
        await wait_until(lambda: d.applied is not None, 30, "the saved revision")
        assert d.applied is not None and d.applied.revision == 1
        assert ports(kernel_policies(a)) == {1111}
        # and the directory: the next hello asks only for what changed since
        await wait_until(lambda: d.stream is not None, 30, "the stream object")
        assert d.stream is not None and d.directory_version == dir_version
        hello = d.stream._hello().hello
        assert (hello.directory_version, hello.directory_digest) == (dir_version, dir_digest)


def test_daemon_needs_nothing_but_its_options(tmp_path: Path) -> None:
    """Constructing the daemon touches nothing in the kernel and makes its state
    directory root-only."""
    opts = options("x", Netns("unused"), tmp_path)
    Daemon(opts)
    assert (tmp_path / "agent-x").stat().st_mode & 0o777 == 0o700


@run_async(120)
async def test_simultaneous_start_ends_with_one_ike_sa_per_connection(
    pair: tuple[Netns, Netns], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both agents start at once and both initiate (after a start every node does, to
    replace state the peer may keep of it): each connection ends with one IKE SA, the
    same on both sides, the one the lower address initiated (agent/supervisor.py
    "keeper").  The host kernel has no ESP, so the CHILD SAs fail to install: the
    status says why.  No key or PSK reaches the log at debug level."""
    import logging

    caplog.set_level(logging.DEBUG, logger="ipsecd")
    a, b = pair
    spd = write_private(tmp_path / "ipsec.spd", POLICY.format(port=1111))
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    opts = [
        options(n, ns, tmp_path, spd_file=spd, nodes_file=nodes) for n, ns in (("a", a), ("b", b))
    ]

    def established(d: Daemon) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for sa in d.driver.sas:
            if sa.established:
                out.setdefault(sa.config.name, []).append(f"{sa.spi_i.hex()}:{sa.spi_r.hex()}")
        return out

    async with running(opts) as daemons:
        da, db = daemons["a"], daemons["b"]

        def spis(d: Daemon) -> list[str]:
            return sorted(x for v in established(d).values() for x in v)

        def settled() -> bool:
            ea, eb = established(da), established(db)
            one_each = all(len(v) == 1 for v in (*ea.values(), *eb.values()))
            return len(ea) == len(eb) == 2 and one_each and spis(da) == spis(db)

        await wait_until(settled, 60, "one IKE SA per connection on both sides")
        for sa in da.driver.sas:
            # a has the lower address: where both sides got an IKE SA up, a's stays.
            # (When b starts late, a's first IKE_SA_INIT finds no socket and a drops
            # its attempt once b's SA is up: then there never was a duplicate.)
            a_made_one = re.search(
                rf"IKE SA {re.escape(sa.config.name)} \S+: EXPECT_AUTH_RESPONSE -> ESTABLISHED",
                caplog.text,
            )
            if sa.established and a_made_one:
                assert sa.initiator, (sa, a_made_one[0])
        st = da.status()
        assert st["counters"]["install_failed"] >= 1
        assert any("kernel" in (c["last_error"] or "") for c in st["connections"])
    text = caplog.text
    assert "daemon-test-psk-0123" not in text and b"daemon-test-psk-0123".hex() not in text


@run_async(120)
async def test_ondemand_connection_starts_on_the_kernels_acquire(
    pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    """``start ondemand``: no IKE until a packet needs the SA; the kernel's ACQUIRE
    (XFRM_MSG_ACQUIRE for the connection's reqid) starts the negotiation."""
    a, b = pair
    text = POLICY.format(port=1111).replace(
        'auth psk "daemon-test-psk-0123"; }', 'auth psk "daemon-test-psk-0123"; start ondemand; }'
    )
    spd = write_private(tmp_path / "ipsec.spd", text)
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    opts = [
        options(n, ns, tmp_path, spd_file=spd, nodes_file=nodes) for n, ns in (("a", a), ("b", b))
    ]
    async with running(opts) as daemons:
        da = daemons["a"]
        await wait_until(
            lambda: all(d.applied is not None for d in daemons.values()),
            30,
            "both policies applied",
        )
        await asyncio.sleep(2)
        assert da.driver.sas == [] and daemons["b"].driver.sas == []
        states = {c["state"] for c in da.status()["connections"]}
        assert states == {"on demand"}
        # a packet that needs the SA: the kernel holds it and asks for an SA
        send = a.argv(["ping", "-c", "1", "-W", "1", "192.0.2.2"])
        proc = await asyncio.create_subprocess_exec(
            *send, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await proc.wait()
        await wait_until(
            lambda: any(sa.established for sa in da.driver.sas), 30, "the IKE SA after ACQUIRE"
        )


@run_async(120)
async def test_log_unmatched_names_the_dropped_flow(
    pair: tuple[Netns, Netns], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``-l`` with ``policy discard``: an outbound packet that matches no policy is
    dropped as before and logged with its addresses, protocol and ports."""
    import logging

    caplog.set_level(logging.INFO, logger="ipsecd.unmatched")
    a, _b = pair
    spd = write_private(tmp_path / "ipsec.spd", POLICY.format(port=1111))
    nodes = tmp_path / "nodes"
    nodes.write_text(NODES)
    opts = options("a", a, tmp_path, spd_file=spd, nodes_file=nodes, log_unmatched=True)
    async with running([opts]) as daemons:
        d = daemons["a"]
        await wait_until(lambda: d.applied is not None, 30, "the policy applied")
        a.run(["ip", "route", "add", "203.0.113.0/24", "dev", "veth0"])
        code = (
            "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try: s.sendto(b'x', ('203.0.113.9', 4242))\nexcept OSError: pass\n"
        )
        proc = await asyncio.create_subprocess_exec(*a.argv(["python3", "-c", code]))
        await proc.wait()
        # other unmatched packets may come first (IPv6 MLD reports from a new link)
        await wait_until(
            lambda: "unmatched packet dropped" in caplog.text and "203.0.113.9" in caplog.text,
            20,
            "the log line",
        )
    line = next(r.getMessage() for r in caplog.records if "203.0.113.9" in r.getMessage())
    assert "unmatched packet dropped" in line and "proto 17" in line and "-> 4242" in line


def test_secure_off_and_on_without_a_daemon(pair: tuple[Netns, Netns]) -> None:
    """The seed's "IP secure" switch: off removes ipsecd's policies and SAs and lets
    traffic flow; on blocks what no policy allows.  Foreign policies are untouched."""
    from agent.service import secure

    a, _ = pair
    with xfrm.Xfrm(a.name) as x:
        ours = xfrm.Policy(
            xfrm.Selector.of("192.0.2.0/24", "198.51.100.0/24"), xfrm.Dir.OUT, priority=0x8100
        )
        foreign = xfrm.Policy(
            xfrm.Selector.of("10.0.0.0/8", "10.1.0.0/16"), xfrm.Dir.OUT, priority=5
        )
        x.add_policy(ours)
        x.add_policy(foreign)
    assert "block" in secure(True, a.name)
    assert default_of(a).outbound == xfrm.DefaultAction.BLOCK
    said = secure(False, a.name)
    assert "removed 1" in said
    with xfrm.Xfrm(a.name) as x:
        keys = {p.key for p in x.dump_policies()}
        assert foreign.key in keys and ours.key not in keys
        assert x.get_default_policy().outbound == xfrm.DefaultAction.ACCEPT


def test_local_addresses_come_from_the_agents_namespace_without_a_fork(
    pair: tuple[Netns, Netns],
) -> None:
    """The node's own addresses are read inside its namespace (setns in a helper
    thread), and no child process is made for it: a fork of a process whose gRPC
    threads run can abort in the child."""
    a, b = pair
    forks: list[int] = []
    os.register_at_fork(before=lambda: forks.append(os.getpid()))
    seen_a = local_addresses(a.name)
    seen_b = local_addresses(b.name)
    assert "192.0.2.1" in seen_a and "192.0.2.2" not in seen_a, seen_a
    assert "192.0.2.2" in seen_b and "192.0.2.1" not in seen_b, seen_b
    assert "fd00::1" in seen_a, seen_a
    assert forks == []
