"""The namespace helpers every integration test builds on."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import netns


def _exists(name: str) -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return any(line.split()[0] == name for line in out.stdout.splitlines() if line.strip())


def test_pair_connects_v4_and_v6_and_cleans_up() -> None:
    with netns.netns_pair("tns-") as (a, b):
        names = (a.name, b.name)
        assert all(_exists(n) for n in names)
        a.run(["ping", "-c1", "-W2", b.addr4 or ""])
        a.run(["ping", "-6", "-c1", "-W2", b.addr6 or ""])
    assert not any(_exists(n) for n in names)


def test_cleanup_happens_on_error() -> None:
    with pytest.raises(RuntimeError), netns.netns_pair("tns-") as (a, _b):
        name = a.name
        raise RuntimeError("boom")
    assert not _exists(name)


def test_failed_command_names_namespace_and_stderr() -> None:
    with netns.netns_single("tns-") as ns:
        with pytest.raises(netns.NetnsError) as exc:
            ns.run(["ip", "link", "set", "nonexistent0", "up"])
        assert ns.name in str(exc.value)
        assert "nonexistent0" in str(exc.value)


def test_entered_switches_only_for_the_block() -> None:
    import socket

    with netns.netns_single("tns-") as ns:
        with ns.entered():
            # Inside the fresh namespace only loopback exists.
            inside = {name for _, name in socket.if_nameindex()}
        outside = {name for _, name in socket.if_nameindex()}
        assert inside == {"lo"}
        assert outside != inside


def test_long_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        netns.unique_name("waytoolongprefix-")
