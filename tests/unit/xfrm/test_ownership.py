from __future__ import annotations

import pytest

from ipsecd.xfrm.consts import Dir
from ipsecd.xfrm.model import Policy, Selector, State, address, aes_gcm
from ipsecd.xfrm.ownership import DEFAULT_OWNERSHIP, Ownership


def test_bands() -> None:
    o = DEFAULT_OWNERSHIP
    sel = Selector.of("192.0.2.0/24", "198.51.100.0/24")
    assert o.owns_policy(Policy(sel, Dir.OUT, priority=o.priority(0)))
    assert not o.owns_policy(Policy(sel, Dir.OUT, priority=0))  # ip xfrm's default
    assert not o.owns_policy(Policy(sel, Dir.OUT, priority=375423))  # strongSwan-like
    s = State(address("192.0.2.1"), address("192.0.2.2"), 1, aead=aes_gcm(b"k" * 20))
    assert not o.owns_state(s)  # reqid 0
    assert o.owns_state(State(s.src, s.dst, 1, aead=s.aead, reqid=o.reqid(3)))


def test_band_limits() -> None:
    o = Ownership(priority_min=10, priority_max=11, reqid_min=5, reqid_max=5)
    assert o.priority(1) == 11
    with pytest.raises(ValueError, match="does not fit"):
        o.priority(2)
    with pytest.raises(ValueError, match="outside the band"):
        o.reqid(1)
    with pytest.raises(ValueError, match="reqid band"):
        Ownership(reqid_min=0)
