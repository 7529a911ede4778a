"""Rolling policy reloads: the rollout record, its plan, the health gate, the leader's
driver (issue #13; docs/architecture.md "Rollouts", docs/operations.md "Rolling out a
policy").

One rollout at a time per cluster, kept in one etcd key (``policy/rollout``, beside the
``current`` pointer so that both reach every replica through the same watch, in
order).  Every write is a compare-and-swap on that key's bytes, with a new key of the
rollout's event log (``rollouts/<id>/<seq>``) in the same transaction, so two replicas
that both believe they lead cannot both move it, and a write whose answer was lost can
be read back.

How a rollout runs:

* ``Start`` (any replica) validates the text, runs the static compatibility check
  (:func:`ipsecd.spd.compat.check_rollout`, refused unless forced), plans the batches
  from the registered nodes, claims the key (state ``preparing``: every planned node is
  pinned to the old revision), then stores the revision (``current`` moves by the usual
  compare-and-swap) and marks the rollout ``running``.
* While the rollout is active and ``current`` is its revision, the streams of nodes in
  batches not started yet are offered the *old* revision (:meth:`Rollout.pins`, used by
  :class:`controller.hub.Hub`); every other stream gets ``current``.  A revision still
  reaches a stream at most once and in increasing order: pins only ever hold a node
  back, and a rollback is a new, higher revision.
* The leader (:class:`RolloutDriver`) starts a batch, then judges each of its nodes
  with :func:`judge` on what the node reports (``RevisionHealth`` in its status,
  through the registry): the revision applied, every expected SA established within
  the gate timeout, and no error counter rising during the soak time after that.
* A batch with more failures than ``max_unavailable`` allows turns the rollout into
  ``rolling-back``: the old revision's text is stored as a new revision (rollback of
  the old one) and becomes current, so every node that moved returns to it; the
  rollout ends ``failed`` with the reason per node once they have applied it.
* A new leader reads the key and carries on from the recorded state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from controller.errors import (
    ConflictError,
    ControllerError,
    InvalidArgument,
    NotPossibleHere,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from controller.keys import Keys
from controller.store import Store
from ipsecd.v1 import rollout_pb2

if TYPE_CHECKING:
    from controller.server import Controller

__all__ = [
    "ACTIVE",
    "DEFAULT_GATE_TIMEOUT",
    "GateTracker",
    "Rollout",
    "RolloutDriver",
    "Strategy",
    "judge",
    "parse_duration",
    "plan_batches",
]

_log = logging.getLogger(__name__)

#: States in which the rollout owns the cluster (no plain push; nodes may be pinned).
ACTIVE = frozenset({"preparing", "running", "paused", "rolling-back"})
#: How a rollout can end.
ENDED = frozenset({"succeeded", "failed", "aborted", "rolled-back", "cancelled", "superseded"})
DEFAULT_GATE_TIMEOUT = 120.0
DEFAULT_BATCH_PERCENT = 25
#: A ``preparing`` rollout whose revision never became current is cancelled after this.
PREPARE_TIMEOUT_MS = 60_000
#: Reasons and pending lists kept per node (bytes of the etcd record stay bounded).
MAX_REASON = 400


def _now_ms() -> int:
    return int(time.time() * 1000)


def parse_duration(text: str, what: str) -> float:
    """``30s``, ``2m``, ``1h``, ``500ms`` or plain seconds -> seconds; ValueError naming
    ``what`` and the accepted forms otherwise."""
    t = text.strip().lower()
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    for suffix, scale in units:
        if t.endswith(suffix) and t[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(t[: -len(suffix)]) * scale
    if t.replace(".", "", 1).isdigit():
        return float(t)
    raise ValueError(
        f"{what}: {text!r} is not a duration; write seconds or a number with ms, s, m or h "
        "(e.g. 30s, 2m)"
    )


@dataclass(frozen=True, slots=True)
class Strategy:
    """How the nodes are split and judged (the flags of ``ipsecctl push --rollout``)."""

    canary_nodes: tuple[str, ...] = ()
    canary_count: int = 0
    batch_count: int = 0
    batch_percent: int = 0
    max_unavailable: int = 0
    pause: float = 0.0
    gate_timeout: float = DEFAULT_GATE_TIMEOUT

    def check(self) -> None:
        """InvalidArgument naming the flag and the fix."""
        if self.canary_nodes and self.canary_count:
            raise InvalidArgument("--canary takes node names or a count, not both")
        if self.batch_count and self.batch_percent:
            raise InvalidArgument("--batch takes a count or a percentage, not both")
        if not 0 <= self.batch_percent <= 100:
            raise InvalidArgument(
                f"--batch {self.batch_percent}%: a percentage is between 1% and 100%"
            )
        if self.gate_timeout <= 0 or not math.isfinite(self.gate_timeout):
            raise InvalidArgument("--gate-timeout must be a positive duration (e.g. 2m)")
        if self.pause < 0 or not math.isfinite(self.pause):
            raise InvalidArgument("--pause must be zero or a positive duration (e.g. 30s)")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["canary_nodes"] = list(self.canary_nodes)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Strategy:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["canary_nodes"] = tuple(known.get("canary_nodes", ()))
        return cls(**known)

    def to_proto(self) -> rollout_pb2.RolloutStrategy:
        return rollout_pb2.RolloutStrategy(
            canary_nodes=list(self.canary_nodes),
            canary_count=self.canary_count,
            batch_count=self.batch_count,
            batch_percent=self.batch_percent,
            max_unavailable=self.max_unavailable,
            pause_seconds=self.pause,
            gate_timeout_seconds=self.gate_timeout,
        )

    @classmethod
    def from_proto(cls, msg: rollout_pb2.RolloutStrategy) -> Strategy:
        return cls(
            canary_nodes=tuple(msg.canary_nodes),
            canary_count=msg.canary_count,
            batch_count=msg.batch_count,
            batch_percent=msg.batch_percent,
            max_unavailable=msg.max_unavailable,
            pause=msg.pause_seconds,
            gate_timeout=msg.gate_timeout_seconds or DEFAULT_GATE_TIMEOUT,
        )


def plan_batches(nodes: Sequence[str], strategy: Strategy) -> list[list[str]]:
    """The batches, in order: the canary first (named nodes, or the first N by name),
    then the rest by name in batches of ``batch_count`` nodes or ``batch_percent`` of
    all nodes (default 25 %, at least one node)."""
    everyone = sorted(set(nodes))
    if not everyone:
        raise NotPossibleHere(
            "no node has registered with the controller: there is nothing to roll out "
            "to (a plain `ipsecctl push` stores the policy for nodes that join later)"
        )
    unknown = [n for n in strategy.canary_nodes if n not in everyone]
    if unknown:
        raise InvalidArgument(
            f"--canary names unknown node(s): {', '.join(unknown)}; see `ipsecctl nodes`"
        )
    if strategy.canary_nodes:
        canary = sorted(set(strategy.canary_nodes))
    else:
        canary = everyone[: strategy.canary_count]
    rest = [n for n in everyone if n not in set(canary)]
    if strategy.batch_count:
        size = strategy.batch_count
    else:
        percent = strategy.batch_percent or DEFAULT_BATCH_PERCENT
        size = max(1, math.ceil(len(everyone) * percent / 100))
    batches = [canary] if canary else []
    batches += [rest[i : i + size] for i in range(0, len(rest), size)]
    return batches


@dataclass(slots=True)
class NodeState:
    batch: int
    state: str = "waiting"  # waiting moving healthy failed tolerated rolled-back ...
    reason: str = ""
    since_ms: int = 0


@dataclass(slots=True)
class Rollout:
    """The record in ``policy/rollout`` (JSON)."""

    id: int
    state: str
    from_revision: int
    to_revision: int
    strategy: Strategy
    batches: list[list[str]]
    nodes: dict[str, NodeState]
    author: str = ""
    created_ms: int = 0
    seq: int = 0
    batch: int = -1
    batch_started_ms: int = 0
    next_batch_ms: int = 0
    rollback_revision: int = 0
    rollback_started_ms: int = 0
    ends_as: str = ""  # the final state once a rollback has completed
    reason: str = ""
    updated_ms: int = 0
    ended_ms: int = 0
    forced: bool = False
    forced_plan: str = field(default="", repr=False)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def pins(self) -> frozenset[str]:
        """Nodes held on ``from_revision`` while ``to_revision`` is current: those of
        the batches not started yet (none once the rollout ends or rolls back)."""
        holding = self.state in ("preparing", "running", "paused") or (
            self.state == "rolling-back" and not self.rollback_revision
        )
        if not holding:
            return frozenset()
        return frozenset(n for b in self.batches[self.batch + 1 :] for n in b)

    def moved(self) -> list[str]:
        return [n for b in self.batches[: self.batch + 1] for n in b]

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["strategy"] = self.strategy.to_dict()
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Rollout:
        data = json.loads(raw)
        data["strategy"] = Strategy.from_dict(data.get("strategy", {}))
        data["nodes"] = {k: NodeState(**v) for k, v in data.get("nodes", {}).items()}
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def copy(self) -> Rollout:
        return Rollout.from_bytes(self.to_bytes())

    def set_node(self, name: str, state: str, reason: str, now: int) -> None:
        node = self.nodes[name]
        if node.state != state or node.reason != reason[:MAX_REASON]:
            node.state, node.reason, node.since_ms = state, reason[:MAX_REASON], now

    def to_proto(self, applied: Mapping[str, int] | None = None) -> rollout_pb2.RolloutStatus:
        applied = applied or {}
        return rollout_pb2.RolloutStatus(
            exists=True,
            id=self.id,
            state=self.state,
            from_revision=self.from_revision,
            to_revision=self.to_revision,
            rollback_revision=self.rollback_revision,
            strategy=self.strategy.to_proto(),
            batch=self.batch,
            batches=len(self.batches),
            nodes=[
                rollout_pb2.RolloutNode(
                    name=name,
                    batch=st.batch,
                    state=st.state,
                    reason=st.reason,
                    applied_revision=applied.get(name, 0),
                    since_unix_ms=st.since_ms,
                )
                for name, st in sorted(self.nodes.items(), key=lambda kv: (kv[1].batch, kv[0]))
            ],
            reason=self.reason,
            author=self.author,
            created_unix_ms=self.created_ms,
            updated_unix_ms=self.updated_ms,
            ended_unix_ms=self.ended_ms,
            forced=self.forced,
            forced_plan=self.forced_plan,
            next_batch_unix_ms=self.next_batch_ms,
            done=self.state in ENDED,
        )


# -- the health gate -------------------------------------------------------------------
@dataclass(slots=True)
class GateTracker:
    """What the leader remembers between two looks at a node of the batch in its
    gate: when it was first seen with every SA up, and its error count then."""

    up_since_ms: int = 0
    errors: int = 0


def judge(
    record: Mapping[str, Any] | None,
    connected: bool,
    revision: int,
    *,
    started_ms: int,
    now_ms: int,
    gate_timeout: float,
    soak: float,
    tracker: GateTracker,
) -> tuple[str, str]:
    """One node of the batch in its gate: ``("pass" | "fail" | "wait", reason)``.

    Passes when the node reports ``revision`` applied to its kernel, every IKE
    connection it expects up established (with its CHILD SAs), and its error counters
    unchanged for ``soak`` seconds after that.  Fails when the node refused the
    revision, when an error counter rises after everything was up, or when
    ``gate_timeout`` passes first (the reason says what was missing)."""
    gate: Mapping[str, Any] = (record or {}).get("gate") or {}
    status: Mapping[str, Any] = (record or {}).get("status") or {}
    late = now_ms - started_ms > gate_timeout * 1000
    if int(gate.get("refused", 0)) >= revision:
        return "fail", f"revision {revision} not applied: {gate.get('refused_error', '')}"
    have = int(gate.get("revision", 0))
    if have != revision:
        if not late:
            return "wait", f"applying revision {revision}"
        if not connected:
            return "fail", (
                f"not connected to the controller: revision {revision} was not applied "
                f"within the gate timeout ({gate_timeout:g}s)"
            )
        on = have or int(status.get("applied_revision", 0))
        return "fail", (
            f"still on revision {on or '-'}: revision {revision} was not reported applied "
            f"within the gate timeout ({gate_timeout:g}s)"
        )
    expected, up = int(gate.get("expected", 0)), int(gate.get("established", 0))
    errors = int(gate.get("errors", 0))
    if up < expected:
        tracker.up_since_ms = 0
        if not late:
            return "wait", f"{up} of {expected} connections established"
        pending = "; ".join(gate.get("pending", [])[:4])
        return "fail", (
            f"{expected - up} of {expected} connections not established within the gate "
            f"timeout ({gate_timeout:g}s): {pending or 'no detail'}"
        )
    if not tracker.up_since_ms:
        tracker.up_since_ms, tracker.errors = now_ms, errors
    if errors > tracker.errors:
        return "fail", (
            f"error counters rose by {errors - tracker.errors} after every SA was established "
            "(see `ipsecctl status NODE`: failed negotiations, kernel errors)"
        )
    if now_ms - tracker.up_since_ms >= soak * 1000:
        return "pass", f"{up} of {expected} connections established, no new errors"
    return "wait", f"{up} of {expected} connections established; watching error counters"


# -- the driver (leader) ---------------------------------------------------------------
class RolloutDriver:
    """This replica's view of the rollout record, and the leader's work on it."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        *,
        is_leader: Callable[[], bool],
        tick: float = 0.5,
        soak: float = 3.0,
    ) -> None:
        self.store = store
        self.keys = keys
        self.is_leader = is_leader
        self.tick = tick
        self.soak = soak
        self.raw: bytes | None = None
        self.rollout: Rollout | None = None
        self.trackers: dict[str, GateTracker] = {}
        self.wake = asyncio.Event()
        self.on_change: list[Callable[[], None]] = []
        # set by the controller: current revision, node records, connectivity, pushes
        self.controller: Controller | None = None

    # -- the record, as the watch brings it ---------------------------------------------
    def take(self, raw: bytes | None) -> bool:
        """A new value of ``policy/rollout``; True when it changed."""
        if raw == self.raw:
            return False
        self.raw = raw
        try:
            self.rollout = Rollout.from_bytes(raw) if raw else None
        except (ValueError, KeyError, TypeError) as exc:
            _log.error("ignoring a malformed rollout record %s: %s", self.keys.rollout, exc)
            self.rollout = None
        self.wake.set()
        for callback in self.on_change:
            callback()
        return True

    def active(self) -> Rollout | None:
        r = self.rollout
        return r if r is not None and r.active else None

    async def read(self) -> tuple[Rollout | None, bytes | None]:
        kv = await self.store.get(self.keys.rollout)
        if kv is None:
            return None, None
        return Rollout.from_bytes(kv.value), kv.value

    async def write(self, old_raw: bytes | None, new: Rollout, event: str) -> bool:
        """Compare-and-swap the record from ``old_raw`` to ``new`` with an event-log key
        (``rollouts/<id>/<seq>``); False when another writer came first."""
        new.seq += 1
        new.updated_ms = _now_ms()
        raw = new.to_bytes()
        log_value = json.dumps(
            {"at_ms": new.updated_ms, "state": new.state, "batch": new.batch, "event": event}
        ).encode()
        try:
            won = await self.store.compare_and_swap(
                self.keys.rollout,
                old_raw,
                raw,
                [(self.keys.rollout_event(new.id, new.seq), log_value)],
            )
        except StoreOutcomeUnknown:
            won = False
        if won:
            _log.info(
                "rollout %d: %s", new.id, event, extra={"rollout": new.id, "state": new.state}
            )
            self.take(raw)
        return won

    # -- the leader's loop ----------------------------------------------------------------
    async def run(self) -> None:
        while True:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.tick)
            if not self.is_leader() or self.active() is None:
                if not self.is_leader():
                    self.trackers.clear()
                continue
            try:
                await self.step()
            except (StoreUnavailable, StoreOutcomeUnknown) as exc:
                _log.warning("rollout: %s; trying again", exc)
            except ControllerError as exc:
                _log.error("rollout: %s", exc)
            except Exception:  # a bug must not stop the driver: logged, tried again
                _log.exception("rollout: unexpected error; trying again")

    async def step(self) -> None:
        """One look at the active rollout: move it on if something changed."""
        c = self.controller
        assert c is not None
        current = c.hub.latest.revision if c.hub.latest is not None else 0
        old_raw = self.raw
        r = self.rollout
        if r is None or not r.active:
            return
        r = r.copy()
        now = _now_ms()
        event = ""
        if r.state == "preparing":
            if current == r.to_revision:
                r.state, event = "running", f"revision {r.to_revision} is current: running"
            elif current > r.to_revision or now - r.created_ms > PREPARE_TIMEOUT_MS:
                r.state, r.ended_ms = "cancelled", now
                r.reason = f"revision {r.to_revision} never became current (the push failed)"
                event = r.reason
        elif r.state in ("running", "paused") and current != r.to_revision:
            r.state, r.ended_ms = "superseded", now
            r.reason = (
                f"revision {current} became current during the rollout: every node follows it"
            )
            event = r.reason
        elif r.state in ("running", "paused"):
            event = self._advance(r, now)
        elif r.state == "rolling-back":
            event = await self._roll_back(r, current, now)
        if event:
            await self.write(old_raw, r, event)

    def _gate(self, r: Rollout, now: int) -> list[tuple[str, str]]:
        """Judge the nodes of the batch in its gate; the new failures."""
        c = self.controller
        assert c is not None
        failures: list[tuple[str, str]] = []
        for name in r.batches[r.batch]:
            node = r.nodes[name]
            if node.state != "moving":
                continue
            tracker = self.trackers.setdefault(name, GateTracker())
            verdict, reason = judge(
                c.view.records.get(name),
                name in c.view.conns,
                r.to_revision,
                started_ms=r.batch_started_ms,
                now_ms=now,
                gate_timeout=r.strategy.gate_timeout,
                soak=self.soak,
                tracker=tracker,
            )
            if verdict == "pass":
                r.set_node(name, "healthy", reason, now)
            elif verdict == "fail":
                failures.append((name, reason))
            else:
                node.reason = reason[:MAX_REASON]  # progress, written with the next change
        return failures

    def _advance(self, r: Rollout, now: int) -> str:
        if r.batch >= 0:
            failures = self._gate(r, now)
            if failures:
                tolerated = sum(1 for n in r.nodes.values() if n.state == "tolerated")
                for name, reason in failures:
                    if tolerated < r.strategy.max_unavailable:
                        tolerated += 1
                        r.set_node(name, "tolerated", reason, now)
                    else:
                        r.set_node(name, "failed", reason, now)
                failed = [(n, why) for n, why in failures if r.nodes[n].state == "failed"]
                if failed:
                    what = "; ".join(f"{n}: {why}" for n, why in failed[:3])
                    more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
                    return self._begin_rollback(
                        r, now, "failed", f"batch {r.batch} failed its health gate: {what}{more}"
                    )
                return f"batch {r.batch}: {len(failures)} node(s) tolerated (--max-unavailable)"
            if any(r.nodes[n].state == "moving" for n in r.batches[r.batch]):
                return ""
            if r.batch == len(r.batches) - 1:
                r.state, r.ended_ms = "succeeded", now
                r.reason = f"every batch passed its gate; revision {r.to_revision} everywhere"
                self.trackers.clear()
                return r.reason
        if r.state == "paused":
            return ""
        if r.batch >= 0 and not r.next_batch_ms and r.strategy.pause > 0:
            r.next_batch_ms = now + int(r.strategy.pause * 1000)
            return f"batch {r.batch} passed; next batch after the pause"
        if r.next_batch_ms and now < r.next_batch_ms:
            return ""
        r.batch += 1
        r.batch_started_ms, r.next_batch_ms = now, 0
        for name in r.batches[r.batch]:
            r.set_node(name, "moving", f"offered revision {r.to_revision}", now)
            self.trackers.pop(name, None)
        return f"batch {r.batch} started ({len(r.batches[r.batch])} node(s))"

    def _begin_rollback(self, r: Rollout, now: int, ends_as: str, reason: str) -> str:
        r.state, r.ends_as, r.reason = "rolling-back", ends_as, reason
        r.rollback_started_ms = now
        return f"rolling back: {reason}"

    async def _roll_back(self, r: Rollout, current: int, now: int) -> str:
        c = self.controller
        assert c is not None
        if not r.rollback_revision:
            if current == r.to_revision:
                rev = await c.repo.read(r.from_revision)
                outcome = await c.repo.push(
                    rev.text,
                    filename=rev.filename,
                    comment=f"rollout {r.id} {r.ends_as}: back to revision {r.from_revision}",
                    author=f"rollout {r.id}",
                    base=current,
                    file_mode=0o600,  # it was accepted once; its keys were checked then
                    rollback_of=r.from_revision,
                )
                if outcome.revision is None:
                    raise ConflictError(f"rollout {r.id}: the rollback revision was not stored")
                r.rollback_revision = outcome.revision.revision
            else:  # someone else moved current on (or our push's answer was lost)
                r.rollback_revision = current
            return f"revision {r.rollback_revision} (revision {r.from_revision}'s text) is current"
        waiting = 0
        late = now - r.rollback_started_ms > r.strategy.gate_timeout * 1000
        for name in r.moved():
            rec = c.view.records.get(name) or {}
            applied = int((rec.get("status") or {}).get("applied_revision", 0))
            node = r.nodes[name]
            if node.state in ("rolled-back", "not-rolled-back"):
                continue
            why = f"{node.state}: {node.reason}" if node.state in ("failed", "tolerated") else ""
            if applied >= r.rollback_revision:
                back = f"back on revision {r.from_revision}'s text"
                r.set_node(name, "rolled-back", f"{why}; {back}" if why else back, now)
            elif late:
                r.set_node(
                    name,
                    "not-rolled-back",
                    f"did not apply revision {r.rollback_revision} within the gate timeout"
                    + (f" ({why})" if why else ""),
                    now,
                )
            else:
                waiting += 1
        if waiting:
            return ""
        r.state, r.ended_ms = r.ends_as or "failed", now
        self.trackers.clear()
        return f"ended {r.state}: {r.reason}"
