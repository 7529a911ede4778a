"""The cluster CA (controller/ca.py, controller/statedir.py): what it issues is what the
IKE side (ipsecd.ike.pki) and the controller's authorizer accept, roles parse back,
CRLs revoke, private files are 0600 and refused when others can read them, and no key
shows in a repr or a message."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.ca import (
    IPSEC_IKE_EKU,
    CaError,
    CertificateAuthority,
    Role,
    RoleIdentity,
    check_private_file,
    crl_serials,
    key_pem,
    pem,
    role_of,
    write_private,
)
from controller.clientconf import ClientConfig
from controller.statedir import (
    NotInitialized,
    StateDir,
    controller_addresses,
    init_state,
    issue_credentials,
    list_records,
    load_serving,
    revoke,
    split_hostport,
    write_crl,
)
from ipsecd.ike.config import Identity
from ipsecd.ike.pki import CertFailure, CertificateError, TrustStore, check_identity
from ipsecd.roles import ROLE_URI_PREFIX, RoleError, parse_role_uri
from ipsecd.roles import role_of as roles_role_of
from tests.support.pki import ca as make_ca
from tests.support.pki import end_entity


def _now() -> dt.datetime:
    # at the check, not at import: a slow suite reaches these tests minutes after
    # collection, later than the certificates' 5-minute backdate
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority.create()


def _node(authority: CertificateAuthority, name: str = "node-a") -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return authority.issue(Role.NODE, name, key.public_key(), hosts=("192.0.2.1", "fd00::1"))


def test_the_ca_is_a_ca(authority: CertificateAuthority) -> None:
    cert = authority.cert
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert bc.ca and bc.path_length == 0
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # the default: ECDSA P-256
    assert cert.subject == cert.issuer and authority.intermediates == ()
    other = CertificateAuthority.create()
    assert other.cert.subject != cert.subject  # two clusters' CAs differ by name


def test_node_certificates_pass_the_ike_checks(authority: CertificateAuthority) -> None:
    """The node certificate is the node's IKE certificate (auth certificate): the path
    validates, and it names the node's name and addresses (id name / id address)."""
    cert = _node(authority)
    store = TrustStore((authority.cert,))
    now = _now().timestamp()
    assert store.validate(cert, [], now) == authority.cert
    for ident in (
        Identity.fqdn("node-a"),
        Identity.ip("192.0.2.1"),
        Identity.ip("fd00::1"),
    ):
        check_identity(cert, ident)
    with pytest.raises(CertificateError) as err:
        check_identity(cert, Identity.ip("192.0.2.99"))
    assert err.value.failure == CertFailure.ID_MISMATCH
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        IPSEC_IKE_EKU,
    }
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert role_of(cert) == RoleIdentity(Role.NODE, "node-a")
    # a peer whose CA is another cluster's refuses it
    other = CertificateAuthority.create()
    with pytest.raises(CertificateError) as err:
        TrustStore((other.cert,)).validate(cert, [], now)
    assert err.value.failure == CertFailure.UNKNOWN_CA


@pytest.mark.parametrize("role", list(Role))
def test_roles_parse_back(authority: CertificateAuthority, role: Role) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = authority.issue(role, "some.one@x", key.public_key(), hosts=("ctl.example",))
    ident = role_of(cert)
    assert ident == RoleIdentity(role, "some.one@x") and str(ident) == f"{role}/some.one@x"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [f"ipsecd://role/{role}/some.one@x"]  # the one place the role lives
    eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    if role in (Role.ADMIN, Role.VIEWER):
        assert eku == {ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not sans.get_values_for_type(x509.DNSName)
    else:
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku
        assert "ctl.example" in sans.get_values_for_type(x509.DNSName)


def test_role_uri_parsing() -> None:
    assert parse_role_uri("ipsecd://role/admin/alice") == RoleIdentity(Role.ADMIN, "alice")
    for bad in (
        "ipsecd://role/root/alice",  # no such role
        "ipsecd://role/admin",  # no name
        "ipsecd://role/admin/",
        "ipsecd://role/admin/a/b",  # names have no '/'
        "ipsecd://role/admin/-x",
        "https://role/admin/alice",
        "ipsecd://role/node/" + "a" * 254,
    ):
        assert parse_role_uri(bad) is None, bad


def test_certificates_without_exactly_one_role_have_none() -> None:
    root = make_ca("Foreign Root")
    plain = end_entity(root, "plain", dns=("plain",))
    with pytest.raises(RoleError, match="names no ipsecd role"):
        roles_role_of(plain.cert)
    no_san = end_entity(root, "nosan")
    with pytest.raises(RoleError, match="no subjectAltName"):
        roles_role_of(no_san.cert)
    uris = [
        x509.UniformResourceIdentifier(ROLE_URI_PREFIX + "admin/a"),
        x509.UniformResourceIdentifier(ROLE_URI_PREFIX + "viewer/a"),
    ]
    two = end_entity(root, "two", extra=[(x509.SubjectAlternativeName(uris), False)])
    with pytest.raises(RoleError, match="2 ipsecd roles"):
        roles_role_of(two.cert)
    wrong = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(ROLE_URI_PREFIX + "root/a")]
    )
    bad = end_entity(root, "bad", extra=[(wrong, False)])
    with pytest.raises(RoleError, match="is not"):
        roles_role_of(bad.cert)
    with pytest.raises(CaError, match="names no ipsecd role"):
        role_of(plain.cert)


