"""Node identities on the running controller (issue #12; docs/security.md "Joining a
node"): join tokens in etcd, node certificates from CSRs (join and renewal), node
removal with revocation, and the cluster's newest CRL in etcd.

* **Tokens** live under ``tokens/ID`` (:class:`controller.keys.Keys`) as JSON: the
  SHA-256 of the secret (never the secret), creation and expiry time, uses and uses
  left, an optional node name.  A use is one etcd transaction
  (:meth:`~controller.store.Store.compare_and_swap`): the token record must still hold
  the bytes that were read, the new record (one use less) and a use record
  ``token-uses/ID/N`` (N = uses left before) are written together, so two controller
  replicas can never use one token more often than it allows.
* **Certificates** are issued with the CA key of the state directory
  (controller/statedir.py, whose ``pki/certs.json`` is the index of everything issued);
  a replica without the CA key refuses Join/Renew/RemoveNode with FAILED_PRECONDITION
  naming the fix.
* **The CRL** goes to etcd (``pki/crl``, only ever replaced by one with a higher CRL
  number); every replica watches it, takes it for its own authorization and sends it
  to its agents (controller/server.py).

The secret part of a token never appears in a log line, an error or a repr.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from controller.ca import CaError, Role, check_name, check_node_csr
from controller.errors import (
    BadRequest,
    NotAuthenticated,
    NotFound,
    NotPossibleHere,
    PermissionDenied,
    StoreUnavailable,
)
from controller.keys import Keys
from controller.statedir import NodeIssued, StateDir, issue_node, live_records, revoke
from controller.store import Store
from ipsecd.jointoken import JoinToken, new_token, secret_hash

__all__ = [
    "DEFAULT_NODE_LIFETIME",
    "DEFAULT_TOKEN_TTL",
    "MAX_TOKEN_TTL",
    "MAX_TOKEN_USES",
    "NodeIdentities",
    "TokenRecord",
    "crl_number",
]

_log = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL = 24 * 3600.0
MAX_TOKEN_TTL = 30 * 24 * 3600.0
MAX_TOKEN_USES = 10_000
DEFAULT_NODE_LIFETIME = 365 * 24 * 3600.0
#: Tokens listed at most (ipsecctl token list); more is refused at creation.
MAX_TOKENS = 1000
_CAS_ATTEMPTS = 8


def crl_number(pem_data: bytes) -> int:
    """The CRL number of a PEM CRL (0 when it has none or does not parse)."""
    try:
        crl = x509.load_pem_x509_crl(pem_data)
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except (ValueError, x509.ExtensionNotFound):
        return 0


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A join token as kept in etcd (no secret: only its hash)."""

    id: str
    secret_sha256: str
    created_unix: int
    expires_unix: int
    uses: int
    uses_left: int
    node: str = ""
    created_by: str = ""
    description: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "secret_sha256": self.secret_sha256,
                "created_unix": self.created_unix,
                "expires_unix": self.expires_unix,
                "uses": self.uses,
                "uses_left": self.uses_left,
                "node": self.node,
                "created_by": self.created_by,
                "description": self.description,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> TokenRecord:
        raw: dict[str, Any] = json.loads(data)
        return cls(
            id=str(raw["id"]),
            secret_sha256=str(raw["secret_sha256"]),
            created_unix=int(raw["created_unix"]),
            expires_unix=int(raw["expires_unix"]),
            uses=int(raw["uses"]),
            uses_left=int(raw["uses_left"]),
            node=str(raw.get("node", "")),
            created_by=str(raw.get("created_by", "")),
            description=str(raw.get("description", "")),
        )


