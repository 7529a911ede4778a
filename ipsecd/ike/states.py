"""States of IKE and CHILD SAs, and the tables that drive them (docs/ike.md "States").

Each state is named for what the SA waits for.  An SA never assigns its state
directly: it reports what happened (a *trigger*) and the table gives the next state;
a (state, trigger) pair absent from the table is a bug and raises
:class:`~ipsecd.ike.errors.IkeLocalError`.  A second table says which requests of the
peer a state answers (:data:`REQUESTS`).

IKE SA::

    INITIAL ─SA_INIT_SENT─▶ EXPECT_SA_INIT_RESPONSE ─AUTH_SENT─▶ EXPECT_AUTH_RESPONSE ─┐
       │                       ▲ └─SA_INIT_SENT (cookie, INVALID_KE retry)            │
       └─SA_INIT_ANSWERED─▶ EXPECT_AUTH_REQUEST ────────────AUTHENTICATED────────────▶ ESTABLISHED
    INITIAL ─CREATED_BY_REKEY──────────────────────────────────────────────────────▶ ESTABLISHED
    ESTABLISHED ─REPLACED─▶ REKEYED        (children moved to the new IKE SA)
    ESTABLISHED / REKEYED ─DELETE_SENT─▶ EXPECT_DELETE_RESPONSE ─DELETED─▶ DELETED
    ESTABLISHED / REKEYED ─DELETED (by the peer)─▶ DELETED
    any state before ESTABLISHED ─ABANDONED─▶ DELETED;  any non-end state ─FAILED─▶ FAILED

CHILD SA::

    INSTALLED ─REKEY_STARTED─▶ REKEYING ─REKEY_FAILED─▶ INSTALLED
    INSTALLED / REKEYING ─REPLACED─▶ REKEYED        (a new SA carries its traffic)
    INSTALLED / REKEYING / REKEYED ─DELETE_SENT─▶ DELETING
    any non-end state ─DELETED─▶ DELETED
"""

from __future__ import annotations

import enum

from .constants import ExchangeType
from .errors import IkeLocalError

__all__ = [
    "CHILD_END_STATES",
    "CHILD_TRANSITIONS",
    "END_STATES",
    "REQUESTS",
    "TRANSITIONS",
    "ChildState",
    "ChildTrigger",
    "IkeState",
    "IkeTrigger",
    "is_allowed",
    "next_child_state",
    "next_state",
]


class IkeState(enum.Enum):
    """What an IKE SA is waiting for."""

    #: Created, nothing sent or received yet.
    INITIAL = "initial"
    #: Initiator: IKE_SA_INIT request sent (RFC 7296 1.2), waiting for its response.
    EXPECT_SA_INIT_RESPONSE = "expect_sa_init_response"
    #: Responder: IKE_SA_INIT answered, waiting for the IKE_AUTH request (half-open).
    EXPECT_AUTH_REQUEST = "expect_auth_request"
    #: Initiator: IKE_AUTH request sent, waiting for its response.
    EXPECT_AUTH_RESPONSE = "expect_auth_response"
    #: Authenticated; CREATE_CHILD_SA and INFORMATIONAL in both directions.
    ESTABLISHED = "established"
    #: Replaced by a rekeyed IKE SA that took its CHILD SAs (RFC 7296 2.18); waits for
    #: the Delete that ends it.
    REKEYED = "rekeyed"
    #: We sent a Delete for the IKE SA (RFC 7296 1.4.1), waiting for the answer.
    EXPECT_DELETE_RESPONSE = "expect_delete_response"
    #: Deleted (by us or by the peer).  End state.
    DELETED = "deleted"
    #: Could not be set up, or died (no answer, authentication failure).  End state.
    FAILED = "failed"


class IkeTrigger(enum.Enum):
    """What happened to an IKE SA."""

    SA_INIT_SENT = "sa_init_sent"
    SA_INIT_ANSWERED = "sa_init_answered"
    AUTH_SENT = "auth_sent"
    AUTHENTICATED = "authenticated"
    CREATED_BY_REKEY = "created_by_rekey"
    REPLACED = "replaced"
    DELETE_SENT = "delete_sent"
    DELETED = "deleted"
    ABANDONED = "abandoned"
    FAILED = "failed"


END_STATES: frozenset[IkeState] = frozenset({IkeState.DELETED, IkeState.FAILED})

_S, _T = IkeState, IkeTrigger
_BEFORE_ESTABLISHED = (
    _S.INITIAL,
    _S.EXPECT_SA_INIT_RESPONSE,
    _S.EXPECT_AUTH_REQUEST,
    _S.EXPECT_AUTH_RESPONSE,
)

