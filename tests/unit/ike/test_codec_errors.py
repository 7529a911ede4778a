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
