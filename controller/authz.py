"""Who may do what on the controller's gRPC API (issue #12; docs/security.md "Roles"):
the one table of RPCs and roles, and the one place that enforces it.

* :data:`METHOD_ROLES`: each RPC and the roles that may call it.  An RPC that is not in
  the table is refused (fail closed: a new RPC has to be added here to be callable).
* :class:`AuthzInterceptor`, installed on the controller's gRPC server, wraps every
  handler: it authenticates the caller (:meth:`Authorizer.authenticate`: with mTLS the
  client certificate's role URI, :mod:`ipsecd.roles`), checks the table, and hands the
  caller's :class:`Principal` to the handler (:func:`current_principal`).  A refusal
  ends the call before the handler runs: UNAUTHENTICATED (no certificate, expired,
  revoked, no role) or PERMISSION_DENIED (a role the table does not list).
* Two rules need the request, so the handlers ask the authorizer:
  :meth:`~Authorizer.secrets_refusal` (``get``/``diff --show-secrets``: admin only) and
  :meth:`~Authorizer.check_node` (a node certificate streams only as its own node).

Roles (the table below is the whole truth):

* ``admin``: everything ipsecctl does, secrets included;
* ``viewer``: read-only (get, history, diff, validate, nodes, status), never secrets;
* ``node``: only the agent stream (``Connect``) and its secrets (``FetchSecrets``),
  only as its own node name;
* ``controller``: another replica forwarding a live status query.

With ``--insecure`` (plaintext) :class:`InsecureAuthorizer` keeps the behaviour from
before mTLS: every RPC is allowed, secrets only to callers on this host.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import grpc
import grpc.aio
from cryptography import x509

from controller.ca import crl_serials
from ipsecd.roles import Role, RoleError, role_of

__all__ = [
    "METHOD_ROLES",
    "SECRET_ROLES",
    "WITHOUT_CERTIFICATE",
    "Authorizer",
    "AuthzInterceptor",
    "CertificateAuthorizer",
    "Denied",
    "InsecureAuthorizer",
    "LoopbackAuthorizer",
    "Principal",
    "current_principal",
]

_log = logging.getLogger(__name__)

ADMIN_ONLY = frozenset({Role.ADMIN})
READERS = frozenset({Role.ADMIN, Role.VIEWER})

#: RPC (gRPC method path) -> the roles that may call it.  Nothing else is callable.
METHOD_ROLES: Mapping[str, frozenset[Role]] = MappingProxyType(
    {
        "/ipsecd.v1.PolicyService/Push": ADMIN_ONLY,
        "/ipsecd.v1.PolicyService/Rollback": ADMIN_ONLY,
        "/ipsecd.v1.PolicyService/Get": READERS,
        "/ipsecd.v1.PolicyService/Validate": READERS,
        "/ipsecd.v1.PolicyService/History": READERS,
        "/ipsecd.v1.PolicyService/Diff": READERS,
        "/ipsecd.v1.StatusService/ListNodes": READERS,
        # controller: another replica forwarding a live status query (server.py)
        "/ipsecd.v1.StatusService/GetNodeStatus": READERS | {Role.CONTROLLER},
        "/ipsecd.v1.PolicyService/SetSecret": ADMIN_ONLY,
        "/ipsecd.v1.PolicyService/DeleteSecret": ADMIN_ONLY,
        # names, sizes and authors only: never a value (docs/security.md "Secrets")
        "/ipsecd.v1.PolicyService/ListSecrets": READERS,
        "/ipsecd.v1.AgentService/Connect": frozenset({Role.NODE}),
        # its own node's secrets only (check_node in the handler)
        "/ipsecd.v1.AgentService/FetchSecrets": frozenset({Role.NODE}),
        # the token in the request authenticates a joining node (see WITHOUT_CERTIFICATE)
        "/ipsecd.v1.JoinService/Join": frozenset(Role),
        # a node renews its own certificate only (the handler takes the caller's name)
        # (and a replica forwarding it to the replica holding the CA key)
        "/ipsecd.v1.JoinService/Renew": frozenset({Role.NODE, Role.CONTROLLER}),
        "/ipsecd.v1.NodeAdminService/CreateToken": ADMIN_ONLY,
        "/ipsecd.v1.NodeAdminService/ListTokens": ADMIN_ONLY,
        "/ipsecd.v1.NodeAdminService/DeleteToken": ADMIN_ONLY,
        "/ipsecd.v1.NodeAdminService/RemoveNode": ADMIN_ONLY,
        # rolling reloads (controller/rollout_service.py): admin steers, viewers watch
        "/ipsecd.v1.RolloutService/Start": ADMIN_ONLY,
        "/ipsecd.v1.RolloutService/Status": READERS,
        "/ipsecd.v1.RolloutService/Pause": ADMIN_ONLY,
        "/ipsecd.v1.RolloutService/Resume": ADMIN_ONLY,
        "/ipsecd.v1.RolloutService/Abort": ADMIN_ONLY,
        "/ipsecd.v1.RolloutService/Rollback": ADMIN_ONLY,
    }
)

#: The only RPCs callable without a client certificate (on the join port, which does
#: not ask for one: docs/security.md "Joining a node").  Everything else without a
#: certificate is refused with UNAUTHENTICATED.
WITHOUT_CERTIFICATE: frozenset[str] = frozenset({"/ipsecd.v1.JoinService/Join"})

#: Who may see literal keys and PSKs (``--show-secrets``).
SECRET_ROLES = ADMIN_ONLY

#: Parsed client certificates kept (by their PEM); cleared when full.
_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one RPC."""

    #: authenticated by a client certificate of the cluster CA (mTLS)
    secure: bool
    role: Role | None = None
    name: str = ""
    serial: int | None = None
    #: plaintext mode: the caller is on this host (loopback or a unix socket)
    loopback: bool = False

    @property
    def identity(self) -> str:
        """``admin/alice``; in plaintext mode ``anonymous``."""
        return f"{self.role.value}/{self.name}" if self.role is not None else "anonymous"

    def author(self, claimed: str) -> str:
        """The author recorded in a revision: the certificate identity; in plaintext
        mode (nothing proves anything) what the client claims."""
        return self.identity if self.secure else claimed


