"""examples/socket_policy.py, the per-socket policy helper for applications (ipsec(4)),
in a namespace whose default policy blocks everything: a bypass socket sends, a
socket without a policy is refused, a bad policy string is a clear error."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsecd import xfrm
from tests.support.netns import Netns, netns_pair

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "socket_policy.py"


@pytest.fixture
def blocked() -> Iterator[tuple[Netns, Netns]]:
    with netns_pair("isp-") as (a, b):
        block = xfrm.DefaultAction.BLOCK
        with xfrm.Xfrm(a.name) as x:
            x.set_default_policy(xfrm.DefaultPolicy(block, block, block))
        yield a, b


def run(ns: Netns, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ns.argv([sys.executable, str(EXAMPLE), *args]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bypass_socket_passes_a_blocking_default(blocked: tuple[Netns, Netns]) -> None:
    a, b = blocked
    assert b.addr4 is not None
    ok = run(a, b.addr4, "9999", "out bypass")
    assert ok.returncode == 0 and "sent to" in ok.stdout, ok.stderr
    refused = run(a, b.addr4, "9999", "out discard")
    assert refused.returncode == 1 and "refused" in refused.stdout
    bad = run(a, b.addr4, "9999", "out ipsec esp/sideways//require")
    assert bad.returncode == 1 and bad.stderr.startswith("error:")
