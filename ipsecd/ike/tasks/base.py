"""The task protocol: one exchange we initiate (docs/ike.md "Tasks").

An IKE SA keeps a queue of tasks and runs one at a time (window size 1, RFC 7296
2.3).  ``build`` makes the request's payloads (or returns None when the task has
nothing left to do, e.g. the CHILD SA it would rekey is gone); the SA sends and
retransmits them; ``process`` gets the authenticated response's inner payloads;
``give_up`` is called when the retransmissions are exhausted; ``abort`` when the task
is dropped unsent or the IKE SA ends.  The answering half of each exchange lives in
the same module as its task (``respond`` functions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from ..codec import Payload
from ..states import IkeState

if TYPE_CHECKING:
    from ..sa import IkeSa

__all__ = ["Task"]


class Task:
    """Base of every task (see the module doc)."""

    exchange: ClassVar[int]
    #: What the task does, for logs ("CHILD SA rekey", ...).
    label: ClassVar[str]

    def ready(self, sa: IkeSa) -> bool:
        """Whether the task may start in the SA's current state."""
        return sa.state == IkeState.ESTABLISHED

    def build(self, sa: IkeSa, now: float) -> list[Payload] | None:
        raise NotImplementedError

    def process(self, sa: IkeSa, inner: Sequence[Payload], now: float) -> None:
        raise NotImplementedError

    def give_up(self, sa: IkeSa, now: float, why: str) -> None:
        """No answer after the last retransmission (RFC 7296 2.4): the peer is dead."""
        sa.fail(f"{why}: peer unreachable or dead", None)

    def abort(self, sa: IkeSa, reason: str) -> None:
        """The task will not complete (dropped unsent, or the IKE SA ended)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
