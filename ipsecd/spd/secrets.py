"""Secret values: literal keys that never show themselves, and ``secret:NAME`` references."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["REDACTED", "KeyMaterial", "Secret", "SecretRef"]

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
