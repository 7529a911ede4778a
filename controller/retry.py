"""Deadlines and backoff for retrying transient store errors.

* :func:`request_deadline` — the gRPC servicer runs each request inside it, so every
  store operation of that request gives up a little *before* the caller's deadline
  and the caller gets the store's error (``ipsecctl`` exit 6 with a message) instead of
  its own ``DEADLINE_EXCEEDED``;
* :func:`operation_deadline` — when a store operation must give up: its own retry
  budget, or the request's deadline if that comes first;
* :class:`Backoff` — bounded exponential backoff with jitter, so that many callers
  retrying after the same etcd leader change do not retry in lockstep.

Time is ``time.monotonic()`` (the clock of asyncio's default event loop).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["Backoff", "operation_deadline", "request_deadline"]

# Absolute monotonic time by which the current request's store work must be done.
_REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("ipsecd_request_deadline", default=None)

MAX_MARGIN = 1.0  # seconds kept before the caller's deadline to send the answer
MARGIN_FRACTION = 0.2


@contextlib.contextmanager
def request_deadline(remaining: float | None) -> Iterator[None]:
    """Within this block store operations end ``margin`` before ``remaining`` seconds
    from now (None: the caller set no deadline; only the operation budgets apply).
    The margin is 20 % of ``remaining``, at most one second."""
    if remaining is None:
        yield
        return
    margin = min(MAX_MARGIN, max(0.0, remaining) * MARGIN_FRACTION)
    deadline = time.monotonic() + remaining - margin
    outer = _REQUEST_DEADLINE.get()
    if outer is not None:
        deadline = min(deadline, outer)
    token = _REQUEST_DEADLINE.set(deadline)
    try:
        yield
    finally:
        _REQUEST_DEADLINE.reset(token)


def operation_deadline(budget: float, *, now: float | None = None) -> float:
    """Monotonic time at which an operation started ``now`` stops retrying."""
    start = time.monotonic() if now is None else now
    own = start + budget
    outer = _REQUEST_DEADLINE.get()
    return own if outer is None else min(own, outer)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff, ``initial`` doubling up to ``maximum``, with "equal jitter":
    the n-th delay is uniform in ``[cap/2, cap)`` where ``cap = min(maximum,
    initial * 2**n)`` — never zero (a retry storm) and never above ``maximum``."""

    initial: float = 0.05
    maximum: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum (got {self.initial}, {self.maximum})"
            )

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless sequence of delays (seconds)."""
        draw = rng.random if rng is not None else random.random
        cap = self.initial
        while True:
            yield cap / 2 + draw() * cap / 2
            cap = min(cap * 2, self.maximum)
