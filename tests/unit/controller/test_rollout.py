"""Rollout rules without I/O: the plan, the health gate, the record, per-node targets in
the hub, the CLI's flags (controller/rollout.py, controller/cli_rollout_remote.py)."""

from __future__ import annotations

import argparse

import pytest

from controller import cli_remote
from controller.cli_rollout_remote import progress, render, strategy
from controller.errors import InvalidArgument, NotPossibleHere
from controller.hub import Hub, StreamState
from controller.revisions import Revision
from controller.rollout import (
    GateTracker,
    NodeState,
    Rollout,
    Strategy,
    judge,
    parse_duration,
    plan_batches,
)
from ipsecd.v1 import agent_pb2

NODES = [f"n{i:02d}" for i in range(10)]


def test_plan_canary_count_then_percent_batches() -> None:
    batches = plan_batches(NODES, Strategy(canary_count=1, batch_percent=25))
    assert batches == [["n00"], ["n01", "n02", "n03"], ["n04", "n05", "n06"], ["n07", "n08", "n09"]]


def test_plan_named_canary_and_count_batches() -> None:
    batches = plan_batches(NODES, Strategy(canary_nodes=("n05", "n09"), batch_count=4))
    assert batches[0] == ["n05", "n09"]
    assert [n for b in batches for n in b] == ["n05", "n09"] + [
        n for n in NODES if n not in ("n05", "n09")
    ]
    assert [len(b) for b in batches[1:]] == [4, 4]


def test_plan_default_is_quarter_batches_without_canary() -> None:
    assert [len(b) for b in plan_batches(NODES, Strategy())] == [3, 3, 3, 1]


def test_plan_errors_name_the_flag() -> None:
    with pytest.raises(InvalidArgument, match=r"--canary names unknown node.*nope"):
        plan_batches(NODES, Strategy(canary_nodes=("nope",)))
    with pytest.raises(NotPossibleHere, match="no node has registered"):
        plan_batches([], Strategy())
    with pytest.raises(InvalidArgument, match="--gate-timeout"):
        Strategy(gate_timeout=0).check()
    with pytest.raises(InvalidArgument, match="--batch"):
        Strategy(batch_count=2, batch_percent=10).check()


def test_parse_duration() -> None:
    assert parse_duration("90", "x") == 90
    assert parse_duration("2m", "x") == 120
    assert parse_duration("1.5s", "x") == 1.5
    assert parse_duration("250ms", "x") == 0.25
    with pytest.raises(ValueError, match="--pause: 'soon' is not a duration"):
        parse_duration("soon", "--pause")


def _gate(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "revision": 7,
        "refused": 0,
        "expected": 3,
        "established": 3,
        "errors": 0,
        "pending": [],
    }
    base.update(kw)
    return {"gate": base, "status": {"applied_revision": base["revision"]}}


def _judge(record: object, now: int, tracker: GateTracker, connected: bool = True) -> str:
    verdict, reason = judge(
        record,  # type: ignore[arg-type]
        connected,
        7,
        started_ms=0,
        now_ms=now,
        gate_timeout=10,
        soak=2,
        tracker=tracker,
    )
    return f"{verdict}: {reason}"


def test_gate_passes_after_the_soak_with_no_new_errors() -> None:
    t = GateTracker()
    assert _judge(_gate(), 1000, t).startswith("wait")
    assert _judge(_gate(), 2500, t).startswith("wait")
    assert _judge(_gate(), 3000, t).startswith("pass")


def test_gate_fails_when_errors_rise_after_everything_was_up() -> None:
    t = GateTracker()
    assert _judge(_gate(errors=2), 1000, t).startswith("wait")  # errors before: ignored
    assert "error counters rose by 1" in _judge(_gate(errors=3), 1500, t)


def test_gate_timeout_says_what_is_missing() -> None:
    t = GateTracker()
    pending = _gate(established=1, pending=["mesh-n01 (n01): connecting: NO_PROPOSAL_CHOSEN"])
    assert _judge(pending, 5000, t).startswith("wait")
    out = _judge(pending, 10_001, t)
    assert out.startswith("fail") and "2 of 3" in out and "NO_PROPOSAL_CHOSEN" in out
    assert "still on revision 6" in _judge(_gate(revision=6), 10_001, GateTracker())
    assert "not connected" in _judge(None, 10_001, GateTracker(), connected=False)


def test_gate_fails_at_once_when_the_node_refused_the_revision() -> None:
    out = _judge(
        _gate(revision=6, refused=7, refused_error="p.spd:1:1: error: x"), 1, GateTracker()
    )
    assert out.startswith("fail") and "p.spd:1:1" in out


