"""Error types of the IKEv2 engine (shared by the codec, the crypto layer and the engine).

The hierarchy separates *who* is at fault, because the engine reacts differently
(DESIGN.md convention 4)::

    IkeError                     base of everything raised by ipsecd.ike
    ├── IkePeerError             the peer sent something wrong
    │   ├── IkeProtocolError     ... and the wire has a code for it (``notify``): the
    │   │   │                    engine answers with that NOTIFY (or drops, per RFC 7296 2.21)
    │   │   ├── IkeParseError    malformed bytes: INVALID_SYNTAX, names payload and offset
    │   │   └── IkeInvalidKeError  invalid Diffie-Hellman public value: INVALID_SYNTAX
    │   └── IkeIntegrityError    ICV/AEAD tag mismatch: drop silently (RFC 7296 2.21.2)
    └── IkeLocalError            API misuse on our side (bad arguments, forbidden algorithm
                                 requested locally); never sent to the peer

No message text ever contains key material; the secrets stay in ``repr=False`` fields.
"""

from __future__ import annotations

from .constants import NotifyType

__all__ = [
    "IkeError",
    "IkeIntegrityError",
    "IkeInvalidKeError",
    "IkeLocalError",
    "IkeParseError",
    "IkePeerError",
    "IkeProtocolError",
]


class IkeError(Exception):
    """Base class of every error raised by :mod:`ipsecd.ike`."""


class IkePeerError(IkeError):
    """The peer is at fault (malformed, unauthenticated or unacceptable input)."""


class IkeProtocolError(IkePeerError):
    """A peer fault that has a wire code.

    ``notify`` is the Notify Message Type to report (RFC 7296 3.10.1) and ``data`` the
    notification data that goes with it (e.g. the payload type octet for
    UNSUPPORTED_CRITICAL_PAYLOAD, the accepted group for INVALID_KE_PAYLOAD).
    """

    def __init__(self, message: str, *, notify: NotifyType | int, data: bytes = b"") -> None:
        super().__init__(message)
        self.message = message
        self.notify = notify
        self.data = data

    def __str__(self) -> str:
        name = notify_name(self.notify)
        return f"{self.message} [{name}]"


class IkeParseError(IkeProtocolError):
    """Malformed message: a length, count or field does not fit.

    ``where`` names the structure (``"SA payload / proposal 1"``) and ``offset`` is the
    byte offset in the datagram (or in the decrypted inner chain, see ``where``) at
    which the fault was found.  The wire code is INVALID_SYNTAX (RFC 7296 3.10.1).
    """

    def __init__(self, where: str, offset: int, problem: str) -> None:
        super().__init__(
            f"malformed IKEv2 message: {where} at offset {offset}: {problem}",
            notify=NotifyType.INVALID_SYNTAX,
        )
        self.where = where
        self.offset = offset
        self.problem = problem


class IkeInvalidKeError(IkeProtocolError):
    """The peer's key exchange public value is invalid (not on the curve, out of range,
    wrong length, low order).  RFC 7296 has no dedicated code; INVALID_SYNTAX is used
    (RFC 7296 3.10.1: "fields out of range or invalid")."""

    def __init__(self, message: str) -> None:
        super().__init__(message, notify=NotifyType.INVALID_SYNTAX)


class IkeIntegrityError(IkePeerError):
    """The integrity check value / AEAD tag of an Encrypted payload did not verify.

    RFC 7296 2.21.2: such a message is dropped without a reply (and logged)."""


class IkeLocalError(IkeError):
    """Our own caller misused the API (bad field value, unsupported or forbidden
    algorithm requested locally, wrong key length).  Never the peer's fault."""


def notify_name(code: int) -> str:
    """Symbolic name of a notify type, or its number when unknown."""
    try:
        return NotifyType(code).name
    except ValueError:
        return f"notify {code}"
