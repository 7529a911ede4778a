"""Authorization (controller/authz.py): the one table covers every RPC of the API and
nothing else; certificates are authenticated by CA, validity, CRL and role; the rules
for secrets and node streams.  (Over real gRPC: tests/integration/controller/test_mtls.py.)"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.authz import (
    METHOD_ROLES,
    WITHOUT_CERTIFICATE,
    CertificateAuthorizer,
    Denied,
    InsecureAuthorizer,
    Principal,
)
from controller.ca import CertificateAuthority, Role, pem
from ipsecd.v1 import agent_pb2, join_pb2, policy_pb2, rollout_pb2, status_pb2


class FakeContext:
    def __init__(self, cert: x509.Certificate | None = None, peer: str = "ipv4:10.0.0.1:5") -> None:
        self._auth: dict[str, list[bytes]] = {}
        if cert is not None:
            self._auth = {
                "transport_security_type": [b"ssl"],
                "x509_pem_cert": [pem(cert)],
            }
        self._peer = peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return self._peer


class NoCertContext(FakeContext):
    """TLS, no client certificate (the join port asks for none)."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"transport_security_type": [b"ssl"]}


def _rpcs() -> set[str]:
    out = set()
    for module in (agent_pb2, join_pb2, policy_pb2, rollout_pb2, status_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out.add(f"/{service.full_name}/{method.name}")
    return out


def test_the_table_covers_every_rpc_and_nothing_else() -> None:
    assert set(METHOD_ROLES) == _rpcs()
    # the issue's rules, spelled out
    writes = {
        "/ipsecd.v1.PolicyService/Push",
        "/ipsecd.v1.PolicyService/Rollback",
        "/ipsecd.v1.PolicyService/SetSecret",
        "/ipsecd.v1.PolicyService/DeleteSecret",
    }
    writes |= {m for m in METHOD_ROLES if m.startswith("/ipsecd.v1.NodeAdminService/")}
    writes |= {
        f"/ipsecd.v1.RolloutService/{m}" for m in ("Start", "Pause", "Resume", "Abort", "Rollback")
    }
    assert {"/ipsecd.v1.JoinService/Join"} == WITHOUT_CERTIFICATE
    node_only = {
        "/ipsecd.v1.AgentService/Connect",
        "/ipsecd.v1.AgentService/FetchSecrets",
        "/ipsecd.v1.JoinService/Renew",
    }
    for method, roles in METHOD_ROLES.items():
        if method in writes:
            assert roles == {Role.ADMIN}, method
        elif method in node_only:
            assert Role.NODE in roles and roles <= {Role.NODE, Role.CONTROLLER}, method
        elif method in WITHOUT_CERTIFICATE:
            continue  # the token in the request authenticates
        else:  # reads: admin and viewer, never a node
            assert {Role.ADMIN, Role.VIEWER} <= roles and Role.NODE not in roles, method


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority.create()


def _cert(authority: CertificateAuthority, role: Role, name: str, **kw: Any) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return authority.issue(role, name, key.public_key(), **kw)


def _denied(fn: Any, *args: Any) -> Denied:
    with pytest.raises(Denied) as err:
        fn(*args)
    return err.value


def test_certificates_are_authenticated(authority: CertificateAuthority, tmp_path: Path) -> None:
    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(authority.crl([], number=1).public_bytes(serialization.Encoding.PEM))
    authz = CertificateAuthorizer((authority.cert,), crl_path)
    admin = _cert(authority, Role.ADMIN, "alice")
    p = authz.authenticate(FakeContext(admin))
    assert p == Principal(True, Role.ADMIN, "alice", admin.serial_number)
    assert p.author("mallory@evil") == "admin/alice"  # not what the client claims
    # plaintext
    err = _denied(authz.authenticate, FakeContext())
    assert err.code == grpc.StatusCode.UNAUTHENTICATED and "no client certificate" in err.message
    # TLS without a client certificate (the join port): anonymous, and only Join passes
    anonymous = authz.authenticate(NoCertContext())
    assert anonymous == Principal(True) and anonymous.identity == "anonymous"
    authz.authorize(anonymous, "/ipsecd.v1.JoinService/Join")
    for method in set(METHOD_ROLES) - WITHOUT_CERTIFICATE:
        err = _denied(authz.authorize, anonymous, method)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED, method
        assert "no client certificate" in err.message
    # another CA's certificate (TLS refuses it first; checked again here)
    foreign = _cert(CertificateAuthority.create(), Role.ADMIN, "alice")
    err = _denied(authz.authenticate, FakeContext(foreign))
    assert (
        err.code == grpc.StatusCode.UNAUTHENTICATED
        and "not issued by the cluster CA" in err.message
    )
    # expired
    old = _cert(
        authority, Role.ADMIN, "old", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=9), days=2
    )
    err = _denied(authz.authenticate, FakeContext(old))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED and "expired on" in err.message
    # revoked: the CRL file changes, the next call sees it
    bob = _cert(authority, Role.VIEWER, "bob")
    authz.authenticate(FakeContext(bob))
    time.sleep(0.01)
    crl = authority.crl([(bob.serial_number, dt.datetime.now(dt.UTC))], number=2)
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    err = _denied(authz.authenticate, FakeContext(bob))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED and "has been revoked" in err.message
    assert authz.revoked() == {bob.serial_number}
    # a CRL that is not the CA's changes nothing (and never un-revokes)
    other = CertificateAuthority.create().crl([], number=3)
    crl_path.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    assert authz.revoked() == {bob.serial_number}
    crl_path.unlink()
    assert authz.revoked() == {bob.serial_number}


def test_roles_and_rules(authority: CertificateAuthority) -> None:
    authz = CertificateAuthorizer((authority.cert,))
    principals = {
        role: authz.authenticate(FakeContext(_cert(authority, role, f"{role}-1"))) for role in Role
    }
    for method, roles in METHOD_ROLES.items():
        for role, principal in principals.items():
            if role in roles:
                authz.authorize(principal, method)
            else:
                err = _denied(authz.authorize, principal, method)
                assert err.code == grpc.StatusCode.PERMISSION_DENIED
                assert principal.identity in err.message
    err = _denied(authz.authorize, principals[Role.ADMIN], "/ipsecd.v1.Other/Thing")
    assert err.code == grpc.StatusCode.PERMISSION_DENIED  # not in the table: refused
    assert authz.secrets_refusal(principals[Role.ADMIN]) is None
    refusal = authz.secrets_refusal(principals[Role.VIEWER])
    assert refusal is not None and "retry without --show-secrets" in refusal
    node = principals[Role.NODE]
    authz.check_node(node, "node-1")
    err = _denied(authz.check_node, node, "node-2")
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and "'node-2'" in err.message
    _denied(authz.check_node, principals[Role.ADMIN], "admin-1")


def test_insecure_keeps_the_old_rules() -> None:
    authz = InsecureAuthorizer()
    local = authz.authenticate(FakeContext(peer="ipv4:127.0.0.1:5"))
    remote = authz.authenticate(FakeContext(peer="ipv4:10.0.0.1:5"))
    for method in METHOD_ROLES:
        authz.authorize(remote, method)
    assert authz.secrets_refusal(local) is None
    assert "only allowed from this host" in (authz.secrets_refusal(remote) or "")
    assert remote.author("alice@host") == "alice@host"
    authz.check_node(remote, "anything")