class Denied(Exception):
    """A refusal: the gRPC status code and the message the caller gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "ipsecd_principal", default=None
)


def current_principal() -> Principal | None:
    """The caller of the RPC being handled (set by :class:`AuthzInterceptor`)."""
    return _CURRENT.get()


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1] or method


def _who(roles: frozenset[Role]) -> str:
    return " or ".join(sorted(r.value for r in roles)) or "nobody"


class Authorizer(Protocol):
    """Authentication and the role rules (see the module docstring)."""

    #: True when callers are authenticated by certificates (mTLS)
    secure: bool

    def authenticate(self, context: Any) -> Principal:
        """The caller, or :class:`Denied` (UNAUTHENTICATED)."""
        ...

    def authorize(self, principal: Principal, method: str) -> None:
        """:class:`Denied` (PERMISSION_DENIED) unless ``principal`` may call ``method``."""
        ...

    def secrets_refusal(self, principal: Principal) -> str | None:
        """None when ``principal`` may see secrets, else why not (with the fix)."""
        ...

    def check_node(self, principal: Principal, node: str) -> None:
        """:class:`Denied` unless ``principal`` may stream as ``node``."""
        ...

    def revoked(self) -> frozenset[int]:
        """The serials revoked now (streams of such certificates are dropped)."""
        ...


class InsecureAuthorizer:
    """``--insecure`` (plaintext gRPC): nobody is authenticated, so every RPC is allowed
    as before mTLS, and secrets are shown only to callers on this host."""

    secure = False

    def authenticate(self, context: Any) -> Principal:
        peer = context.peer() or ""
        return Principal(False, loopback=peer.startswith(("ipv4:127.", "ipv6:[::1]", "unix:")))

    def authorize(self, principal: Principal, method: str) -> None:
        return None

    def secrets_refusal(self, principal: Principal) -> str | None:
        if principal.loopback:
            return None
        return (
            "showing secrets over plaintext gRPC is only allowed from this host; retry "
            "without --show-secrets, or serve mTLS (ipsecd-controller init) and use an "
            "admin certificate"
        )

    def check_node(self, principal: Principal, node: str) -> None:
        return None

    def revoked(self) -> frozenset[int]:
        return frozenset()


#: The name it had before mTLS (docs/architecture.md).
LoopbackAuthorizer = InsecureAuthorizer


@dataclass(frozen=True, slots=True)
class _Known:
    """A parsed client certificate (or why it has no role)."""

    serial: int
    role: Role | None
    name: str
    not_before: float
    not_after: float
    problem: str = ""


class CertificateAuthorizer:
    """mTLS: the caller is the role of its client certificate.

    gRPC's TLS has already checked the chain to ``ca_certs`` and the validity period
    (an expired or foreign certificate fails the handshake); this checks them again
    (cheap, cached per certificate), then the CRL at ``crl_path`` — re-read whenever the
    file changes, so ``ipsecd-controller revoke`` takes effect without a restart.  A CRL
    file that is unreadable or not signed by the CA is logged and the previous list
    stays in force (revocations are never forgotten because of a bad file)."""

    secure = True

    def __init__(
        self,
        ca_certs: Sequence[x509.Certificate],
        crl_path: Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not ca_certs:
            raise ValueError("CertificateAuthorizer needs the cluster CA certificate")
        self.ca_certs = tuple(ca_certs)
        self.crl_path = crl_path
        self.clock = clock
        self._cache: dict[bytes, _Known] = {}
        self._revoked: frozenset[int] = frozenset()
        self._crl_stamp: tuple[int, int, int] | None = None
        if crl_path is not None:
            self._refresh_crl()

    # ------------------------------------------------------------------ CRL
    def _refresh_crl(self) -> None:
        path = self.crl_path
        if path is None:
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            if self._crl_stamp != (0, 0, 0):
                _log.error("%s: %s; the revocations known so far stay in force", path, exc.strerror)
                self._crl_stamp = (0, 0, 0)
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._crl_stamp:
            return
        self._crl_stamp = stamp
        try:
            crl = x509.load_pem_x509_crl(path.read_bytes())
        except (OSError, ValueError) as exc:
            _log.error("%s: not a PEM CRL (%s); the previous one stays in force", path, exc)
            return
        serials = None
        for ca in self.ca_certs:
            serials = crl_serials(crl, ca)
            if serials is not None:
                break
        if serials is None:
            _log.error("%s: not signed by the cluster CA; the previous one stays in force", path)
            return
        if serials != self._revoked:
            _log.info("%s: %d revoked certificate(s)", path, len(serials))
        self._revoked = serials

    def revoked(self) -> frozenset[int]:
        self._refresh_crl()
        return self._revoked

    # ------------------------------------------------------------------ authentication
    def _parse(self, pem: bytes) -> _Known:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            return _Known(0, None, "", 0, 0, "the client certificate cannot be parsed")
        serial = cert.serial_number
        before = cert.not_valid_before_utc.timestamp()
        after = cert.not_valid_after_utc.timestamp()
        if not any(_issued_by(cert, ca) for ca in self.ca_certs):
            return _Known(serial, None, "", before, after, "not issued by the cluster CA")
        try:
            ident = role_of(cert)
        except RoleError as exc:
            return _Known(serial, None, "", before, after, str(exc))
        return _Known(serial, ident.role, ident.name, before, after)

    def authenticate(self, context: Any) -> Principal:
        auth = context.auth_context() or {}
        pems = auth.get("x509_pem_cert") or []
        if auth.get("transport_security_type") != [b"ssl"]:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, _NO_CERTIFICATE)
        if not pems:
            # TLS without a client certificate (the join port): anonymous; only the
            # RPCs of WITHOUT_CERTIFICATE let it through (authorize)
            return Principal(True)
        pem = bytes(pems[0])
        known = self._cache.get(pem)
        if known is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            known = self._cache[pem] = self._parse(pem)
        if known.problem or known.role is None:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"client certificate (serial {known.serial:#x}) refused: {known.problem}",
            )
        now = self.clock()
        if now > known.not_after:
            when = dt.datetime.fromtimestamp(known.not_after, dt.UTC)
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the client certificate {known.role.value}/{known.name} (serial "
                f"{known.serial:#x}) expired on {when:%Y-%m-%d %H:%M} UTC; get a new one",
            )
        if now < known.not_before:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the client certificate {known.role.value}/{known.name} is not valid yet; "
                "check the clocks",
            )
        self._refresh_crl()
        if known.serial in self._revoked:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the client certificate {known.role.value}/{known.name} (serial "
                f"{known.serial:#x}) has been revoked",
            )
        return Principal(True, known.role, known.name, known.serial)

    # ------------------------------------------------------------------ the rules
    def authorize(self, principal: Principal, method: str) -> None:
        roles = METHOD_ROLES.get(method)
        if roles is None:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"{method}: not callable")
        if principal.role is None:
            if method in WITHOUT_CERTIFICATE:
                return
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, _NO_CERTIFICATE)
        if principal.role not in roles:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal.identity} may not call {_short(method)} (allowed to "
                f"{_who(roles)} certificates)",
            )

    def secrets_refusal(self, principal: Principal) -> str | None:
        if principal.role in SECRET_ROLES:
            return None
        return (
            f"{principal.identity} may not see secrets (allowed to {_who(SECRET_ROLES)} "
            "certificates); retry without --show-secrets"
        )

    def check_node(self, principal: Principal, node: str) -> None:
        if principal.role == Role.NODE and principal.name == node:
            return
        raise Denied(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{principal.identity} may not stream as node {node!r}: an agent connects "
            "with its own node's certificate and --node name",
        )


_NO_CERTIFICATE = (
    "no client certificate: this controller serves mTLS only (without a certificate only "
    "Join is callable); use an ipsecctl config (--config) or the agent's --cert/--key/--ca"
)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- interceptor


class AuthzInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Runs the authorizer before every handler of the server (see the module doc)."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return _guarded(handler, details.method, self.authorizer)


async def _admit(authorizer: Authorizer, method: str, context: Any) -> Principal:
    try:
        principal = authorizer.authenticate(context)
        authorizer.authorize(principal, method)
    except Denied as exc:
        _log.warning("refused %s from %s: %s", _short(method), context.peer(), exc.message)
        context.set_trailing_metadata((("ipsecd-error", "permission-denied"),))
        await context.abort(exc.code, exc.message)
        raise AssertionError("unreachable") from exc
    return principal


def _guarded(handler: Any, method: str, authorizer: Authorizer) -> Any:
    """``handler`` with its behaviour wrapped by :func:`_admit`."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        inner = getattr(handler, kind)
        if inner is None:
            continue
        if inspect.isasyncgenfunction(inner):
            wrapped: Callable[..., Any] = _wrap_generator(inner, method, authorizer)
        else:
            wrapped = _wrap_coroutine(inner, method, authorizer)
        return handler._replace(**{kind: wrapped})
    return handler


def _wrap_coroutine(
    inner: Callable[[Any, Any], Awaitable[Any]], method: str, authorizer: Authorizer
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def behaviour(request: Any, context: Any) -> Any:
        principal = await _admit(authorizer, method, context)
        token = _CURRENT.set(principal)
        try:
            return await inner(request, context)
        finally:
            _CURRENT.reset(token)

    return behaviour


def _wrap_generator(
    inner: Callable[[Any, Any], AsyncIterator[Any]], method: str, authorizer: Authorizer
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
        # no reset: a generator may be finished from another context; each RPC runs
        # in a task of its own, whose context ends with it
        _CURRENT.set(await _admit(authorizer, method, context))
        async for item in inner(request, context):
            yield item

    return behaviour
