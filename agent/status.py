"""Live status of the agent: the local root-only Unix socket, and its rendering.

The same dictionary answers ``ipsecctl status --local`` (through the socket below)
and ``ipsecctl status NODE`` (through the controller stream, in ``NodeStatus.detail``),
so both show the same table.  Protocol: one JSON request line
(``{"command": "status"}`` or ``{"command": "reload"}``), one JSON answer line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_SOCKET",
    "StatusError",
    "StatusServer",
    "query",
    "render_table",
]

DEFAULT_SOCKET = Path("/run/ipsecd/ipsecd.sock")
#: Longest request line the server reads.
_MAX_REQUEST = 4096

Handler = Callable[[str], Awaitable[dict[str, Any]]]


class StatusError(Exception):
    """The agent could not be asked (the message says why and what to do)."""


class StatusServer:
    """Answers status/reload requests on a Unix socket (directory 0700, socket 0600)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # bound here and made 0600 before it listens; no umask change (the umask is
        # the whole process's, other threads create files meanwhile), the 0700
        # folder keeps everyone else out in between
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            if len(line) > _MAX_REQUEST:
                raise ValueError("request too long")
            request = json.loads(line or b"{}")
            command = str(request.get("command", "status"))
            answer = await self.handler(command)
        except (ValueError, TimeoutError, AttributeError) as exc:
            answer = {"error": f"bad request: {exc}"}
        with contextlib.suppress(ConnectionError):
            writer.write(json.dumps(answer, sort_keys=True).encode() + b"\n")
            await writer.drain()
            writer.close()


def query(
    path: Path = DEFAULT_SOCKET, command: str = "status", timeout: float = 10.0
) -> dict[str, Any]:
    """Ask the local agent (blocking).  Raises StatusError naming the fix."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps({"command": command}).encode() + b"\n")
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except FileNotFoundError:
        raise StatusError(
            f"no agent socket at {path}: is ipsecd running? (start it, or pass --socket PATH)"
        ) from None
    except PermissionError:
        raise StatusError(f"{path} is root-only: run as root") from None
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise StatusError(f"the agent at {path} did not answer: {exc}") from None
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise StatusError(f"the agent at {path} answered garbage: {exc}") from None
    if not isinstance(answer, dict):
        raise StatusError(f"the agent at {path} answered {type(answer).__name__}, not an object")
    if "error" in answer:
        raise StatusError(str(answer["error"]))
    return answer


def render_table(status: Mapping[str, Any]) -> str:
    """The human form of a status dictionary (``ipsecctl status``)."""
    lines = []
    applied = status.get("applied") or {}
    lines.append(
        f"node {status.get('node', '?')}  mode {status.get('mode', '?')}  "
        f"health {status.get('health', '?')}  policy {applied.get('source', 'none')}"
        + (
            f" (revision {applied['revision']})"
            if applied.get("revision") and not str(applied.get("source", "")).startswith("revision")
            else ""
        )
    )
    if status.get("policy_error"):
        lines.append(f"last rejected policy: {status['policy_error']}")
    kernel = status.get("kernel") or {}
    if kernel:
        lines.append(
            f"kernel: {kernel.get('policies', 0)} policies, {kernel.get('child_sas', 0)} IKE "
            f"CHILD SAs installed, default {kernel.get('default', '?')}"
        )
    conns = status.get("connections") or []
    if conns:
        header = ("CONNECTION", "PEER", "STATE", "AUTH", "IKE SPIs", "CHILD SAs (in/out)", "REKEYS")
        rows = [header]
        for c in conns:
            children = ", ".join(f"{ch['in']}/{ch['out']}" for ch in c.get("children", [])) or "-"
            rows.append(
                (
                    str(c.get("name")),
                    f"{c.get('peer')} {c.get('remote')}",
                    str(c.get("state")),
                    str(c.get("peer_auth") or "-"),
                    str(c.get("ike_spis") or "-"),
                    children,
                    str(c.get("rekeys", 0)),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            lines.append(
                "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            )
        for c in conns:  # who the peer proved to be (auth certificate)
            if c.get("peer_certificate"):
                lines.append(f"  {c['name']}: peer certificate {c['peer_certificate']}")
        errors = [(c["name"], c["last_error"]) for c in conns if c.get("last_error")]
        for name, err in errors:
            lines.append(f"  {name}: {err}")
    else:
        lines.append("no IKE connections for this node")
    return "\n".join(lines) + "\n"
