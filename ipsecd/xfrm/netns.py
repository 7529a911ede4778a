"""Run a function inside a network namespace, in a helper thread.

``setns(2)`` moves only the calling thread, so each call spawns a short-lived thread,
enters the namespace there, runs the function and ends; the caller's namespace never
changes.  Sockets created inside keep their namespace for their whole life.

A namespace is given as a name (``/run/netns/NAME``, as ``ip netns add`` creates), a
path, an open file descriptor, or ``None`` for the caller's own namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from .errors import XfrmNamespaceError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")
Netns = str | int | None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise XfrmNamespaceError(f"setns failed: {os.strerror(err)}", errno=err)


def _unshare() -> None:
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise XfrmNamespaceError(
            f"unshare(CLONE_NEWNET) failed: {os.strerror(err)} (needs CAP_SYS_ADMIN)", errno=err
        )


def describe(netns: Netns) -> str:
    if netns is None:
        return "the current network namespace"
    if isinstance(netns, int):
        return f"network namespace fd {netns}"
    return f"network namespace {netns!r}"


def _open(netns: str | int) -> tuple[int, bool]:
    if isinstance(netns, int):
        return netns, False
    path = netns if "/" in netns else f"/run/netns/{netns}"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), True
    except OSError as exc:
        raise XfrmNamespaceError(
            f"cannot open {describe(netns)} at {path}: {exc.strerror} "
            f"(create it with `ip netns add {netns}`)",
            errno=exc.errno or 0,
        ) from exc


def run_in(netns: Netns, fn: Callable[[], T], *, fresh: bool = False) -> T:
    """Call ``fn()`` in ``netns`` (or in a brand-new anonymous one with ``fresh``)."""
    if netns is None and not fresh:
        return fn()
    box: dict[str, object] = {}
    fd, close = (-1, False) if fresh or netns is None else _open(netns)

    def target() -> None:
        try:
            if fresh:
                _unshare()
            else:
                _setns(fd)
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    try:
        t = threading.Thread(target=target, name="ipsecd-netns", daemon=True)
        t.start()
        t.join()
    finally:
        if close:
            os.close(fd)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def open_fresh() -> int:
    """A new, empty, anonymous network namespace; returns an fd (close it to drop it)."""

    def grab() -> int:
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    return run_in(None, grab, fresh=True)
