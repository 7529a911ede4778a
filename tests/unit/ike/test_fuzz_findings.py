"""Regression tests for what the coverage-guided fuzzers found (tests/fuzz, issue #8).

Each test is the smallest input of one finding and states the expected behaviour.  A
new finding's test fails until the engine is fixed; meanwhile the fuzz targets can set
inputs that hit it aside (``KNOWN`` in tests/fuzz/common.py, docs/operations.md
"Fuzzing").  Both findings below were made on commit 2e9f1cb.
"""

from __future__ import annotations

import struct

import pytest

from ipsecd.ike.child import ChildSa
from ipsecd.ike.codec import parse_message, parse_payloads
from ipsecd.ike.constants import ExchangeType, HeaderFlag, NotifyType, PayloadType, ProtocolId
from ipsecd.ike.errors import IkeParseError
from ipsecd.ike.states import ChildState

from .harness import Harness, make_configs


def _delete_zero_size(count: int) -> bytes:
    """A Delete payload (RFC 7296 3.11) with SPI Size 0 and ``count`` SPIs: 8 bytes."""
    body = bytes((ProtocolId.IKE, 0)) + struct.pack("!H", count)
    return bytes((PayloadType.NONE, 0)) + struct.pack("!H", 4 + len(body)) + body


def _datagram(chain: bytes, first: int) -> bytes:
    header = (
        bytes(range(1, 9))
        + bytes(range(9, 17))
        + bytes((first, 0x20, ExchangeType.INFORMATIONAL, HeaderFlag.INITIATOR))
        + bytes(4)
    )
    return header + struct.pack("!I", 28 + len(chain)) + chain


def test_delete_payload_with_zero_spi_size_and_many_spis_is_refused() -> None:
    """RFC 7296 3.11: SPI Size is 0 only for IKE, whose Delete carries no SPI.  A Delete
    saying "65,535 SPIs of 0 bytes" is 8 bytes on the wire, and the codec builds a
    tuple of 65,535 empty SPIs for it: 64 such payloads in one 540-byte datagram cost
    about 0.4 s of CPU before anything is authenticated (parse_message runs on every
    IKE_SA_INIT request and every datagram for an unknown SPI), against the 0.1-0.2 ms
    per parse that docs/limits.md "IKE" promises.  Expected: INVALID_SYNTAX."""
    chain = _delete_zero_size(0xFFFF)
    with pytest.raises(IkeParseError) as info:
        parse_message(_datagram(chain, PayloadType.DELETE))
    assert info.value.notify == NotifyType.INVALID_SYNTAX
    # the same inside an SK payload (an authenticated peer)
    with pytest.raises(IkeParseError):
        parse_payloads(chain, PayloadType.DELETE)


def test_delete_payload_for_ike_without_spis_still_parses() -> None:
    """The fix above must keep the real IKE SA Delete (SPI Size 0, no SPI) working."""
    msg = parse_message(_datagram(_delete_zero_size(0), PayloadType.DELETE))
    (delete,) = msg.payloads
    assert delete.spis == ()  # type: ignore[union-attr]


def _state(child: ChildSa) -> ChildState:
    return child.state


def test_timer_of_a_deleting_child_past_its_hard_lifetime_moves_on() -> None:
    """The peer rekeys a CHILD SA, then goes silent before deleting the old one.  We
    give it RetransmitConfig.give_up_after() (RFC 7296 2.8: the initiator of the rekey
    deletes the old SA), then delete it ourselves: the old CHILD SA is DELETING and its
    hard lifetime (``expire_at``) has passed.  IkeSa.get_timer still returns that
    ``expire_at``, in the past, and handle_timer does nothing about it
    (``_child_hard_expiry`` returns at once for a DELETING child), so after
    ``handle_timer(now)`` the next timer is ``<= now``: IkeEndpoint.handle_timer's
    ``while self._heap and self._heap[0][0] <= now`` loop then never ends, and the
    agent's IKE worker spins forever (found by tests/fuzz/fuzz_endpoint.py as a
    libFuzzer timeout).  Expected: after handle_timer(now), get_timer() is None or
    later than now."""
    ci, cr = make_configs(esp=("aes128gcm16",))
    h = Harness(ci, [cr])
    h.start()
    h.run_until_established()
    r = h.responder
    assert r is not None
    (old,) = r.children
    assert h.initiator.rekey_child(h.initiator.children[0].inbound_spi, h.now)
    h.flush()
    assert h.step()  # the responder answers the rekey: its old CHILD SA waits for a Delete
    assert old.state == ChildState.REKEYED
    # from now on the initiator is silent: nothing more is delivered to the responder
    deadline = h.now + 900.0
    seen_deleting = False
    for _ in range(200):
        t = r.get_timer()
        if t is None or t > deadline:
            break
        h.now = max(h.now, t)
        r.handle_timer(h.now)
        h.flush()
        seen_deleting = seen_deleting or _state(old) == ChildState.DELETING
        after = r.get_timer()
        assert after is None or after > h.now, (
            f"after handle_timer({h.now:.3f}) the next timer is {after:.3f} "
            f"(CHILD SA {old.state.name}, expire_at {old.expire_at:.3f})"
        )
    assert seen_deleting
