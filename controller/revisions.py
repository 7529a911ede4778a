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
* Bounds (docs/limits.md, "Controller"): the text is at most ``max_policy_bytes``
  (UTF-8), the file name, comment and author are bounded too; an over-limit request is
  refused before anything is validated or written (:class:`InputTooLarge`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace

from controller.errors import (
    ConflictError,
    InputTooLarge,
    RevisionNotFound,
    StoreOutcomeUnknown,
    StoreRequestTooLarge,
    StoreUnavailable,
)
from controller.keys import Keys
from controller.limits import (
    DEFAULT_MAX_POLICY_BYTES,
    HISTORY_PAGE,
    MAX_AUTHOR_BYTES,
    MAX_COMMENT_BYTES,
    MAX_FILENAME_BYTES,
    POLICY_BYTES_CEILING,
    human_bytes,
)
from controller.spdcheck import CheckedDiagnostic, Validation, redact, validate
from controller.store import Store

__all__ = ["PolicyRepo", "PushOutcome", "Revision", "check_request"]


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
        # UTF-8, not \u escapes: a non-ASCII policy stays close to its own size in etcd
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode()

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


def check_request(
    text: str,
    *,
    max_policy_bytes: int,
    filename: str = "",
    comment: str = "",
    author: str = "",
) -> None:
    """Refuse (:class:`InputTooLarge`) a policy text or field over its bound."""
    size = len(text.encode())
    if size > max_policy_bytes:
        what = f"policy {filename}" if filename else "the policy"
        raise InputTooLarge(
            f"{what} is {human_bytes(size)}; this controller accepts policies up to "
            f"{human_bytes(max_policy_bytes)} (--max-policy-bytes); nothing changed: "
            "shorten it (node groups and macros instead of rules per node pair) or raise "
            "--max-policy-bytes on every controller replica (at most "
            f"{human_bytes(POLICY_BYTES_CEILING)})"
        )
    for name, value, bound in (
        ("file name", filename, MAX_FILENAME_BYTES),
        ("comment", comment, MAX_COMMENT_BYTES),
        ("author", author, MAX_AUTHOR_BYTES),
    ):
        n = len(value.encode())
        if n > bound:
            raise InputTooLarge(
                f"the {name} is {human_bytes(n)}; at most {human_bytes(bound)} is accepted; "
                f"nothing changed: shorten the {name}"
            )


class PolicyRepo:
    """Policy revisions over a :class:`~controller.store.Store`."""

    def __init__(
        self, store: Store, keys: Keys, *, max_policy_bytes: int = DEFAULT_MAX_POLICY_BYTES
    ) -> None:
        if not 0 < max_policy_bytes <= POLICY_BYTES_CEILING:
            raise ValueError(
                f"max_policy_bytes must be between 1 and {POLICY_BYTES_CEILING} "
                f"(got {max_policy_bytes})"
            )
        self.store = store
        self.keys = keys
        self.max_policy_bytes = max_policy_bytes

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
        """The newest ``limit`` revisions (0: all), newest first, WITHOUT their texts
        (``text`` is ""): records are read :data:`HISTORY_PAGE` at a time so that a long
        history of large policies is never in memory (or in one etcd answer) at once."""
        out: list[Revision] = []
        below: str | None = None
        while not limit or len(out) < limit:
            page = HISTORY_PAGE if not limit else min(HISTORY_PAGE, limit - len(out))
            kvs, _ = await self.store.get_prefix(
                self.keys.revisions, limit=page, descending=True, below=below
            )
            out.extend(replace(Revision.from_bytes(kv.value), text="") for kv in kvs)
            if len(kvs) < page:
                break
            below = kvs[-1].key
        return out

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
        prepare: Callable[[str], Awaitable[str]] | None = None,
    ) -> PushOutcome:
        """Validate and store ``text`` as the next revision.  ``prepare`` turns the
        validated text into the text stored (the controller moves literal keys into its
        secret store there: docs/security.md "Secrets")."""
        check_request(
            text,
            max_policy_bytes=self.max_policy_bytes,
            filename=filename,
            comment=comment,
            author=author,
        )
        checked: Validation = validate(text, filename, file_mode)
        if not checked.ok:
            return PushOutcome(False, diagnostics=checked.diagnostics)
        current_kv = await self.store.get(self.keys.current)
        current = int(current_kv.value) if current_kv else 0
        if base is not None and base != current:
            raise ConflictError(await self._conflict_message(base, current))
        if prepare is not None:
            prepared = await prepare(text)
            if prepared != text:
                text = prepared
                checked = validate(text, filename, None)
                if not checked.ok:  # the rewrite broke it: a bug, never stored
                    raise AssertionError("the prepared policy text does not validate")
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
        record = new.to_bytes()
        try:
            won = await self.store.compare_and_swap(
                self.keys.current,
                current_kv.value if current_kv else None,
                str(new.revision).encode(),
                [(self.keys.revision(new.revision), record)],
            )
        except StoreRequestTooLarge as exc:
            raise InputTooLarge(
                f"the revision record ({human_bytes(len(record))}: the policy and its "
                f"metadata) is larger than etcd accepts ({exc}); nothing changed: raise "
                "etcd's --max-request-bytes above --max-policy-bytes plus 64 KiB, or "
                "lower --max-policy-bytes"
            ) from exc
        except StoreOutcomeUnknown as exc:
            raise StoreOutcomeUnknown(
                f"{exc}: revision {new.revision} may or may not have been written; "
                "check `ipsecctl history` before pushing again"
            ) from exc
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
        self,
        target: int = 0,
        *,
        comment: str = "",
        author: str = "",
        base: int | None = None,
        prepare: Callable[[str], Awaitable[str]] | None = None,
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
            prepare=prepare,
        )

    async def diff(
        self,
        a: int,
        b: int,
        *,
        show_secrets: bool,
        reveal: Callable[[str], Awaitable[str]] | None = None,
    ) -> str:
        """``reveal``: writes moved literal keys back (``--show-secrets``)."""
        ra, rb = await self.resolve(a), await self.resolve(b)
        if show_secrets:
            ta, tb = ra.text, rb.text
            if reveal is not None:
                ta, tb = await reveal(ta), await reveal(tb)
        else:
            ta, tb = redact(ra.text), redact(rb.text)
        return "".join(
            difflib.unified_diff(
                ta.splitlines(keepends=True),
                tb.splitlines(keepends=True),
                fromfile=f"revision {ra.revision}",
                tofile=f"revision {rb.revision}",
            )
        )
