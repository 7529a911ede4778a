"""Overlapping selectors with conflicting actions: which pairs are reported, and how.

A selector strictly inside another one wins by specificity (priority 0x80000000 - specificity)
and is a deliberate exception: silent.  Partial overlaps and nested pairs the narrower
selector does not win are warnings; equal selectors with different actions are errors.
"""

from __future__ import annotations

import pytest

from ipsecd.spd import SpdError, load_text


def _warnings(text: str) -> list[tuple[int, str]]:
    return [(w.line, w.message) for w in load_text(text, "f.spd").warnings]


def test_contained_exception_is_silent() -> None:
    assert (
        _warnings(
            "spdadd 10.0.0.0/8 10.1.0.0/16 any -P out ipsec esp/transport//require;\n"
            "spdadd 10.0.0.1 10.1.2.3[53] udp -P out none;\n"
            "spdadd 0.0.0.0/0 0.0.0.0/0 any -P in discard;\n"
            "spdadd 0.0.0.0/0[53] 0.0.0.0/0 udp -P in none;\n"
        )
        == []
    )


def test_contained_native_exception_is_silent() -> None:
    assert (
        _warnings(
            "discard from 10.0.0.0/8 to 10.1.0.0/16 dir out;\n"
            "bypass tcp from 10.0.0.1 to 10.1.2.3 port 22 dir out;\n"
        )
        == []
    )


def test_partial_overlap_warns_and_says_which_one_wins() -> None:
    # line 1 is narrower on the destination, line 2 on the source: neither contains
    # the other, and on 10.0.0.1 -> 10.1.2.3 the /32+/16 one (904) beats /8+/32 (920)
    assert _warnings(
        "spdadd 10.0.0.0/8 10.1.2.3 any -P out discard;\n"
        "spdadd 10.0.0.1 10.1.0.0/16 any -P out none;\n"
    ) == [
        (
            2,
            "'out' selector partially overlaps the one at f.spd:1:1 with a conflicting "
            "action (none/bypass here, discard there); where both match, this one wins "
            "(priority 2147483552 < 2147483568)",
        )
    ]


def test_partial_overlap_on_protocol_warns() -> None:
    # the classic DNS bypass against a host-pair policy: the host pair wins for DNS
    [(line, message)] = _warnings(
        "spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require;\n"
        "spdadd 0.0.0.0/0 0.0.0.0/0[53] udp -P out none;\n"
    )
    assert line == 2
    assert "partially overlaps the one at f.spd:1:1" in message
    assert "the one at f.spd:1:1 wins (priority 2147483520 < 2147483624)" in message


def test_partial_overlap_ordered_by_one_explicit_priority_is_silent() -> None:
    # `prio high` on the DNS bypass makes it win over the host pair where both match:
    # the author ordered them, so there is nothing to warn about
    assert (
        _warnings(
            "spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require;\n"
            "spdadd 0.0.0.0/0 0.0.0.0/0[53] udp -P out prio high none;\n"
        )
        == []
    )


def test_explicit_priority_that_loses_still_warns() -> None:
    # `prio low` puts the bypass below the automatic priorities: it never wins where
    # both match, which is worth a warning
    [(line, message)] = _warnings(
        "spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require;\n"
        "spdadd 0.0.0.0/0 0.0.0.0/0[53] udp -P out prio low none;\n"
    )
    assert line == 2
    assert "the one at f.spd:1:1 wins" in message


def test_prio_high_beats_and_prio_low_loses_to_automatic_priorities() -> None:
    from ipsecd.spd.compiler import PRIORITY_DEFAULT

    policy = load_text(
        "spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require;\n"
        "spdadd 0.0.0.0/0 0.0.0.0/0[53] udp -P out prio high none;\n"
        "spdadd 0.0.0.0/0 0.0.0.0/0[123] udp -P out prio low none;\n",
        "f.spd",
    )
    auto, high, low = (e.priority for e in policy.spd[:3])
    assert high is not None and low is not None
    assert high == 0x40000000 < PRIORITY_DEFAULT - 300 < PRIORITY_DEFAULT < low == 0xC0000000
    assert auto is None


