"""Host interop fixtures: our driver in one namespace, strongSwan charon (kernel-libipsec,
userspace ESP, so no kernel ESP is needed) in another, joined by veth.

Namespace prefix ``iki-``; charon is always killed and the namespaces removed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.charon import CHARON_BIN, SWANCTL_BIN, Charon
from tests.support.netns import Netns, netns_pair

PREFIX = "iki-"
OURS_IP, CHARON_IP = "192.0.2.1", "192.0.2.2"
OURS_INNER, CHARON_INNER = "198.51.100.1/32", "198.51.100.2/32"


@dataclass
class Peer:
    ours: Netns
    charon_ns: Netns
    charon: Charon


def _require(path: str, package: str) -> None:
    if not Path(path).exists() and not shutil.which(Path(path).name):
        pytest.fail(f"{path} missing: install Debian {package} (`make deps` does)")


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    _require(CHARON_BIN, "strongswan-charon")
    _require(SWANCTL_BIN, "strongswan-swanctl")
    with netns_pair(PREFIX, addrs_a=(f"{OURS_IP}/24", "fd00::1/64"),
                    addrs_b=(f"{CHARON_IP}/24", "fd00::2/64")) as (ours, other):  # fmt: skip
        # kernel-libipsec: inner selectors must differ from the IKE addresses (LAB-NOTES)
        ours.run(["ip", "addr", "add", OURS_INNER, "dev", "lo"])
        other.run(["ip", "addr", "add", CHARON_INNER, "dev", "lo"])
        with Charon.started(other, tmp_path / "charon") as charon:
            yield Peer(ours, other, charon)
