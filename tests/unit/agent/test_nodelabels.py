"""agent.nodelabels: the Helm chart's agent reads its Node's labels from the Kubernetes
API and execs ipsecd with --labels.  A real HTTPS server on 127.0.0.1 stands in for the
API server (TLS with a CA made by ``ipsecd-controller init``); the exec is real too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent import nodelabels
from controller.statedir import init_state

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "sa-token-0123456789abcdef"
NODE = {
    "kind": "Node",
    "apiVersion": "v1",
    "metadata": {
        "name": "node-a",
        "labels": {
            "kubernetes.io/hostname": "node-a",
            "topology.kubernetes.io/zone": "eu-1a",
            "node-role.kubernetes.io/control-plane": "",
            "role": "db",
        },
    },
}


@dataclass
class FakeApi:
    base: str
    sa_dir: Path
    requests: list[tuple[str, str]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApi]:
    import ssl

    state = tmp_path / "ca"
    init_state(state, listen=["127.0.0.1:7480"], advertise=[], extra_hosts=[])
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(TOKEN + "\n")
    (sa / "ca.crt").write_bytes((state / "pki" / "ca.pem").read_bytes())
    fake = FakeApi("", sa)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.requests.append((self.path, self.headers.get("Authorization", "")))
            if fake.status != 200:
                self.send_error(fake.status)
                return
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_error(401)
                return
            if self.path != "/api/v1/nodes/node-a":
                self.send_error(404)
                return
            body = json.dumps(NODE).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # the refused handshake of test_untrusted_server_is_refused

    server = Server(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(state / "pki" / "server.pem", state / "pki" / "server.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.base = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _env(api: FakeApi) -> dict[str, str]:
    host, port = api.base.removeprefix("https://").rsplit(":", 1)
    return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}


def test_fetch_labels_over_tls_with_the_token(api: FakeApi) -> None:
    labels = nodelabels.fetch_labels(
        "node-a", base=api.base, token=TOKEN, cafile=api.sa_dir / "ca.crt"
    )
    assert labels == NODE["metadata"]["labels"]  # type: ignore[index]
    assert api.requests == [("/api/v1/nodes/node-a", f"Bearer {TOKEN}")]


def test_forbidden_names_the_cluster_role_and_never_the_token(api: FakeApi) -> None:
    api.status = 403
    with pytest.raises(nodelabels.ApiError) as err:
        nodelabels.fetch_labels("node-a", base=api.base, token=TOKEN, cafile=api.sa_dir / "ca.crt")
    assert "HTTP 403" in str(err.value) and "ClusterRole" in str(err.value)
    assert TOKEN not in str(err.value)


def test_untrusted_server_is_refused(api: FakeApi, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_state(other, listen=["127.0.0.1:7480"], advertise=[], extra_hosts=[])
    with pytest.raises(nodelabels.ApiError, match="CERTIFICATE_VERIFY_FAILED"):
        nodelabels.fetch_labels(
            "node-a", base=api.base, token=TOKEN, cafile=other / "pki" / "ca.pem"
        )
    assert api.requests == []  # the token never left


def test_selection_and_argument() -> None:
    labels = NODE["metadata"]["labels"]  # type: ignore[index]
    assert nodelabels.select_labels(labels, ["role", "absent"], {"tier": "a"}) == {
        "role": "db",
        "tier": "a",
    }
    everything = nodelabels.select_labels(labels, [], {})
    assert nodelabels.labels_argument(everything) == (
        "kubernetes.io/hostname=node-a,node-role.kubernetes.io/control-plane=,"
        "role=db,topology.kubernetes.io/zone=eu-1a"
    )
    with pytest.raises(nodelabels.ApiError, match="cannot be passed"):
        nodelabels.labels_argument({"a": "b,c"})


def _run(api: FakeApi, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **_env(api), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.nodelabels",
            "--node=node-a",
            f"--service-account={api.sa_dir}",
            f"--cache={cache}",
            *extra,
            "--",
            sys.executable,
            "-c",
            "import json, os, sys; print(json.dumps([os.getpid(), sys.argv[1:]]))",
            "--node=node-a",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_execs_the_command_with_labels_then_falls_back_to_the_cache(
    api: FakeApi, tmp_path: Path
) -> None:
    cache = tmp_path / "node-labels.json"
    done = _run(api, cache, "--keys=role,topology.kubernetes.io/zone", "--extra=tier=front")
    assert done.returncode == 0, done.stderr
    _pid, argv = json.loads(done.stdout)
    assert argv == [
        "--node=node-a",
        "--labels",
        "role=db,tier=front,topology.kubernetes.io/zone=eu-1a",
    ]
    assert cache.stat().st_mode & 0o777 == 0o600
    assert json.loads(cache.read_text()) == NODE["metadata"]["labels"]  # type: ignore[index]

    api.status = 503  # the API server is down: the last labels, and a warning
    done = _run(api, cache, "--keys=role")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[1] == ["--node=node-a", "--labels", "role=db"]
    assert "HTTP 503" in done.stderr and str(cache) in done.stderr
    assert TOKEN not in done.stderr


def test_no_api_and_no_cache_stops_with_the_reason(api: FakeApi, tmp_path: Path) -> None:
    api.status = 403
    done = _run(api, tmp_path / "absent.json")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "error: GET" in done.stderr and "ClusterRole" in done.stderr
