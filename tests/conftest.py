"""Test tiers.

* ``tests/unit``        pure code, runs anywhere.
* ``tests/integration`` real etcd, real gRPC, network namespaces and XFRM policies on the
  host kernel.  Needs root.  Missing prerequisites make these tests *fail* with a message
  saying what to install; deselect them explicitly with ``-m 'not integration'``.
* ``tests/interop``     real third-party IKEv2 daemons (strongSwan charon) on the host.
* ``tests/kernel``      real ESP/AH; only inside the virtme-ng lab VM (``make lab-test``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
