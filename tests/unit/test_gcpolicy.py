"""The daemons' garbage-collection keeper (ipsecd/gcpolicy.py), on the real collector
of this process: every test unfreezes and restores the thresholds it changed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from ipsecd import gcpolicy
from ipsecd.gcpolicy import GcKeeper


class Node:
    """Something that can be in a reference cycle and be watched by a weakref."""

    def __init__(self) -> None:
        self.other: object = None


@pytest.fixture
def keeper() -> Iterator[GcKeeper]:
    before = gc.get_threshold()
    k = GcKeeper(young_limit=1_000, full_interval=3600.0)
    try:
        yield k
    finally:
        k.uninstall()
        gc.unfreeze()
        gc.set_threshold(*before)


def _young_survivors(n: int) -> list[Node]:
    """``n`` objects that survive a collection, so they end up in the oldest generation."""
    keep = [Node() for _ in range(n)]
    gc.collect()
    return keep


def test_install_sets_the_young_threshold_and_counts_automatic_collections(
    keeper: GcKeeper,
) -> None:
    keeper.install()
    assert gc.get_threshold()[0] == gcpolicy.GEN0_THRESHOLD
    gc.collect(0)
    gc.collect(1)
    assert keeper.stats.count[0] >= 1
    assert keeper.stats.count[1] >= 1
    assert keeper.stats.seconds[0] >= 0.0
    keeper.uninstall()
    assert gc.get_threshold()[0] == 700
    counted = list(keeper.stats.count)
    gc.collect(0)
    assert keeper.stats.count == counted  # no longer hooked


def test_young_growth_is_collected_and_frozen_when_quiet(keeper: GcKeeper) -> None:
    keeper.install()
    keeper.collect_and_freeze("start")
    assert keeper.step() == ""  # nothing grew since
    frozen = keeper.frozen()
    keep = _young_survivors(frozen // 4 + 2_000)  # past a quarter of the frozen heap
    assert len(gc.get_objects(2)) > keeper.young_limit
    assert keeper.step() == "growth"
    assert keeper.frozen() >= frozen + len(keep)
    assert len(gc.get_objects(2)) < keeper.young_limit
    assert keeper.stats.freezes == {"start": 1, "growth": 1, "interval": 0}


def test_a_busy_daemon_defers_the_pause_but_not_for_ever(keeper: GcKeeper) -> None:
    busy = True
    keeper.quiet = lambda: not busy
    keeper.install()
    keeper.collect_and_freeze("start")
    keep = _young_survivors(keeper.frozen() // 4 + 2_000)
    for _ in range(gcpolicy.MAX_DEFERRALS):
        assert keeper.step() == ""
    assert keeper.step() == "growth"  # deferred as often as allowed: runs anyway
    assert keep


def test_the_keepers_own_collections_are_not_counted_as_automatic(keeper: GcKeeper) -> None:
    keeper.install()
    counted = list(keeper.stats.count)
    keeper.collect_and_freeze("interval")
    assert keeper.stats.count == counted
    assert keeper.stats.callback in gc.callbacks  # hooked again afterwards


def test_a_cycle_frozen_while_alive_is_freed_by_the_next_collection(keeper: GcKeeper) -> None:
    keeper.install()
    a, b = Node(), Node()
    a.other, b.other = b, a
    watch = weakref.ref(a)
    keeper.collect_and_freeze("start")  # the cycle is alive: frozen with the rest
    del a, b
    gc.collect()
    assert watch() is not None  # frozen: automatic and explicit collections skip it
    now = 1_000_000.0
    keeper._last_full = now - keeper.full_interval + 1
    assert keeper.step(now) == ""  # not yet
    keeper._last_full = now - keeper.full_interval
    assert keeper.step(now) == "interval"
    assert watch() is None
    assert keeper.stats.freezes["interval"] == 1


def test_run_freezes_at_start_then_checks_on_its_interval(keeper: GcKeeper) -> None:
    keeper.check_interval = 0.01

    async def go() -> None:
        task = asyncio.create_task(keeper.run())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert keeper.stats.freezes["start"] == 1
    assert keeper.frozen() > 0


def test_metric_families_carry_the_daemons_prefix(keeper: GcKeeper) -> None:
    keeper.install()
    gc.collect(0)
    families = {f.name: f for f in keeper.metric_families("ipsecd_controller")}
    assert set(families) == {
        "ipsecd_controller_gc_pause_seconds",
        "ipsecd_controller_gc_collections",
        "ipsecd_controller_gc_freezes",
        "ipsecd_controller_gc_frozen_objects",
    }
    samples = {
        (s.name, s.labels.get("generation")): s.value
        for s in families["ipsecd_controller_gc_collections"].samples
    }
    assert samples[("ipsecd_controller_gc_collections_total", "0")] >= 1