def _rollout(state: str = "running", batch: int = 0) -> Rollout:
    batches = plan_batches(NODES, Strategy(canary_count=2, batch_count=4))
    return Rollout(
        id=1,
        state=state,
        from_revision=4,
        to_revision=5,
        strategy=Strategy(canary_count=2, batch_count=4),
        batches=batches,
        nodes={n: NodeState(i) for i, b in enumerate(batches) for n in b},
        batch=batch,
    )


def test_record_round_trips_and_pins_the_batches_not_started() -> None:
    r = _rollout(batch=0)
    assert Rollout.from_bytes(r.to_bytes()) == r
    assert r.pins() == frozenset(NODES[2:])
    assert _rollout("preparing", -1).pins() == frozenset(NODES)
    assert _rollout("succeeded", 2).pins() == frozenset()
    rolling = _rollout("rolling-back", 1)
    assert rolling.pins() == frozenset(NODES[6:])  # until the rollback revision exists
    rolling.rollback_revision = 6
    assert rolling.pins() == frozenset()


def _rev(n: int) -> Revision:
    return Revision(n, "t", n, f"{n:064x}", "", n - 1, 0, "p.spd", "", f"text {n}\n")


def _sent(stream: StreamState) -> list[int]:
    out = []
    while (data := stream.next_message()) is not None:
        out.append(agent_pb2.ControllerMessage.FromString(data).update.policy.revision)
    return out


def test_hub_holds_pinned_streams_back_and_lets_them_go() -> None:
    hub = Hub("r1")
    streams = {n: StreamState(n, directory=False, sent_rev=0) for n in ("a", "b", "c")}
    for s in streams.values():
        hub.add(s)
    hub.publish(_rev(4))
    assert {n: _sent(s) for n, s in streams.items()} == {"a": [4], "b": [4], "c": [4]}
    hub.set_pins((4, 5, frozenset({"b", "c"})))  # a rollout 4 -> 5 is being prepared
    hub.publish(_rev(5))
    assert {n: _sent(s) for n, s in streams.items()} == {"a": [5], "b": [], "c": []}
    assert hub.target("b") is not None and hub.target("b").revision == 4  # type: ignore[union-attr]
    hub.set_pins((4, 5, frozenset({"c"})))  # b's batch starts
    assert {n: _sent(s) for n, s in streams.items()} == {"a": [], "b": [5], "c": []}
    hub.publish(_rev(6))  # a rollback revision: everyone follows the newest again
    assert {n: _sent(s) for n, s in streams.items()} == {"a": [6], "b": [6], "c": [6]}
    assert hub.serializations == 3


def test_hub_of_a_replica_started_mid_rollout_loads_the_held_revision() -> None:
    hub = Hub("r2")
    late = StreamState("late", directory=False, sent_rev=0)
    hub.add(late)
    hub.set_pins((4, 5, frozenset({"late"})))
    hub.publish(_rev(5))
    assert _sent(late) == [] and hub.needs_held() == 4
    hub.hold(_rev(4))
    assert _sent(late) == [4] and hub.needs_held() == 0
    snap = agent_pb2.ControllerMessage.FromString(hub.snapshot_bytes(False, hub.target("late")))
    assert snap.snapshot.policy.revision == 4


def _args(**kw: object) -> argparse.Namespace:
    base = {
        "canary": None,
        "batch": None,
        "max_unavailable": 0,
        "pause": "0",
        "gate_timeout": "2m",
    }
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_strategy_flags() -> None:
    s = strategy(_args(canary="a,b", batch="20%", pause="30s", max_unavailable=1))
    assert list(s.canary_nodes) == ["a", "b"] and s.batch_percent == 20
    assert s.pause_seconds == 30 and s.gate_timeout_seconds == 120 and s.max_unavailable == 1
    s = strategy(_args(canary="3", batch="5"))
    assert s.canary_count == 3 and s.batch_count == 5
    for bad, flag in (({"batch": "x%"}, "--batch"), ({"gate_timeout": "soon"}, "--gate-timeout"),
                      ({"batch": "150%"}, "--batch")):  # fmt: skip
        with pytest.raises(cli_remote.CliError, match=flag) as err:
            strategy(_args(**bad))
        assert err.value.kind == "usage"


def test_status_rendering() -> None:
    r = _rollout(batch=1)
    r.nodes["n00"].state = r.nodes["n01"].state = "healthy"
    msg = r.to_proto({"n00": 5})
    assert progress(msg, width=10).startswith("[##--------] 2/10")
    text = render(msg)
    assert "rollout 1: running  revision 4 -> 5  (batch 2 of 3" in text
    assert "n00" in text.splitlines()[3]
