"""``RolloutService``: start, watch and steer rolling policy reloads (controller/rollout.py
is the state machine; docs/operations.md "Rolling out a policy").

Any replica serves these RPCs; they only read and compare-and-swap the rollout record.
The leader's :class:`~controller.rollout.RolloutDriver` does the rest.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from controller.errors import (
    ConflictError,
    ControllerError,
    InvalidArgument,
    NotFound,
    NotPossibleHere,
)
from controller.revisions import check_request, sha256_text
from controller.rollout import NodeState, Rollout, Strategy, plan_batches
from controller.spdcheck import validate
from ipsecd import spd
from ipsecd.spd.compat import CompatLimitError, check_rollout
from ipsecd.spd.nodes import NodeInfo
from ipsecd.v1 import rollout_pb2, rollout_pb2_grpc

if TYPE_CHECKING:
    from controller.server import Controller

__all__ = ["RolloutServicer"]


def _server() -> Any:
    from controller import server  # the servicer is registered by server.py

    return server


class RolloutServicer(rollout_pb2_grpc.RolloutServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    # -- Start ----------------------------------------------------------------------
    async def Start(self, request: Any, context: Any) -> rollout_pb2.StartRolloutResponse:
        author = _server()._principal().author(request.author)

        async def work() -> rollout_pb2.StartRolloutResponse:
            return await self.start(
                request.text,
                filename=request.filename,
                comment=request.comment,
                author=author,
                base=request.base_revision if request.HasField("base_revision") else None,
                file_mode=request.file_mode if request.HasField("file_mode") else None,
                strategy=Strategy.from_proto(request.strategy),
                force=request.force,
            )

        resp: rollout_pb2.StartRolloutResponse = await _server()._guard(context, work())
        return resp

    async def start(
        self,
        text: str,
        *,
        filename: str,
        comment: str,
        author: str,
        base: int | None,
        file_mode: int | None,
        strategy: Strategy,
        force: bool,
        rollback_of: int = 0,
    ) -> rollout_pb2.StartRolloutResponse:
        c = self.c
        srv = _server()
        strategy.check()
        check_request(
            text,
            max_policy_bytes=c.config.max_policy_bytes,
            filename=filename,
            comment=comment,
            author=author,
        )
        checked = validate(text, filename, file_mode)
        if not checked.ok:
            return rollout_pb2.StartRolloutResponse(diagnostics=srv._diag_msgs(checked.diagnostics))
        driver = c.rollouts
        prior, prior_raw = await driver.read()
        if prior is not None and prior.active:
            raise ConflictError(
                f"rollout {prior.id} (revision {prior.from_revision} -> {prior.to_revision}) "
                f"is {prior.state}: wait for it (`ipsecctl rollout status --wait`) or stop "
                "it (`ipsecctl rollout abort`)"
            )
        current = await c.repo.current()
        if current is None:
            raise NotPossibleHere(
                "no policy has been pushed yet: there is nothing to roll from; the first "
                "policy goes to every node at once (`ipsecctl push FILE` without --rollout)"
            )
        if base is not None and base != current.revision:
            raise ConflictError(await c.repo._conflict_message(base, current.revision))
        if current.sha256 == sha256_text(text) and not rollback_of:
            return rollout_pb2.StartRolloutResponse(
                unchanged=True, revision=srv._meta(current), compatible=True
            )
        try:
            old = spd.load_text(current.text, f"revision {current.revision}")
            new = spd.load_text(text, filename or "<push>", file_mode=file_mode)
        except spd.SpdError as exc:  # validated above: the stored revision is broken
            raise InvalidArgument(
                f"cannot compare with revision {current.revision}: {exc}"
            ) from None
        directory = [srv._node_info(e) for e in c.view.directory()]
        try:
            report = await asyncio.to_thread(_check, old, new, directory)
        except CompatLimitError as exc:
            raise InvalidArgument(f"compatibility check: {exc}") from None
        compat_text = report.to_text()
        if not report.compatible and not force:
            return rollout_pb2.StartRolloutResponse(
                refused=True, compatible=False, compat_report=compat_text
            )
        batches = plan_batches(list(c.view.records), strategy)
        now = int(time.time() * 1000)
        rollout = Rollout(
            id=(prior.id + 1) if prior is not None else 1,
            state="preparing",
            from_revision=current.revision,
            to_revision=current.revision + 1,
            strategy=strategy,
            batches=batches,
            nodes={n: NodeState(batch=i, since_ms=now) for i, b in enumerate(batches) for n in b},
            author=author,
            created_ms=now,
            forced=not report.compatible,
            forced_plan="" if report.compatible else compat_text,
        )
        if not await driver.write(
            prior_raw,
            rollout,
            f"started by {author}: revision {rollout.from_revision} -> "
            f"{rollout.to_revision}, {len(batches)} batch(es)",
        ):
            raise ConflictError("another rollout was started at the same time; see its status")
        notes: list[str] = []

        async def prepare(t: str) -> str:
            return await c.prepare_text(t, filename, author, notes)

        try:
            outcome = await c.repo.push(
                text,
                filename=filename,
                comment=comment or f"rollout {rollout.id}",
                author=author,
                base=current.revision,
                file_mode=0o600 if rollback_of else file_mode,
                rollback_of=rollback_of,
                prepare=prepare,
            )
        except ControllerError as exc:
            await self._cancel(rollout.id, f"the push failed: {exc}")
            raise
        resp = rollout_pb2.StartRolloutResponse(
            compatible=report.compatible, compat_report=compat_text, notes=notes
        )
        if outcome.revision is not None:
            resp.revision.CopyFrom(srv._meta(outcome.revision))
        if not outcome.accepted or outcome.unchanged or outcome.revision is None:
            await self._cancel(rollout.id, "nothing to roll out (unchanged or rejected)")
            resp.unchanged = outcome.unchanged
            resp.diagnostics.extend(srv._diag_msgs(outcome.diagnostics))
            return resp
        if outcome.revision.revision != rollout.to_revision:  # cannot happen: base given
            await self._cancel(rollout.id, "the stored revision is not the planned one")
            raise ConflictError("the revision was stored under another number; see history")
        for _ in range(5):  # the leader may have moved it on already
            now_r, raw = await driver.read()
            if now_r is None or now_r.id != rollout.id or now_r.state != "preparing":
                break
            now_r.state = "running"
            if await driver.write(raw, now_r, f"revision {rollout.to_revision} is current"):
                break
        resp.accepted = True
        resp.rollout.CopyFrom(await self.status())
        return resp

    async def _cancel(self, rollout_id: int, reason: str) -> None:
        driver = self.c.rollouts
        for _ in range(5):
            r, raw = await driver.read()
            if r is None or r.id != rollout_id or r.state != "preparing":
                return
            r.state, r.reason, r.ended_ms = "cancelled", reason, int(time.time() * 1000)
            if await driver.write(raw, r, f"cancelled: {reason}"):
                return

    # -- status and steering ---------------------------------------------------------
    async def status(self) -> rollout_pb2.RolloutStatus:
        r, _ = await self.c.rollouts.read()
        if r is None:
            return rollout_pb2.RolloutStatus(exists=False)
        applied = {
            name: int((rec.get("status") or {}).get("applied_revision", 0))
            for name, rec in self.c.view.records.items()
            if name in r.nodes
        }
        return r.to_proto(applied)

    async def Status(self, request: Any, context: Any) -> rollout_pb2.RolloutStatus:
        resp: rollout_pb2.RolloutStatus = await _server()._guard(context, self.status())
        return resp

    async def _change(self, context: Any, action: str, author: str) -> rollout_pb2.RolloutStatus:
        async def work() -> rollout_pb2.RolloutStatus:
            driver = self.c.rollouts
            for _ in range(10):
                r, raw = await driver.read()
                if r is None:
                    raise NotFound("no rollout has been started (`ipsecctl push FILE --rollout`)")
                event = self._apply(r, action, author)
                if event is None:  # a rollback of a finished rollout: a new rollout
                    return await self._roll_back_finished(r, author)
                if await driver.write(raw, r, event):
                    return await self.status()
            raise ConflictError("the rollout kept changing under this request; try again")

        resp: rollout_pb2.RolloutStatus = await _server()._guard(context, work())
        return resp

    def _apply(self, r: Rollout, action: str, author: str) -> str | None:
        """Change ``r`` for ``action``; the event text, or None for a rollback of a
        finished rollout.  NotPossibleHere when the state does not allow it."""
        now = int(time.time() * 1000)
        state = r.state
        where = f"rollout {r.id} is {state}"
        if action == "pause":
            if state not in ("running", "preparing"):
                raise NotPossibleHere(f"{where}: only a running rollout can be paused")
            r.state = "paused"
            return f"paused by {author}"
        if action == "resume":
            if state != "paused":
                raise NotPossibleHere(f"{where}: only a paused rollout can be resumed")
            r.state = "running"
            r.next_batch_ms = 0
            return f"resumed by {author}"
        if action in ("abort", "rollback"):
            if state in ("preparing", "running", "paused"):
                ends = "aborted" if action == "abort" else "rolled-back"
                verb = "aborted" if action == "abort" else "rolled back"
                return self.c.rollouts._begin_rollback(r, now, ends, f"{verb} by {author}")
            if state == "rolling-back":
                raise NotPossibleHere(f"{where} already: see `ipsecctl rollout status`")
            if action == "rollback" and state == "succeeded":
                return None
            raise NotPossibleHere(
                f"{where}: nothing to {action}"
                + (
                    " (only the last succeeded rollout can be rolled back)"
                    if action == "rollback"
                    else ""
                )
            )
        raise InvalidArgument(f"unknown rollout action {action!r}")

    async def _roll_back_finished(self, r: Rollout, author: str) -> rollout_pb2.RolloutStatus:
        """``rollout rollback`` after a success: the previous revision's text rolls out
        again as a new revision, batch by batch, with the same strategy."""
        current = await self.c.repo.current_number()
        if current != r.to_revision:
            raise NotPossibleHere(
                f"rollout {r.id} rolled out revision {r.to_revision} but revision {current} is "
                f"current now; use `ipsecctl rollback {r.from_revision}` (all nodes at once) "
                "or push the text you want with --rollout"
            )
        old = await self.c.repo.read(r.from_revision)
        resp = await self.start(
            old.text,
            filename=old.filename,
            comment=f"rollback of rollout {r.id}: back to revision {r.from_revision}",
            author=author,
            base=current,
            file_mode=0o600,
            strategy=r.strategy,
            force=False,
            rollback_of=r.from_revision,
        )
        if resp.refused:
            raise NotPossibleHere(
                "rolling back revision by revision is refused by the compatibility check:\n"
                + resp.compat_report
            )
        return resp.rollout

    async def Pause(self, request: Any, context: Any) -> rollout_pb2.RolloutStatus:
        return await self._change(context, "pause", _server()._principal().author(request.author))

    async def Resume(self, request: Any, context: Any) -> rollout_pb2.RolloutStatus:
        return await self._change(context, "resume", _server()._principal().author(request.author))

    async def Abort(self, request: Any, context: Any) -> rollout_pb2.RolloutStatus:
        return await self._change(context, "abort", _server()._principal().author(request.author))

    async def Rollback(self, request: Any, context: Any) -> rollout_pb2.RolloutStatus:
        return await self._change(
            context, "rollback", _server()._principal().author(request.author)
        )


def _check(old: spd.Policy, new: spd.Policy, directory: list[NodeInfo]) -> Any:
    return check_rollout(old, new, directory)
