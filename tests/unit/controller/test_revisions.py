"""Revision rules over the in-memory store (the same Store contract runs on etcd)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from controller.errors import ConflictError, RevisionNotFound
from controller.keys import Keys
from controller.revisions import PolicyRepo, Revision
from controller.spdcheck import redact
from controller.store import MemoryStore
from tests.support.aio import run_async
from tests.support.policies import INVALID, INVALID_LINES, SECRET_KEY, WITH_KEY, policy


def _repo() -> PolicyRepo:
    return PolicyRepo(MemoryStore(), Keys("/u/"))


@run_async(10)
async def test_push_appends_and_moves_current() -> None:
    repo = _repo()
    a = await repo.push(policy(1), filename="p.spd", author="alice", comment="c1")
    b = await repo.push(policy(2), filename="p.spd", author="bob", base=1)
    assert a.accepted and b.accepted and a.revision and b.revision
    assert (a.revision.revision, b.revision.revision) == (1, 2)
    assert b.revision.base_revision == 1 and b.revision.author == "bob"
    assert len(b.revision.sha256) == 64 and b.revision.policy_digest
    assert await repo.current_number() == 2
    assert [r.revision for r in await repo.history()] == [2, 1]
    assert [r.revision for r in await repo.history(limit=1)] == [2]
    again = await repo.push(policy(2), filename="p.spd")
    assert again.accepted and again.unchanged and again.revision
    assert again.revision.revision == 2


@run_async(10)
async def test_invalid_push_changes_nothing_and_reports_every_error() -> None:
    repo = _repo()
    await repo.push(policy(1), filename="p.spd")
    store = repo.store
    assert isinstance(store, MemoryStore)
    before = dict(store._data)
    out = await repo.push(INVALID, filename="bad.spd")
    assert not out.accepted and out.revision is None
    assert [d.line for d in out.diagnostics] == list(INVALID_LINES)
    for d in out.diagnostics:
        assert d.rendered.startswith(f"bad.spd:{d.line}:{d.column}: error: ")
    assert store._data == before


@run_async(10)
async def test_stale_base_is_a_conflict() -> None:
    repo = _repo()
    await repo.push(policy(1), filename="p.spd")
    await repo.push(policy(2), filename="p.spd", author="winner", comment="mine")
    with pytest.raises(ConflictError, match=r"based on revision 1 but revision 2 is current"):
        await repo.push(policy(3), filename="p.spd", base=1)
    assert await repo.current_number() == 2


@run_async(10)
async def test_concurrent_pushes_on_one_base_exactly_one_wins() -> None:
    repo = _repo()
    await repo.push(policy(1), filename="p.spd")
    results = await asyncio.gather(
        *(repo.push(policy(10 + i), filename="p.spd", base=1) for i in range(4)),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert len(wins) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    assert await repo.current_number() == 2


@run_async(10)
async def test_rollback_is_a_new_revision_to_the_backup() -> None:
    repo = _repo()
    with pytest.raises(RevisionNotFound, match="no policy"):
        await repo.rollback()
    await repo.push(policy(1), filename="p.spd")
    with pytest.raises(RevisionNotFound, match="no backup"):
        await repo.rollback()
    await repo.push(policy(2), filename="p.spd")
    out = await repo.rollback()
    assert out.revision and out.revision.revision == 3 and out.revision.rollback_of == 1
    assert out.revision.text == policy(1) and out.revision.base_revision == 2
    out = await repo.rollback()  # the backup of 3 is 2
    assert out.revision and out.revision.text == policy(2) and out.revision.revision == 4
    with pytest.raises(ConflictError):
        await repo.rollback(1, base=3)
    with pytest.raises(RevisionNotFound, match="revision 9 does not exist"):
        await repo.rollback(9)


@run_async(10)
async def test_secrets_never_in_repr_logs_or_redacted_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    repo = _repo()
    refused = await repo.push(WITH_KEY, filename="k.spd", file_mode=0o644)
    assert not refused.accepted
    assert all(SECRET_KEY not in d.rendered for d in refused.diagnostics)
    out = await repo.push(WITH_KEY, filename="k.spd", file_mode=0o600)
    assert out.accepted and out.revision
    assert SECRET_KEY not in repr(out.revision) and SECRET_KEY not in repr(out)
    assert SECRET_KEY not in redact(out.revision.text)
    assert "esp 0x1001" in redact(out.revision.text)  # SPIs stay readable
    await repo.push(policy(1), filename="p.spd")
    diff = await repo.diff(1, 2, show_secrets=False)
    assert SECRET_KEY not in diff and "-add 192.0.2.1" in diff
    assert SECRET_KEY in await repo.diff(1, 2, show_secrets=True)
    assert SECRET_KEY not in caplog.text


def test_revision_record_round_trips() -> None:
    rev = Revision(3, "a@b", 1, "s" * 64, "c", 2, 0, "f.spd", "d", "text\n")
    assert Revision.from_bytes(rev.to_bytes()) == rev


def test_keys_reject_a_bad_root() -> None:
    with pytest.raises(ValueError, match="must start and end"):
        Keys("ipsecd")
    assert Keys("/x/").revision(7) == "/x/policy/rev/00000000000000000007"


@run_async(10)
async def test_over_the_limit_is_refused_before_anything_else() -> None:
    from controller.errors import InputTooLarge
    from controller.limits import MAX_AUTHOR_BYTES, MAX_COMMENT_BYTES, MAX_FILENAME_BYTES

    repo = PolicyRepo(MemoryStore(), Keys("/u/"), max_policy_bytes=1000)
    text = policy(1)
    assert (await repo.push(text + "#" * (999 - len(text)) + "\n")).accepted  # 1000 bytes
    big = policy(2) + "#" + "é" * 600 + "\n"  # < 1000 characters, > 1000 UTF-8 bytes
    assert len(big) < 1000 < len(big.encode())
    with pytest.raises(InputTooLarge, match=r"1,000 bytes \(--max-policy-bytes\)"):
        await repo.push(big, filename="big.spd")
    for field, bound in (
        ("comment", MAX_COMMENT_BYTES),
        ("author", MAX_AUTHOR_BYTES),
        ("filename", MAX_FILENAME_BYTES),
    ):
        with pytest.raises(InputTooLarge, match=f"{bound:,} bytes"):
            await repo.push(policy(3), **{field: "x" * (bound + 1)})
    assert await repo.current_number() == 1 and len(await repo.history()) == 1
    with pytest.raises(ValueError):
        PolicyRepo(MemoryStore(), Keys("/u/"), max_policy_bytes=64 * 2**20)


@run_async(20)
async def test_history_is_read_in_pages_without_texts() -> None:
    from controller.limits import HISTORY_PAGE

    repo = _repo()
    total = 3 * HISTORY_PAGE + 2
    for n in range(1, total + 1):
        await repo.push(policy(n), filename="p.spd")
    everything = await repo.history()
    assert [r.revision for r in everything] == list(range(total, 0, -1))
    assert all(r.text == "" for r in everything)
    for limit in (1, HISTORY_PAGE, HISTORY_PAGE + 1, total, total + 5):
        got = await repo.history(limit)
        assert [r.revision for r in got] == list(range(total, max(0, total - limit), -1))
    assert (await repo.read(total)).text == policy(total)  # texts stay in the records


def test_records_are_utf8_not_escapes() -> None:
    rev = Revision(1, "é", 1, "0" * 64, "ü ✓", 0, 0, "p.spd", "", "# ✓\n")
    raw = rev.to_bytes()
    assert "ü ✓".encode() in raw and b"\\u" not in raw
    assert Revision.from_bytes(raw) == rev
    legacy = raw.decode().replace("✓", "\\u2713").encode()  # records written before
    assert Revision.from_bytes(legacy) == rev


class _FailingCas(MemoryStore):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    async def compare_and_swap(self, *args: object, **kwargs: object) -> bool:
        raise self.exc


@run_async(10)
async def test_store_failures_during_the_swap_say_what_to_do() -> None:
    from controller.errors import InputTooLarge, StoreOutcomeUnknown, StoreRequestTooLarge

    repo = PolicyRepo(_FailingCas(StoreOutcomeUnknown("etcd at x stopped answering")), Keys("/u/"))
    with pytest.raises(StoreOutcomeUnknown) as info:
        await repo.push(policy(1))
    assert "revision 1 may or may not have been written" in str(info.value)
    assert "ipsecctl history" in str(info.value)
    repo = PolicyRepo(_FailingCas(StoreRequestTooLarge("etcd refused")), Keys("/u/"))
    with pytest.raises(InputTooLarge, match="--max-request-bytes"):
        await repo.push(policy(1))