def test_equal_selectors_with_different_actions_are_an_error() -> None:
    with pytest.raises(SpdError) as info:
        load_text(
            "bypass tcp from 10.0.0.1 to 10.1.0.0/16 port 80 dir out;\n"
            "spdadd 10.0.0.1 10.1.0.0/16[80] tcp -P out discard;\n",
            "f.spd",
        )
    [d] = info.value.diagnostics
    assert (d.line, d.col, d.is_error) == (2, 1, True)
    assert d.message == (
        "'out' selector is the same as the one at f.spd:1:1 but the action differs "
        "(discard here, none/bypass there); only one of them can apply"
    )
    assert "explicit priority" in d.hint


def test_equal_selectors_with_the_same_action_are_fine() -> None:
    assert (
        _warnings(
            "bypass tcp from 10.0.0.1 to 10.1.0.0/16 port 80 dir out;\n"
            "spdadd 10.0.0.1 10.1.0.0/16[80] tcp -P out none;\n"
        )
        == []
    )


def test_equal_selectors_in_other_directions_do_not_clash() -> None:
    assert (
        _warnings(
            "spdadd 10.0.0.1 10.1.0.0/16 any -P out none;\n"
            "spdadd 10.0.0.1 10.1.0.0/16 any -P in discard;\n"
        )
        == []
    )


def test_equal_selectors_with_explicit_different_priorities_are_ordered() -> None:
    assert (
        _warnings(
            "bypass tcp from 10.0.0.1 to 10.1.0.0/16 port 80 dir out priority 100;\n"
            "spdadd 10.0.0.1 10.1.0.0/16[80] tcp -P out prio 7 discard;\n"
        )
        == []
    )


def test_nested_pair_with_equal_priority_warns() -> None:
    # IPv6 specificity is (64 + 64) // 2 == (65 + 64) // 2: the /65 gains nothing
    assert _warnings(
        "spdadd fd00::/64 fd00:1::/64 any -P out discard;\n"
        "spdadd fd00::/65 fd00:1::/64 any -P out none;\n"
    ) == [
        (
            2,
            "'out' selector lies inside the one at f.spd:1:1 with a conflicting action "
            "(none/bypass here, discard there); where both match, both have priority 2147483584 "
            "and neither is preferred",
        )
    ]


def test_nested_pair_where_an_explicit_priority_lets_the_broad_one_win_warns() -> None:
    # prio 2147483000 is kernel priority 0x80000000 - 2147483000 = 648 < 2147483520
    [(line, message)] = _warnings(
        "spdadd 10.0.0.0/8 10.1.0.0/16 any -P out prio 2147483000 discard;\n"
        "spdadd 10.0.0.1 10.1.2.3 any -P out none;\n"
    )
    assert line == 2
    assert "lies inside the one at f.spd:1:1" in message
    assert "the one at f.spd:1:1 wins (priority 648 < 2147483520)" in message


def test_broader_statement_after_the_narrow_one_says_contains() -> None:
    # the narrow one at line 1 has an explicit priority that makes it lose
    [(line, message)] = _warnings(
        "spdadd 10.0.0.1 10.1.2.3 any -P out prio low none;\n"
        "spdadd 10.0.0.0/8 10.1.0.0/16 any -P out discard;\n"
    )
    assert line == 2
    assert "contains the one at f.spd:1:1" in message
    assert "where both match, this one wins" in message


def test_different_icmp_types_do_not_overlap() -> None:
    assert (
        _warnings(
            "spdadd ::/0 ::/0 icmp6 135,0 -P in none;\n"
            "spdadd ::/0 ::/0 icmp6 136,0 -P in discard;\n"
            "spdadd 0.0.0.0/0 0.0.0.0/0 icmp 0 -P out discard;\n"  # type 0 is echo reply,
            "spdadd 0.0.0.0/0 0.0.0.0/0 icmp 8 -P out none;\n"  # not a wildcard
        )
        == []
    )


def test_icmp_type_inside_any_icmp_warns_because_specificity_ignores_icmp() -> None:
    # the specificity counts prefixes, protocol and ports only: both get 984, so the
    # exception is not resolved by priority and must be reported
    [(line, message)] = _warnings(
        "spdadd 0.0.0.0/0 0.0.0.0/0 icmp -P in discard;\n"
        "spdadd 0.0.0.0/0 0.0.0.0/0 icmp 8 -P in none;\n"
    )
    assert line == 2
    assert "lies inside the one at f.spd:1:1" in message
    assert "both have priority 2147483632 and neither is preferred" in message