class NodeIdentities:
    """Tokens, node certificates and node removal (see the module docstring).

    ``state_dir``: the controller's state directory (None with ``--insecure`` and no
    CA); ``address_owner(address)``: the node that registered an address, if any (the
    registry's view), so that no node gets a certificate naming another node's address.
    """

    def __init__(
        self,
        store: Store,
        keys: Keys,
        state_dir: Path | None,
        *,
        node_lifetime: float = DEFAULT_NODE_LIFETIME,
        address_owner: Callable[[str], str | None] = lambda _a: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys = keys
        self.state_dir = state_dir
        self.node_lifetime = node_lifetime
        self.address_owner = address_owner
        self.clock = clock

    # ------------------------------------------------------------------ the CA
    def _sd(self, what: str) -> StateDir:
        if self.state_dir is None:
            raise NotPossibleHere(
                f"{what} needs the cluster CA: this controller runs without a state "
                "directory's CA (--insecure); run `ipsecd-controller init` and serve mTLS"
            )
        sd = StateDir(self.state_dir)
        if not sd.ca_cert.exists():
            raise NotPossibleHere(f"{what}: {sd.not_initialized()}")
        return sd

    def _signing(self, what: str) -> StateDir:
        sd = self._sd(what)
        if not sd.ca_key.exists():
            raise NotPossibleHere(
                f"{what} needs the CA key, and this replica has none ({sd.ca_key} is "
                "missing): ask the replica whose state directory holds pki/ca.key"
            )
        return sd

    @property
    def can_sign(self) -> bool:
        """Whether this replica holds the CA key (Join, Renew, node removal)."""
        return self.state_dir is not None and StateDir(self.state_dir).ca_key.exists()

    def ca_certificate(self) -> x509.Certificate:
        sd = self._sd("a join token")
        try:
            return sd.ca_certificates()[0]
        except CaError as exc:
            raise NotPossibleHere(str(exc)) from None

    # ------------------------------------------------------------------ tokens
    async def create_token(
        self,
        *,
        ttl: float = 0.0,
        uses: int = 0,
        node: str = "",
        description: str = "",
        created_by: str = "",
    ) -> tuple[JoinToken, TokenRecord]:
        ttl = ttl or DEFAULT_TOKEN_TTL
        uses = uses or 1
        if not 0 < ttl <= MAX_TOKEN_TTL:
            raise BadRequest(
                f"--ttl must be between 1s and {int(MAX_TOKEN_TTL // 86400)}d (a join token "
                "is a short-lived secret)"
            )
        if not 0 < uses <= MAX_TOKEN_USES:
            raise BadRequest(f"--uses must be between 1 and {MAX_TOKEN_USES}")
        if node:
            try:
                check_name(node, "node name")
            except CaError as exc:
                raise BadRequest(str(exc)) from None
        if len(description) > 200:
            raise BadRequest("the token description is over 200 characters")
        existing, _ = await self.store.get_prefix(self.keys.tokens, limit=MAX_TOKENS)
        if len(existing) >= MAX_TOKENS:
            raise BadRequest(
                f"there are {MAX_TOKENS} join tokens already: delete unused ones "
                "(ipsecctl token list / token delete ID)"
            )
        token = new_token(self.ca_certificate())
        now = int(self.clock())
        record = TokenRecord(
            id=token.id,
            secret_sha256=secret_hash(token.secret),
            created_unix=now,
            expires_unix=now + max(1, round(ttl)),
            uses=uses,
            uses_left=uses,
            node=node,
            created_by=created_by,
            description=description,
        )
        if not await self.store.create_if_absent(
            self.keys.token(token.id), record.to_bytes(), lease=0
        ):
            raise StoreUnavailable("a join token with the same random ID exists; try again")
        _log.info(
            "join token %s created by %s (%d use(s), expires in %ds%s)",
            token.id,
            created_by or "?",
            uses,
            record.expires_unix - now,
            f", for node {node}" if node else "",
        )
        return token, record

    async def list_tokens(self) -> list[tuple[TokenRecord, list[str]]]:
        kvs, _ = await self.store.get_prefix(self.keys.tokens, limit=MAX_TOKENS)
        out = []
        for kv in kvs:
            try:
                rec = TokenRecord.from_bytes(kv.value)
            except (ValueError, KeyError, TypeError):
                _log.warning("ignoring a malformed join token record %s", kv.key)
                continue
            uses, _ = await self.store.get_prefix(self.keys.token_uses(rec.id), limit=100)
            used_by = [json.loads(u.value).get("node", "?") for u in uses]
            out.append((rec, used_by))
        return out

    async def delete_token(self, token_id: str) -> None:
        key = self.keys.token(token_id)
        if "/" in token_id or not token_id or await self.store.get(key) is None:
            raise NotFound(f"no join token {token_id[:20]!r} (see `ipsecctl token list`)")
        await self.store.delete(key)
        _log.info("join token %s deleted", token_id)

    async def _check_token(self, token_id: str, secret: str) -> tuple[TokenRecord, bytes]:
        bad = NotAuthenticated(
            "the join token is not valid (unknown, deleted, or a wrong secret): create one "
            "with `ipsecctl token create`"
        )
        if "/" in token_id or not token_id or len(token_id) > 64:
            raise bad
        kv = await self.store.get(self.keys.token(token_id))
        if kv is None:
            raise bad
        try:
            rec = TokenRecord.from_bytes(kv.value)
        except (ValueError, KeyError, TypeError):
            raise bad from None
        probe = JoinToken(token_id, secret, "")
        if not probe.matches(rec.secret_sha256):
            raise bad
        now = self.clock()
        if now >= rec.expires_unix:
            when = dt.datetime.fromtimestamp(rec.expires_unix, dt.UTC)
            raise NotAuthenticated(
                f"the join token {token_id} expired at {when:%Y-%m-%d %H:%M:%S} UTC: create a "
                "new one with `ipsecctl token create`"
            )
        if rec.uses_left <= 0:
            raise NotAuthenticated(
                f"the join token {token_id} is used up ({rec.uses} use(s)): create a new one "
                "with `ipsecctl token create --uses N`"
            )
        return rec, kv.value

    async def _use_token(self, token_id: str, secret: str, node: str) -> TokenRecord:
        """Take one use of the token, atomically (see the module docstring)."""
        for _ in range(_CAS_ATTEMPTS):
            rec, raw = await self._check_token(token_id, secret)
            left = rec.uses_left - 1
            new = TokenRecord(**{**_fields(rec), "uses_left": left})
            use_key = f"{self.keys.token_uses(token_id)}{rec.uses_left:06d}"
            use = json.dumps({"node": node, "at": int(self.clock())}).encode()
            if await self.store.compare_and_swap(
                self.keys.token(token_id), raw, new.to_bytes(), [(use_key, use)]
            ):
                return new
            await asyncio.sleep(0)  # another replica used it meanwhile: read again
        raise StoreUnavailable(
            f"the join token {token_id} is being used by many nodes at once; try again"
        )

    # ------------------------------------------------------------------ certificates
    def _check_addresses(self, node: str, addresses: tuple[str, ...]) -> None:
        for address in addresses:
            owner = self.address_owner(address)
            if owner is not None and owner != node:
                raise PermissionDenied(
                    f"address {address} is registered by node {owner!r}: a certificate "
                    f"for {node!r} cannot name it (remove that node first: ipsecctl node "
                    "remove)"
                )

    def _request(self, csr: bytes, node: str) -> Any:
        try:
            return check_node_csr(csr, node)
        except CaError as exc:
            raise BadRequest(f"node {node[:80]!r}: {exc}") from None

    async def join(self, token_id: str, secret: str, node: str, csr: bytes) -> NodeIssued:
        """A new node: the token (checked, then one use taken), the CSR checked, and
        the rule on names: a node name that holds a valid certificate joins again only
        with a token created for that name (``token create --node NAME``), and then its
        earlier certificates are revoked."""
        sd = self._signing("joining a node")
        request = self._request(csr, node)
        rec, _ = await self._check_token(token_id, secret)
        if rec.node and rec.node != node:
            raise PermissionDenied(
                f"the join token {token_id} is for node {rec.node!r}, not {node!r}"
            )
        live = await asyncio.to_thread(live_records, sd.root, Role.NODE, node)
        if live and rec.node != node:
            raise PermissionDenied(
                f"node {node!r} already holds a valid certificate (serial {live[0].serial:x}): "
                "a node joins again only with a token made for its name (ipsecctl token "
                f"create --node {node}), which revokes its old certificates; or remove it "
                f"first (ipsecctl node remove {node})"
            )
        self._check_addresses(node, request.addresses)
        await self._use_token(token_id, secret, node)
        issued = await asyncio.to_thread(
            issue_node,
            sd.root,
            request,
            lifetime=dt.timedelta(seconds=self.node_lifetime),
            revoke_others=bool(live),
        )
        _log.info(
            "node %s joined with token %s: certificate serial %x%s",
            node,
            token_id,
            issued.cert.serial_number,
            f", {len(issued.revoked)} earlier certificate(s) revoked" if issued.revoked else "",
        )
        if issued.revoked:
            await self.publish_crl(issued.crl_pem)
        return issued

    async def renew(self, node: str, csr: bytes) -> NodeIssued:
        """A node renews its own certificate (the caller's name, from its certificate)."""
        sd = self._signing("renewing a node certificate")
        request = self._request(csr, node)
        self._check_addresses(node, request.addresses)
        issued = await asyncio.to_thread(
            issue_node, sd.root, request, lifetime=dt.timedelta(seconds=self.node_lifetime)
        )
        _log.info("node %s renewed its certificate: serial %x", node, issued.cert.serial_number)
        return issued

    # ------------------------------------------------------------------ removal
    async def remove_node(self, node: str) -> tuple[list[int], int, bool]:
        """Revoke every certificate issued to ``node`` (the CA's index), publish the new
        CRL, and delete its registry keys.  Returns (revoked serials, CRL number, whether
        it was registered)."""
        try:
            check_name(node, "node name")
        except CaError as exc:
            raise BadRequest(str(exc)) from None
        sd = self._signing("removing a node")
        done = await asyncio.to_thread(revoke, sd.root, role=Role.NODE, name=node)
        crl_pem = await asyncio.to_thread(sd.crl.read_bytes)
        registered = await self.store.get(self.keys.node(node)) is not None
        if not done and not registered:
            raise NotFound(
                f"node {node!r} is unknown: no certificate issued to it is still valid, and "
                "it is not registered (see `ipsecctl nodes` and `ipsecd-controller certs`)"
            )
        await self.publish_crl(crl_pem)
        await self.store.delete_many([self.keys.node(node), self.keys.conn(node)])
        _log.warning(
            "node %s removed: %d certificate(s) revoked, CRL number %d",
            node,
            len(done),
            crl_number(crl_pem),
        )
        return [r.serial for r in done], crl_number(crl_pem), registered

    # ------------------------------------------------------------------ the CRL in etcd
    async def publish_crl(self, pem_data: bytes) -> bool:
        """Make ``pem_data`` the cluster's CRL in etcd unless etcd has one with the same
        or a higher number.  True when it was written."""
        number = crl_number(pem_data)
        if not number:
            return False
        for _ in range(_CAS_ATTEMPTS):
            kv = await self.store.get(self.keys.crl)
            if kv is not None and crl_number(kv.value) >= number:
                return False
            if await self.store.compare_and_swap(
                self.keys.crl, kv.value if kv is not None else None, pem_data, []
            ):
                _log.info("CRL number %d published to the agents", number)
                return True
        return False


def _fields(rec: TokenRecord) -> dict[str, Any]:
    return {name: getattr(rec, name) for name in rec.__dataclass_fields__}
