"""Run a private ``etcd`` (Debian's etcd-server binary from PATH) for one controller.

``ipsecd-controller`` without ``--etcd`` uses this: one machine works out of the box.
The test fixture (tests/support/etcd.py) uses the same class.  The process is always
killed by :meth:`EtcdProcess.stop` (and by an ``atexit`` hook as a last resort).

With ``tls`` (an :class:`~controller.etcd_pki.EtcdPki`, what the controller always
gives it) etcd serves its clients TLS only and requires a client certificate of the
etcd CA (``--client-cert-auth``); the peer URL stays plaintext on 127.0.0.1 (one
member, nothing crosses the network).  Without ``tls`` it is plaintext ``http``:
benchmarks and the test of ``--etcd-plaintext``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from controller.etcd_pki import EtcdPki
from controller.etcd_tls import EtcdClientTls
from controller.limits import EMBEDDED_ETCD_MAX_REQUEST_BYTES

__all__ = ["EtcdNotFound", "EtcdProcess", "EtcdStartError", "free_port"]


class EtcdNotFound(RuntimeError):
    """No ``etcd`` binary on PATH."""


class EtcdStartError(RuntimeError):
    """etcd did not become healthy."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EtcdProcess:
    """One etcd member on ``host`` with its data under ``data_dir``.

    Ports are chosen once (free ports) and kept across :meth:`restart`, so clients can
    reconnect to the same URL.  The child gets PR_SET_PDEATHSIG: it dies with the thread
    that started it, so call :meth:`start` from a thread that outlives it (the main one).

    ``name`` and ``initial_cluster`` (``NAME=PEER_URL,...``) make it one member of a
    cluster (tests/support/etcd.py runs three); :meth:`launch` then :meth:`wait_healthy`
    start the members without waiting for each other.  ``max_request_bytes`` is passed to
    etcd (None: etcd's 1.5 MiB default); the default fits the revision record of the
    largest policy a controller may be configured to accept.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        binary: str | None = None,
        name: str = "ipsecd",
        initial_cluster: str | None = None,
        max_request_bytes: int | None = EMBEDDED_ETCD_MAX_REQUEST_BYTES,
        tls: EtcdPki | None = None,
    ) -> None:
        found = binary or shutil.which("etcd")
        if not found:
            raise EtcdNotFound(
                "no `etcd` binary on PATH: install the Debian package etcd-server "
                "(apt-get install etcd-server) or pass --etcd URL of an existing cluster"
            )
        self.binary = found
        self.data_dir = Path(data_dir)
        self.host = host
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.name = name
        self.initial_cluster = initial_cluster
        self.max_request_bytes = max_request_bytes
        self.tls = tls
        self._client_tls: EtcdClientTls | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    def client_tls(self) -> EtcdClientTls | None:
        """The controller's credentials for this etcd (None when it is plaintext)."""
        if self.tls is None:
            return None
        if self._client_tls is None:
            self._client_tls = self.tls.client_tls(self.host)
        return self._client_tls

    def ssl_context(self) -> ssl.SSLContext | None:
        """For HTTP requests to this etcd (``/health``, the JSON gateway)."""
        tls = self.client_tls()
        return tls.ssl_context() if tls is not None else None

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def command(self) -> list[str]:
        peer = self.peer_url
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
            "--log-level", "warn",
            "--logger", "zap",
        ]  # fmt: skip
        if self.max_request_bytes is not None:
            cmd += ["--max-request-bytes", str(self.max_request_bytes)]
        if self.tls is not None:
            cmd += [
                "--client-cert-auth",
                "--trusted-ca-file", str(self.tls.ca_cert),
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
            ]  # fmt: skip
        return cmd

    def start(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.launch()
        self.wait_healthy(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to be healthy."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        cmd = self.command()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [*self._die_with_parent(), *cmd],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

    @staticmethod
    def _die_with_parent() -> list[str]:
        """``setpriv --pdeathsig KILL``: if the controller dies (even by SIGKILL) the
        kernel kills its etcd.  (Not a preexec_fn: running Python between fork and exec
        in a process with gRPC threads can crash the child.)"""
        setpriv = shutil.which("setpriv")  # util-linux, always on Debian
        return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Wait until etcd reports healthy (a member: its cluster has a leader)."""
        deadline = time.monotonic() + timeout
        last = ""
        context = self.ssl_context()
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise EtcdStartError(
                    f"etcd exited with status {self.proc.returncode} at start; "
                    f"see {self.log_path}: {self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(
                    f"{self.url}/health", timeout=1, context=context
                ) as resp:
                    if b'"true"' in resp.read():
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)
        self.stop()
        raise EtcdStartError(
            f"etcd on {self.url} not healthy after {timeout:.0f}s ({last}); see {self.log_path}"
        )

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-500:]
        except OSError:
            return "(no log)"

    def stop(self, *, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def rss_bytes(self) -> int:
        """Resident set size of the etcd process (0 when not running)."""
        if self.proc is None:
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return 0
        return 0
