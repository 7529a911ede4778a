"""Fixtures for kernel-lab tests (real ESP/AH): they run inside the VM of `make lab-test`.

* ``lab``          — session check that we are in the lab VM, as root, with ESP/AH
                     modules loaded; fails (never skips) with the fix otherwise.
* ``ns_pair``      — two fresh namespaces ``a`` and ``b`` joined by ``veth0``:
                     a = 192.0.2.1/24 + fd00::1/64, b = 192.0.2.2/24 + fd00::2/64
                     (IPv6 with ``nodad``: usable at once).  Always removed.
* ``egress_capture`` — factory: ``egress_capture(ns)`` starts ``tcpdump -Q out`` on the
                     namespace's veth; stop it with ``.stop()`` (returns the packets);
                     any capture still running at teardown is killed.
* ``ip_batch(ns, lines)`` — run iproute2 commands in a namespace through
                     ``ip -batch -`` on stdin, so keys never show up in argv or errors.

Namespaces are made with tests/support/netns.py; run commands in them with
``ns.run([...])`` (raises with stdout/stderr on failure) or ``ns.popen([...])``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support.capture import EgressCapture
from tests.support.netns import Netns, NetnsError, netns_pair

# Every namespace these fixtures make starts with this (≤ 9 characters, see netns.py).
PREFIX = "klab-"
LAB_MODULES = ("esp4", "esp6", "ah4", "ah6", "xfrm_user", "veth")


class NsPair(NamedTuple):
    """Two namespaces joined by veth0; unpack as ``a, b = ns_pair``."""

    a: Netns
    b: Netns


def loaded_modules() -> set[str]:
    """Names of the loaded kernel modules (/proc/modules)."""
    text = Path("/proc/modules").read_text(encoding="ascii")
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def ip_batch(ns: Netns, lines: Sequence[str], *, timeout: float = 60) -> None:
    """Run iproute2 commands (without the leading ``ip``) inside ``ns``, in one process.

    The commands go on stdin (``ip -batch -``): key material stays out of argv, and a
    failure names the line number, not the key.
    """
    proc = subprocess.run(
        ns.argv(["ip", "-batch", "-"]),
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise NetnsError(
            f"in netns {ns.name}: `ip -batch` of {len(lines)} commands exited "
            f"{proc.returncode}: {proc.stderr.strip()}"
        )


@pytest.fixture(scope="session")
def lab() -> None:
    """Inside the lab VM, as root, with the ESP/AH modules scripts/lab.py loads."""
    if os.environ.get("IPSECD_LAB") != "1":
        pytest.fail("not inside the kernel lab VM: run these tests with `make lab-test`")
    if os.geteuid() != 0:
        pytest.fail("kernel-lab tests need root (the lab VM runs them as root)")
    loaded = loaded_modules()
    # /sys/module also lists built-in drivers, for a kernel that has them compiled in.
    missing = [m for m in LAB_MODULES if m not in loaded and not Path("/sys/module", m).exists()]
    if missing:
        pytest.fail(
            f"kernel modules not loaded: {', '.join(missing)}; scripts/lab.py loads them "
            "at boot; does /lib/modules/$(uname -r) hold them (linux-image-amd64)?"
        )


@pytest.fixture
def ns_pair(lab: None) -> Iterator[NsPair]:
    """Two namespaces joined by veth0 with IPv4 and IPv6 addresses; always removed."""
    with netns_pair(PREFIX) as (a, b):
        yield NsPair(a, b)


@pytest.fixture
def egress_capture(tmp_path: Path) -> Iterator[Callable[..., EgressCapture]]:
    """Factory: ``egress_capture(ns, interface=None, bpf=())`` → a started capture."""
    started: list[EgressCapture] = []

    def start(ns: Netns, interface: str | None = None, bpf: Sequence[str] = ()) -> EgressCapture:
        ifname = interface or ns.ifname
        if ifname is None:
            raise ValueError(f"netns {ns.name} has no veth: pass interface=")
        path = tmp_path / f"{ns.name}-{ifname}-{len(started)}.pcap"
        cap = EgressCapture(ifname, path, netns=ns.name, bpf=bpf)
        started.append(cap)
        return cap.start()

    yield start
    for cap in started:
        cap.close()
