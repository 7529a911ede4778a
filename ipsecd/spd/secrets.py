"""Secret values: literal keys that never show themselves, ``secret:NAME`` references,
and the per-node-pair pre-shared keys derived from them (docs/security.md "Secrets")."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "PAIR_KEY_BYTES",
    "REDACTED",
    "KeyMaterial",
    "Secret",
    "SecretRef",
    "pair_key",
    "pair_slot",
    "split_pair_slot",
]

REDACTED = "<redacted>"


@dataclass(frozen=True, slots=True)
class Secret:
    """Literal key material from the SPD file.  ``repr``/``str`` never show the bytes."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Secret({REDACTED}, {len(self.value)} bytes)"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    @property
    def bits(self) -> int:
        return len(self.value) * 8

    def reveal(self) -> bytes:
        """The key bytes, for the one place that hands them to the kernel or IKE."""
        return self.value

    def fingerprint(self) -> str:
        """A stable digest used by ``Policy.canonical()`` to notice key changes."""
        return "sha256:" + hashlib.sha256(b"ipsecd-spd-secret\0" + self.value).hexdigest()


@dataclass(frozen=True, slots=True)
class SecretRef:
    """``secret:NAME`` — resolved by whoever runs the policy (controller/agent store)."""

    name: str

    def __str__(self) -> str:
        return f"secret:{self.name}"


KeyMaterial = Secret | SecretRef


PAIR_KEY_BYTES = 32
_PAIR_SALT = b"ipsecd pair psk v1"


def pair_key(root: bytes, secret: str, node_a: str, node_b: str) -> bytes:
    """The pre-shared key of one pair of cluster nodes for the connection keyed by
    ``secret`` (docs/security.md "Per-pair keys"): HKDF-SHA256 over the SPD's key with
    both node names, in sorted order so both ends derive the same bytes.  Whoever holds
    a pair key learns nothing of the root or of another pair's key, so a compromised
    node exposes only its own pairs.  ``secret`` (the ``secret:NAME`` name, or ``""``
    for a literal key) separates connections that share one root."""
    first, second = sorted((node_a, node_b))
    info = b"\0".join((secret.encode(), first.encode(), second.encode()))
    hkdf = HKDF(algorithm=hashes.SHA256(), length=PAIR_KEY_BYTES, salt=_PAIR_SALT, info=info)
    return hkdf.derive(root)


def pair_slot(secret: str, peer: str) -> str:
    """The name under which an agent holds the pair key of ``secret`` with ``peer``
    (secret names never contain ``@``: docs/spd.md "Keys")."""
    return f"{secret}@{peer}"


def split_pair_slot(slot: str) -> tuple[str, str] | None:
    """``(secret, peer)`` of a :func:`pair_slot` name, None for a plain name."""
    secret, sep, peer = slot.partition("@")
    return (secret, peer) if sep and secret and peer else None
