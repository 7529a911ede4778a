"""The Helm chart's pods run for real, without Kubernetes (charts/ipsecd, docs/operations.md
"Kubernetes"): the rendered command lines of a bundled etcd member and of the two kinds
of controller pods, with the Secrets laid out as the kubelet mounts them and the
init containers' scripts run on them.

Only what needs a cluster is replaced: pod and Service names by 127.0.0.1 or localhost,
ports by free ones, in-pod paths by temporary folders (and ``--etcd-server-name`` with
the client Service's name, which the controller would otherwise take from the URL).
What runs: etcd 3.4 serving TLS with client certificates from
charts/ipsecd/scripts/etcd-certs.py; the controllers connecting to it with the
rendered flags; a join with the agent's own code on the signer's join port (none on
the other replica); the signer's CA index kept on its volume across a new pod, so that
``ipsecctl node remove`` revokes the node's certificate there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from agent.join import JoinedFiles, join
from controller.embedded_etcd import free_port
from controller.statedir import init_state, list_records
from ipsecd.jointoken import JoinToken
from tests.unit.test_chart import (
    CHART,
    NAMESPACE,
    RELEASE,
    ROOT,
    Pod,
    Rendered,
    _state_dir_script,
    container,
    render,
)

ETCD_SERVICE = f"{RELEASE}-etcd.{NAMESPACE}.svc"
HEADLESS = f"{RELEASE}-etcd-headless.{NAMESPACE}.svc.cluster.local"


@pytest.fixture(scope="module")
def chart() -> Rendered:
    return render({"etcd": {"bundled": {"replicas": 1}}})


def _etcd_argv(r: Rendered, data: Path, tls: Path, ports: dict[int, int]) -> list[str]:
    etcd = container(r.one("StatefulSet", f"{RELEASE}-etcd")["spec"]["template"]["spec"], "etcd")
    assert etcd["command"] == ["etcd"]
    out = []
    for arg in etcd["args"]:
        arg = arg.replace("$(POD_NAME)", f"{RELEASE}-etcd-0")
        arg = arg.replace(f"{RELEASE}-etcd-0.{HEADLESS}", "localhost")
        arg = arg.replace("0.0.0.0", "127.0.0.1").replace("/etc/etcd/tls", str(tls))
        arg = arg.replace("/var/lib/etcd", str(data))
        for port, here in ports.items():
            arg = arg.replace(f":{port}", f":{here}")
        out.append(arg)
    return ["etcd", *out]


def _controller_argv(
    r: Rendered, sts: str, dest: Path, etcd_port: int
) -> tuple[list[str], int, int | None]:
    pod = r.one("StatefulSet", f"{RELEASE}-{sts}")["spec"]["template"]["spec"]
    args = container(pod, "controller")["args"]
    listen, join_port = free_port(), None
    out = []
    for arg in args:
        arg = arg.replace("/var/lib/ipsecd-controller", str(dest))
        arg = arg.replace("$(POD_NAME)", f"{RELEASE}-{sts}-0")
        name, _, value = arg.partition("=")
        if name in ("--listen", "--advertise"):
            arg = f"{name}=127.0.0.1:{listen}"
        elif name == "--join-listen" and value != "none":
            join_port = free_port()
            arg = f"{name}=127.0.0.1:{join_port}"
        elif name == "--metrics-listen":
            arg = f"{name}=127.0.0.1:{free_port()}"
        elif name == "--etcd":
            assert value == f"https://{ETCD_SERVICE}:2379"
            arg = f"--etcd=https://127.0.0.1:{etcd_port}"
        out.append(arg)
    return [*out, f"--etcd-server-name={ETCD_SERVICE}"], listen, join_port


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], out: IO[bytes], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    for proc in p.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """etcd's /health on the rendered metrics URL (the readiness probe's), bounded."""
    for _ in range(300):
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if json.loads(resp.read()).get("health") == "true":
                    return
        except OSError:
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
    pytest.fail(f"etcd never became healthy at {url}: {log.read_text()[-2000:]}")


def _start_controller(
    procs: Procs, argv: list[str], log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """The controller with its output in ``log``; returns once it says where it
    listens (bounded)."""
    with log.open("wb") as out:
        proc = procs.start(
            [sys.executable, "-m", "controller.main", *argv],
            out,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    for _ in range(600):
        text = log.read_text()
        if "listening on" in text:
            return proc, text
        assert proc.poll() is None, text
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)
    pytest.fail(f"the controller never listened: {log.read_text()[-2000:]}")


def _ipsecctl(config: Path, target: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPSECCTL_")}
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "--config", str(config), *args],
        env={**env, "PYTHONPATH": str(ROOT), "IPSECCTL_CONTROLLER": target},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_rendered_pods_run_join_and_keep_the_ca_index(
    chart: Rendered, procs: Procs, tmp_path: Path
) -> None:
    # the operator's steps (NOTES.txt): init, the etcd certificates
    state = tmp_path / "ipsecd-state"
    init_state(state, listen=["0.0.0.0:7480"])
    etcd_pki = tmp_path / "ipsecd-etcd-pki"
    made = subprocess.run(
        [
            sys.executable,
            str(CHART / "scripts" / "etcd-certs.py"),
            f"--fullname={RELEASE}",
            f"--namespace={NAMESPACE}",
            f"--out={etcd_pki}",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert f"create secret generic {RELEASE}-etcd-server" in made.stdout

    # one bundled etcd member with the rendered flags: TLS, client certificates
    ports = {2379: free_port(), 2380: free_port(), 2381: free_port()}
    log = tmp_path / "etcd.log"
    with log.open("wb") as out:
        etcd = procs.start(_etcd_argv(chart, tmp_path / "etcd-data", etcd_pki, ports), out)
    _wait_healthy(f"http://127.0.0.1:{ports[2381]}/health", etcd, log)

    # the two controller pods: their init scripts, then the controllers
    replica_pod = Pod(tmp_path / "replica", state, etcd_pki)
    signer_pod = Pod(tmp_path / "signer", state, etcd_pki)
    for pod, sts in ((replica_pod, "controller"), (signer_pod, "signer")):
        done = pod.run(_state_dir_script(chart, sts))
        assert done.returncode == 0, done.stderr
    argv, replica_port, none = _controller_argv(chart, "controller", replica_pod.dest, ports[2379])
    assert none is None
    replica, replica_out = _start_controller(procs, argv, tmp_path / "replica.log")
    assert "(mTLS)" in replica_out and "joins on" not in replica_out, replica_out
    assert "no CA key" not in replica_out  # --join-listen none: not even looked for
    argv, signer_port, join_port = _controller_argv(chart, "signer", signer_pod.dest, ports[2379])
    assert join_port is not None
    signer, signer_out = _start_controller(procs, argv, tmp_path / "signer.log")
    assert f"joins on 127.0.0.1:{join_port}" in signer_out, signer_out
    assert "plaintext" not in (replica_out + signer_out).lower()

    # a token from any replica (the admin's config from init), a join at the signer
    admin = state / "admin.conf"
    made_token = _ipsecctl(
        admin, f"127.0.0.1:{replica_port}", "token", "create", "--ttl", "1h", "--uses", "3"
    )
    assert made_token.returncode == 0, made_token.stderr
    token = JoinToken.parse(made_token.stdout)
    files = JoinedFiles(tmp_path / "node-a")
    cert = asyncio.run(
        join([f"127.0.0.1:{signer_port}"], join_port, "node-a", ["10.0.0.1"], token, files)
    )
    assert files.present()
    records = [r for r in list_records(signer_pod.dest) if r.name == "node-a"]
    assert [r.serial for r in records] == [cert.serial_number]
    assert (signer_pod.volume / "pki" / "certs.json").read_text().count('"node-a"') == 1

    # a new signer pod on the same volume: the index is still there, node removal
    # revokes the node's certificate there (and only there: the other replica has no CA)
    signer_pod_again = Pod(tmp_path / "signer-new", state, etcd_pki)
    signer_pod_again.volume.rmdir()
    signer_pod_again.volume = signer_pod.volume
    procs.stop(signer)
    done = signer_pod_again.run(_state_dir_script(chart, "signer"))
    assert done.returncode == 0, done.stderr
    argv, signer_port, join_port = _controller_argv(
        chart, "signer", signer_pod_again.dest, ports[2379]
    )
    signer, _ = _start_controller(procs, argv, tmp_path / "signer-new.log")
    elsewhere = _ipsecctl(admin, f"127.0.0.1:{replica_port}", "node", "remove", "node-a")
    assert elsewhere.returncode != 0
    assert "CA key" in elsewhere.stderr, elsewhere.stderr
    removed = _ipsecctl(admin, f"127.0.0.1:{signer_port}", "node", "remove", "node-a")
    assert removed.returncode == 0, removed.stderr
    assert re.search(rf"\b{cert.serial_number:x}\b", removed.stdout + removed.stderr)
    assert [
        r.revoked is not None for r in list_records(signer_pod_again.dest) if r.name == "node-a"
    ] == [True]
    for proc in (replica, signer, etcd):
        procs.stop(proc)
