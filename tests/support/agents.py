"""Node agents for tests: ``ipsecd`` daemons in network namespaces.

* :func:`running` — agents in this process (one asyncio loop, one :class:`Daemon` per
  namespace): cheap under the kernel lab's emulation, and their objects can be
  inspected (status, supervisor, writer).
* :class:`AgentProcess` — an ``ipsecd`` process (``python -m agent.main``) for what
  needs a real process (kill -9, signals).
* :func:`ping` — ``ping`` in a namespace, with its counts.

Every agent gets its own state directory and status socket under ``workdir``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.daemon import AgentOptions, Daemon
from ipsecd.ike import RetransmitConfig
from tests.support.netns import Netns

__all__ = ["AgentProcess", "PingResult", "options", "ping", "running", "write_private"]

CHECKOUT = Path(__file__).resolve().parents[2]
#: Patient enough for the emulated kernel lab, quick enough for tests.
LAB_RETRANSMIT = RetransmitConfig(timeout=1.0, base=1.5, max_retransmits=6, limit=8.0)


def write_private(path: Path, text: str) -> Path:
    """A 0600 file (SPD files with literal keys must be)."""
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o600)
    return path


def options(name: str, ns: Netns, workdir: Path, **kw: object) -> AgentOptions:
    state = workdir / f"agent-{name}"
    opts = AgentOptions(
        node=name, netns=ns.name, state_dir=state, socket_path=state / "ipsecd.sock",
        retransmit=LAB_RETRANSMIT,
    )  # fmt: skip
    for key, value in kw.items():
        setattr(opts, key, value)
    return opts


@contextlib.asynccontextmanager
async def running(opts: Sequence[AgentOptions]) -> AsyncIterator[dict[str, Daemon]]:
    """Start a Daemon per options (in this loop); stop them all at the end."""
    daemons = {o.node: Daemon(o) for o in opts}
    tasks = {n: asyncio.create_task(d.run(), name=f"agent-{n}") for n, d in daemons.items()}
    try:
        await asyncio.sleep(0)
        yield daemons
    finally:
        for d in daemons.values():
            d.stop()
        for n, t in tasks.items():
            try:
                await asyncio.wait_for(t, 15)
            except Exception as exc:  # report, keep stopping the others
                print(f"agent {n} did not stop cleanly: {type(exc).__name__}: {exc}")


@dataclass
class PingResult:
    sent: int
    received: int
    output: str = field(repr=False)

    @property
    def lost(self) -> int:
        return self.sent - self.received


async def ping(ns: Netns, dst: str, *, count: int, interval: float = 0.2,
               deadline: float | None = None) -> PingResult:  # fmt: skip
    """``ping -c COUNT -i INTERVAL DST`` in ``ns`` (asynchronously)."""
    argv = ns.argv(["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2", dst])
    if deadline is not None:
        argv += ["-w", str(int(deadline))]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)  # fmt: skip
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", text)
    if m is None and "Operation not permitted" in text:
        return PingResult(0, 0, text)  # refused locally (EPERM): a blocking policy
    if m is None:
        raise AssertionError(f"ping in {ns.name} gave no summary: {text!r}")
    return PingResult(int(m.group(1)), int(m.group(2)), text)


class AgentProcess:
    """``ipsecd`` as its own process in a namespace (for kill -9 and signals)."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self.args = list(args)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.main", *self.args], stdout=fh, stderr=subprocess.STDOUT,
            cwd=CHECKOUT,
        )  # fmt: skip
        fh.close()
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"ipsecd did not stop within {timeout:g} s") from None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
