"""The error hierarchy shared by codec, crypto and engine (ipsecd.ike.errors)."""

from __future__ import annotations

import inspect

import pytest

from ipsecd.ike import errors
from ipsecd.ike.codec import parse_message
from ipsecd.ike.constants import NotifyType
from ipsecd.ike.errors import (
    IkeError,
    IkeIntegrityError,
    IkeInvalidKeError,
    IkeLocalError,
    IkeParseError,
    IkePeerError,
    IkeProtocolError,
)


def test_local_and_peer_faults_are_separate() -> None:
    # DESIGN convention 4: local errors (API misuse) and remote errors are distinct types
    assert not issubclass(IkeLocalError, IkePeerError)
    for cls in (IkeProtocolError, IkeParseError, IkeInvalidKeError, IkeIntegrityError):
        assert issubclass(cls, IkePeerError) and not issubclass(cls, IkeLocalError)


def _sample(cls: type[IkeProtocolError]) -> IkeProtocolError:
    if cls is IkeParseError:
        return IkeParseError("SA payload", 40, "bad")
    if cls is IkeInvalidKeError:
        return IkeInvalidKeError("bad point")
    return cls("peer fault", notify=NotifyType.TS_UNACCEPTABLE)


def test_every_protocol_error_carries_an_error_notify() -> None:
    """Mapping completeness: each wire-code error class (including any the engine adds
    to ipsecd.ike.errors later) maps to an error-range Notify type (RFC 7296 3.10.1)."""
    classes = [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, IkeProtocolError)
    ]
    assert {IkeProtocolError, IkeParseError, IkeInvalidKeError} <= set(classes)
    for cls in classes:
        if cls not in (IkeProtocolError, IkeParseError, IkeInvalidKeError):
            continue  # engine-defined subclasses have their own constructors
        err = _sample(cls)
        assert NotifyType(err.notify).is_error
        assert NotifyType(err.notify).name in str(err)


def test_parse_error_names_place() -> None:
    err = IkeParseError("payload #2 (SA) / proposal #1", 57, "Proposal Length 3")
    assert err.notify == NotifyType.INVALID_SYNTAX
    assert str(err) == (
        "malformed IKEv2 message: payload #2 (SA) / proposal #1 at offset 57: "
        "Proposal Length 3 [INVALID_SYNTAX]"
    )


def test_unknown_notify_code_in_str() -> None:
    assert "notify 60000" in str(IkeProtocolError("x", notify=60000))


@pytest.mark.parametrize("data", [b"", b"\x00" * 28, bytes(range(256)) * 2])
def test_parse_raises_only_ike_errors(data: bytes) -> None:
    with pytest.raises(IkeError):
        parse_message(data)


def _vendor_chain(n: int) -> bytes:
    """An IKE_SA_INIT request holding ``n`` empty Vendor ID payloads."""
    body = b"".join(bytes((43 if i < n - 1 else 0, 0, 0, 4)) for i in range(n))
    header = bytes(range(1, 9)) + bytes(8) + bytes((43, 0x20, 34, 0x08)) + bytes(4)
    return header + (28 + len(body)).to_bytes(4, "big") + body


def test_payloads_per_chain_are_capped() -> None:
    # docs/limits.md "IKE": a datagram of empty payloads must not cost a parse step per
    # four bytes; 64 still parse, one more is refused with the place named
    from ipsecd.ike.codec import MAX_PAYLOADS, parse_payloads

    assert MAX_PAYLOADS == 64
    assert len(parse_message(_vendor_chain(64)).payloads) == 64
    with pytest.raises(IkeParseError, match="more than 64 payloads"):
        parse_message(_vendor_chain(65))
    with pytest.raises(IkeParseError, match="more than 64 payloads"):
        parse_message(_vendor_chain(16000))
    inner = _vendor_chain(65)[28:]
    with pytest.raises(IkeParseError, match="more than 64 payloads"):
        parse_payloads(inner, 43)  # the plaintext of an SK payload too
