"""The controller process: gRPC services over the store, one etcd watch, agent fan-out.

* :class:`PolicyServicer` — push/get/validate/history/diff/rollback (``ipsecctl``);
* agent streams (``AgentService.Connect``) — registered by hand with a response
  serializer that passes ``bytes`` through, so each revision is serialized once
  (:mod:`controller.hub`) and the same bytes go to every stream;
* :class:`StatusServicer` — node list and live per-node status (forwarded to the
  replica that holds the node's stream when it is not this one);
* two etcd watches per process (not per agent): the policy watch feeds the newest
  revision to the fan-out, the registry watch the node directory and the node/replica
  view; both resync after etcd restarts or compaction;
* a replica lease (liveness of this replica's ``conn/`` and ``replicas/`` keys) and
  leader election on it: the leader does the single-owner work (etcd compaction).

Credentials: :meth:`Controller.start` takes ``grpc.ServerCredentials`` (mTLS, from the
state directory: controller/statedir.py) or None (plaintext, ``--insecure``).  Every
RPC goes through :class:`controller.authz.AuthzInterceptor` first: the
:class:`~controller.authz.Authorizer` (certificate roles with mTLS,
:class:`~controller.authz.InsecureAuthorizer` in plaintext) decides who may call what,
see secrets, and stream as which node; the handlers ask it through
:func:`~controller.authz.current_principal`.

Bounds on what comes in (docs/limits.md, "Controller"; the numbers are in
:mod:`controller.limits`): gRPC message sizes, the policy size, agent message sizes,
live query timeouts, and how long one write to an agent stream may stay pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from controller.authz import (
    Authorizer,
    AuthzInterceptor,
    Denied,
    InsecureAuthorizer,
    LoopbackAuthorizer,
    Principal,
    current_principal,
)
from controller.errors import (
    BadRequest,
    ConflictError,
    ControllerError,
    InputTooLarge,
    InvalidArgument,
    NotAuthenticated,
    NotFound,
    NotPossibleHere,
    PermissionDenied,
    RevisionNotFound,
    SecretsUnavailable,
    StoreCompacted,
    StoreOutcomeUnknown,
    StoreRequestTooLarge,
    StoreUnavailable,
    ValidatorUnavailable,
)
from controller.hub import NEEDS_WHOLE, Hub, StreamState
from controller.joining import DEFAULT_NODE_LIFETIME, NodeIdentities, crl_number
from controller.keys import Keys
from controller.limits import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_MAX_POLICY_BYTES,
    MAX_AGENT_MESSAGE_BYTES,
    MAX_NODE_NAME_BYTES,
    MAX_QUERY_TIMEOUT,
    MIN_QUERY_TIMEOUT,
    client_channel_options,
    human_bytes,
    server_message_options,
)
from controller.metrics import ControllerMetrics
from controller.registry import NodeView, Registry
from controller.retry import request_deadline
from controller.revisions import PolicyRepo, PushOutcome, Revision, check_request
from controller.rollout import RolloutDriver
from controller.secretstore import (
    Envelope,
    EnvelopeError,
    SecretStore,
    node_secrets,
    referenced_secrets,
)
from controller.spdcheck import redact, validate
from controller.store import Store, WatchEvent
from ipsecd import spd
from ipsecd.roles import Role
from ipsecd.spd.literals import find_literal_keys
from ipsecd.spd.nodes import NodeInfo
from ipsecd.spd.secrets import SecretRef
from ipsecd.v1 import (
    agent_pb2,
    join_pb2,
    join_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    rollout_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
    types_pb2,
)

__all__ = [
    "STATUS_OF",
    "Authorizer",
    "Controller",
    "ControllerConfig",
    "InsecureAuthorizer",
    "LoopbackAuthorizer",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")

# The one mapping of controller errors to gRPC status codes.  The kind travels in the
# trailing metadata (``ipsecd-error``) so clients can tell "etcd is down" from "the
# controller is down" (both UNAVAILABLE).
STATUS_OF: dict[type[ControllerError], tuple[grpc.StatusCode, str]] = {
    ConflictError: (grpc.StatusCode.ABORTED, "conflict"),
    RevisionNotFound: (grpc.StatusCode.NOT_FOUND, "not-found"),
    StoreUnavailable: (grpc.StatusCode.UNAVAILABLE, "store-unavailable"),
    StoreOutcomeUnknown: (grpc.StatusCode.UNAVAILABLE, "store-unavailable"),
    StoreCompacted: (grpc.StatusCode.UNAVAILABLE, "store-unavailable"),
    StoreRequestTooLarge: (grpc.StatusCode.RESOURCE_EXHAUSTED, "error"),
    # the same code gRPC uses for a message over its size limit; exit 1 in ipsecctl
    InputTooLarge: (grpc.StatusCode.RESOURCE_EXHAUSTED, "invalid"),
    PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, "permission-denied"),
    ValidatorUnavailable: (grpc.StatusCode.FAILED_PRECONDITION, "error"),
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
    SecretsUnavailable: (grpc.StatusCode.FAILED_PRECONDITION, "error"),
    EnvelopeError: (grpc.StatusCode.FAILED_PRECONDITION, "error"),
    NotAuthenticated: (grpc.StatusCode.UNAUTHENTICATED, "permission-denied"),
    BadRequest: (grpc.StatusCode.INVALID_ARGUMENT, "usage"),
    NotFound: (grpc.StatusCode.NOT_FOUND, "not-found"),
    NotPossibleHere: (grpc.StatusCode.FAILED_PRECONDITION, "error"),
}

#: (revision, directory version, node) -> that node's secrets; cleared when full
_NODE_SECRETS_CACHE = 8192


def _node_info(entry: types_pb2.NodeEntry) -> NodeInfo:
    return NodeInfo(
        entry.name, tuple(ipaddress.ip_address(a) for a in entry.addresses), dict(entry.labels)
    )


SERVER_OPTIONS: list[tuple[str, Any]] = [
    # gRPC keepalive: HTTP/2 pings find dead TCP peers; the app-level Ping/Pong in the
    # agent stream finds streams that are open but no longer served.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_concurrent_streams", 1_000_000),
    *server_message_options(),
]


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    replica_id: str
    advertise: str  # host:port other replicas and agents use to reach this one
    key_root: str = "/ipsecd/"
    lease_ttl: int = 10
    ping_interval: float = 10.0
    ping_timeout: float = 35.0
    hello_timeout: float = 10.0
    flush_interval: float = 1.0
    touch_interval: float = 30.0
    directory_interval: float = 1.0
    query_timeout: float = 2.0
    compact_interval: float = 300.0
    compact_keep: int = 10_000
    max_policy_bytes: int = DEFAULT_MAX_POLICY_BYTES
    # one write to an agent stream pending longer than this: the stream is dropped
    # (0: never); checked once per ping_interval
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    # how often the CRL is looked at for streams of newly revoked certificates (mTLS)
    revocation_interval: float = 2.0
    # validity of node certificates issued by Join and Renew (seconds)
    node_cert_lifetime: float = DEFAULT_NODE_LIFETIME
    # rollouts (controller/rollout.py): how often the leader looks at a rollout, and
    # how long a node's error counters must stay put once its SAs are up
    rollout_tick: float = 0.5
    rollout_soak: float = 3.0


class _Oversize:
    """What the agent stream's deserializer returns for a message over the bound
    (parsing it would be wasted work; the handler ends the stream with a message)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _parse_agent_message(raw: bytes) -> agent_pb2.AgentMessage | _Oversize:
    if len(raw) > MAX_AGENT_MESSAGE_BYTES:
        return _Oversize(len(raw))
    return agent_pb2.AgentMessage.FromString(raw)