#: (state, trigger) -> next state: the only place IKE SA transitions are listed.
TRANSITIONS: dict[tuple[IkeState, IkeTrigger], IkeState] = {
    (_S.INITIAL, _T.SA_INIT_SENT): _S.EXPECT_SA_INIT_RESPONSE,
    (_S.EXPECT_SA_INIT_RESPONSE, _T.SA_INIT_SENT): _S.EXPECT_SA_INIT_RESPONSE,
    (_S.INITIAL, _T.SA_INIT_ANSWERED): _S.EXPECT_AUTH_REQUEST,
    (_S.EXPECT_SA_INIT_RESPONSE, _T.AUTH_SENT): _S.EXPECT_AUTH_RESPONSE,
    (_S.EXPECT_AUTH_REQUEST, _T.AUTHENTICATED): _S.ESTABLISHED,
    (_S.EXPECT_AUTH_RESPONSE, _T.AUTHENTICATED): _S.ESTABLISHED,
    (_S.INITIAL, _T.CREATED_BY_REKEY): _S.ESTABLISHED,
    (_S.ESTABLISHED, _T.REPLACED): _S.REKEYED,
    (_S.ESTABLISHED, _T.DELETE_SENT): _S.EXPECT_DELETE_RESPONSE,
    (_S.REKEYED, _T.DELETE_SENT): _S.EXPECT_DELETE_RESPONSE,
    (_S.ESTABLISHED, _T.DELETED): _S.DELETED,
    (_S.REKEYED, _T.DELETED): _S.DELETED,
    (_S.EXPECT_DELETE_RESPONSE, _T.DELETED): _S.DELETED,
    **{(s, _T.ABANDONED): _S.DELETED for s in _BEFORE_ESTABLISHED},
    **{(s, _T.FAILED): _S.FAILED for s in IkeState if s not in END_STATES},
}

#: Requests of the peer each state handles (others are dropped, or answered with an
#: error where RFC 7296 2.25 says so; see IkeSa._on_request).
REQUESTS: dict[IkeState, frozenset[int]] = {
    _S.INITIAL: frozenset({ExchangeType.IKE_SA_INIT}),
    _S.EXPECT_SA_INIT_RESPONSE: frozenset(),
    _S.EXPECT_AUTH_REQUEST: frozenset({ExchangeType.IKE_AUTH}),
    _S.EXPECT_AUTH_RESPONSE: frozenset(),
    _S.ESTABLISHED: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}),
    # RFC 7296 2.25.2: a CREATE_CHILD_SA on an IKE SA being rekeyed or deleted is
    # answered TEMPORARY_FAILURE; INFORMATIONAL (Delete, liveness) still works.
    _S.REKEYED: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}),
    _S.EXPECT_DELETE_RESPONSE: frozenset(
        {ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}
    ),
    _S.DELETED: frozenset(),
    _S.FAILED: frozenset(),
}


def next_state(state: IkeState, trigger: IkeTrigger) -> IkeState:
    """The state after ``trigger`` in ``state`` (raises IkeLocalError if not allowed)."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise IkeLocalError(
            f"IKE SA: {trigger.name} is not allowed in state {state.name}"
        ) from None


def is_allowed(old: IkeState, new: IkeState) -> bool:
    """True when some trigger leads from ``old`` to ``new`` in one step."""
    return any(src == old and dst == new for (src, _), dst in TRANSITIONS.items())


class ChildState(enum.Enum):
    """What a CHILD SA is waiting for."""

    #: Carrying traffic (its outbound half may still wait for activation, see
    #: ChildSa.outbound_active).
    INSTALLED = "installed"
    #: We sent a CREATE_CHILD_SA to rekey it (RFC 7296 1.3.3); still carrying traffic.
    REKEYING = "rekeying"
    #: A new SA replaced it; it waits for the Delete that removes it (RFC 7296 2.8).
    REKEYED = "rekeyed"
    #: We sent a Delete for it, waiting for the answer.
    DELETING = "deleting"
    #: Gone.  End state.
    DELETED = "deleted"


class ChildTrigger(enum.Enum):
    REKEY_STARTED = "rekey_started"
    REKEY_FAILED = "rekey_failed"
    REPLACED = "replaced"
    DELETE_SENT = "delete_sent"
    DELETED = "deleted"


CHILD_END_STATES: frozenset[ChildState] = frozenset({ChildState.DELETED})

_C, _CT = ChildState, ChildTrigger

#: (state, trigger) -> next state for CHILD SAs.
CHILD_TRANSITIONS: dict[tuple[ChildState, ChildTrigger], ChildState] = {
    (_C.INSTALLED, _CT.REKEY_STARTED): _C.REKEYING,
    (_C.REKEYING, _CT.REKEY_FAILED): _C.INSTALLED,
    (_C.INSTALLED, _CT.REPLACED): _C.REKEYED,
    (_C.REKEYING, _CT.REPLACED): _C.REKEYED,
    (_C.INSTALLED, _CT.DELETE_SENT): _C.DELETING,
    (_C.REKEYING, _CT.DELETE_SENT): _C.DELETING,
    (_C.REKEYED, _CT.DELETE_SENT): _C.DELETING,
    **{(s, _CT.DELETED): _C.DELETED for s in ChildState if s not in CHILD_END_STATES},
}


def next_child_state(state: ChildState, trigger: ChildTrigger) -> ChildState:
    try:
        return CHILD_TRANSITIONS[(state, trigger)]
    except KeyError:
        raise IkeLocalError(
            f"CHILD SA: {trigger.name} is not allowed in state {state.name}"
        ) from None
