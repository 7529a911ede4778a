from __future__ import annotations

import pytest

from ipsecd.xfrm.probe import ALGORITHMS, Capabilities, Capability


def test_capabilities_lookup_and_summary() -> None:
    caps = Capabilities(
        (
            Capability("policy", True),
            Capability("esp", False, "kernel has no ESP (CONFIG_INET_ESP)"),
        )
    )
    assert caps.supports("policy") and not caps.supports("esp")
    assert caps.missing() == [caps["esp"]]
    lines = caps.summary().splitlines()
    assert lines[0].split() == ["policy", "yes"]
    assert lines[1].startswith("esp") and "CONFIG_INET_ESP" in lines[1] and " no " in lines[1]
    with pytest.raises(KeyError, match="known: policy, esp"):
        caps["ah"]


def test_probe_covers_the_algorithms_ipsecd_uses() -> None:
    assert set(ALGORITHMS) >= {
        "rfc4106(gcm(aes))",
        "rfc7539esp(chacha20,poly1305)",
        "cbc(aes)",
        "hmac(sha256)",
        "hmac(sha384)",
        "hmac(sha512)",
    }
    # every probe SA has its own SPI, so one failing add cannot mask the next
    assert len({s.spi for s in ALGORITHMS.values()}) == len(ALGORITHMS)
