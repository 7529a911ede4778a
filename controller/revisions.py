"""SPD revisions: append-only history in the store, ``current`` moved by compare-and-swap.

* A push is validated first (ipsecd.spd, server side); an invalid push writes nothing
  and returns every diagnostic.
* A new revision ``N+1`` is written in the same transaction that moves ``current``
  from ``N`` to ``N+1``, and only if ``current`` still says ``N`` and the key of
  ``N+1`` does not exist: of two pushes on the same base exactly one wins, the other
  gets :class:`~controller.errors.ConflictError`.
* Revisions are never deleted, so the previous current revision (the Tru64
  ``ipsec.spd.bak``) is always available: it is the ``base_revision`` of the current one.
* A rollback re-instates an older revision's text as a NEW revision (history only grows).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

from controller.errors import ConflictError, RevisionNotFound, StoreUnavailable
from controller.keys import Keys
from controller.spdcheck import CheckedDiagnostic, Validation, redact, validate
from controller.store import Store

__all__ = ["PolicyRepo", "PushOutcome", "Revision"]


@dataclass(frozen=True, slots=True)
class Revision:
    """One stored revision.  ``text`` may hold literal keys: never logged, never repr'd."""

    revision: int
    author: str
    created_unix_ms: int
    sha256: str
    comment: str
    base_revision: int
    rollback_of: int
    filename: str
    policy_digest: str
    text: str = field(repr=False)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Revision:
        data = json.loads(raw)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class PushOutcome:
    accepted: bool
    revision: Revision | None = None
    diagnostics: tuple[CheckedDiagnostic, ...] = ()
    unchanged: bool = False


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class PolicyRepo:
    """Policy revisions over a :class:`~controller.store.Store`."""

    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys

    async def current_number(self) -> int:
        kv = await self.store.get(self.keys.current)
        return int(kv.value) if kv else 0

    async def read(self, number: int) -> Revision:
        kv = await self.store.get(self.keys.revision(number))
        if kv is None:
            raise RevisionNotFound(
                f"revision {number} does not exist (see `ipsecctl history`)"
                if number
                else "no policy has been pushed yet (use `ipsecctl push FILE`)"
            )
        return Revision.from_bytes(kv.value)

    async def current(self) -> Revision | None:
        number = await self.current_number()
        return await self.read(number) if number else None

    async def resolve(self, number: int) -> Revision:
        """``number`` 0 means the current revision."""
        if number == 0:
            number = await self.current_number()
            if number == 0:
                raise RevisionNotFound("no policy has been pushed yet (use `ipsecctl push FILE`)")
        return await self.read(number)

    async def history(self, limit: int = 0) -> list[Revision]:
        kvs, _ = await self.store.get_prefix(self.keys.revisions, limit=limit, descending=True)
        return [Revision.from_bytes(kv.value) for kv in kvs]

    async def push(
        self,
        text: str,
        *,
        filename: str = "",
        comment: str = "",
        author: str = "",
        base: int | None = None,
        file_mode: int | None = None,
        rollback_of: int = 0,
    ) -> PushOutcome:
        checked: Validation = validate(text, filename, file_mode)
        if not checked.ok:
            return PushOutcome(False, diagnostics=checked.diagnostics)
        current_kv = await self.store.get(self.keys.current)
        current = int(current_kv.value) if current_kv else 0
        if base is not None and base != current:
            raise ConflictError(await self._conflict_message(base, current))
        digest = sha256_text(text)
        if current:
            have = await self.read(current)
            if have.sha256 == digest and not rollback_of:
                return PushOutcome(True, have, unchanged=True)
        new = Revision(
            revision=current + 1,
            author=author or "unknown",
            created_unix_ms=int(time.time() * 1000),
            sha256=digest,
            comment=comment,
            base_revision=current,
            rollback_of=rollback_of,
            filename=filename,
            policy_digest=checked.policy_digest,
            text=text,
        )
        won = await self.store.compare_and_swap(
            self.keys.current,
            current_kv.value if current_kv else None,
            str(new.revision).encode(),
            [(self.keys.revision(new.revision), new.to_bytes())],
        )
        if not won:
            raise ConflictError(await self._conflict_message(current, None))
        return PushOutcome(True, new)

    async def _conflict_message(self, base: int, now: int | None) -> str:
        try:
            if now is None:
                now = await self.current_number()
            who = await self.read(now) if now else None
        except (StoreUnavailable, RevisionNotFound):
            who = None
        by = f" (pushed by {who.author}{': ' + who.comment if who.comment else ''})" if who else ""
        return (
            f"conflict: the push was based on revision {base} but revision {now} is current"
            f"{by}; run `ipsecctl diff {base} {now}`, merge, and push again "
            f"with --base-revision {now}"
        )

    async def rollback(
        self, target: int = 0, *, comment: str = "", author: str = "", base: int | None = None
    ) -> PushOutcome:
        """Make ``target`` (0: the backup, i.e. the previous current) current again."""
        current = await self.resolve(0)
        if base is not None and base != current.revision:
            raise ConflictError(await self._conflict_message(base, current.revision))
        if target == 0:
            target = current.base_revision
            if target == 0:
                raise RevisionNotFound(
                    f"revision {current.revision} is the first one: there is no backup to roll "
                    "back to"
                )
        old = await self.read(target)
        return await self.push(
            old.text,
            filename=old.filename,
            comment=comment or f"rollback to revision {target}",
            author=author,
            base=current.revision,
            file_mode=0o600,  # it was accepted once; its keys were checked then
            rollback_of=target,
        )

    async def diff(self, a: int, b: int, *, show_secrets: bool) -> str:
        ra, rb = await self.resolve(a), await self.resolve(b)
        ta, tb = (ra.text, rb.text) if show_secrets else (redact(ra.text), redact(rb.text))
        return "".join(
            difflib.unified_diff(
                ta.splitlines(keepends=True),
                tb.splitlines(keepends=True),
                fromfile=f"revision {ra.revision}",
                tofile=f"revision {rb.revision}",
            )
        )
