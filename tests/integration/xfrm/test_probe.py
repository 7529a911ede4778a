"""The capability probe against the host kernel, cross-checked with iproute2."""

from __future__ import annotations

import subprocess

from ipsecd.xfrm import probe
from tests.support.netns import Netns


def _ip_ok(ns: Netns, *args: str) -> tuple[bool, str]:
    proc = ns.run(["ip", *args], check=False)
    return proc.returncode == 0, proc.stderr


def test_probe_agrees_with_iproute2(ns: Netns) -> None:
    caps = probe()
    print(caps.summary())
    esp_ok, esp_err = _ip_ok(
        ns,
        "xfrm",
        "state",
        "add",
        "src",
        "192.0.2.1",
        "dst",
        "192.0.2.2",
        "proto",
        "esp",
        "spi",
        "0x200",
        "enc",
        "cbc(aes)",
        "0x" + "00" * 16,
    )
    assert caps.supports("esp") == esp_ok
    if not esp_ok:
        assert "Requested type not found" in esp_err
        assert "kernel has no ESP (CONFIG_INET_ESP" in caps["esp"].detail
        assert caps["esn"].detail == "needs ESP"
    gcm_ok, _ = _ip_ok(
        ns,
        "xfrm",
        "state",
        "add",
        "src",
        "192.0.2.1",
        "dst",
        "192.0.2.2",
        "proto",
        "esp",
        "spi",
        "0x201",
        "aead",
        "rfc4106(gcm(aes))",
        "0x" + "00" * 20,
        "128",
    )
    # iproute2 fails for a missing ESP too, so only a success is conclusive there
    if gcm_ok:
        assert caps.supports("alg:rfc4106(gcm(aes))")
    pol_ok, _ = _ip_ok(
        ns, "xfrm", "policy", "add", "src", "192.0.2.0/24", "dst", "198.51.100.0/24", "dir", "out"
    )
    assert caps.supports("policy") == pol_ok
    assert caps.supports("default_policy")  # LAB-NOTES: works on the host kernel
    assert caps.supports("socket_policy")
    assert caps.supports("xfrm_netlink")


def test_probe_leaves_no_trace() -> None:
    before = subprocess.run(["ip", "xfrm", "policy", "count"], capture_output=True, text=True)
    probe()
    after = subprocess.run(["ip", "xfrm", "policy", "count"], capture_output=True, text=True)
    assert before.stdout == after.stdout