def _oversize_message(size: int) -> str:
    return (
        f"agent stream: a message of {human_bytes(size)} is over the limit of "
        f"{human_bytes(MAX_AGENT_MESSAGE_BYTES)} for agent messages; shorten the node's "
        "labels, addresses or status detail"
    )


def _meta(rev: Revision) -> types_pb2.RevisionMeta:
    return types_pb2.RevisionMeta(
        revision=rev.revision,
        author=rev.author,
        created_unix_ms=rev.created_unix_ms,
        sha256=rev.sha256,
        comment=rev.comment,
        base_revision=rev.base_revision,
        rollback_of=rev.rollback_of,
        filename=rev.filename,
        policy_digest=rev.policy_digest,
    )


def _diag_msgs(outcome_diags: Any) -> list[types_pb2.Diagnostic]:
    return [
        types_pb2.Diagnostic(
            file=d.file,
            line=d.line,
            column=d.column,
            message=d.message,
            hint=d.hint,
            rendered=d.rendered,
        )
        for d in outcome_diags
    ]


async def _guard(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    """Run ``work`` within the caller's deadline (store retries stop short of it, so the
    caller hears the store's error rather than its own timeout); map controller errors
    to status codes (never a stack trace)."""
    try:
        with request_deadline(context.time_remaining()):
            return await work
    except ControllerError as exc:
        code, kind = STATUS_OF.get(type(exc), (grpc.StatusCode.INTERNAL, "internal"))
        context.set_trailing_metadata((("ipsecd-error", kind),))
        await context.abort(code, str(exc))
        raise AssertionError("unreachable") from exc


def _principal() -> Principal:
    """The caller (set by the authorization interceptor; anonymous if it did not run)."""
    return current_principal() or Principal(False)


def _push_response(outcome: PushOutcome) -> policy_pb2.PushResponse:
    resp = policy_pb2.PushResponse(accepted=outcome.accepted, unchanged=outcome.unchanged)
    if outcome.revision is not None:
        resp.revision.CopyFrom(_meta(outcome.revision))
    resp.diagnostics.extend(_diag_msgs(outcome.diagnostics))
    return resp


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    async def Push(self, request: Any, context: Any) -> policy_pb2.PushResponse:
        author = _principal().author(request.author)
        notes: list[str] = []
        await _guard(context, self.c.refuse_during_rollout("push"))

        async def prepare(text: str) -> str:
            return await self.c.prepare_text(text, request.filename, author, notes)

        outcome = await _guard(
            context,
            self.c.repo.push(
                request.text,
                filename=request.filename,
                comment=request.comment,
                author=author,
                base=request.base_revision if request.HasField("base_revision") else None,
                file_mode=request.file_mode if request.HasField("file_mode") else None,
                prepare=prepare,
            ),
        )
        if outcome.revision is not None and not outcome.unchanged:
            _log.info(
                "revision %d pushed by %s (%s)",
                outcome.revision.revision,
                outcome.revision.author,
                outcome.revision.sha256[:12],
                extra={"revision": outcome.revision.revision, "author": outcome.revision.author},
            )
        resp = _push_response(outcome)
        if outcome.accepted:
            resp.notes.extend(notes)
        return resp

    async def Rollback(self, request: Any, context: Any) -> policy_pb2.PushResponse:
        author = _principal().author(request.author)
        notes: list[str] = []
        await _guard(context, self.c.refuse_during_rollout("rollback"))

        async def prepare(text: str) -> str:  # an old revision may hold literal keys
            return await self.c.prepare_text(text, "", author, notes)

        outcome = await _guard(
            context,
            self.c.repo.rollback(
                request.revision,
                comment=request.comment,
                author=author,
                base=request.base_revision if request.HasField("base_revision") else None,
                prepare=prepare,
            ),
        )
        resp = _push_response(outcome)
        if outcome.accepted:
            resp.notes.extend(notes)
        return resp

    # -- the secret store (docs/security.md "Secrets"): values go in, never out --------
    async def SetSecret(self, request: Any, context: Any) -> policy_pb2.SetSecretResponse:
        async def work() -> policy_pb2.SetSecretResponse:
            author = _principal().author("")
            changed = await self.c.secrets.set(request.name, request.value, author=author)
            used = await self.c.secret_users(request.name)
            if changed:
                _log.info("secret %s set by %s", request.name, author)
            return policy_pb2.SetSecretResponse(changed=changed, used_by=used)

        return await _guard(context, work())

    async def ListSecrets(self, request: Any, context: Any) -> policy_pb2.ListSecretsResponse:
        async def work() -> policy_pb2.ListSecretsResponse:
            in_use = await self.c.current_references()
            resp = policy_pb2.ListSecretsResponse()
            for m in await self.c.secrets.list():
                resp.secrets.add(
                    name=m.name,
                    size=m.size,
                    author=m.author,
                    updated_unix_ms=m.updated_unix_ms,
                    literal=m.literal,
                    in_use=m.name in in_use,
                )
            return resp

        return await _guard(context, work())

    async def DeleteSecret(self, request: Any, context: Any) -> policy_pb2.DeleteSecretResponse:
        async def work() -> policy_pb2.DeleteSecretResponse:
            used = await self.c.secret_users(request.name)
            if used and not request.force:
                raise ConflictError(
                    f"secret '{request.name}' is used by the current revision "
                    f"({', '.join(used[:5])}{' ...' if len(used) > 5 else ''}): push a policy "
                    "without it first, or delete with --force (those connections and SAs "
                    "then stop on every node that has not kept the value)"
                )
            await self.c.secrets.delete(request.name)
            _log.info("secret %s deleted by %s", request.name, _principal().author(""))
            return policy_pb2.DeleteSecretResponse()

        return await _guard(context, work())

    async def _check_secrets(self, show: bool, context: Any) -> None:
        if not show:
            return
        refusal = self.c.authorizer.secrets_refusal(_principal())
        if refusal is not None:
            raise PermissionDenied(refusal)

    async def Get(self, request: Any, context: Any) -> policy_pb2.GetResponse:
        async def work() -> policy_pb2.GetResponse:
            await self._check_secrets(request.show_secrets, context)
            rev = await self.c.repo.resolve(request.revision)
            current = await self.c.repo.current_number()
            backup = (await self.c.repo.read(current)).base_revision if current else 0
            text = (
                await self.c.secrets.reveal_literals(rev.text)
                if request.show_secrets
                else redact(rev.text)
            )
            return policy_pb2.GetResponse(
                meta=_meta(rev),
                text=text,
                redacted=not request.show_secrets,
                current_revision=current,
                backup_revision=backup,
            )

        return await _guard(context, work())

    async def Validate(self, request: Any, context: Any) -> policy_pb2.ValidateResponse:
        async def work() -> policy_pb2.ValidateResponse:
            mode = request.file_mode if request.HasField("file_mode") else None
            check_request(
                request.text,
                max_policy_bytes=self.c.config.max_policy_bytes,
                filename=request.filename,
            )
            result = validate(request.text, request.filename, mode)
            return policy_pb2.ValidateResponse(
                ok=result.ok, diagnostics=_diag_msgs(result.diagnostics)
            )

        return await _guard(context, work())

    async def History(self, request: Any, context: Any) -> policy_pb2.HistoryResponse:
        async def work() -> policy_pb2.HistoryResponse:
            revs = await self.c.repo.history(request.limit)
            current = await self.c.repo.current_number()
            return policy_pb2.HistoryResponse(
                revisions=[_meta(r) for r in revs], current_revision=current
            )

        return await _guard(context, work())

    async def Diff(self, request: Any, context: Any) -> policy_pb2.DiffResponse:
        async def work() -> policy_pb2.DiffResponse:
            await self._check_secrets(request.show_secrets, context)
            text = await self.c.repo.diff(
                request.a,
                request.b,
                show_secrets=request.show_secrets,
                reveal=self.c.secrets.reveal_literals,
            )
            return policy_pb2.DiffResponse(unified_diff=text, redacted=not request.show_secrets)

        return await _guard(context, work())


class StatusServicer(status_pb2_grpc.StatusServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    async def ListNodes(self, request: Any, context: Any) -> status_pb2.ListNodesResponse:
        c = self.c
        nodes = [c.view.node_info(n, c.registry.last_seen) for n in sorted(c.view.records)]
        current = c.hub.latest.revision if c.hub.latest else 0
        return status_pb2.ListNodesResponse(
            nodes=[n for n in nodes if n is not None], current_revision=current
        )

    async def GetNodeStatus(self, request: Any, context: Any) -> status_pb2.NodeStatusResponse:
        return await self.c.node_status(request, context)


def _node_credentials(issued: Any) -> join_pb2.NodeCredentials:
    cert = issued.cert
    return join_pb2.NodeCredentials(
        certificate=issued.chain_pem,
        ca=issued.ca_pem,
        crl=issued.crl_pem,
        serial=f"{cert.serial_number:x}",
        not_after_unix=int(cert.not_valid_after_utc.timestamp()),
        revoked_serials=[f"{r.serial:x}" for r in issued.revoked],
    )


class JoinServicer(join_pb2_grpc.JoinServiceServicer):
    """Join (no client certificate: the token authenticates) and Renew (a node, for
    its own name).  controller/joining.py does the work."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    async def Join(self, request: Any, context: Any) -> join_pb2.NodeCredentials:
        self.c.join_calls += 1
        issued = await _guard(
            context,
            self.c.identities.join(
                request.token_id, request.token_secret, request.node, request.csr
            ),
        )
        return _node_credentials(issued)

    async def Renew(self, request: Any, context: Any) -> join_pb2.NodeCredentials:
        principal = _principal()

        async def work() -> join_pb2.NodeCredentials:
            if principal.role == Role.CONTROLLER and request.on_behalf_of:
                node = request.on_behalf_of  # a replica forwarding its node's renewal
            elif principal.role == Role.NODE and not request.on_behalf_of:
                node = principal.name
            else:
                raise PermissionDenied(
                    f"{principal.identity} may not renew: Renew is for a node's own certificate"
                )
            if not self.c.identities.can_sign and principal.role == Role.NODE:
                forwarded = await self.c.forward_renew(node, request.csr)
                if forwarded is not None:
                    return forwarded
            return _node_credentials(await self.c.identities.renew(node, request.csr))

        return await _guard(context, work())


def _token_info(rec: Any, used_by: list[str]) -> join_pb2.TokenInfo:
    return join_pb2.TokenInfo(
        id=rec.id,
        created_unix=rec.created_unix,
        expires_unix=rec.expires_unix,
        uses=rec.uses,
        uses_left=rec.uses_left,
        node=rec.node,
        created_by=rec.created_by,
        description=rec.description,
        used_by=used_by,
    )


class NodeAdminServicer(join_pb2_grpc.NodeAdminServiceServicer):
    """Join tokens and node removal (admin)."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    async def CreateToken(self, request: Any, context: Any) -> join_pb2.CreateTokenResponse:
        async def work() -> join_pb2.CreateTokenResponse:
            token, rec = await self.c.identities.create_token(
                ttl=request.ttl_seconds,
                uses=request.uses,
                node=request.node,
                description=request.description,
                created_by=_principal().identity,
            )
            return join_pb2.CreateTokenResponse(token=token.text(), info=_token_info(rec, []))

        return await _guard(context, work())

    async def ListTokens(self, request: Any, context: Any) -> join_pb2.ListTokensResponse:
        async def work() -> join_pb2.ListTokensResponse:
            found = await self.c.identities.list_tokens()
            return join_pb2.ListTokensResponse(tokens=[_token_info(r, u) for r, u in found])

        return await _guard(context, work())

    async def DeleteToken(self, request: Any, context: Any) -> join_pb2.DeleteTokenResponse:
        await _guard(context, self.c.identities.delete_token(request.id))
        return join_pb2.DeleteTokenResponse()

    async def RemoveNode(self, request: Any, context: Any) -> join_pb2.RemoveNodeResponse:
        return await _guard(context, self.c.remove_node(request.node))


class Controller:
    """One controller replica.  ``await start(listen)``, later ``await stop()``."""

    def __init__(
        self,
        store: Store,
        config: ControllerConfig,
        *,
        authorizer: Authorizer | None = None,
        peer_credentials: grpc.ChannelCredentials | None = None,
        envelope: Envelope | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.state_dir = state_dir  # the cluster CA (Join, Renew, node removal, CRL)
        self.peer_credentials = peer_credentials  # replica -> replica (status forwarding)
        self.config = config
        self.keys = Keys(config.key_root)
        self.repo = PolicyRepo(store, self.keys, max_policy_bytes=config.max_policy_bytes)
        self.hub = Hub(config.replica_id)
        self.secrets = SecretStore(store, self.keys, envelope)
        self._parsed: tuple[int, spd.Policy] | None = None  # the last revision parsed
        self._node_secrets: dict[tuple[int, int, str], dict[str, bytes]] = {}
        self._values: dict[int, dict[str, bytes]] = {}  # revision -> its secrets' values
        self._secrets_generation = 0  # etcd revision of the last secret change seen
        self.view = NodeView(self.keys)
        self.registry = Registry(
            store,
            self.keys,
            config.replica_id,
            config.advertise,
            touch_interval=config.touch_interval,
            view=self.view,
        )
        self.authorizer: Authorizer = authorizer or InsecureAuthorizer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.lease = 0
        self.is_leader = False
        self.watch_synced = asyncio.Event()
        self._synced: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._queries: dict[int, asyncio.Future[types_pb2.NodeStatus]] = {}
        self._query_ids = itertools.count(1)
        self._campaign = asyncio.Event()
        self._sha_cache: dict[int, str] = {}
        self._sha_reads: dict[int, asyncio.Future[str]] = {}  # reads in flight (single-flight)
        self._stopping = False
        self._ping_bytes = agent_pb2.ControllerMessage(ping=agent_pb2.Ping()).SerializeToString()
        self.dropped_stalled = 0  # streams dropped because a write stayed pending
        self.join_port = 0
        self.join_calls = 0  # Join RPCs that reached the handler (tests)
        self.identities = NodeIdentities(
            store,
            self.keys,
            state_dir,
            node_lifetime=config.node_cert_lifetime,
            address_owner=self._address_owner,
        )
        self.metrics = ControllerMetrics(self)  # served by metrics.start (--metrics-listen)
        self.rollouts = RolloutDriver(
            store,
            self.keys,
            is_leader=lambda: self.is_leader,
            tick=config.rollout_tick,
            soak=config.rollout_soak,
        )
        self.rollouts.controller = self
        self.rollouts.on_change.append(self._rollout_changed)

    # -- lifecycle --------------------------------------------------------------------
    async def start(
        self,
        listen: str,
        *,
        credentials: grpc.ServerCredentials | None = None,
        join_listen: str | None = None,
        join_credentials: grpc.ServerCredentials | None = None,
    ) -> int:
        """Serve on ``listen``: mTLS with ``credentials`` (then the authorizer must
        authenticate certificates), plaintext without.  ``join_listen`` with
        ``join_credentials`` (TLS that asks for no client certificate, whose chain
        carries the CA): the join port, where only Join passes the authorizer
        (controller/authz.py ``WITHOUT_CERTIFICATE``)."""
        if (credentials is not None) != self.authorizer.secure:
            raise ValueError(
                "server credentials and authorizer disagree: mTLS needs a certificate "
                "authorizer (controller.authz.CertificateAuthorizer), plaintext the "
                "insecure one"
            )
        server = grpc.aio.server(
            options=SERVER_OPTIONS, interceptors=[AuthzInterceptor(self.authorizer)]
        )
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyServicer(self), server)
        status_pb2_grpc.add_StatusServiceServicer_to_server(StatusServicer(self), server)
        join_pb2_grpc.add_JoinServiceServicer_to_server(JoinServicer(self), server)
        join_pb2_grpc.add_NodeAdminServiceServicer_to_server(NodeAdminServicer(self), server)
        from controller.rollout_service import RolloutServicer  # it imports this module

        rollout_pb2_grpc.add_RolloutServiceServicer_to_server(RolloutServicer(self), server)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "ipsecd.v1.AgentService",
                    {
                        "Connect": grpc.stream_stream_rpc_method_handler(
                            self._connect,
                            request_deserializer=_parse_agent_message,
                            response_serializer=None,  # bytes pass through: serialized once
                        ),
                        "FetchSecrets": grpc.unary_unary_rpc_method_handler(
                            self._fetch_secrets,
                            request_deserializer=agent_pb2.SecretsRequest.FromString,
                            response_serializer=agent_pb2.SecretsReply.SerializeToString,
                        ),
                    },
                ),
            )
        )
        if credentials is None:
            self.port = server.add_insecure_port(listen)
        else:
            self.port = server.add_secure_port(listen, credentials)
        if not self.port:
            raise OSError(f"cannot listen on {listen} (address in use or not local?)")
        if join_listen is not None and join_credentials is not None:
            self.join_port = server.add_secure_port(join_listen, join_credentials)
            if not self.join_port:
                raise OSError(
                    f"cannot listen on {join_listen} for joining nodes (address in use or "
                    "not local?); pick another --join-listen, or 'none'"
                )
        await server.start()
        self.server = server
        for coro in (
            self._policy_watch(),
            self._registry_watch(),
            self._lease_loop(),
            self._ping_loop(),
            self._flush_loop(),
            self._directory_loop(),
            self._revocation_loop(),
            self.rollouts.run(),
        ):
            self._tasks.append(asyncio.create_task(coro))
        return self.port

    async def stop(self, grace: float | None = 1.0, *, revoke: bool = True) -> None:
        """Stop serving.  ``revoke=False`` imitates a crash (lease left to expire)."""
        self._stopping = True
        for stream in list(self.hub.streams.values()):
            stream.close()
        if self.server is not None:
            await self.server.stop(grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.metrics.close()
        if revoke and self.lease:
            with contextlib.suppress(StoreUnavailable):
                await self.registry.flush(self.lease)
                await self.store.revoke_lease(self.lease)

    # -- the watches ------------------------------------------------------------------
    # Two watches per process, whatever the number of agents: the policy watch (tiny:
    # only the current pointer and revision records), which drives the fan-out, and the
    # registry watch (node records, connections, replicas, leader).  Kept apart so the
    # fan-out of a new revision never queues behind thousands of status writes.
    async def _resync_policy(self) -> int:
        kvs, rev = await self.store.get_prefix(self.keys.current)
        # the rollout first: nodes it holds back must not be offered the new revision
        rollout = await self.store.get(self.keys.rollout)
        self.rollouts.take(rollout.value if rollout is not None else None)
        if kvs and self.hub.publish(await self.repo.read(int(kvs[0].value))):
            self.metrics.published(int(kvs[0].value))
        await self._load_held()
        return rev

    # -- rollouts (controller/rollout.py) ---------------------------------------------
    def _rollout_changed(self) -> None:
        r = self.rollouts.rollout
        pins = r.pins() if r is not None else frozenset()
        self.hub.set_pins((r.from_revision, r.to_revision, pins) if r and pins else None)

    async def _load_held(self) -> None:
        """A replica that (re)started during a rollout: load the revision the held-back
        nodes stay on (serialized once, like every revision)."""
        number = self.hub.needs_held()
        if number:
            self.hub.hold(await self.repo.read(number))

    async def refuse_during_rollout(self, what: str) -> None:
        r = self.rollouts.active()
        if r is not None:
            raise ConflictError(
                f"rollout {r.id} (revision {r.from_revision} -> {r.to_revision}) is {r.state}: "
                f"a plain {what} would bypass its health gate; wait for it (`ipsecctl rollout "
                "status --wait`), stop it (`ipsecctl rollout abort`), or push with --rollout "
                "once it has ended"
            )

    async def _resync_registry(self) -> int:
        keys = self.keys
        nodes, rev = await self.store.get_prefix(keys.nodes)
        conns, _ = await self.store.get_prefix(keys.conns)
        replicas, _ = await self.store.get_prefix(keys.replicas)
        self.view.load(
            [(kv.key, kv.value) for kv in nodes], [(kv.key, kv.value) for kv in conns], rev
        )
        self.view.replicas = {kv.key[len(keys.replicas) :]: json.loads(kv.value) for kv in replicas}
        # the directory at once (not at the next tick of the directory loop), so that
        # agents reconnecting to a restarted replica resume theirs instead of waiting
        # for it, or getting the whole of it
        if self.view.dir_dirty:
            self.hub.publish_directory_changes(self.view.take_directory_changes(), rev)
        crl = await self.store.get(keys.crl)
        if crl is not None:
            self._take_crl(crl.value)
        # Not one snapshot: watching from the first read's revision re-applies later
        # changes, which is idempotent.
        return rev

    async def _policy_watch(self) -> None:
        await self._watch("policy", self.keys.root + "policy/", self._resync_policy,
                          self._on_policy_events)  # fmt: skip

    async def _registry_watch(self) -> None:
        await self._watch("registry", self.keys.root, self._resync_registry,
                          self._on_registry_events)  # fmt: skip

    async def _watch(
        self,
        name: str,
        prefix: str,
        resync: Callable[[], Awaitable[int]],
        on_events: Callable[[list[WatchEvent]], Awaitable[None]],
    ) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                start = await resync()
                self._synced.add(name)
                if self._synced >= {"policy", "registry"}:
                    self.watch_synced.set()
                backoff = 0.1
                async for events in self.store.watch_prefix(prefix, start + 1):
                    await on_events(events)
            except StoreCompacted as exc:
                _log.warning("%s watch: %s; reloading", name, exc)
            except StoreUnavailable as exc:
                _log.warning("%s watch: %s; retrying in %.1fs", name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _on_policy_events(self, events: list[WatchEvent]) -> None:
        keys = self.keys
        seen: dict[str, bytes] = {}
        for ev in events:
            if ev.key.startswith(keys.revisions) and ev.value is not None:
                seen[ev.key] = ev.value
            elif ev.key == keys.rollout:
                self.rollouts.take(ev.value)
                await self._load_held()
            elif ev.key == keys.current and ev.value is not None:
                number = int(ev.value)
                raw = seen.get(keys.revision(number))
                rev = Revision.from_bytes(raw) if raw else await self.repo.read(number)
                if self.hub.publish(rev):
                    self.metrics.published(number)
                    await self._load_held()
                    streams = len(self.hub.streams)
                    _log.info(
                        "fan-out: revision %d to %d streams",
                        number,
                        streams,
                        extra={"revision": number, "streams": streams},
                    )

    async def _on_registry_events(self, events: list[WatchEvent]) -> None:
        policy = self.keys.root + "policy/"
        secrets = self.keys.secrets
        changed = 0
        for ev in events:
            if ev.key.startswith(policy):
                continue
            if ev.key.startswith(secrets):
                changed = max(changed, ev.mod_revision)
                continue
            if ev.key == self.keys.leader:
                if ev.value is None:
                    self._campaign.set()
            elif ev.key == self.keys.crl:
                if ev.value is not None:
                    self._take_crl(ev.value)
            else:
                self.view.apply(ev)
        if changed:
            self._secrets_generation = changed
            self._node_secrets.clear()
            self._values.clear()
            notice = agent_pb2.ControllerMessage(
                secrets_changed=agent_pb2.SecretsChanged(generation=changed)
            ).SerializeToString()
            for stream in self.hub.streams.values():
                stream.offer_control(notice)

    # -- lease, election, leader work --------------------------------------------------
    async def _lease_loop(self) -> None:
        cfg = self.config
        last_compact = time.monotonic()
        while not self._stopping:
            try:
                if not self.lease:
                    self.lease = await self.store.grant_lease(cfg.lease_ttl)
                    record = {"address": cfg.advertise, "signer": self.identities.can_sign}
                    await self.store.put(
                        self.keys.replica(cfg.replica_id),
                        json.dumps(record).encode(),
                        lease=self.lease,
                    )
                elif not await self.store.refresh_lease(self.lease):
                    _log.warning("replica lease expired; taking a new one")
                    self.lease = 0
                    self.is_leader = False
                    continue
                leader = await self.store.get(self.keys.leader)
                if leader is None:
                    won = await self.store.create_if_absent(
                        self.keys.leader, cfg.replica_id.encode(), lease=self.lease
                    )
                    if won:
                        _log.info("replica %s is now the leader", cfg.replica_id)
                    self.is_leader = won
                else:
                    self.is_leader = leader.value.decode() == cfg.replica_id
                if self.is_leader and time.monotonic() - last_compact > cfg.compact_interval:
                    last_compact = time.monotonic()
                    await self._compact()
            except StoreUnavailable as exc:
                _log.warning("lease: %s", exc)
            self._campaign.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._campaign.wait(), cfg.lease_ttl / 3)

    async def _compact(self) -> None:
        """Leader work: drop etcd MVCC history older than ``compact_keep`` revisions.

        Policy revisions are keys of their own, so compaction never loses a revision."""
        _, rev = await self.store.get_prefix(self.keys.leader)
        if rev > self.config.compact_keep:
            await self.store.compact(rev - self.config.compact_keep)

    # -- periodic work ----------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.flush_interval)
            try:
                await self.registry.flush(self.lease)
            except StoreUnavailable as exc:
                _log.warning("registry flush: %s", exc)

    async def _directory_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.directory_interval)
            if self.view.dir_dirty:
                # only the entries that changed, as one delta for every stream
                self.hub.publish_directory_changes(
                    self.view.take_directory_changes(), self.view.revision
                )

    async def _ping_loop(self) -> None:
        """Ping every stream once per ``ping_interval``, spread over ten ticks so 5,000
        streams do not all ping (and pong) in the same instant."""
        cfg = self.config
        ticks = 10
        tick = 0
        while not self._stopping:
            await asyncio.sleep(cfg.ping_interval / ticks)
            now = time.monotonic()
            for stream in list(self.hub.streams.values())[tick::ticks]:
                if stream.closed:
                    # dropped (or ending) already; it leaves the hub when its handler
                    # runs, which under load can take longer than one check
                    continue
                stalled = stream.stalled_for(now)
                if cfg.drain_timeout and stalled > cfg.drain_timeout:
                    # A stream that does not drain holds one message in gRPC's buffers
                    # and its slots; drop it: the agent reconnects and resumes with
                    # what it lacks (or gets a snapshot).
                    _log.warning(
                        "node %s: one write pending for %.0fs (%s queued); dropping its "
                        "stream (--stream-drain-timeout)",
                        stream.node,
                        stalled,
                        human_bytes(stream.pending_bytes()),
                    )
                    self.dropped_stalled += 1
                    stream.close(
                        kill=True,
                        reason=f"the controller dropped this stream: one message was not "
                        f"taken for {stalled:.0f}s (--stream-drain-timeout "
                        f"{cfg.drain_timeout:g}); reconnect to resume",
                    )
                elif now - stream.last_rx > cfg.ping_timeout:
                    _log.warning(
                        "node %s: nothing received for %.0fs; closing its stream",
                        stream.node,
                        now - stream.last_rx,
                    )
                    stream.close(kill=True)
                else:
                    stream.offer_control(self._ping_bytes)
            tick = (tick + 1) % ticks

    async def _revocation_loop(self) -> None:
        """mTLS: drop the streams of certificates revoked since they connected (their
        agents reconnect and are refused)."""
        if not self.authorizer.secure:
            return
        seen: frozenset[int] = frozenset()
        while not self._stopping:
            await asyncio.sleep(self.config.revocation_interval)
            await self._publish_local_crl()
            revoked = self.authorizer.revoked()
            if revoked == seen:
                continue
            seen = revoked
            for stream in list(self.hub.streams.values()):
                if stream.serial is not None and stream.serial in revoked and not stream.closed:
                    _log.warning(
                        "node %s: its certificate (serial %#x) was revoked; closing its stream",
                        stream.node,
                        stream.serial,
                    )
                    stream.close(kill=True, reason="the node's certificate was revoked")

    # -- secrets ----------------------------------------------------------------------
    async def prepare_text(self, text: str, filename: str, author: str, notes: list[str]) -> str:
        """A validated policy about to be stored: its literal keys moved into the secret
        store (docs/security.md "Secrets"), and a note for each reference the store
        does not hold."""
        stored = await self.secrets.intern_literals(text, filename or "<push>", author=author)
        if stored is not text:
            moved = len(find_literal_keys(text, filename or "<push>"))
            notes.append(
                f"{moved} literal key(s) moved into the secret store; the stored revision "
                "names them as secret:lit-..."
            )
        if self.secrets.enabled:
            policy = spd.load_text(stored, filename or "<push>")
            names = referenced_secrets(policy)
            have = await self.secrets.get_many(names)
            for name in sorted(names - have.keys()):
                notes.append(
                    f"secret '{name}' is not in the secret store: `ipsecctl secret set "
                    f"{name}`, or every node that uses it needs it in its --secrets file"
                )
        return stored

    async def _policy(self, revision: int) -> tuple[int, spd.Policy]:
        rev = await self.repo.resolve(revision)
        if self._parsed is None or self._parsed[0] != rev.revision:
            self._parsed = (rev.revision, spd.load_text(rev.text, f"revision {rev.revision}"))
        return self._parsed

    async def current_references(self) -> set[str]:
        try:
            return referenced_secrets((await self._policy(0))[1])
        except RevisionNotFound:
            return set()

    async def secret_users(self, name: str) -> list[str]:
        """Connections and SAs of the current revision that name ``name``."""
        try:
            policy = (await self._policy(0))[1]
        except RevisionNotFound:
            return []
        ref = SecretRef(name)
        users = [f"connection {c.name}" for c in policy.connections if c.auth.psk == ref]
        users += [
            f"sa {sa.proto.value} 0x{sa.spi:x}"
            for sa in policy.sas
            if ref in (sa.enc_key, sa.auth_key)
        ]
        return users

    async def node_secret_values(self, node: str, revision: int) -> tuple[int, dict[str, bytes]]:
        """What ``node`` receives for ``revision`` (0: current): controller/secretstore.py
        ``node_secrets`` over the node's own compiled configuration."""
        number, policy = await self._policy(revision)
        key = (number, self.hub.directory_version, node)
        cached = self._node_secrets.get(key)
        if cached is not None:
            return number, cached
        values = self._values.get(number)
        if values is None:
            names = referenced_secrets(policy)
            values = await self.secrets.get_many(names) if names else {}
            self._values = {number: values}
        out: dict[str, bytes] = {}
        if values:
            directory = [_node_info(e) for e in self.hub.feed.dir.nodes()]
            me = next((n for n in directory if n.name == node), None)
            if me is None:
                rec = self.view.records.get(node)
                if rec is None:
                    raise NotFound(f"node '{node}' is not in the node directory")
                me = _node_info(
                    types_pb2.NodeEntry(
                        name=node, addresses=rec.get("addresses", []), labels=rec.get("labels", {})
                    )
                )
                directory.append(me)
            try:
                cfg = spd.compile_node(policy, me, directory)
            except spd.SpdError as exc:
                raise InvalidArgument(f"revision {number} for node {node}: {exc}") from None
            out = node_secrets(cfg, values)
        if len(self._node_secrets) >= _NODE_SECRETS_CACHE:
            self._node_secrets.clear()
        self._node_secrets[key] = out
        return number, out

    async def _fetch_secrets(self, request: Any, context: Any) -> agent_pb2.SecretsReply:
        principal = _principal()
        try:
            self.authorizer.check_node(principal, request.node)
        except Denied as exc:
            _log.warning("FetchSecrets from %s: %s", context.peer(), exc.message)
            context.set_trailing_metadata((("ipsecd-error", "permission-denied"),))
            await context.abort(exc.code, exc.message)
            raise AssertionError("unreachable") from None

        async def work() -> agent_pb2.SecretsReply:
            number, values = await self.node_secret_values(request.node, request.revision)
            return agent_pb2.SecretsReply(
                revision=number, secrets=values, generation=self._secrets_generation
            )

        return await _guard(context, work())

    # -- the CRL, node removal ---------------------------------------------------------
    @property
    def crl_path(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / "pki" / "crl.pem"

    async def _publish_local_crl(self) -> None:
        """A CRL file newer than the cluster's (``ipsecd-controller revoke`` or ``crl``
        on this host) goes to etcd, and from there to every replica and agent."""
        path = self.crl_path
        if path is None:
            return
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError:
            return
        if crl_number(data) > self.hub.crl_number and self._crl_signed(data):
            try:
                await self.identities.publish_crl(data)
            except StoreUnavailable as exc:
                _log.warning("publishing the CRL: %s", exc)

    def _crl_signed(self, data: bytes) -> bool:
        from cryptography import x509

        from controller.ca import crl_serials

        cas = getattr(self.authorizer, "ca_certs", ())
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            return False
        return any(crl_serials(crl, ca) is not None for ca in cas)

    def _take_crl(self, data: bytes) -> None:
        """The cluster's CRL changed in etcd: check it, keep it for this replica's
        authorization (its CRL file), and send it to every agent."""
        number = crl_number(data)
        if number <= self.hub.crl_number:
            return
        if not self._crl_signed(data):
            _log.error(
                "the CRL in etcd (%s) is not signed by the cluster CA: ignored", self.keys.crl
            )
            return
        path = self.crl_path
        if path is not None:
            try:
                have = crl_number(path.read_bytes()) if path.exists() else 0
                if have < number:
                    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                    tmp.write_bytes(data)
                    tmp.chmod(0o644)
                    tmp.replace(path)
            except OSError as exc:
                _log.error("%s: cannot write the cluster's newer CRL: %s", path, exc)
        if self.hub.publish_crl(number, data):
            _log.info("CRL number %d sent to %d agent stream(s)", number, len(self.hub.streams))

    def _address_owner(self, address: str) -> str | None:
        for name, rec in self.view.records.items():
            if address in rec.get("addresses", ()):
                return name
        return None

    async def remove_node(self, node: str) -> join_pb2.RemoveNodeResponse:
        """``ipsecctl node remove``: revoke, publish the CRL, close the node's stream,
        forget it in the registry (controller/joining.py)."""
        serials, number, registered = await self.identities.remove_node(node)
        stream = self.hub.streams.get(node)
        if stream is not None:
            stream.forget = True
            stream.close(kill=True, reason=f"node {node} was removed (ipsecctl node remove)")
        self.registry.forget(node)
        # a replica that served the node may write its record once more as the stream
        # ends: wait (bounded) until no replica holds it, then delete it again
        loop = asyncio.get_running_loop()
        deadline = (
            loop.time() + 3 * self.config.revocation_interval + 2 * self.config.flush_interval
        )
        while node in self.view.conns and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.store.delete_many([self.keys.node(node), self.keys.conn(node)])
        return join_pb2.RemoveNodeResponse(
            revoked_serials=[f"{s:x}" for s in serials],
            crl_number=number,
            was_registered=registered,
        )

    # -- agent streams ----------------------------------------------------------------
    async def _connect(self, request_iterator: Any, context: Any) -> None:
        try:
            # context.read(), not the request iterator: no async generator per stream
            first = await asyncio.wait_for(context.read(), self.config.hello_timeout)
        except TimeoutError:
            first = grpc.aio.EOF
        if first is grpc.aio.EOF:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "agent stream: expected Hello first"
            )
            return
        if isinstance(first, _Oversize):
            _log.warning("agent stream from %s: %s", context.peer(), _oversize_message(first.size))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _oversize_message(first.size))
            return
        if first.WhichOneof("kind") != "hello" or not first.hello.node:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "agent stream: the first message must be a Hello with the node name",
            )
            return
        hello = first.hello
        if len(hello.node.encode()) > MAX_NODE_NAME_BYTES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"agent stream: node name of {len(hello.node.encode())} bytes is over the "
                f"limit of {MAX_NODE_NAME_BYTES} (a DNS name); use a shorter --node name",
            )
            return
        principal = _principal()
        try:
            self.authorizer.check_node(principal, hello.node)
        except Denied as exc:  # before anything is registered: nothing changes
            _log.warning("agent stream from %s: %s", context.peer(), exc.message)
            context.set_trailing_metadata((("ipsecd-error", "permission-denied"),))
            await context.abort(exc.code, exc.message)
            return
        if not self.watch_synced.is_set():
            # a replica that has just started: admit once it knows the current revision
            # and the directory (bounded: with etcd down, streams are served without)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.watch_synced.wait(), self.config.hello_timeout)
        stream, initial = await self._admit(hello)
        if self.hub.crl_bytes is not None:
            initial.append(self.hub.crl_bytes)
        stream.serial = principal.serial
        stream.task = asyncio.current_task()
        try:
            # one writer task per stream, only while something is pending: the opening
            # message, then whatever the hub offers; this task reads
            stream.attach(context, initial)
            await self._read(stream, context)
        except asyncio.CancelledError:
            if not stream.killed:
                raise
            if stream.writer is not None:
                # Closed by us with a write in progress: forget the stream now; the
                # call can end only once the agent has read that message (grpc.aio
                # cannot reset one stream), then it ends with the reason.
                if self.hub.remove(stream):
                    self.registry.disconnected(stream.node, final=not stream.forget)
                await stream.finish_write()
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, stream.reason or "the controller closed the stream"
                )
            elif stream.reason:
                if self.hub.remove(stream):
                    self.registry.disconnected(stream.node, final=not stream.forget)
                await context.abort(grpc.StatusCode.UNAVAILABLE, stream.reason)
        finally:
            stream.detach()
            if self.hub.remove(stream):
                self.registry.disconnected(stream.node, final=not stream.forget)
            if stream.node not in self.hub.streams:
                self.metrics.disconnected(stream.node)

    async def _admit(self, hello: agent_pb2.Hello) -> tuple[StreamState, list[bytes]]:
        """Resume when the agent's revision is known (send only what it lacks), else a
        snapshot.  Never sends a revision older than the one the agent holds: a replica
        whose watch lags behind the agent resumes it and sends nothing until it catches
        up."""
        hub = self.hub
        want_dir = "directory" in hello.capabilities
        if hub.held_back(hello.node):
            await self._load_held()
        # the revision this node is targeted at: the newest, or the one a rollout
        # holds it on (controller/rollout.py)
        latest = hub.target(hello.node)
        have = hello.last_revision
        ahead = have > 0 and (latest is None or have > latest.revision)
        resume = ahead or (
            have > 0 and await self._known_sha(have) == hello.last_sha256 and latest is not None
        )
        if resume:
            stream = StreamState(hello.node, directory=want_dir, sent_rev=have)
            initial = [hub.resume_bytes()]
            if want_dir:
                initial += self._resume_directory(stream, hello)
            if latest is not None:
                stream.offer_policy(latest.revision, latest.update_bytes)  # only if newer
        else:
            stream = StreamState(
                hello.node, directory=want_dir, sent_rev=latest.revision if latest else 0
            )
            if want_dir:
                stream.sent_dir_version = hub.feed.version
                stream.offer_directory(hub.feed)
            initial = [hub.snapshot_bytes(want_dir, latest)]
        self.metrics.connected(hello.node, resumed=resume)
        _log.debug(
            "node %s connected (%s from revision %d)",
            hello.node,
            "resume" if resume else "snapshot",
            have,
            extra={"node": hello.node, "revision": have},
        )
        old = hub.add(stream)
        if old is not None:
            _log.info("node %s connected again: closing its older stream", hello.node)
            old.close(kill=True)
        self.registry.connected(hello, self.view.records.get(hello.node))
        return stream, initial

    def _resume_directory(self, stream: StreamState, hello: agent_pb2.Hello) -> list[bytes]:
        """A resumed agent's directory: nothing when it holds ours (or only a version
        renumbering, when it has our digest under another version: a directory saved
        before a restart, or from another replica), the deltas since its version when
        they are still kept, else the whole directory.  Returns the opening messages."""
        feed = self.hub.feed
        have, digest = hello.directory_version, hello.directory_digest
        opening: list[bytes] = []
        if not feed.published:
            stream.sent_dir_version = NEEDS_WHOLE
        elif digest and digest == feed.digest():
            if have != feed.version:
                opening.append(feed.rebase_bytes(have))
            stream.sent_dir_version = feed.version
        elif digest and feed.resumable(have, digest):
            stream.sent_dir_version = have
        else:
            stream.sent_dir_version = NEEDS_WHOLE
        stream.offer_directory(feed)
        return opening

    async def _known_sha(self, revision: int) -> str:
        """sha256 of an older revision ("" when unknown or etcd is down).  One etcd read
        per revision however many agents ask at once (a reconnect storm after a restart
        brings thousands of hellos with the same revision): the first asker reads, the
        others await its answer; known answers are cached."""
        latest = self.hub.latest
        if latest is not None and latest.revision == revision:
            return latest.sha256
        sha = self._sha_cache.get(revision)
        if sha is not None:
            return sha
        pending = self._sha_reads.get(revision)
        if pending is None:
            pending = asyncio.ensure_future(self._read_sha(revision))
            self._sha_reads[revision] = pending
            pending.add_done_callback(lambda _f: self._sha_reads.pop(revision, None))
        return await asyncio.shield(pending)

    async def _read_sha(self, revision: int) -> str:
        try:
            sha = (await self.repo.read(revision)).sha256
        except (StoreUnavailable, RevisionNotFound):
            return ""
        if len(self._sha_cache) >= 1024:
            self._sha_cache.clear()
        self._sha_cache[revision] = sha
        return sha

    async def _read(self, stream: StreamState, context: Any) -> None:
        registry = self.registry
        try:
            while (msg := await context.read()) is not grpc.aio.EOF:
                if isinstance(msg, _Oversize):
                    _log.warning("node %s: %s", stream.node, _oversize_message(msg.size))
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, _oversize_message(msg.size)
                    )
                stream.last_rx = time.monotonic()
                kind = msg.WhichOneof("kind")
                if kind == "ack":
                    registry.acked(stream.node, msg.ack)
                    self.metrics.acked(stream.node, msg.ack.revision, msg.ack.ok)
                elif kind == "status":
                    registry.reported(stream.node, msg.status)
                elif kind == "answer":
                    fut = self._queries.pop(msg.answer.query_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.answer.status)
                    registry.reported(stream.node, msg.answer.status)
                else:
                    registry.seen(stream.node)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass

    # -- live status ------------------------------------------------------------------
    async def node_status(self, request: Any, context: Any) -> status_pb2.NodeStatusResponse:
        name = request.node
        # bounded: a caller cannot park a query (and its future) here for long
        timeout = min(
            MAX_QUERY_TIMEOUT,
            max(MIN_QUERY_TIMEOUT, request.timeout_seconds or self.config.query_timeout),
        )
        stream = self.hub.streams.get(name)
        note = ""
        if stream is not None:
            qid = next(self._query_ids)
            fut: asyncio.Future[types_pb2.NodeStatus] = asyncio.get_running_loop().create_future()
            self._queries[qid] = fut
            stream.offer_control(
                agent_pb2.ControllerMessage(query=agent_pb2.Query(query_id=qid)).SerializeToString()
            )
            try:
                status = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                note = f"node {name} did not answer within {timeout:.1f}s"
            else:
                known = self.view.node_info(name, self.registry.last_seen)
                info = known or status_pb2.NodeInfo(name=name)
                info.status.CopyFrom(status)
                info.connected = True
                info.controller = self.config.replica_id
                info.last_seen_unix_ms = int(time.time() * 1000)
                return status_pb2.NodeStatusResponse(node=info, live=True)
            finally:
                self._queries.pop(qid, None)
        elif not request.local_only:
            conn = self.view.conns.get(name)
            if conn and conn.get("replica") != self.config.replica_id and conn.get("address"):
                forwarded = await self._forward(conn["address"], name, timeout)
                if forwarded is not None and forwarded.live:
                    return forwarded
                note = f"replica {conn['replica']} holding node {name} did not answer"
        last = self.view.node_info(name, self.registry.last_seen)
        if last is None:
            if request.local_only:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"node {name} is not here")
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"node {name!r} is unknown (never connected; see `ipsecctl nodes`)",
            )
        if not note:
            note = f"node {name} is not connected"
        return status_pb2.NodeStatusResponse(node=last, stale=True, note=note)

    async def forward_renew(self, node: str, csr: bytes) -> join_pb2.NodeCredentials | None:
        """This replica holds no CA key: ask a replica that does (its replica record says
        ``signer``) to renew ``node``'s certificate, with this replica's certificate
        (role controller).  None when no signer is known: the caller then refuses as
        before (docs/security.md "Renewal")."""
        signers = [
            rec["address"]
            for rid, rec in sorted(self.view.replicas.items())
            if rec.get("signer") and rid != self.config.replica_id and rec.get("address")
        ]
        if not signers or self.peer_credentials is None:
            return None
        request = join_pb2.RenewRequest(csr=csr, on_behalf_of=node)
        last: grpc.aio.AioRpcError | None = None
        for address in signers:
            channel = grpc.aio.secure_channel(
                address, self.peer_credentials, options=client_channel_options()
            )
            try:
                async with channel:
                    answer: join_pb2.NodeCredentials = await join_pb2_grpc.JoinServiceStub(
                        channel
                    ).Renew(request, timeout=10.0)
                    _log.info("renewal of node %s forwarded to the signer at %s", node, address)
                    return answer
            except grpc.aio.AioRpcError as exc:
                _log.info("forwarding the renewal of %s to %s: %s", node, address, exc.code())
                last = exc
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    break
        if last is not None and last.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.PERMISSION_DENIED,
        ):
            raise BadRequest(f"the signer refused the renewal: {last.details()}")
        return None

    async def _forward(
        self, address: str, name: str, timeout: float
    ) -> status_pb2.NodeStatusResponse | None:
        creds = self.peer_credentials
        options = client_channel_options()
        channel = (
            grpc.aio.insecure_channel(address, options=options)
            if creds is None
            else grpc.aio.secure_channel(address, creds, options=options)
        )
        try:
            async with channel:
                stub = status_pb2_grpc.StatusServiceStub(channel)
                answer: status_pb2.NodeStatusResponse = await stub.GetNodeStatus(
                    status_pb2.NodeStatusRequest(
                        node=name, timeout_seconds=timeout, local_only=True
                    ),
                    timeout=timeout + 1.0,
                )
                return answer
        except grpc.aio.AioRpcError as exc:
            _log.info("forwarding status query for %s to %s: %s", name, address, exc.code())
            return None
