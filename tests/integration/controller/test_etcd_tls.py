"""TLS with client certificates between the controller and a real etcd (issue #12;
controller/etcd_pki.py, controller/etcd_tls.py, docs/security.md "The etcd link").

etcd as the controller runs it privately (TLS only, ``--client-cert-auth``, its own
etcd CA) refuses, in etcd's own words (its log) and for etcd's own client (etcdctl):
a client without a certificate, one with a certificate of another etcd CA, one with a
certificate of the cluster CA (a node's), and a plaintext client; what it accepts is
the controller's client certificate.  The controller's store names the side that
refused and the file to fix.  And the other way round: the controller's API refuses
the etcd client certificate (a CA of its own, docs/security.md "The etcd link")."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from controller.ca import CertificateAuthority, Role, key_pem, pem, write_private
from controller.clientconf import load_config
from controller.embedded_etcd import EtcdProcess
from controller.errors import StoreUnavailable
from controller.etcd_pki import EtcdPki, ensure_etcd_pki
from controller.etcd_store import EtcdStore
from controller.etcd_tls import EtcdClientTls, load_client_tls
from controller.main import mtls_security
from controller.statedir import init_state
from ipsecd.v1 import policy_pb2, policy_pb2_grpc
from tests.integration.controller.harness import address, start_controller, stop_controller
from tests.support.aio import run_async
from tests.support.etcd import unique_prefix


def etcdctl(etcd: EtcdProcess, *args: str, **tls: Path) -> subprocess.CompletedProcess[str]:
    """etcd's own client (Debian etcd-client); ``tls``: cacert=, cert=, key=."""
    flags = [f"--{name}={path}" for name, path in tls.items()]
    return subprocess.run(
        ["etcdctl", "--endpoints", etcd.url, "--dial-timeout=1s", "--command-timeout=1s",
         *flags, *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip


def log_of(etcd: EtcdProcess) -> str:
    return etcd.log_path.read_text(errors="replace")


def cluster_ca_node_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A node certificate of a cluster CA (what every agent holds), as files."""
    ca = CertificateAuthority.create()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(Role.NODE, "node-a", key.public_key(), hosts=["127.0.0.1"])
    write_private(tmp_path / "node-a.key", key_pem(key))
    write_private(tmp_path / "node-a.pem", pem(cert))
    return tmp_path / "node-a.pem", tmp_path / "node-a.key"


def test_tls_etcd_admits_only_the_etcd_cas_client_certificate(
    etcd_server: EtcdProcess, tmp_path: Path
) -> None:
    assert etcd_server.tls is not None and etcd_server.url.startswith("https://")
    pki = etcd_server.tls
    good = {"cacert": pki.ca_cert, "cert": pki.client_cert, "key": pki.client_key}
    key = unique_prefix() + "k"
    # the controller's client certificate: admitted (etcdctl works here at all)
    done = etcdctl(etcd_server, "put", key, "v1", **good)
    assert done.returncode == 0 and done.stdout.strip() == "OK", done

    refused_before = log_of(etcd_server).count("rejected connection")
    # no client certificate
    done = etcdctl(etcd_server, "put", key, "no-cert", cacert=pki.ca_cert)
    assert done.returncode != 0, done
    assert "client didn't provide a certificate" in log_of(etcd_server)
    # a client certificate of another etcd CA
    other = ensure_etcd_pki(tmp_path / "other-pki")
    done = etcdctl(
        etcd_server, "put", key, "foreign", cacert=pki.ca_cert,
        cert=other.client_cert, key=other.client_key,
    )  # fmt: skip
    assert done.returncode != 0, done
    # a node certificate of the cluster CA: the cluster CA is not etcd's CA
    node_cert, node_key = cluster_ca_node_cert(tmp_path)
    done = etcdctl(
        etcd_server, "put", key, "node", cacert=pki.ca_cert, cert=node_cert, key=node_key
    )
    assert done.returncode != 0, done
    log = log_of(etcd_server)
    assert log.count("certificate signed by unknown authority") >= 2, log[-2000:]
    # plaintext to the TLS port
    with pytest.raises(StoreUnavailable):
        asyncio.run(EtcdStore.connect(etcd_server.url.replace("https://", "http://")))
    assert log_of(etcd_server).count("rejected connection") >= refused_before + 3
    # nothing of it was written
    done = etcdctl(etcd_server, "get", key, "--print-value-only", **good)
    assert done.returncode == 0 and done.stdout.strip() == "v1", done


def _tls(
    pki_ca: Path, cert: Path | None, key: Path | None, name: str | None = None
) -> EtcdClientTls:
    return load_client_tls(pki_ca, cert, key, server_name=name)


async def _refusal(url: str, tls: EtcdClientTls | None) -> str:
    with pytest.raises(StoreUnavailable) as info:
        await EtcdStore.connect(url, tls=tls, timeout=2.0, retry_budget=3.0)
    message = str(info.value)
    assert "\n" not in message and "PRIVATE KEY" not in message, message
    return message


@run_async(60)
async def test_the_store_says_which_side_refused(
    etcd_server: EtcdProcess, etcd_plaintext: EtcdProcess, tmp_path: Path
) -> None:
    pki = etcd_server.tls
    assert pki is not None
    url = etcd_server.url
    # etcd refuses: no client certificate, another CA's
    msg = await _refusal(url, _tls(pki.ca_cert, None, None))
    assert "etcd requires a client certificate" in msg and "--etcd-cert" in msg, msg
    other = ensure_etcd_pki(tmp_path / "other-pki")
    msg = await _refusal(url, _tls(pki.ca_cert, other.client_cert, other.client_key))
    assert f"etcd refused the controller's client certificate {other.client_cert}" in msg, msg
    assert "--trusted-ca-file" in msg, msg
    node_cert, node_key = cluster_ca_node_cert(tmp_path)
    msg = await _refusal(url, _tls(pki.ca_cert, node_cert, node_key))
    assert "etcd refused the controller's client certificate" in msg, msg
    # the controller refuses: etcd's certificate is of another CA, or names another host
    msg = await _refusal(url, _tls(other.ca_cert, pki.client_cert, pki.client_key))
    assert "the controller refused etcd's certificate" in msg, msg
    assert f"is {other.ca_cert} (--etcd-cacert) the CA" in msg, msg
    msg = await _refusal(url, _tls(pki.ca_cert, pki.client_cert, pki.client_key, "etcd.example"))
    assert "does not name 'etcd.example'" in msg and "--etcd-server-name" in msg, msg
    # TLS to a plaintext etcd, and the scheme rules
    plain_host = etcd_plaintext.url.removeprefix("http://")
    msg = await _refusal(
        f"https://{plain_host}", _tls(pki.ca_cert, pki.client_cert, pki.client_key)
    )
    assert "the TLS handshake failed" in msg and "does it serve TLS?" in msg, msg
    msg = await _refusal(url, None)
    assert "are https:// but no TLS credentials were given" in msg, msg
    msg = await _refusal(etcd_plaintext.url, etcd_server.client_tls())
    assert "are http:// but TLS credentials were given" in msg, msg
    # endpoints naming different hosts: one server name for all, --etcd-server-name
    port = url.rsplit(":", 1)[1]
    two_names = f"https://127.0.0.1:{port},https://localhost:{port}"
    msg = await _refusal(two_names, _tls(pki.ca_cert, pki.client_cert, pki.client_key))
    assert "name different hosts" in msg and "--etcd-server-name NAME" in msg, msg
    named = _tls(pki.ca_cert, pki.client_cert, pki.client_key, "localhost")
    # what works: the etcd CA's client certificate (with a server name its certificate
    # carries); and a plaintext etcd by its URL
    for target, tls in (
        (url, etcd_server.client_tls()),
        (two_names, named),
        (etcd_plaintext.url, None),
    ):
        store = await EtcdStore.connect(target, tls=tls)
        try:
            key = unique_prefix() + "k"
            await store.put(key, b"v")
            got = await store.get(key)
            assert got is not None and got.value == b"v"
        finally:
            await store.close()


@run_async(60)
async def test_a_member_that_refuses_is_named_while_the_others_serve(
    etcd_server: EtcdProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two endpoints, one of them an etcd with another CA's certificate: the store
    connects through the good one and warns about the other by its address."""
    other = EtcdProcess(tmp_path / "other-etcd", tls=ensure_etcd_pki(tmp_path / "other-pki"))
    other.start()
    try:
        with caplog.at_level(logging.WARNING, logger="controller.etcd_store"):
            store = await EtcdStore.connect(
                f"{etcd_server.url},{other.url}", tls=etcd_server.client_tls()
            )
        try:
            await store.put(unique_prefix() + "k", b"v")
        finally:
            await store.close()
        port = other.url.rsplit(":", 1)[1]
        warned = [r.getMessage() for r in caplog.records]
        assert any(
            f"127.0.0.1:{port}: the controller refused etcd's certificate" in w for w in warned
        ), warned
        good_port = etcd_server.url.rsplit(":", 1)[1]
        assert not any(f":{good_port}:" in w for w in warned), warned
    finally:
        other.stop(kill=True)


@run_async(60)
async def test_the_etcd_client_certificate_opens_nothing_on_the_controller_api(
    etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    """init makes the etcd PKI; its client certificate (a full etcd credential) is
    refused by the controller's mTLS API at the handshake, where an admin's works."""
    state = tmp_path / "state"
    init_state(state)
    pki = EtcdPki(state / "etcd-pki")
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in pki.files())
    c = await start_controller(etcd_session, "r1", unique_prefix(), security=mtls_security(state))
    try:
        admin = load_config(state / "admin.conf")

        async def history(cert: bytes, key: bytes) -> policy_pb2.HistoryResponse:
            creds = grpc.ssl_channel_credentials(admin.ca_pem, key, cert)
            async with grpc.aio.secure_channel(address(c), creds) as channel:
                stub = policy_pb2_grpc.PolicyServiceStub(channel)
                return await stub.History(policy_pb2.HistoryRequest(), timeout=10)

        await history(admin.cert_pem, admin.key_pem)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await history(pki.client_cert.read_bytes(), pki.client_key.read_bytes())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    finally:
        await stop_controller(c)
