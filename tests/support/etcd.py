"""etcd for tests: Debian's ``etcd`` binary on 127.0.0.1, free ports, a temp data dir.

Fixtures (import them into a conftest or test module)::

    from tests.support.etcd import etcd_server, etcd_session  # noqa: F401

* ``etcd_server``  — a fresh etcd per test (use when the test restarts or stops it);
* ``etcd_session`` — one etcd per test session; give each test its own key prefix
  (``unique_prefix()``);
* ``etcd_cluster`` — a fresh three-member etcd cluster on 127.0.0.1 per test
  (:class:`EtcdCluster`: ``.url`` lists every member, ``.leader()``, ``.kill()``,
  ``.start()`` a member again);
* ``etcd_plaintext`` — a fresh etcd serving plaintext ``http`` (the ``--etcd-plaintext``
  path only).

All but the last serve TLS only with client certificates, as the controller's private
etcd does (controller/etcd_pki.py makes their certificates): connect with
``EtcdStore.connect(etcd.url, tls=etcd.client_tls())``, or hand the fixture itself to
the controller harness.  The first two yield an
:class:`~controller.embedded_etcd.EtcdProcess` (``.url``, ``.client_tls()``,
``.restart()``, ``.stop()``, ``.start()``); every process is always killed at teardown.
A missing ``etcd`` binary fails the test with the package to install.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from controller.embedded_etcd import EtcdNotFound, EtcdProcess
from controller.etcd_pki import EtcdPki, ensure_etcd_pki
from controller.etcd_tls import EtcdClientTls

__all__ = [
    "EtcdCluster",
    "EtcdTarget",
    "etcd_cluster",
    "etcd_plaintext",
    "etcd_server",
    "etcd_session",
    "start_etcd",
    "unique_prefix",
]

_counter = itertools.count()


def unique_prefix() -> str:
    return f"/t{os.getpid()}-{next(_counter)}/"


class EtcdTarget(Protocol):
    """What a controller needs to reach an etcd: an :class:`EtcdProcess` or an
    :class:`EtcdCluster`."""

    @property
    def url(self) -> str: ...

    def client_tls(self) -> EtcdClientTls | None: ...


def start_etcd(base: Path, *, tls: bool = True) -> EtcdProcess:
    """An etcd with its data under ``base``; with ``tls`` (the default) TLS only with
    client certificates of an etcd CA made in ``base/etcd-pki``."""
    pki = ensure_etcd_pki(base / "etcd-pki") if tls else None
    try:
        proc = EtcdProcess(base / "etcd-data", tls=pki)
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


@pytest.fixture
def etcd_plaintext(tmp_path: Path) -> Iterator[EtcdProcess]:
    proc = start_etcd(tmp_path / "plaintext", tls=False)
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


def _listen_port(taken: set[int]) -> int:
    """A free port below Linux's ephemeral range (32768-60999 by default): the members
    of a cluster connect to each other while the later ones start, and such outgoing
    connections could take a port picked from the ephemeral range before it is bound."""
    while True:
        port = random.randrange(20_000, 32_000)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port


class EtcdCluster:
    """Three (``size``) etcd members on 127.0.0.1, each an :class:`EtcdProcess`."""

    def __init__(self, base: Path, size: int = 3, *, tls: bool = True) -> None:
        # one etcd CA and one server certificate (127.0.0.1) for every member
        self.tls: EtcdPki | None = ensure_etcd_pki(base / "etcd-pki") if tls else None
        names = [f"m{i}" for i in range(size)]
        taken: set[int] = set()
        ports = {n: (_listen_port(taken), _listen_port(taken)) for n in names}
        initial = ",".join(f"{n}=http://127.0.0.1:{ports[n][1]}" for n in names)
        try:
            self.members = {
                n: EtcdProcess(
                    base / f"etcd-{n}",
                    name=n,
                    client_port=ports[n][0],
                    peer_port=ports[n][1],
                    initial_cluster=initial,
                    tls=self.tls,
                )
                for n in names
            }
        except EtcdNotFound as exc:
            pytest.fail(str(exc))

    @property
    def url(self) -> str:
        return ",".join(m.url for m in self.members.values())

    def client_tls(self) -> EtcdClientTls | None:
        return next(iter(self.members.values())).client_tls()

    def start(self, name: str | None = None, timeout: float = 20.0) -> None:
        """Start every member (or one again) and wait until the cluster has a leader."""
        chosen = [self.members[name]] if name else list(self.members.values())
        for member in chosen:
            member.launch()
        for member in chosen:
            member.wait_healthy(timeout)

    def kill(self, name: str) -> None:
        self.members[name].stop(kill=True)

    def running(self) -> list[str]:
        return [n for n, m in self.members.items() if m.proc is not None]

    def status(self, name: str) -> dict[str, object] | None:
        """etcd's maintenance status of one member (None when it does not answer)."""
        req = urllib.request.Request(
            f"{self.members[name].url}/v3/maintenance/status", data=b"{}", method="POST"
        )
        try:
            context = self.members[name].ssl_context()
            with urllib.request.urlopen(req, timeout=1, context=context) as resp:
                return dict(json.loads(resp.read()))
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def leader(self) -> str | None:
        """The member that is leader now, as one running member sees it (None: none)."""
        for name in self.running():
            st = self.status(name)
            header = st.get("header") if st else None
            if st and isinstance(header, dict) and st.get("leader") == header.get("member_id"):
                return name
        return None

    def wait_leader(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name = self.leader()
            if name is not None:
                return name
            time.sleep(0.05)
        raise AssertionError(f"no etcd leader among {self.running()} after {timeout:.0f}s")

    def stop(self) -> None:
        for member in self.members.values():
            member.stop(kill=True)


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
