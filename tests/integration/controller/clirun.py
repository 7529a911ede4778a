"""Run ipsecctl's remote subcommands as a real process."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


async def ipsecctl(*args: str, controller: str | None = None, timeout: float = 30) -> Result:
    env = dict(os.environ)
    env.pop("IPSECCTL_CONTROLLER", None)
    if controller is not None:
        env["IPSECCTL_CONTROLLER"] = controller
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
