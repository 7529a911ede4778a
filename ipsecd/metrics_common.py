"""What the agent's and the controller's ``/metrics`` have in common
(docs/operations.md "Metrics").

* :func:`parse_listen` — the ``--metrics-listen HOST:PORT`` option of both daemons.
* :class:`MetricsServer` — prometheus-client's HTTP server (a thread of its own)
  over one daemon's *private* :class:`~prometheus_client.CollectorRegistry`, so
  several daemons in one process (the tests) never share a metric.
* :class:`LoopCollector` — a collector that reads the daemon's state at scrape time
  *on the daemon's event loop*: the HTTP thread asks the loop for the metric families
  and waits for them, so the state (SA tables, streams, counters) is never read while
  the loop changes it, and reading it may await (a kernel dump).

Nothing here knows a metric: the names live in ``agent/metrics.py`` and
``controller/metrics.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "AGENT_PORT",
    "CONTROLLER_PORT",
    "LoopCollector",
    "MetricsError",
    "MetricsServer",
    "new_registry",
    "parse_listen",
]

#: The conventional ports (the Helm chart's): agent 9470, controller 9471.
AGENT_PORT = 9470
CONTROLLER_PORT = 9471
#: How long a scrape waits for the daemon's loop before it fails (HTTP 500).
SCRAPE_TIMEOUT = 10.0


class MetricsError(ValueError):
    """A metrics option or listener that cannot be used (the message says how to fix it)."""


def parse_listen(text: str, option: str = "--metrics-listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (every IPv4 address) -> (host, port).
    Port 0 takes any free port (tests)."""
    example = (
        f"{option} 0.0.0.0:{AGENT_PORT}, {option} 127.0.0.1:{CONTROLLER_PORT} "
        f"or {option} [::]:{AGENT_PORT}"
    )
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise MetricsError(f"{option} {text!r}: expected HOST:PORT, e.g. {example}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise MetricsError(f"{option} {text!r}: port {port} is outside 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError(host)
        except ValueError:
            raise MetricsError(
                f"{option} {text!r}: brackets hold an IPv6 address, e.g. {example}"
            ) from None
    elif ":" in host:
        raise MetricsError(f"{option} {text!r}: write an IPv6 address in brackets, [{host}]:{port}")
    return host or "0.0.0.0", port


def new_registry() -> CollectorRegistry:
    """A private registry with the process and Python runtime collectors in it."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


Gather = Callable[[], Coroutine[Any, Any, list[Metric]]]


class LoopCollector:
    """Collects by running ``gather()`` on ``loop`` (see the module doc)."""

    def __init__(
        self, gather: Gather, loop: asyncio.AbstractEventLoop, timeout: float = SCRAPE_TIMEOUT
    ) -> None:
        self.gather = gather
        self.loop = loop
        self.timeout = timeout

    def describe(self) -> Iterable[Metric]:
        return []  # nothing is read at registration (the loop may not run yet)

    def collect(self) -> Iterable[Metric]:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError(
                "LoopCollector.collect() called on the daemon's own event loop: scrape "
                "over HTTP (or from another thread), the loop cannot wait for itself"
            )
        future: concurrent.futures.Future[list[Metric]]
        future = asyncio.run_coroutine_threadsafe(self.gather(), self.loop)
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise MetricsError(
                f"the daemon's event loop did not answer the scrape within {self.timeout:g} s"
            ) from None


class MetricsServer:
    """``GET /metrics`` for one registry on ``host:port`` (prometheus-client's WSGI
    server in a daemon thread).  Plain HTTP without authentication: bind it to an
    address only the monitoring system reaches (docs/operations.md "Metrics")."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, option: str = "--metrics-listen") -> int:
        """Listen; returns the port (the one chosen when ``port`` was 0)."""
        try:
            self._httpd, self._thread = start_http_server(self.port, self.host, self.registry)
        except OSError as exc:
            raise MetricsError(
                f"{option} {self.address}: cannot listen: {exc.strerror or exc} (another "
                "process on that port? pick another port, or an address of this host)"
            ) from exc
        self.port = int(self._httpd.server_port)
        return self.port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def close(self) -> None:
        """Stop listening (blocks up to half a second: the server's poll interval)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
