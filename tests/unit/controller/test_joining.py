"""Join tokens and node CSRs without a network (ipsecd/jointoken.py, controller/ca.py
``check_node_csr``, controller/joining.py on the in-memory store, agent/join.py's pin
check and token sources).  Over real gRPC and etcd: tests/integration/controller/test_join.py."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from agent.join import ENV_TOKEN, JoinError, check_pinned_chain, make_csr, read_token, renewal_due
from controller.ca import CaError, CertificateAuthority, Role, check_node_csr
from controller.errors import BadRequest, NotAuthenticated, PermissionDenied
from controller.joining import NodeIdentities, TokenRecord
from controller.keys import Keys
from controller.statedir import StateDir, init_state
from controller.store import MemoryStore
from ipsecd.jointoken import JoinToken, TokenFormatError, ca_pin, new_token


def test_a_token_round_trips_and_never_shows_its_secret() -> None:
    ca = CertificateAuthority.create()
    token = new_token(ca.cert)
    assert token.pin == ca_pin(ca.cert)
    assert JoinToken.parse(token.text()) == token
    assert JoinToken.parse(f"  {token.text()}\n") == token  # a file with a newline
    assert token.secret not in repr(token) and token.secret not in str(token)
    assert token.secret not in f"{token!r} {token!s}"
    for bad in ("", "ipsecd1.x.y.z", token.text() + ".more", "ipsecd2" + token.text()[7:]):
        with pytest.raises(TokenFormatError) as err:
            JoinToken.parse(bad)
        assert token.secret not in str(err.value)
    # two tokens never share a secret; the pin is the CA key's, not the certificate's
    assert new_token(ca.cert).secret != token.secret
    assert ca_pin(CertificateAuthority.create().cert) != token.pin


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    cn: str | None,
    *,
    sans: tuple[x509.GeneralName, ...] = (),
    **ext: x509.ExtensionType,
) -> bytes:
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for value in ext.values():
        b = b.add_extension(value, critical=True)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(key, algo).public_bytes(serialization.Encoding.DER)


P256 = ec.generate_private_key(ec.SECP256R1())


def test_node_csrs_are_checked() -> None:
    ok = check_node_csr(make_csr(P256, "a", ["192.0.2.1", "fd00::1", "192.0.2.1"]), "a")
    assert ok.name == "a" and ok.addresses == ("192.0.2.1", "fd00::1")
    for key in (ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()):
        check_node_csr(_csr(key, "a"), "a")
    check_node_csr(_csr(P256, None, sans=(x509.DNSName("a"),)), "a")  # no CN
    role_uri = x509.UniformResourceIdentifier("ipsecd://role/node/a")
    check_node_csr(_csr(P256, "a", sans=(role_uri,)), "a")
    usage = dict(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    refused = {
        "is for CN='b', not node 'a'": _csr(P256, "b"),
        "names 'b'": _csr(P256, "a", sans=(x509.DNSName("b"),)),
        "ipsecd://role/admin/a": _csr(
            P256, "a", sans=(x509.UniformResourceIdentifier("ipsecd://role/admin/a"),)
        ),
        "RSA key of 1024 bits": _csr(rsa.generate_private_key(65537, 1024), "a"),
        "curve secp256k1": _csr(ec.generate_private_key(ec.SECP256K1()), "a"),
        "a CA certificate": _csr(P256, "a", bc=x509.BasicConstraints(ca=True, path_length=0)),
        "keyCertSign": _csr(P256, "a", ku=x509.KeyUsage(**usage)),  # type: ignore[arg-type]
        "not a DER PKCS#10": b"junk",
        "may hold only CN": _with_org(),
    }
    for message, der in refused.items():
        with pytest.raises(CaError, match=message.replace("(", r"\(")):
            check_node_csr(der, "a")
    # a forged signature
    der = bytearray(make_csr(P256, "a", []))
    der[-3] ^= 0x55
    with pytest.raises(CaError, match=r"signature|not a DER"):
        check_node_csr(bytes(der), "a")


def _with_org() -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "a"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsecd"),
            ]
        )
    )
    return b.sign(P256, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_the_pin_check_of_the_presented_chain() -> None:
    ca = CertificateAuthority.create()
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = ca.issue(Role.CONTROLLER, "controller", server_key.public_key(), hosts=["localhost"])
    assert check_pinned_chain([server, ca.cert], ca_pin(ca.cert), "x") == (ca.cert,)
    # the CA not presented, another CA's pin, the CA serving itself, a broken chain
    with pytest.raises(JoinError, match="no CA with the token's pin"):
        check_pinned_chain([server], ca_pin(ca.cert), "x")
    other = CertificateAuthority.create()
    with pytest.raises(JoinError, match="no CA with the token's pin"):
        check_pinned_chain([server, ca.cert], ca_pin(other.cert), "x")
    with pytest.raises(JoinError, match="CA certificate itself"):
        check_pinned_chain([ca.cert], ca_pin(ca.cert), "x")
    with pytest.raises(JoinError, match="broken"):
        check_pinned_chain([server, other.cert, ca.cert], ca_pin(ca.cert), "x")
    # a non-CA certificate with the pinned key is not trusted as a CA
    with pytest.raises(JoinError, match="not a CA"):
        check_pinned_chain([server, server], ca_pin(server), "x")


def test_token_sources(tmp_path: Path) -> None:
    token = new_token(CertificateAuthority.create().cert)
    assert read_token(text=None, file=None, environ={}) is None
    assert read_token(text=token.text(), file=None, environ={}) == token
    assert read_token(text=None, file=None, environ={ENV_TOKEN: token.text()}) == token
    path = tmp_path / "token"
    path.write_text(token.text() + "\n")
    path.chmod(0o644)
    with pytest.raises(ValueError, match=f"chmod 600 {path}") as err:
        read_token(text=None, file=str(path), environ={})
    assert token.secret not in str(err.value)
    path.chmod(0o600)
    assert read_token(text=None, file=str(path), environ={ENV_TOKEN: "ignored"}) == token
    with pytest.raises(ValueError, match=r"\$IPSECD_JOIN_TOKEN: not an ipsecd join token"):
        read_token(text=None, file=None, environ={ENV_TOKEN: "nope"})


def test_renewal_is_due_after_two_thirds() -> None:
    ca = CertificateAuthority.create()
    now = dt.datetime.now(dt.UTC)
    cert = ca.issue(Role.NODE, "a", P256.public_key(), lifetime=dt.timedelta(hours=30), now=now)
    start = cert.not_valid_before_utc.timestamp()
    assert start == pytest.approx(now.timestamp() - 300, abs=1)  # at most 5 minutes back
    due = renewal_due(cert, 2 / 3)
    assert due == pytest.approx(start + 2 / 3 * (cert.not_valid_after_utc.timestamp() - start))
    short = ca.issue(Role.NODE, "a", P256.public_key(), lifetime=dt.timedelta(seconds=30), now=now)
    assert short.not_valid_before_utc.timestamp() == pytest.approx(now.timestamp() - 3, abs=1)


def _identities(tmp_path: Path, clock: list[float]) -> NodeIdentities:
    init_state(tmp_path / "state")
    return NodeIdentities(MemoryStore(), Keys("/t/"), tmp_path / "state", clock=lambda: clock[0])


def test_tokens_expire_are_used_once_per_use_and_keep_only_a_hash(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    ids = _identities(tmp_path, clock)

    async def body() -> None:
        token, rec = await ids.create_token(ttl=60, uses=2, created_by="admin/admin")
        raw = await ids.store.get(ids.keys.token(token.id))
        assert raw is not None and token.secret.encode() not in raw.value
        assert TokenRecord.from_bytes(raw.value) == rec and rec.uses_left == 2
        assert token.pin == ca_pin(StateDir(tmp_path / "state").ca_certificates()[0])
        # two uses at once on one store: both pass, a third is refused
        await asyncio.gather(
            ids._use_token(token.id, token.secret, "a"), ids._use_token(token.id, token.secret, "b")
        )
        with pytest.raises(NotAuthenticated, match="used up"):
            await ids._use_token(token.id, token.secret, "c")
        ((rec2, used_by),) = await ids.list_tokens()
        assert rec2.uses_left == 0 and sorted(used_by) == ["a", "b"]
        # expiry, wrong secrets, bounds
        late, _ = await ids.create_token(ttl=60)
        clock[0] += 61
        with pytest.raises(NotAuthenticated, match="expired"):
            await ids._check_token(late.id, late.secret)
        with pytest.raises(NotAuthenticated, match="not valid") as err:
            await ids._check_token(late.id, "y" * 32)
        assert late.secret not in str(err.value)
        for kw in ({"ttl": 31 * 86400}, {"uses": 10_001}, {"node": "-bad"}):
            with pytest.raises(BadRequest):
                await ids.create_token(**kw)  # type: ignore[arg-type]
        bound, _ = await ids.create_token(node="b")
        csr = make_csr(P256, "a", [])
        with pytest.raises(PermissionDenied, match="is for node 'b'"):
            await ids.join(bound.id, bound.secret, "a", csr)

    asyncio.run(body())
