"""Default policy and per-socket policy, observed through real UDP sends over veth."""

from __future__ import annotations

import errno
import socket

import pytest

from ipsecd.xfrm import (
    Action,
    DefaultAction,
    DefaultPolicy,
    Dir,
    Policy,
    Selector,
    SocketPolicy,
    Xfrm,
    set_socket_policy,
    xfrm_stat,
)
from ipsecd.xfrm.netns import run_in
from tests.support.netns import Netns


def send(ns: Netns, dst: str, policy: SocketPolicy | str | None = None) -> int:
    """UDP send from inside ``ns``; 0 on success, else the errno."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET

    def go() -> int:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            if policy is not None:
                set_socket_policy(s, policy)
            try:
                s.sendto(b"ipsecd", (dst, 9))
            except OSError as exc:
                return exc.errno or -1
            return 0

    return run_in(ns.name, go)


def test_default_block_drops_unmatched_but_not_loopback(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    assert a.addr4 and b.addr4 and b.addr6
    assert send(a, b.addr4) == 0
    with Xfrm(a.name) as x:
        assert x.get_default_policy() == DefaultPolicy()
        x.set_default_policy(DefaultPolicy(outbound=DefaultAction.BLOCK))
        assert x.get_default_policy().outbound == DefaultAction.BLOCK
        assert send(a, b.addr4) == errno.EPERM
        assert send(a, b.addr6) == errno.EPERM
        assert send(a, "127.0.0.1") == 0  # loopback is exempt
        # the other namespace is unaffected
        assert send(b, a.addr4) == 0
        x.set_default_policy(DefaultPolicy())
    assert send(a, b.addr4) == 0


def test_xfrm_stat_counts_in_the_namespace(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    assert a.addr4 and b.addr4
    host_before = xfrm_stat()["XfrmOutPolBlock"]
    before = xfrm_stat(a.name)["XfrmOutPolBlock"]
    with Xfrm(a.name) as x:
        x.add_policy(Policy(Selector.of(a.addr4, b.addr4), Dir.OUT, Action.BLOCK))
    for _ in range(3):
        assert send(a, b.addr4) == errno.EPERM
    assert xfrm_stat(a.name)["XfrmOutPolBlock"] == before + 3
    assert xfrm_stat(b.name)["XfrmOutPolBlock"] == 0
    # the host's counter moves only if something else on the host is blocked meanwhile
    assert xfrm_stat()["XfrmOutPolBlock"] - host_before < 3


@pytest.mark.parametrize(
    "policy",
    ["out bypass", "out none", SocketPolicy(Dir.OUT, Action.ALLOW)],
    ids=["string-bypass", "string-none", "structured"],
)
def test_bypass_socket_sends_under_block_default(pair: tuple[Netns, Netns], policy: object) -> None:
    a, b = pair
    assert b.addr4 and b.addr6
    with Xfrm(a.name) as x:
        x.set_default_policy(DefaultPolicy(outbound=DefaultAction.BLOCK))
    assert send(a, b.addr4) == errno.EPERM
    assert send(a, b.addr4, policy) == 0  # type: ignore[arg-type]
    assert send(a, b.addr6, policy) == 0  # type: ignore[arg-type]


def test_discard_and_ipsec_socket_policies(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    assert b.addr4
    assert send(a, b.addr4, "out discard") == errno.EPERM
    # an ipsec requirement with no SA available: the kernel cannot send in clear text
    assert send(a, b.addr4, "out ipsec esp/transport//require") == errno.EAGAIN
    assert send(a, b.addr4, "out ipsec esp/tunnel/192.0.2.1-192.0.2.2/unique:9") == errno.EAGAIN
    # entrust gives the socket back to the SPD (empty here: clear text allowed)
    assert send(a, b.addr4, "out entrust") == 0
    # socket policies are not SPD entries
    with Xfrm(a.name) as x:
        assert x.dump_policies() == []
        assert x.spd_info().out_socket_count == 0
