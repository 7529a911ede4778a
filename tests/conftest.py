"""Test tiers.

* ``tests/unit``        pure code, runs anywhere.
* ``tests/integration`` real etcd, real gRPC, network namespaces and XFRM policies on the
  host kernel.  Needs root.  Missing prerequisites make these tests *fail* with a message
  saying what to install; deselect them explicitly with ``-m 'not integration'``.
* ``tests/interop``     real third-party IKEv2 daemons (strongSwan charon) on the host.
* ``tests/kernel``      real ESP/AH; only inside the virtme-ng lab VM (``make lab-test``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.secretscan import RecordHandler, Scanner, harvest

_TIERS = {"integration": "integration", "interop": "interop", "kernel": "kernel"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        try:
            rel = Path(str(item.fspath)).relative_to(root)
        except ValueError:
            continue
        tier = _TIERS.get(rel.parts[0])
        if tier:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "interop":
            item.add_marker(pytest.mark.integration)


def pytest_runtest_setup(item: pytest.Item) -> None:
    marks = {m.name for m in item.iter_markers()}
    if "kernel" in marks and os.environ.get("IPSECD_LAB") != "1":
        pytest.fail("kernel-tier test outside the lab VM: run it with `make lab-test`")
    if marks & {"integration", "kernel"} and os.geteuid() != 0:
        pytest.fail(
            "this test needs root (network namespaces, XFRM); run as root or "
            "deselect with -m 'not integration'"
        )


# -- the suite's secret scan (tests/support/secretscan.py) ----------------------------
_SCAN = pytest.StashKey[Scanner]()


def pytest_configure(config: pytest.Config) -> None:
    root = Path(__file__).parent
    scanner = Scanner(sorted(harvest([root, root.parent / "examples"])))
    config.stash[_SCAN] = scanner
    handler = RecordHandler(scanner)
    logging.getLogger().addHandler(handler)


_CURRENT: list[Scanner] = []  # the session's scanner (a report carries no config)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for scanner in _CURRENT:
        for name, content in report.sections:
            scanner.scan(content, f"{report.nodeid}: {name}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Iterator[None]:
    scanner = session.config.stash.get(_SCAN, None)
    if scanner is not None:
        factory = getattr(session.config, "_tmp_path_factory", None)
        if factory is not None:
            try:
                base = factory.getbasetemp()
            except (OSError, ValueError):
                base = None
            if base is not None:
                scanner.scan_tree(base)
        if scanner.findings:
            session.config.get_terminal_writer().line(scanner.report(), red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    scanner = session.config.stash.get(_SCAN, None)
    if scanner is not None:
        _CURRENT[:] = [scanner]
