"""``ipsecd-controller`` as a real process: private etcd by default (TLS only, with the
etcd CA of the state directory), state kept across restarts, etcd killed with the
controller (even on SIGKILL), external --etcd over TLS with the etcdctl-named flags and
their errors, plaintext etcd only with --insecure or --etcd-plaintext (the API is
plaintext here, ``--insecure``; mTLS: test_mtls.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from controller.cli_remote import EXIT
from controller.embedded_etcd import EtcdProcess, free_port
from controller.statedir import init_state
from tests.integration.controller.clirun import ipsecctl
from tests.support.aio import run_async, wait_until
from tests.support.policies import policy


def _etcd_pids(state_dir: Path) -> list[int]:
    return list(_etcd_cmdlines(state_dir))


def _etcd_cmdlines(state_dir: Path) -> dict[int, list[str]]:
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"etcd") and str(state_dir).encode() in b" ".join(cmd):
            pids[int(entry.name)] = [arg.decode() for arg in cmd]
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
        ((cmd),) = _etcd_cmdlines(state).values()
        # TLS only, client certificates of the etcd CA made in the state directory
        pki = state / "etcd-pki"
        assert "--client-cert-auth" in cmd and cmd[cmd.index("--trusted-ca-file") + 1] == str(
            pki / "ca.pem"
        )
        urls = cmd[cmd.index("--listen-client-urls") + 1]
        assert urls.startswith("https://127.0.0.1:"), cmd
        assert cmd[cmd.index("--listen-peer-urls") + 1].startswith("http://127.0.0.1:")
        for name in ("ca", "server", "client"):
            for ext in ("pem", "key"):
                assert (pki / f"{name}.{ext}").stat().st_mode & 0o777 == 0o600
        etcd_ca = (pki / "ca.pem").read_bytes()
        r = await ipsecctl("push", str(spd), controller=ctl)
        assert r.code == 0, r
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        await wait_until(lambda: not _etcd_pids(state), 10, "private etcd to die with it")
        proc, ctl = await _start("--state-dir", str(state))
        r = await ipsecctl("get", controller=ctl)
        assert r.code == 0 and r.out == policy(1), r  # kept in the state dir
        assert (pki / "ca.pem").read_bytes() == etcd_ca  # and so is the etcd CA
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not _etcd_pids(state)
    finally:
        _kill(proc)


@run_async(60)
async def test_plaintext_etcd_with_insecure_and_bad_etcd_is_a_one_line_error(
    etcd_plaintext: EtcdProcess, tmp_path: Path
) -> None:
    proc, ctl = await _start("--etcd", etcd_plaintext.url, "--state-dir", str(tmp_path / "unused"))
    try:
        r = await ipsecctl("history", controller=ctl)
        assert r.code == EXIT["ok"], r
        assert not (tmp_path / "unused").exists()  # no private etcd
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        _kill(proc)
    dead = _run("--etcd", f"127.0.0.1:{free_port()}", "--insecure")
    assert dead.returncode == 1
    warning, no_envelope, etcd_warning, error = dead.stderr.splitlines()
    assert "WARNING" in warning and "--insecure: plaintext gRPC" in warning  # every start
    assert "WARNING" in no_envelope and "no envelope key" in no_envelope
    assert "WARNING" in etcd_warning and "plaintext etcd" in etcd_warning  # every start
    assert error.startswith("error: etcd at 127.0.0.1:") and "Traceback" not in dead.stderr


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.main", "--listen", f"127.0.0.1:{free_port()}", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )  # fmt: skip


@run_async(90)
async def test_external_etcd_over_tls_and_what_its_flags_refuse(
    etcd_server: EtcdProcess, tmp_path: Path
) -> None:
    pki = etcd_server.tls
    assert pki is not None
    flags = ["--etcd", etcd_server.url, "--etcd-cacert", str(pki.ca_cert),
             "--etcd-cert", str(pki.client_cert), "--etcd-key", str(pki.client_key)]  # fmt: skip
    proc, ctl = await _start(*flags, "--state-dir", str(tmp_path / "unused"))
    try:
        spd = tmp_path / "p.spd"
        spd.write_text(policy(2))
        spd.chmod(0o600)
        r = await ipsecctl("push", str(spd), controller=ctl)
        assert r.code == EXIT["ok"], r
        r = await ipsecctl("history", controller=ctl)
        assert r.code == EXIT["ok"] and "1" in r.out, r
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        _kill(proc)

    def error_of(*args: str) -> str:
        done = _run(*args)
        assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done
        return done.stderr.splitlines()[-1]

    # https:// without the CA
    err = error_of("--insecure", "--etcd", etcd_server.url)
    assert "is https:// and needs --etcd-cacert FILE" in err, err
    # a key others can read: the chmod
    key = tmp_path / "client.key"
    key.write_bytes(pki.client_key.read_bytes())
    key.chmod(0o644)
    err = error_of("--insecure", *flags[:-1], str(key))
    assert f"run chmod 600 {key}" in err and "--etcd-key" in err, err
    # a key that is not the certificate's
    key.chmod(0o600)
    key.write_bytes(pki.server_key.read_bytes())
    err = error_of("--insecure", *flags[:-1], str(key))
    assert f"{key} (--etcd-key) is not the key of the certificate in {pki.client_cert}" in err
    # a missing file
    err = error_of("--insecure", *flags[:5], str(tmp_path / "nope.pem"), *flags[6:])
    assert f"{tmp_path / 'nope.pem'}: no such file" in err and "--etcd-cert" in err, err
    # TLS flags without --etcd: usage error
    err = error_of("--insecure", *flags[2:])
    assert "only go with --etcd URL" in err, err
    # http:// etcd with an mTLS API: refused unless --etcd-plaintext, then a warning
    state = tmp_path / "state"
    init_state(state)
    plain = f"http://127.0.0.1:{free_port()}"
    err = error_of("--state-dir", str(state), "--etcd", plain)
    assert "is plaintext" in err and "--etcd-plaintext" in err and "--etcd-cacert" in err, err
    done = _run("--state-dir", str(state), "--etcd", plain, "--etcd-plaintext")
    assert done.returncode == 1, done  # nothing listens there
    etcd_warning, error = done.stderr.splitlines()
    assert "WARNING" in etcd_warning and "plaintext etcd" in etcd_warning, done.stderr
    assert error.startswith(f"error: etcd at {plain.removeprefix('http://')}"), done.stderr
