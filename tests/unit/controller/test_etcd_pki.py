"""The private etcd's own CA and certificates (controller/etcd_pki.py) and the checks
of etcd TLS credential files (controller/etcd_tls.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.ca import CaError, CertificateAuthority, key_pem, pem, write_private
from controller.etcd_pki import RENEW_BEFORE, VALIDITY, EtcdPki, ensure_etcd_pki, state_etcd_pki
from controller.etcd_tls import EtcdTlsError, load_client_tls
from ipsecd.roles import RoleError, role_of


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _contents(pki: EtcdPki) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in pki.files()}


def test_a_new_etcd_pki_its_files_and_certificates(tmp_path: Path) -> None:
    pki = state_etcd_pki(tmp_path / "state")
    assert pki.dir == tmp_path / "state" / "etcd-pki"
    assert _mode(tmp_path / "state") == 0o700 and _mode(pki.dir) == 0o700
    for path in pki.files():
        assert _mode(path) == 0o600, path
    ca, server, client = (_cert(p) for p in (pki.ca_cert, pki.server_cert, pki.client_cert))
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
        # no ipsecd role: the controller's API would refuse it even if it chained
        with pytest.raises(RoleError):
            role_of(leaf)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    server_ekus = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    # clientAuth too: etcd's HTTP gateway dials etcd with the server certificate
    assert set(server_ekus) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    client_ekus = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(client_ekus) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # a CA of its own: the cluster CA did not issue them
    cluster = CertificateAuthority.create()
    assert not cluster.signed(client) and not cluster.signed(server)
    assert ca.subject != cluster.cert.subject
    # the controller's credentials load with the same checks as --etcd-* files
    tls = pki.client_tls()
    assert tls.client_auth and tls.server_name == "127.0.0.1"
    assert "PRIVATE KEY" not in repr(tls)


def test_kept_when_valid_and_issued_again_when_not(tmp_path: Path) -> None:
    pki = ensure_etcd_pki(tmp_path / "pki")
    before = _contents(pki)
    assert _contents(ensure_etcd_pki(tmp_path / "pki")) == before
    # a missing key: that pair is issued again, by the same CA
    pki.client_key.unlink()
    after = _contents(ensure_etcd_pki(tmp_path / "pki"))
    changed = {p for p in pki.files() if after[p] != before[p]}
    assert changed == {pki.client_cert, pki.client_key}
    # a damaged certificate, or one of another CA
    pki.server_cert.write_bytes(b"not a certificate")
    ensure_etcd_pki(tmp_path / "pki")
    _cert(pki.server_cert).verify_directly_issued_by(_cert(pki.ca_cert))
    other = ensure_etcd_pki(tmp_path / "other")
    pki.client_cert.write_bytes(other.client_cert.read_bytes())
    pki.client_key.write_bytes(other.client_key.read_bytes())
    ensure_etcd_pki(tmp_path / "pki")
    _cert(pki.client_cert).verify_directly_issued_by(_cert(pki.ca_cert))
    assert pki.ca_cert.read_bytes() == before[pki.ca_cert]
    # within RENEW_BEFORE of the end: a new CA and new certificates
    late = dt.datetime.now(dt.UTC) + VALIDITY - RENEW_BEFORE + dt.timedelta(days=1)
    renewed = _contents(ensure_etcd_pki(tmp_path / "pki", now=late))
    assert all(renewed[p] != before[p] for p in pki.files())
    # renew=True (init --force): all new
    again = _contents(ensure_etcd_pki(tmp_path / "pki", renew=True))
    assert all(again[p] != renewed[p] for p in pki.files())


def test_a_key_others_can_read_is_refused_with_the_chmod(tmp_path: Path) -> None:
    pki = ensure_etcd_pki(tmp_path / "pki")
    pki.server_key.chmod(0o640)
    with pytest.raises(CaError, match=f"run chmod 600 {pki.server_key}"):
        ensure_etcd_pki(tmp_path / "pki")


def _server_only_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for serverAuth only (etcd refuses it as a client certificate)."""
    ca = CertificateAuthority.create()
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "srv")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    write_private(tmp_path / "srv.pem", pem(cert))
    write_private(tmp_path / "srv.key", key_pem(key))
    return tmp_path / "srv.pem", tmp_path / "srv.key"


def test_client_credential_files_are_checked(tmp_path: Path) -> None:
    pki = ensure_etcd_pki(tmp_path / "pki")
    ok = load_client_tls(pki.ca_cert, pki.client_cert, pki.client_key)
    assert ok.client_auth and ok.key_pem is not None
    assert not load_client_tls(pki.ca_cert).client_auth  # server-authenticated TLS only
    with pytest.raises(EtcdTlsError, match="--etcd-cert and --etcd-key go together"):
        load_client_tls(pki.ca_cert, pki.client_cert, None)
    missing = tmp_path / "missing.pem"
    with pytest.raises(EtcdTlsError, match=rf"{missing}: no such file .*--etcd-cacert"):
        load_client_tls(missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(EtcdTlsError, match=rf"{junk}: no PEM certificate in it \(--etcd-cacert"):
        load_client_tls(junk)
    with pytest.raises(EtcdTlsError, match=rf"{junk}: no PEM certificate in it \(--etcd-cert"):
        load_client_tls(pki.ca_cert, junk, pki.client_key)
    with pytest.raises(EtcdTlsError, match=r"is not the key of the certificate"):
        load_client_tls(pki.ca_cert, pki.client_cert, pki.server_key)
    pki.client_key.chmod(0o644)
    with pytest.raises(EtcdTlsError, match=r"--etcd-key\) is mode 0644.*chmod 600"):
        load_client_tls(pki.ca_cert, pki.client_cert, pki.client_key)
    pki.client_key.chmod(0o600)
    cert, key = _server_only_cert(tmp_path)
    with pytest.raises(EtcdTlsError, match="lacks clientAuth, so etcd refuses it"):
        load_client_tls(pki.ca_cert, cert, key)
    # expired: certificates made eleven years ago
    old = ensure_etcd_pki(
        tmp_path / "old", now=dt.datetime.now(dt.UTC) - VALIDITY - dt.timedelta(days=365)
    )
    with pytest.raises(EtcdTlsError, match=r"the CA certificate .* expired on"):
        load_client_tls(old.ca_cert, old.client_cert, old.client_key)
    with pytest.raises(EtcdTlsError, match=r"\(--etcd-cert\) expired on"):
        load_client_tls(pki.ca_cert, old.client_cert, old.client_key)
