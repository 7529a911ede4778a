"""The controller's bounds on what it accepts and sends, in one place.

docs/limits.md ("Controller") lists each with what happens at the bound; the numbers
here are the truth.  Sizes are bytes of the encoded form (UTF-8 text, serialized
protobuf, etcd request).

Why these numbers:

* A policy travels in three envelopes: the ``Push`` request (gRPC), the revision record
  in etcd (one transaction; etcd refuses requests over its ``--max-request-bytes``,
  1.5 MiB by default), and the ``PolicyUpdate``/``Snapshot`` to every agent (gRPC,
  whose receive limit is 4 MiB by default on the agent's side).  The default policy
  limit (1 MiB) fits all three with room for the JSON escaping of the record and the
  node directory in a snapshot; the ceiling (3 MiB) is the most an operator may
  configure and still fit a snapshot with a ~1 MiB directory under 4 MiB (raising it
  above 1 MiB needs etcd's ``--max-request-bytes`` raised as well).
* The gRPC message limits are derived from those so that ``ipsecctl`` and the server
  agree: the server receives up to :data:`MAX_REQUEST_BYTES` (any policy up to the
  ceiling, so an over-limit policy reaches the handler and gets an answer that names
  the limit) and sends up to :data:`MAX_RESPONSE_BYTES` (``get``/``diff`` of ceiling-size
  policies, long histories); the client uses the same two numbers the other way round.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_ETCD_ATTEMPT_TIMEOUT",
    "DEFAULT_ETCD_RETRY_BUDGET",
    "DEFAULT_MAX_POLICY_BYTES",
    "EMBEDDED_ETCD_MAX_REQUEST_BYTES",
    "ETCD_MAX_RESPONSE_BYTES",
    "ETCD_TXN_MAX_BYTES",
    "ETCD_TXN_MAX_OPS",
    "HISTORY_PAGE",
    "MAX_AGENT_MESSAGE_BYTES",
    "MAX_AUTHOR_BYTES",
    "MAX_COMMENT_BYTES",
    "MAX_FILENAME_BYTES",
    "MAX_NODE_NAME_BYTES",
    "MAX_QUERY_TIMEOUT",
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "MIN_QUERY_TIMEOUT",
    "POLICY_BYTES_CEILING",
    "REQUEST_ENVELOPE_BYTES",
    "client_channel_options",
    "human_bytes",
    "server_message_options",
]

KiB = 1024
MiB = 1024 * KiB

# -- policy API ------------------------------------------------------------------------------
DEFAULT_MAX_POLICY_BYTES = 1 * MiB  # --max-policy-bytes: UTF-8 bytes of one SPD text
POLICY_BYTES_CEILING = 3 * MiB  # the most --max-policy-bytes may be set to
MAX_FILENAME_BYTES = 4096  # PATH_MAX
MAX_COMMENT_BYTES = 4096
MAX_AUTHOR_BYTES = 256
# Room in a Push request besides the text: the three fields above, protobuf framing.
REQUEST_ENVELOPE_BYTES = 64 * KiB
MAX_REQUEST_BYTES = POLICY_BYTES_CEILING + REQUEST_ENVELOPE_BYTES  # server receive
MAX_RESPONSE_BYTES = 16 * MiB  # server send, ipsecctl receive
HISTORY_PAGE = 8  # revision records read from etcd per request while listing history

# -- agent streams ---------------------------------------------------------------------------
MAX_AGENT_MESSAGE_BYTES = 64 * KiB  # one AgentMessage (hello, ack, status, answer, pong)
MAX_NODE_NAME_BYTES = 253  # a DNS name
DEFAULT_DRAIN_TIMEOUT = 30.0  # --stream-drain-timeout: one write pending this long -> drop
MIN_QUERY_TIMEOUT = 0.1  # live status query (ipsecctl status NODE --timeout)
MAX_QUERY_TIMEOUT = 30.0

# -- etcd --------------------------------------------------------------------------------------
DEFAULT_ETCD_ATTEMPT_TIMEOUT = 2.0  # one etcd RPC; a leader election takes ~1-2 s
DEFAULT_ETCD_RETRY_BUDGET = 10.0  # retries of transient errors, within a request's deadline
ETCD_MAX_RESPONSE_BYTES = 64 * MiB  # what the etcd client accepts (gRPC default: 4 MiB)
ETCD_TXN_MAX_OPS = 100  # etcd's default --max-txn-ops is 128
ETCD_TXN_MAX_BYTES = 512 * KiB  # batched writes are split below etcd's 1.5 MiB default
# The private etcd (no --etcd) accepts the revision record of a ceiling-size policy.
EMBEDDED_ETCD_MAX_REQUEST_BYTES = 4 * MiB


def server_message_options() -> list[tuple[str, Any]]:
    """gRPC server options for message sizes (the client uses the mirror image)."""
    return [
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
    ]


def client_channel_options() -> list[tuple[str, Any]]:
    """gRPC channel options of ``ipsecctl`` and of replica-to-replica calls."""
    return [
        ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    ]


def human_bytes(n: int) -> str:
    """``1048576`` -> ``"1,048,576 bytes (1 MiB)"`` — exact number, readable unit."""
    if n >= MiB:
        unit = f"{n / MiB:.3g} MiB"
    elif n >= KiB:
        unit = f"{n / KiB:.3g} KiB"
    else:
        return f"{n:,} bytes"
    return f"{n:,} bytes ({unit})"
