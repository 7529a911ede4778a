"""etcd for tests: Debian's ``etcd`` binary on 127.0.0.1, free ports, a temp data dir.

Fixtures (import them into a conftest or test module)::

    from tests.support.etcd import etcd_server, etcd_session  # noqa: F401

* ``etcd_server``  — a fresh etcd per test (use when the test restarts or stops it);
* ``etcd_session`` — one etcd per test session; give each test its own key prefix
  (``unique_prefix()``).

Both yield an :class:`~controller.embedded_etcd.EtcdProcess` (``.url``, ``.restart()``,
``.stop()``, ``.start()``); the process is always killed at teardown.  A missing
``etcd`` binary fails the test with the package to install.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.embedded_etcd import EtcdNotFound, EtcdProcess

__all__ = ["etcd_server", "etcd_session", "start_etcd", "unique_prefix"]

_counter = itertools.count()


def unique_prefix() -> str:
    return f"/t{os.getpid()}-{next(_counter)}/"


def start_etcd(base: Path) -> EtcdProcess:
    try:
        proc = EtcdProcess(base / "etcd-data")
    except EtcdNotFound as exc:
        pytest.fail(str(exc))
    proc.start()
    return proc


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdProcess]:
    proc = start_etcd(tmp_path)
    try:
        yield proc
    finally:
        proc.stop(kill=True)


@pytest.fixture(scope="session")
def etcd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    proc = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield proc
    finally:
        proc.stop(kill=True)
