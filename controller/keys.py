"""Where the controller keeps things in etcd (all under one configurable root)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True, slots=True)
class Keys:
    """Key layout under ``root`` (default ``/ipsecd/``).

    * ``policy/current``          the current revision number (decimal), moved by CAS only
    * ``policy/rev/<20 digits>``  one JSON record per revision, append-only, never deleted
    * ``nodes/<name>``            node record: addresses, labels, last status (persistent)
    * ``conn/<name>``             which replica holds the node's stream (replica lease)
    * ``replicas/<id>``           a live controller replica and its address (its lease)
    * ``leader``                  the elected replica (its lease)
    * ``secrets/<name>``          one secret, sealed with the envelope key
      (controller/secretstore.py)
    * ``tokens/<id>``             join token: hash of its secret, expiry, uses left
    * ``token-uses/<id>/<n>``     who used a join token (one key per use, written with it)
    * ``pki/crl``                 the cluster CA's newest CRL (PEM), moved forward only
    * ``policy/rollout``          the rollout record (controller/rollout.py), moved by CAS
    * ``rollouts/<id>/<seq>``     the rollout's event log, one key per change
    """

    root: str = "/ipsecd/"

    def __post_init__(self) -> None:
        if not (self.root.startswith("/") and self.root.endswith("/")):
            raise ValueError(f"etcd key root {self.root!r} must start and end with '/'")

    @property
    def current(self) -> str:
        return f"{self.root}policy/current"

    @property
    def revisions(self) -> str:
        return f"{self.root}policy/rev/"

    def revision(self, number: int) -> str:
        return f"{self.revisions}{number:020d}"

    @property
    def nodes(self) -> str:
        return f"{self.root}nodes/"

    def node(self, name: str) -> str:
        return f"{self.nodes}{name}"

    @property
    def conns(self) -> str:
        return f"{self.root}conn/"

    def conn(self, name: str) -> str:
        return f"{self.conns}{name}"

    @property
    def replicas(self) -> str:
        return f"{self.root}replicas/"

    def replica(self, replica_id: str) -> str:
        return f"{self.replicas}{replica_id}"

    @property
    def leader(self) -> str:
        return f"{self.root}leader"

    @property
    def secrets(self) -> str:
        return f"{self.root}secrets/"

    def secret(self, name: str) -> str:
        return f"{self.secrets}{name}"

    @property
    def tokens(self) -> str:
        return f"{self.root}tokens/"

    def token(self, token_id: str) -> str:
        return f"{self.tokens}{token_id}"

    def token_uses(self, token_id: str) -> str:
        return f"{self.root}token-uses/{token_id}/"

    @property
    def crl(self) -> str:
        return f"{self.root}pki/crl"

    @property
    def rollout(self) -> str:
        return f"{self.root}policy/rollout"

    def rollout_event(self, rollout_id: int, seq: int) -> str:
        return f"{self.root}rollouts/{rollout_id:010d}/{seq:08d}"
