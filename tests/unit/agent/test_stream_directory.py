"""The agent side of the node directory: resume from a saved one, deltas applied to the
whole list the daemon sees, a delta that does not apply ends in the whole directory."""

from __future__ import annotations

import pytest

from agent.stream import AgentIdentity, AgentStream, DirectoryReceived, StreamEvent
from ipsecd.directory import Directory
from ipsecd.v1 import agent_pb2, types_pb2
from tests.support.aio import run_async


def _entry(name: str, address: str = "192.0.2.1") -> types_pb2.NodeEntry:
    return types_pb2.NodeEntry(name=name, addresses=[address], labels={"role": "w"})


def _stream(events: list[StreamEvent], **kw: object) -> AgentStream:
    async def on_event(ev: StreamEvent) -> None:
        events.append(ev)

    ident = AgentIdentity("me", ("192.0.2.9",), capabilities=("directory",))
    return AgentStream(["127.0.0.1:1"], ident, on_event=on_event, **kw)  # type: ignore[arg-type]


def test_hello_carries_the_saved_directory_version_and_digest() -> None:
    saved = [_entry("a"), _entry("b", "192.0.2.2")]
    s = _stream([], directory=(41, saved))
    hello = s._hello().hello
    ref = Directory()
    ref.replace(41, saved)
    assert hello.directory_version == 41 and hello.directory_digest == ref.digest()
    fresh = _stream([])._hello().hello
    assert fresh.directory_version == 0 and fresh.directory_digest == b""


@run_async(10)
async def test_deltas_end_in_the_whole_list_and_a_bad_one_asks_for_everything() -> None:
    events: list[StreamEvent] = []
    s = _stream(events)
    whole = agent_pb2.NodeDirectory(version=5, nodes=[_entry("b"), _entry("a")])
    await s._dispatch("x", agent_pb2.ControllerMessage(directory=whole))
    after = Directory()
    after.replace(6, [_entry("a", "10.0.0.1"), _entry("c")])
    delta = agent_pb2.NodeDirectoryDelta(
        base_version=5,
        version=6,
        changed=[_entry("a", "10.0.0.1"), _entry("c")],
        removed=["b"],
        digest=after.digest(),
    )
    await s._dispatch("x", agent_pb2.ControllerMessage(directory_delta=delta))
    ev = events[-1]
    assert isinstance(ev, DirectoryReceived) and not ev.whole
    assert [(n.name, list(n.addresses)) for n in ev.nodes] == [
        ("a", ["10.0.0.1"]),
        ("c", ["192.0.2.1"]),
    ]
    assert ev.changed == ("a", "c") and ev.removed == ("b",) and ev.version == 6
    # a delta from a version this agent does not hold: the directory is dropped and the
    # stream ends, so that the next hello asks for the whole directory
    stale = agent_pb2.NodeDirectoryDelta(base_version=5, version=7, changed=[_entry("d")])
    with pytest.raises(Exception, match="version 5") as info:
        await s._dispatch("x", agent_pb2.ControllerMessage(directory_delta=stale))
    assert type(info.value).__name__ == "_DirectoryResync"
    assert s.directory.version == 0 and s._hello().hello.directory_version == 0
