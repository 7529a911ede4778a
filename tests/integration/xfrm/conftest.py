"""Fixtures: fresh namespaces (prefix ``ipx-``), always removed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from tests.support.netns import Netns, netns_pair, netns_single

T = TypeVar("T")
PREFIX = "ipx-"


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """Run a coroutine to completion, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def ns() -> Iterator[Netns]:
    with netns_single(PREFIX) as n:
        yield n


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with netns_pair(PREFIX) as p:
        yield p
