"""Run ipsecctl's remote subcommands as a real process: plaintext (``--insecure``, the
default here: most controllers of the tests serve plaintext) or with an ipsecctl config
(``config=``, mTLS)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


WARNING = "warning: --insecure: plaintext gRPC to "


async def ipsecctl(
    *args: str,
    controller: str | None = None,
    timeout: float = 30,
    config: Path | None = None,
    insecure: bool | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> Result:
    """``ipsecctl ARGS``; ``insecure`` (default: when no ``config`` is given) adds
    ``--insecure`` and takes its warning off ``err`` after checking it is there."""
    environ = dict(os.environ)
    environ.pop("IPSECCTL_CONTROLLER", None)
    environ.pop("IPSECCTL_CONFIG", None)
    environ.update(env or {})
    if controller is not None:
        environ["IPSECCTL_CONTROLLER"] = controller
    if insecure is None:
        insecure = config is None
    extra = ["--insecure"] if insecure else []
    if config is not None:
        extra += ["--config", str(config)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.cli",
        *extra,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    text = err.decode()
    if insecure and "--local" not in args:
        first, _, rest = text.partition("\n")
        assert first.startswith(WARNING), text  # on every run
        text = rest
    return Result(proc.returncode, out.decode(), text)