def test_names_are_checked(authority: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for bad in ("", "-a", "a/b", "a b", "x" * 254, "é"):
        with pytest.raises(CaError, match="not usable"):
            authority.issue(Role.ADMIN, bad, key.public_key())


def test_crl_revokes(authority: CertificateAuthority) -> None:
    good, bad = _node(authority, "good"), _node(authority, "bad")
    crl = authority.crl([(bad.serial_number, _now())], number=7)
    assert crl_serials(crl, authority.cert) == {bad.serial_number}
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl_serials(crl, CertificateAuthority.create().cert) is None  # not its CRL
    store = TrustStore((authority.cert,), (crl,))
    now = _now().timestamp()
    store.validate(good, [], now)
    with pytest.raises(CertificateError) as err:
        store.validate(bad, [], now)
    assert err.value.failure == CertFailure.REVOKED


def test_an_existing_ca_and_an_intermediate(tmp_path: Path) -> None:
    root = make_ca("Operator Root", key="rsa3072")
    inter = make_ca("Operator Issuing CA", issuer=root, key="p384")
    chain_pem = pem(inter.cert, root.cert)
    authority = CertificateAuthority.from_pem(chain_pem, key_pem(inter.key), where="x")
    assert authority.intermediates == (inter.cert,)
    cert = _node(authority)
    store = TrustStore((root.cert,))
    store.validate(cert, list(authority.intermediates), _now().timestamp())
    # wrong key, not a CA, wrong order
    with pytest.raises(CaError, match="does not belong"):
        CertificateAuthority.from_pem(pem(inter.cert), key_pem(root.key), where="x")
    leaf = end_entity(root, "leaf", dns=("leaf",))
    with pytest.raises(CaError, match="not a CA"):
        CertificateAuthority.from_pem(pem(leaf.cert), key_pem(leaf.key), where="x")
    with pytest.raises(CaError, match="did not issue"):
        CertificateAuthority.from_pem(
            pem(inter.cert, make_ca("Unrelated").cert),
            key_pem(inter.key),
            where="x",
        )


def test_no_key_in_reprs_or_messages(authority: CertificateAuthority) -> None:
    text = key_pem(authority.key).decode()
    body = "".join(text.splitlines()[1:-1])
    assert body[:40] not in repr(authority)
    conf = ClientConfig(("h:1",), b"ca", b"cert", key_pem(authority.key))
    assert body[:40] not in repr(conf)
    with pytest.raises(CaError) as err:
        CertificateAuthority.from_pem(
            pem(authority.cert), b"-----BEGIN PRIVATE KEY-----\nAAAA", where="k"
        )
    assert "AAAA" not in str(err.value)


def test_private_files(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "k"
        write_private(path, b"secret")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    path.chmod(0o640)
    with pytest.raises(CaError) as err:
        check_private_file(path, "CA key")
    assert f"chmod 600 {path}" in str(err.value) and "0640" in str(err.value)
    assert "secret" not in str(err.value)


# --------------------------------------------------------------------------- state dir


def test_addresses() -> None:
    assert split_hostport("[::1]:7480") == ("::1", 7480)
    assert split_hostport("fd00::1") == ("fd00::1", None)
    assert split_hostport("ctl:1") == ("ctl", 1)
    with pytest.raises(CaError):
        split_hostport("ctl:x")
    assert controller_addresses(["0.0.0.0:7480"], []) == ["127.0.0.1:7480"]
    assert controller_addresses(["0.0.0.0:9"], ["ctl.example", "[fd00::1]:5"]) == [
        "ctl.example:9",
        "[fd00::1]:5",
    ]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_writes_everything_with_the_right_modes(tmp_path: Path) -> None:
    root = tmp_path / "state"
    report = init_state(
        root, listen=["0.0.0.0:7480"], advertise=["ctl.example"], extra_hosts=["10.9.9.9"]
    )
    sd = StateDir(root)
    assert _mode(root) == 0o700 and _mode(sd.pki) == 0o700
    for private in (sd.ca_key, sd.server_key, sd.envelope_key, sd.admin_conf, sd.records):
        assert _mode(private) == 0o600, private
    assert len(sd.envelope_key.read_bytes()) == 32
    assert report.controllers == ("ctl.example:7480",)
    material = load_serving(root)
    assert {"ctl.example", "10.9.9.9", "localhost", "127.0.0.1", "::1"} <= set(material.names())
    assert role_of(material.server_cert) == RoleIdentity(Role.CONTROLLER, "controller")
    conf = ClientConfig.loads(sd.admin_conf.read_bytes(), where="admin.conf")
    assert conf.controllers == ("ctl.example:7480",)
    assert conf.check() == RoleIdentity(Role.ADMIN, "admin")
    assert json.loads(sd.admin_conf.read_text())["kind"] == "ipsecctl-config"
    # again: refused, nothing changed
    before = {p: p.read_bytes() for p in sd.pki.iterdir()}
    with pytest.raises(CaError, match=r"already initialized.*--force"):
        init_state(root)
    assert {p: p.read_bytes() for p in sd.pki.iterdir()} == before
    # --force: a new CA, the envelope key kept
    envelope = sd.envelope_key.read_bytes()
    again = init_state(root, force=True)
    assert again.envelope_kept and sd.envelope_key.read_bytes() == envelope
    assert sd.ca_cert.read_bytes() != before[sd.ca_cert]


def test_init_with_an_existing_ca(tmp_path: Path) -> None:
    root = make_ca("Corp Root")
    cert, key = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert.write_bytes(pem(root.cert))
    key.write_bytes(key_pem(root.key))
    key.chmod(0o644)
    with pytest.raises(CaError, match="chmod 600"):
        init_state(tmp_path / "s", ca_cert_file=cert, ca_key_file=key)
    key.chmod(0o600)
    init_state(tmp_path / "s", ca_cert_file=cert, ca_key_file=key)
    material = load_serving(tmp_path / "s")
    assert material.ca_certs == (root.cert,)
    material.server_cert.verify_directly_issued_by(root.cert)
    with pytest.raises(CaError, match="go together"):
        init_state(tmp_path / "t", ca_cert_file=cert)


def test_serving_refuses_what_it_should(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with pytest.raises(NotInitialized, match=f"ipsecd-controller init --state-dir {root}"):
        load_serving(root)
    init_state(root)
    sd = StateDir(root)
    for path in (sd.server_key, sd.ca_key, sd.envelope_key):
        path.chmod(0o644)
        with pytest.raises(CaError, match=f"chmod 600 {path}"):
            load_serving(root)
        path.chmod(0o600)
    sd.crl.unlink()
    load_serving(root)  # written again from the records (the CA key is here)
    assert sd.crl.exists()


def test_issue_and_revoke(tmp_path: Path) -> None:
    root = tmp_path / "s"
    init_state(root)
    out = tmp_path / "bob.conf"
    issued = issue_credentials(root, Role.VIEWER, "bob", out)
    assert _mode(out) == 0o600 and issued.files == (out,)
    conf = ClientConfig.loads(out.read_bytes(), where=str(out))
    assert conf.check() == RoleIdentity(Role.VIEWER, "bob")
    assert conf.controllers == ("127.0.0.1:7480",)  # init's addresses
    with pytest.raises(CaError, match="exists"):
        issue_credentials(root, Role.VIEWER, "bob", out)
    node_dir = tmp_path / "node-a"
    issued = issue_credentials(root, Role.NODE, "node-a", node_dir, hosts=["192.0.2.1"])
    assert _mode(node_dir / "node-a.key") == 0o600 and _mode(node_dir) == 0o700
    cert = x509.load_pem_x509_certificate((node_dir / "node-a.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["node-a"]
    ca_cert = x509.load_pem_x509_certificate((node_dir / "ca.pem").read_bytes())
    # revoke by name: every certificate of node/node-a; the CRL lists it
    done = revoke(root, role=Role.NODE, name="node-a")
    assert [r.serial for r in done] == [issued.serial]
    crl = x509.load_pem_x509_crl(StateDir(root).crl.read_bytes())
    assert crl_serials(crl, ca_cert) == {issued.serial}
    assert revoke(root, role=Role.NODE, name="node-a") == []  # already revoked
    records = {(r.role, r.name): r for r in list_records(root)}
    assert records[("node", "node-a")].revoked and not records[("viewer", "bob")].revoked
    # a serial not in the records (another tool, same CA key) can be revoked too
    assert revoke(root, serial=0x1234)[0].role == "unknown"
    before = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    number = write_crl(root)
    assert number > before
    crl = x509.load_pem_x509_crl(StateDir(root).crl.read_bytes())
    assert crl_serials(crl, ca_cert) == {issued.serial, 0x1234}
