"""Garbage collection for a daemon holding thousands of long-lived objects
(docs/architecture.md "Garbage collection").

With 5,000 agent streams a controller holds about half a million objects that live as
long as the streams do, and every push creates a few short-lived ones per stream (a
writer task, gRPC's operation futures) that outlive CPython's young generation while
the write is pending.  With the interpreter's defaults those get promoted, and each
automatic full collection then walks the whole heap: measured at 5,000 streams, a full
collection took about 0.6 s and ran about once per push: a third of the controller's
CPU per push (docs/operations.md "Tests and benchmark").

:class:`GcKeeper` changes two things, process-wide (so only daemons' ``main`` install
it, never library code or the tests' in-process daemons):

* a larger young generation (:data:`GEN0_THRESHOLD` allocations instead of 700), so the
  objects of one fan-out mostly die young, by reference counting, without a promotion;
* the full collection moves to quiet moments, and the heap it leaves is *frozen*
  (:func:`gc.freeze`): objects in the permanent generation are never walked by the
  interpreter's automatic collections, which so only see what was made since.  The
  keeper unfreezes everything, collects it all and freezes the survivors when what is
  not frozen has grown past :data:`YOUNG_LIMIT` objects and a quarter of the frozen
  ones (the interpreter's own rule for a full collection), or every
  :data:`FULL_INTERVAL` seconds; and only while the daemon says it is quiet (no
  fan-out in progress), at most :data:`MAX_DEFERRALS` checks late.

Frozen objects that become unreachable are still freed by reference counting; only
reference *cycles* among them (a closed stream's task and state) wait for the keeper's
next collection, which the new streams of a reconnect storm bring on by their growth,
and :data:`FULL_INTERVAL` bounds otherwise.

The keeper counts its own collections and the interpreter's (pause seconds by
generation) for the daemons' ``/metrics``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["FULL_INTERVAL", "GEN0_THRESHOLD", "GcKeeper", "GcStats"]

_log = logging.getLogger("ipsecd.gc")

#: Young-generation threshold (CPython's default is 700).  At 20,000 a young
#: collection of the controller at 5,000 streams takes about 25 ms.
GEN0_THRESHOLD = 20_000
#: Seconds between the keeper's looks at the heap.
CHECK_INTERVAL = 30.0
#: Objects outside the frozen heap that make the keeper collect and freeze.
YOUNG_LIMIT = 50_000
#: Seconds between full collections (frozen objects included).
FULL_INTERVAL = 600.0
#: Checks a collection may wait for the daemon to be quiet before it runs anyway.
MAX_DEFERRALS = 4


class GcStats:
    """Collections and their pauses, by who ran them."""

    __slots__ = ("_started", "count", "freezes", "seconds")

    def __init__(self) -> None:
        # generation 0..2: the interpreter's automatic (and other callers') collections
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        # the keeper's collect-and-freeze runs, by what made it due
        self.freezes = {"start": 0, "growth": 0, "interval": 0}
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        """For :data:`gc.callbacks`."""
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            generation = min(2, max(0, int(info.get("generation", 2))))
            self.count[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started
            self._started = 0.0


class GcKeeper:
    """See the module docstring.  ``quiet`` says whether now is a good time for a
    pause (the controller: no fan-out in progress)."""

    def __init__(
        self,
        *,
        quiet: Callable[[], bool] | None = None,
        gen0: int = GEN0_THRESHOLD,
        check_interval: float = CHECK_INTERVAL,
        young_limit: int = YOUNG_LIMIT,
        full_interval: float = FULL_INTERVAL,
    ) -> None:
        self.quiet = quiet or (lambda: True)
        self.gen0 = gen0
        self.check_interval = check_interval
        self.young_limit = young_limit
        self.full_interval = full_interval
        self.stats = GcStats()
        self._installed = False
        self._deferred = 0
        self._last_full = time.monotonic()

    def install(self) -> None:
        """Set the young threshold and start counting pauses (idempotent)."""
        if self._installed:
            return
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(self.gen0, gen1, gen2)
        gc.callbacks.append(self.stats.callback)
        self._installed = True

    def uninstall(self) -> None:
        """Undo :meth:`install` and unfreeze (tests; a daemon keeps it to the end)."""
        if not self._installed:
            return
        gc.callbacks.remove(self.stats.callback)
        gc.set_threshold(700, *gc.get_threshold()[1:])
        gc.unfreeze()
        self._installed = False

    @staticmethod
    def frozen() -> int:
        return gc.get_freeze_count()

    def due(self, now: float) -> str:
        """Why a collection is due now (``"interval"``, ``"growth"``), or ``""``."""
        if now - self._last_full >= self.full_interval:
            return "interval"
        young = len(gc.get_objects(2))  # the oldest generation, frozen objects excluded
        if young > max(self.young_limit, self.frozen() // 4):
            return "growth"
        return ""

    def step(self, now: float | None = None) -> str:
        """One check: collect and freeze when due and quiet (or deferred too often).
        Returns why it ran, or ``""``."""
        now = time.monotonic() if now is None else now
        why = self.due(now)
        if not why:
            self._deferred = 0
            return ""
        if not self.quiet() and self._deferred < MAX_DEFERRALS:
            self._deferred += 1
            return ""
        self._deferred = 0
        self.collect_and_freeze(why, now=now)
        return why

    def collect_and_freeze(self, why: str, *, now: float | None = None) -> None:
        """Unfreeze, collect everything, freeze the survivors."""
        started = time.perf_counter()
        callback = self.stats.callback
        hooked = callback in gc.callbacks
        if hooked:  # the keeper's own pause is counted as such, not as automatic
            gc.callbacks.remove(callback)
        try:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        finally:
            if hooked:
                gc.callbacks.append(callback)
        self.stats.freezes[why] = self.stats.freezes.get(why, 0) + 1
        self._last_full = time.monotonic() if now is None else now
        _log.debug(
            "gc: collection (%s) and freeze in %.0f ms (%d objects frozen)",
            why,
            (time.perf_counter() - started) * 1000,
            self.frozen(),
        )

    async def run(self) -> None:
        """Check every ``check_interval`` seconds until cancelled."""
        self.install()
        self.collect_and_freeze("start")  # what start-up made: modules, the config
        while True:
            await asyncio.sleep(self.check_interval)
            self.step()

    def metric_families(self, prefix: str) -> list[Metric]:
        """The keeper's figures for a daemon's ``/metrics`` (names under ``prefix``)."""
        stats = self.stats
        pauses = CounterMetricFamily(
            f"{prefix}_gc_pause_seconds",
            "Time the interpreter's automatic garbage collections held the event loop, "
            'by generation (docs/architecture.md "Garbage collection")',
            labels=["generation"],
        )
        collections = CounterMetricFamily(
            f"{prefix}_gc_collections",
            "The interpreter's automatic garbage collections, by generation",
            labels=["generation"],
        )
        for generation in range(3):
            pauses.add_metric([str(generation)], stats.seconds[generation])
            collections.add_metric([str(generation)], stats.count[generation])
        freezes = CounterMetricFamily(
            f"{prefix}_gc_freezes",
            "The GC keeper's full collections (each then freezes the heap), by what made "
            "it due: start, growth (of what is not frozen) or interval",
            labels=["reason"],
        )
        for why, count in sorted(stats.freezes.items()):
            freezes.add_metric([why], count)
        frozen = GaugeMetricFamily(
            f"{prefix}_gc_frozen_objects",
            "Objects in the frozen generation (never walked by automatic collections)",
            value=self.frozen(),
        )
        return [pauses, collections, freezes, frozen]
