"""``ipsecd-controller`` as a real process: private etcd by default, state kept across
restarts, etcd killed with the controller (even on SIGKILL), external --etcd (all
plaintext, ``--insecure``; mTLS: test_mtls_entrypoint.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from controller.cli_remote import EXIT
from controller.embedded_etcd import EtcdProcess, free_port
from tests.integration.controller.clirun import ipsecctl
from tests.support.aio import run_async, wait_until
from tests.support.policies import policy


def _etcd_pids(state_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"etcd") and str(state_dir).encode() in b" ".join(cmd):
            pids.append(int(entry.name))
    return pids


async def _start(*args: str, insecure: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    extra = ["--insecure"] if insecure else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.main", "--listen", f"127.0.0.1:{port}", *extra, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    try:
        while not lines or b"listening on" not in lines[-1]:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            assert line, b"".join(lines)
            lines.append(line)
    finally:
        proc.stdout.close()
    assert (b"mTLS" in lines[-1]) != insecure, lines
    # --insecure warns on every start
    assert any(b"WARNING" in ln and b"--insecure" in ln for ln in lines) == insecure, lines
    return proc, f"127.0.0.1:{port}"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@run_async(90)
async def test_private_etcd_survives_restarts_and_dies_with_controller(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spd = tmp_path / "p.spd"
    spd.write_text(policy(1))
    spd.chmod(0o600)
    proc, ctl = await _start("--state-dir", str(state))
    try:
        assert len(_etcd_pids(state)) == 1
        r = await ipsecctl("push", str(spd), controller=ctl)
        assert r.code == 0, r
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        await wait_until(lambda: not _etcd_pids(state), 10, "private etcd to die with it")
        proc, ctl = await _start("--state-dir", str(state))
        r = await ipsecctl("get", controller=ctl)
        assert r.code == 0 and r.out == policy(1), r  # kept in the state dir
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not _etcd_pids(state)
    finally:
        _kill(proc)


@run_async(60)
async def test_external_etcd_and_bad_etcd_is_a_one_line_error(
    etcd_server: EtcdProcess, tmp_path: Path
) -> None:
    proc, ctl = await _start("--etcd", etcd_server.url, "--state-dir", str(tmp_path / "unused"))
    try:
        r = await ipsecctl("history", controller=ctl)
        assert r.code == EXIT["ok"], r
        assert not (tmp_path / "unused").exists()  # no private etcd
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        _kill(proc)
    dead = subprocess.run(
        [sys.executable, "-m", "controller.main", "--etcd", f"127.0.0.1:{free_port()}",
         "--listen", f"127.0.0.1:{free_port()}", "--insecure"],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )  # fmt: skip
    assert dead.returncode == 1
    warning, no_envelope, error = dead.stderr.splitlines()
    assert "WARNING" in warning and "--insecure: plaintext gRPC" in warning  # every start
    assert "WARNING" in no_envelope and "no envelope key" in no_envelope
    assert error.startswith("error: etcd at 127.0.0.1:") and "Traceback" not in dead.stderr
