"""Join tokens, node CSRs, renewal and node removal over real gRPC and real etcd
(issue #12; controller/joining.py, agent/join.py, docs/security.md "Joining a node").

The joining side is the agent's own code (agent/join.py: the pin check on the chain the
controller presents, the CSR, the files); the controllers serve mTLS from an ``init``
state directory plus their join port (TLS without client certificates)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.credentials import controller_credentials
from agent.join import JoinedFiles, JoinError, join, make_csr, renew
from agent.stream import AgentIdentity, AgentStream, CrlReceived, StreamConnected, StreamEvent
from controller.clientconf import load_config
from controller.embedded_etcd import EtcdProcess
from controller.main import mtls_security
from controller.server import Controller
from controller.statedir import StateDir, init_state, list_records
from ipsecd.jointoken import JoinToken
from ipsecd.v1 import join_pb2, join_pb2_grpc
from tests.integration.controller.clirun import ipsecctl
from tests.integration.controller.harness import address, start_controller, stop_controller
from tests.integration.controller.test_mtls import RPCS
from tests.support.aio import run_async, wait_until
from tests.support.etcd import EtcdTarget, unique_prefix

RPC_TIMEOUT = 10.0
A_ADDRS = ("192.0.2.11", "fd00::11")


@dataclasses.dataclass
class Ctl:
    root: Path
    ca_pem: bytes
    admin: tuple[bytes, bytes]  # cert chain, key
    admin_conf: Path


@pytest.fixture
def ctl(tmp_path: Path) -> Ctl:
    root = tmp_path / "state"
    init_state(root)
    sd = StateDir(root)
    conf = load_config(sd.admin_conf)
    return Ctl(root, sd.ca_cert.read_bytes(), (conf.cert_pem, conf.key_pem), sd.admin_conf)


@asynccontextmanager
async def controller(
    ctl: Ctl, etcd: EtcdTarget, prefix: str = "", **cfg: Any
) -> AsyncIterator[Controller]:
    c = await start_controller(
        etcd,
        cfg.pop("replica_id", "r1"),
        prefix or unique_prefix(),
        security=mtls_security(ctl.root),
        revocation_interval=0.2,
        **cfg,
    )
    try:
        yield c
    finally:
        await stop_controller(c)


def admin_channel(ctl: Ctl, c: Controller) -> grpc.aio.Channel:
    cert, key = ctl.admin
    return grpc.aio.secure_channel(address(c), grpc.ssl_channel_credentials(ctl.ca_pem, key, cert))


async def create_token(ctl: Ctl, c: Controller, **kw: Any) -> JoinToken:
    async with admin_channel(ctl, c) as ch:
        resp = await join_pb2_grpc.NodeAdminServiceStub(ch).CreateToken(
            join_pb2.CreateTokenRequest(**kw), timeout=RPC_TIMEOUT
        )
    return JoinToken.parse(resp.token)


async def tokens(ctl: Ctl, c: Controller) -> dict[str, join_pb2.TokenInfo]:
    async with admin_channel(ctl, c) as ch:
        resp = await join_pb2_grpc.NodeAdminServiceStub(ch).ListTokens(
            join_pb2.ListTokensRequest(), timeout=RPC_TIMEOUT
        )
    return {t.id: t for t in resp.tokens}


async def join_as(
    c: Controller, node: str, token: JoinToken, state: Path, addrs: tuple[str, ...] = A_ADDRS
) -> x509.Certificate:
    return await join([address(c)], c.join_port, node, addrs, token, JoinedFiles(state))


async def raw_join(c: Controller, ctl: Ctl, token: JoinToken, node: str, csr: bytes) -> Any:
    """Join with a hand-made CSR (over the join port, no client certificate)."""
    creds = grpc.ssl_channel_credentials(ctl.ca_pem)
    async with grpc.aio.secure_channel(f"localhost:{c.join_port}", creds) as ch:
        return await join_pb2_grpc.JoinServiceStub(ch).Join(
            join_pb2.JoinRequest(token_id=token.id, token_secret=token.secret, node=node, csr=csr),
            timeout=RPC_TIMEOUT,
        )


async def snapshot(c: Controller) -> list[tuple[str, bytes]]:
    kvs, _ = await c.store.get_prefix(c.keys.root)
    return sorted((kv.key, kv.value) for kv in kvs)


@dataclasses.dataclass
class Streamer:
    """A joined node's stream (the agent's AgentStream with its joined files)."""

    name: str
    files: JoinedFiles
    crls: list[CrlReceived] = dataclasses.field(default_factory=list)
    connected: list[StreamConnected] = dataclasses.field(default_factory=list)
    stream: AgentStream | None = None
    task: asyncio.Task[None] | None = None

    async def on_event(self, ev: StreamEvent) -> None:
        if isinstance(ev, CrlReceived):
            self.crls.append(ev)
        elif isinstance(ev, StreamConnected):
            self.connected.append(ev)

    def start(self, c: Controller) -> Streamer:
        self.stream = AgentStream(
            [address(c)],
            AgentIdentity(self.name, A_ADDRS if self.name == "a" else ("192.0.2.12",)),
            on_event=self.on_event,
            credentials=lambda: controller_credentials(self.files.node_files(), self.name),
            backoff_initial=0.05,
            backoff_max=0.3,
        )
        self.task = asyncio.create_task(self.stream.run())
        return self

    async def stop(self) -> None:
        if self.stream is not None:
            await self.stream.close()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)


def revoked_in(crl_pem: bytes) -> set[int]:
    return {entry.serial_number for entry in x509.load_pem_x509_crl(crl_pem)}


# --------------------------------------------------------------------------- tests


@run_async(120)
async def test_join_is_the_only_rpc_callable_without_a_certificate(
    ctl: Ctl, etcd_session: EtcdProcess
) -> None:
    async with controller(ctl, etcd_session) as c:
        # the state directory's CRL reaches etcd by itself soon after the start: let it
        # land before the snapshots that must not change
        await wait_until(lambda: c.hub.crl_number > 0, 20, "the CRL published")
        token = await create_token(ctl, c, uses=1)
        no_cert = grpc.ssl_channel_credentials(ctl.ca_pem)
        extra = {
            "Renew": lambda ch: join_pb2_grpc.JoinServiceStub(ch).Renew(
                join_pb2.RenewRequest(csr=b"x"), timeout=RPC_TIMEOUT
            ),
            "CreateToken": lambda ch: join_pb2_grpc.NodeAdminServiceStub(ch).CreateToken(
                join_pb2.CreateTokenRequest(), timeout=RPC_TIMEOUT
            ),
            "ListTokens": lambda ch: join_pb2_grpc.NodeAdminServiceStub(ch).ListTokens(
                join_pb2.ListTokensRequest(), timeout=RPC_TIMEOUT
            ),
            "DeleteToken": lambda ch: join_pb2_grpc.NodeAdminServiceStub(ch).DeleteToken(
                join_pb2.DeleteTokenRequest(id=token.id), timeout=RPC_TIMEOUT
            ),
            "RemoveNode": lambda ch: join_pb2_grpc.NodeAdminServiceStub(ch).RemoveNode(
                join_pb2.RemoveNodeRequest(node="a"), timeout=RPC_TIMEOUT
            ),
        }
        # the join port asks for no certificate: every RPC but Join is refused by the
        # authorizer (UNAUTHENTICATED) before its handler runs, and nothing changes
        async with grpc.aio.secure_channel(f"localhost:{c.join_port}", no_cert) as ch:
            for rpc, call in {**RPCS, **extra}.items():
                before = await snapshot(c)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(ch)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc, err.value)
                assert "no client certificate" in (err.value.details() or ""), rpc
                assert await snapshot(c) == before, rpc
        assert c.join_calls == 0
        # the API port still refuses a client without a certificate in the handshake
        async with grpc.aio.secure_channel(f"localhost:{c.port}", no_cert) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await RPCS["History"](ch)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # Join passes the authorizer without a certificate; its token decides
        assert (await tokens(ctl, c))[token.id].uses_left == 1
        cert = await join_as(c, "a", token, ctl.root.parent / "node-a")
        assert c.join_calls == 1
        assert (await tokens(ctl, c))[token.id].uses_left == 0
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["ipsecd://role/node/a"]
        assert sans.get_values_for_type(x509.DNSName) == ["a"]
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == list(A_ADDRS)


@run_async(120)
async def test_join_writes_the_files_and_a_token_is_used_up_and_expires(
    ctl: Ctl, etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    async with controller(ctl, etcd_session) as c:
        token = await create_token(ctl, c, uses=1, ttl_seconds=600)
        files = JoinedFiles(tmp_path / "node-a")
        cert = await join_as(c, "a", token, files.state_dir)
        assert files.present() and files.crl.exists()
        assert files.key.stat().st_mode & 0o777 == 0o600
        assert x509.load_pem_x509_certificates(files.cert.read_bytes())[0] == cert
        assert files.ca.read_bytes() == ctl.ca_pem
        # the CA's index knows it (node removal revokes from it)
        assert any(r.serial == cert.serial_number and r.name == "a" for r in list_records(ctl.root))
        # used up: a second node is refused, and says why
        with pytest.raises(JoinError, match="used up") as err:
            await join_as(c, "b", token, tmp_path / "node-b", ("192.0.2.12",))
        assert err.value.final and token.secret not in str(err.value)
        # a wrong secret: refused without saying more
        forged = JoinToken(token.id, "x" * 32, token.pin)
        with pytest.raises(JoinError, match="not valid"):
            await join_as(c, "b", forged, tmp_path / "node-b", ("192.0.2.12",))
        # expiry: the controller's clock an hour later (the token was valid 10 minutes)
        late = await create_token(ctl, c, uses=5, ttl_seconds=600)
        c.identities.clock = lambda: time.time() + 3600
        with pytest.raises(JoinError, match="expired"):
            await join_as(c, "b", late, tmp_path / "node-b", ("192.0.2.12",))
        c.identities.clock = time.time
        assert (await tokens(ctl, c))[late.id].uses_left == 5  # refusals use nothing
        assert not JoinedFiles(tmp_path / "node-b").present()


@run_async(120)
async def test_two_replicas_never_use_a_token_more_often_than_allowed(
    ctl: Ctl, etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    async with (
        controller(ctl, etcd_session, prefix, replica_id="r1") as c1,
        controller(ctl, etcd_session, prefix, replica_id="r2") as c2,
    ):
        token = await create_token(ctl, c1, uses=3)
        names = [f"n{i}" for i in range(8)]
        results = await asyncio.gather(
            *(
                join_as((c1, c2)[i % 2], name, token, tmp_path / name, (f"192.0.2.{100 + i}",))
                for i, name in enumerate(names)
            ),
            return_exceptions=True,
        )
        ok = [r for r in results if isinstance(r, x509.Certificate)]
        refused = [r for r in results if isinstance(r, JoinError)]
        assert len(ok) == 3 and len(refused) == 5, results
        assert all("used up" in str(e) or "many nodes" in str(e) for e in refused), refused
        info = (await tokens(ctl, c2))[token.id]
        assert info.uses_left == 0 and len(info.used_by) == 3


@run_async(120)
async def test_a_wrong_ca_pin_is_refused_before_any_secret_is_sent(
    ctl: Ctl, etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    init_state(other)
    other_pin = JoinToken.parse(
        "ipsecd1.0123456789." + "A" * 32 + "." + "B" * 43
    ).pin  # a well-formed pin of nothing
    from ipsecd.jointoken import ca_pin

    foreign_pin = ca_pin(StateDir(other).ca_certificates()[0])
    async with controller(ctl, etcd_session) as c:
        token = await create_token(ctl, c, uses=2)
        for pin in (other_pin, foreign_pin):
            wrong = JoinToken(token.id, token.secret, pin)
            with pytest.raises(JoinError, match="no CA with the token's pin") as err:
                await join_as(c, "a", wrong, tmp_path / "node-a")
            assert err.value.final and token.secret not in str(err.value)
        # nothing reached the Join handler; the token is untouched; no file was written
        assert c.join_calls == 0
        assert (await tokens(ctl, c))[token.id].uses_left == 2
        assert not (tmp_path / "node-a").exists()


def _csr(
    key: Any, cn: str, *, sans: list[x509.GeneralName] | None = None, ca: bool = False
) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@run_async(120)
async def test_bad_csrs_are_refused_and_use_nothing(ctl: Ctl, etcd_session: EtcdProcess) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    bad = {
        "wrong name": (_csr(p256, "b"), "is for CN='b', not node 'a'"),
        "wrong SAN": (
            _csr(p256, "a", sans=[x509.DNSName("b")]),
            "names 'b'",
        ),
        "weak RSA key": (
            _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024), "a"),
            "an RSA key of 1024 bits",
        ),
        "other curve": (_csr(ec.generate_private_key(ec.SECP256K1()), "a"), "curve secp256k1"),
        "CA:TRUE": (_csr(p256, "a", ca=True), "asks for a CA certificate"),
        "not a CSR": (b"\x30\x03\x02\x01\x00", "not a DER PKCS#10"),
    }
    async with controller(ctl, etcd_session) as c:
        token = await create_token(ctl, c, uses=1)
        issued = len(list_records(ctl.root))
        for what, (csr, message) in bad.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw_join(c, ctl, token, "a", csr)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert message in (err.value.details() or ""), (what, err.value.details())
        assert (await tokens(ctl, c))[token.id].uses_left == 1
        assert len(list_records(ctl.root)) == issued
        # the same token then works with a good CSR
        good = await raw_join(c, ctl, token, "a", make_csr(p256, "a", ["192.0.2.11"]))
        assert good.serial


@run_async(120)
async def test_a_name_with_a_valid_certificate_joins_again_only_with_its_own_token(
    ctl: Ctl, etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    async with controller(ctl, etcd_session) as c:
        first = await join_as(c, "a", await create_token(ctl, c), tmp_path / "a1")
        # a token for anyone cannot take over the name
        anyone = await create_token(ctl, c, uses=1)
        with pytest.raises(JoinError, match="already holds a valid certificate"):
            await join_as(c, "a", anyone, tmp_path / "a2")
        # nor can a token made for another name
        for_b = await create_token(ctl, c, node="b")
        with pytest.raises(JoinError, match="is for node 'b'"):
            await join_as(c, "a", for_b, tmp_path / "a2")
        # another node cannot name a's addresses once a is registered
        c.view.records["a"] = {"addresses": list(A_ADDRS)}
        with pytest.raises(JoinError, match="registered by node 'a'"):
            await join_as(c, "b", for_b, tmp_path / "b", ("192.0.2.11",))
        # a token made for the name: joins again, and the old certificate is revoked
        again = await create_token(ctl, c, node="a")
        second = await join_as(c, "a", again, tmp_path / "a2")
        assert second.serial_number != first.serial_number
        crl = (tmp_path / "a2" / "crl.pem").read_bytes()
        assert first.serial_number in revoked_in(crl)
        assert second.serial_number not in revoked_in(crl)
        assert anyone.id in await tokens(ctl, c)  # the refusals used nothing
        assert (await tokens(ctl, c))[anyone.id].uses_left == 1


@run_async(120)
async def test_renewal_over_the_stream_for_its_own_name_only(
    ctl: Ctl, etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    async with controller(ctl, etcd_session) as c:
        files = JoinedFiles(tmp_path / "a")
        old = await join_as(c, "a", await create_token(ctl, c), files.state_dir)
        old_key = files.key.read_bytes()
        s = Streamer("a", files).start(c)
        try:
            await wait_until(lambda: bool(s.connected), 20, "a's stream")
            assert s.stream is not None and s.stream.channel is not None
            new = await renew(s.stream.channel, "a", A_ADDRS, files)
            assert new.serial_number != old.serial_number
            assert files.key.read_bytes() != old_key  # a new key
            assert files.key.stat().st_mode & 0o777 == 0o600
            assert x509.load_pem_x509_certificates(files.cert.read_bytes())[0] == new
            assert not list(files.state_dir.glob(".*tmp"))  # written by rename
            # a node asks only for its own name
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await join_pb2_grpc.JoinServiceStub(s.stream.channel).Renew(
                    join_pb2.RenewRequest(
                        csr=make_csr(ec.generate_private_key(ec.SECP256R1()), "b", [])
                    ),
                    timeout=RPC_TIMEOUT,
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not node 'a'" in (err.value.details() or "")
        finally:
            await s.stop()
        # an admin certificate may not renew
        async with admin_channel(ctl, c) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await join_pb2_grpc.JoinServiceStub(ch).Renew(
                    join_pb2.RenewRequest(csr=b"x"), timeout=RPC_TIMEOUT
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


@run_async(150)
async def test_renewal_at_a_replica_without_the_ca_key_is_forwarded_to_the_signer(
    ctl: Ctl, etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    """Only one replica holds pki/ca.key (the Helm chart's signer); a node streaming
    to another replica still renews: that replica forwards the renewal, with its own
    certificate (role controller), to the replica whose record says it signs."""
    import shutil

    plain = tmp_path / "no-ca-key"
    shutil.copytree(ctl.root, plain)
    (plain / "pki" / "ca.key").unlink()
    prefix = unique_prefix()
    other = dataclasses.replace(ctl, root=plain)
    async with (
        controller(ctl, etcd_session, prefix, replica_id="r1") as signer,
        controller(other, etcd_session, prefix, replica_id="r2") as c2,
    ):
        assert signer.identities.can_sign and not c2.identities.can_sign
        await wait_until(
            lambda: bool(c2.view.replicas.get("r1", {}).get("signer")), 20, "r1 known as signer"
        )
        files = JoinedFiles(tmp_path / "a")
        old = await join_as(signer, "a", await create_token(ctl, signer), files.state_dir)
        s = Streamer("a", files).start(c2)
        try:
            await wait_until(lambda: bool(s.connected), 20, "a's stream to r2")
            assert s.stream is not None and s.stream.channel is not None
            new = await renew(s.stream.channel, "a", A_ADDRS, files)
            assert new.serial_number != old.serial_number
            # issued by the signer: in its index, not in r2's copy
            assert new.serial_number in {r.serial for r in list_records(ctl.root)}
            assert new.serial_number not in {r.serial for r in list_records(plain)}
            # a node may not ask for another node's renewal through the forwarding field
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await join_pb2_grpc.JoinServiceStub(s.stream.channel).Renew(
                    join_pb2.RenewRequest(csr=b"x", on_behalf_of="b"), timeout=RPC_TIMEOUT
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await s.stop()


@run_async(150)
async def test_node_remove_revokes_and_the_crl_reaches_connected_agents(
    ctl: Ctl, etcd_session: EtcdProcess, tmp_path: Path
) -> None:
    async with controller(ctl, etcd_session) as c:
        fa, fb = JoinedFiles(tmp_path / "a"), JoinedFiles(tmp_path / "b")
        token = await create_token(ctl, c, uses=2)
        cert_a = await join_as(c, "a", token, fa.state_dir)
        await join_as(c, "b", token, fb.state_dir, ("192.0.2.12",))
        sa, sb = Streamer("a", fa).start(c), Streamer("b", fb).start(c)
        try:
            await wait_until(lambda: {"a", "b"} <= set(c.view.records), 20, "a and b registered")
            await wait_until(lambda: bool(sb.crls), 20, "b gets the current CRL on connect")
            first = sb.crls[-1].number
            env = {"IPSECCTL_CONTROLLER": address(c)}
            out = await ipsecctl("node", "remove", "a", config=ctl.admin_conf, env=env)
            assert out.code == 0, out
            assert f"{cert_a.serial_number:x}" in out.out
            # b's stream brings the new CRL, listing a's certificate
            await wait_until(
                lambda: any(
                    ev.number > first and cert_a.serial_number in revoked_in(ev.pem)
                    for ev in sb.crls
                ),
                20,
                "the CRL revoking a on b's stream",
            )
            # a's stream is closed and its reconnections are refused; it left the registry
            await wait_until(lambda: "a" not in c.hub.streams, 20, "a's stream closed")
            await asyncio.sleep(1.0)  # a keeps retrying meanwhile
            assert "a" not in c.hub.streams
            assert await c.store.get(c.keys.node("a")) is None
            nodes = await ipsecctl("nodes", "-o", "json", config=ctl.admin_conf, env=env)
            assert '"a"' not in nodes.out and '"b"' in nodes.out
            # a second removal: nothing left to revoke, not registered: not found (exit 4)
            again = await ipsecctl("node", "remove", "a", config=ctl.admin_conf, env=env)
            assert again.code == 4, again
        finally:
            await sa.stop()
            await sb.stop()


@run_async(120)
async def test_ipsecctl_token_commands(ctl: Ctl, etcd_session: EtcdProcess) -> None:
    async with controller(ctl, etcd_session) as c:
        env = {"IPSECCTL_CONTROLLER": address(c)}
        made = await ipsecctl(
            "token", "create", "--ttl", "2h", "--uses", "3", config=ctl.admin_conf, env=env
        )
        assert made.code == 0, made
        token = JoinToken.parse(made.out.strip())  # stdout is the token alone
        assert token.pin and "3 use(s)" in made.err
        listed = await ipsecctl("token", "list", config=ctl.admin_conf, env=env)
        assert listed.code == 0 and token.id in listed.out
        assert token.secret not in listed.out + listed.err  # never the secret
        raw = await c.store.get(c.keys.token(token.id))
        assert raw is not None and token.secret.encode() not in raw.value  # only its hash
        bad = await ipsecctl("token", "create", "--ttl", "40d", config=ctl.admin_conf, env=env)
        assert bad.code == 2 and "--ttl" in bad.err
        gone = await ipsecctl("token", "delete", token.id, config=ctl.admin_conf, env=env)
        assert gone.code == 0
        missing = await ipsecctl("token", "delete", token.id, config=ctl.admin_conf, env=env)
        assert missing.code == 4
