from __future__ import annotations

from ipsecd.xfrm.stats import parse_xfrm_stat


def test_parse_xfrm_stat() -> None:
    text = "XfrmInError             \t0\nXfrmOutPolBlock         \t12\ngarbage line here\n\n"
    assert parse_xfrm_stat(text) == {"XfrmInError": 0, "XfrmOutPolBlock": 12}
