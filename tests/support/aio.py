"""Run an async test body with a bounded wall time (no pytest-asyncio needed)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

AsyncFn = Callable[..., Awaitable[Any]]


def run_async(timeout: float = 60.0) -> Callable[[AsyncFn], Callable[..., Any]]:
    def deco(fn: AsyncFn) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            async def bounded() -> Any:
                return await asyncio.wait_for(fn(*args, **kwargs), timeout)

            return asyncio.run(bounded())

        return wrapper

    return deco


async def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``pred`` (bounded); fail with ``what`` when it does not become true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)
