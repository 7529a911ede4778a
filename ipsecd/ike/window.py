"""The message window of one IKE SA (RFC 7296 2.1-2.4), both directions.

* :class:`RequestWindow` — our requests: message IDs, the one outstanding request
  (window size 1, RFC 7296 2.3; we never send SET_WINDOW_SIZE), its retransmission
  schedule (:class:`~ipsecd.ike.config.RetransmitConfig`, RFC 7296 2.1/2.4), and the
  decision to give up.
* :class:`ResponseCache` — the peer's requests: the next message ID we expect and the
  answer to the last one, resent verbatim when that request is retransmitted
  (RFC 7296 2.1: "the responder MUST remember the response").  Bounded: one request
  digest and one response (its fragments if it was fragmented).

Pure bookkeeping, no crypto and no I/O; times are passed in.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

from .config import RetransmitConfig

__all__ = ["Outstanding", "RequestKind", "RequestWindow", "ResponseCache"]


@dataclass(slots=True)
class Outstanding:
    """Our request waiting for its response."""

    message_id: int
    exchange: int
    #: The datagrams as sent (framed; several when fragmented).
    datagrams: tuple[bytes, ...] = field(repr=False)
    #: The task that built it (it handles the response).
    task: Any
    sends: int
    next_at: float
    first_sent: float
    #: Retransmissions left before giving up early: an unauthenticated error answer
    #: came (RFC 7296 2.21.1 waits a while for a genuine one: one more retransmission
    #: that a forger cannot suppress, then no longer).  None: the normal schedule.
    grace: int | None = None


class RequestWindow:
    """Our side of the window (see the module doc)."""

    def __init__(self, retransmit: RetransmitConfig) -> None:
        self.retransmit = retransmit
        #: Message ID of our next request (RFC 7296 2.2).
        self.next_id = 0
        self.outstanding: Outstanding | None = None

    @property
    def busy(self) -> bool:
        return self.outstanding is not None

    def allocate(self) -> int:
        """The message ID of a new request."""
        mid = self.next_id
        self.next_id += 1
        return mid

    def send(
        self,
        message_id: int,
        exchange: int,
        datagrams: tuple[bytes, ...],
        task: Any,
        now: float,
    ) -> None:
        """Track a request just sent for the first time."""
        self.outstanding = Outstanding(
            message_id, exchange, datagrams, task, 1, now + self.retransmit.delay(1), now
        )

    def timer(self) -> float | None:
        return None if self.outstanding is None else self.outstanding.next_at

    def due(self, now: float) -> tuple[bytes, ...] | Outstanding | None:
        """At ``now``: the datagrams to retransmit, or the :class:`Outstanding` request
        to give up on (no answer after the last retransmission), or None."""
        req = self.outstanding
        if req is None or now < req.next_at:
            return None
        if req.sends - 1 >= self.retransmit.max_retransmits or req.grace == 0:
            return req
        if req.grace is not None:
            req.grace -= 1
        req.sends += 1
        req.next_at = now + self.retransmit.delay(req.sends)
        return req.datagrams

    def matches(self, message_id: int, exchange: int) -> bool:
        req = self.outstanding
        return req is not None and req.message_id == message_id and req.exchange == exchange

    def done(self) -> Outstanding | None:
        """The answered (or abandoned) request; the window is free again."""
        req, self.outstanding = self.outstanding, None
        return req


class RequestKind(enum.Enum):
    """How a received request relates to the window (RFC 7296 2.2, 2.3)."""

    NEW = "new"
    #: The last request again: answer it from the cache.
    RETRANSMISSION = "retransmission"
    #: Same message ID as the last one but different bytes: drop.
    CONFLICTING = "conflicting"
    #: Neither the next ID nor the last one: drop.
    OUT_OF_WINDOW = "out_of_window"


class ResponseCache:
    """The peer's side of the window (see the module doc)."""

    def __init__(self) -> None:
        #: Message ID we expect the peer's next request to have.
        self.expected = 0
        self._digest = b""
        self._responses: tuple[bytes, ...] = ()

    @staticmethod
    def _hash(request: bytes) -> bytes:
        return hashlib.sha256(request).digest()

    def classify(self, message_id: int, request: bytes) -> RequestKind:
        if message_id == self.expected:
            return RequestKind.NEW
        if message_id == self.expected - 1 and self._responses:
            if self._hash(request) == self._digest:
                return RequestKind.RETRANSMISSION
            return RequestKind.CONFLICTING
        return RequestKind.OUT_OF_WINDOW

    def store(self, request: bytes, responses: tuple[bytes, ...]) -> None:
        """Remember the answer to the request with the expected ID; expect the next."""
        self._digest = self._hash(request)
        self._responses = responses
        self.expected += 1

    @property
    def responses(self) -> tuple[bytes, ...]:
        """The cached answer to the last request (framed datagrams)."""
        return self._responses
