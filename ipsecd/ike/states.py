"""States of an IKE SA and the one table of allowed transitions.

Each state is named for what the SA waits for (h11 ``_state.py`` style).  The engine
(:mod:`ipsecd.ike.engine`) changes state only through ``IkeSa._set_state``, which checks
this table and logs the transition.

Initiator::

    INITIAL ─initiate()─▶ EXPECT_SA_INIT_RESPONSE ─▶ EXPECT_AUTH_RESPONSE ─▶ ESTABLISHED
                              │  ▲ INVALID_KE_PAYLOAD: retry with the requested group
                              └──┘

Responder (created from the first IKE_SA_INIT request)::

    INITIAL ─▶ EXPECT_AUTH_REQUEST ─▶ ESTABLISHED

Then, for both::

    ESTABLISHED ─delete()─▶ EXPECT_DELETE_RESPONSE ─▶ DELETED
    ESTABLISHED ─peer Delete─▶ DELETED

Any non-end state can fail (no response after the last retransmission, authentication
failure, no acceptable proposal, half-open timeout) and go to FAILED.  DELETED and
FAILED are the END_STATES: nothing leaves them and the SA answers nothing any more.
"""

from __future__ import annotations

import enum

__all__ = ["END_STATES", "TRANSITIONS", "IkeState", "is_allowed"]


class IkeState(enum.Enum):
    """What an IKE SA is waiting for."""

    #: Created, nothing sent or received yet (initiator before ``initiate()``; a
    #: responder passes through it while it handles the first request).
    INITIAL = "initial"
    #: Initiator: IKE_SA_INIT request sent (RFC 7296 1.2), waiting for its response.
    EXPECT_SA_INIT_RESPONSE = "expect_sa_init_response"
    #: Responder: IKE_SA_INIT response sent, waiting for the IKE_AUTH request.
    EXPECT_AUTH_REQUEST = "expect_auth_request"
    #: Initiator: IKE_AUTH request sent, waiting for its response.
    EXPECT_AUTH_RESPONSE = "expect_auth_response"
    #: IKE SA authenticated; INFORMATIONAL exchanges (Delete, liveness) in either
    #: direction.  Requests we start from here are tracked by the message-ID window,
    #: not by the state.
    ESTABLISHED = "established"
    #: We sent an INFORMATIONAL Delete for the IKE SA (RFC 7296 1.4.1), waiting for
    #: the (empty) response.
    EXPECT_DELETE_RESPONSE = "expect_delete_response"
    #: The IKE SA was deleted (by us or by the peer).  End state.
    DELETED = "deleted"
    #: The IKE SA could not be set up or died (timeout, authentication failure, ...).
    #: End state.
    FAILED = "failed"


END_STATES: frozenset[IkeState] = frozenset({IkeState.DELETED, IkeState.FAILED})

_S = IkeState

#: The allowed transitions, and the only place they are listed.
TRANSITIONS: dict[IkeState, frozenset[IkeState]] = {
    _S.INITIAL: frozenset(
        {_S.EXPECT_SA_INIT_RESPONSE, _S.EXPECT_AUTH_REQUEST, _S.FAILED, _S.DELETED}
    ),
    # Retry after INVALID_KE_PAYLOAD stays in the same state (RFC 7296 1.2).
    _S.EXPECT_SA_INIT_RESPONSE: frozenset(
        {_S.EXPECT_SA_INIT_RESPONSE, _S.EXPECT_AUTH_RESPONSE, _S.FAILED, _S.DELETED}
    ),
    _S.EXPECT_AUTH_REQUEST: frozenset({_S.ESTABLISHED, _S.FAILED, _S.DELETED}),
    _S.EXPECT_AUTH_RESPONSE: frozenset({_S.ESTABLISHED, _S.FAILED, _S.DELETED}),
    _S.ESTABLISHED: frozenset({_S.EXPECT_DELETE_RESPONSE, _S.DELETED, _S.FAILED}),
    _S.EXPECT_DELETE_RESPONSE: frozenset({_S.DELETED, _S.FAILED}),
    _S.DELETED: frozenset(),
    _S.FAILED: frozenset(),
}


def is_allowed(old: IkeState, new: IkeState) -> bool:
    """True when the table allows going from ``old`` to ``new``."""
    return new in TRANSITIONS[old]
