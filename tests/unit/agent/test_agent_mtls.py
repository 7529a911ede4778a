"""The agent's side of mTLS (agent/main.py, agent/credentials.py): cluster mode needs
the node's certificate files or ``--insecure``, and the files are checked before the
agent connects (role, name, key, expiry), each problem with its fix."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent.credentials import CredentialError, NodeFiles, controller_credentials
from agent.main import build_parser, main, options_from
from controller.ca import CertificateAuthority, Role, key_pem, pem


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority.create()


def _files(
    authority: CertificateAuthority, d: Path, role: Role = Role.NODE, name: str = "a", **kw: object
) -> NodeFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = authority.issue(role, name, key.public_key(), **kw)
    d.mkdir(parents=True, exist_ok=True)
    (d / "n.pem").write_bytes(pem(cert))
    (d / "n.key").write_bytes(key_pem(key))
    (d / "n.key").chmod(0o600)
    (d / "ca.pem").write_bytes(pem(authority.cert))
    return NodeFiles(d / "n.pem", d / "n.key", d / "ca.pem")


def test_cluster_mode_needs_certificates_or_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--controller", "c:1", "--node", "a"]) == 2
    err = capsys.readouterr().err
    assert "pass --cert FILE --key FILE --ca FILE" in err and "--insecure" in err
    args = build_parser().parse_args(["--controller", "c:1", "--node", "a", "--cert", "x.pem",
                                      "--key", "x.key", "--ca", "ca.pem"])  # fmt: skip
    opts = options_from(args)
    assert not opts.insecure and opts.node_files.cert == Path("x.pem")
    args = build_parser().parse_args(["--controller", "c:1", "--node", "a", "--insecure"])
    assert options_from(args).insecure


def test_the_node_certificate_is_checked(authority: CertificateAuthority, tmp_path: Path) -> None:
    files = _files(authority, tmp_path / "ok")
    assert controller_credentials(files, "a") is not None
    with pytest.raises(CredentialError, match="certificate of node/a, not of node 'b'"):
        controller_credentials(files, "b")
    admin = _files(authority, tmp_path / "admin", Role.ADMIN, "a")
    with pytest.raises(CredentialError, match="certificate of admin/a"):
        controller_credentials(admin, "a")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=9)
    old = _files(authority, tmp_path / "old", now=past, days=2)
    with pytest.raises(CredentialError, match=r"expired on .* renew it"):
        controller_credentials(old, "a")
    assert files.key is not None
    files.key.chmod(0o644)
    with pytest.raises(CredentialError, match="chmod 600"):
        controller_credentials(files, "a")
    files.key.chmod(0o600)
    with pytest.raises(CredentialError, match="--cert FILE --key FILE --ca FILE"):
        controller_credentials(NodeFiles(files.cert, files.key, None), "a")
    other = _files(authority, tmp_path / "other", name="c")
    assert other.key is not None
    swapped = NodeFiles(files.cert, other.key, files.ca)
    with pytest.raises(CredentialError, match="does not belong"):
        controller_credentials(swapped, "a")


def test_join_options(
    authority: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.daemon import AgentOptions
    from agent.join import JoinedFiles
    from ipsecd.jointoken import new_token

    monkeypatch.delenv("IPSECD_JOIN_TOKEN", raising=False)
    token = new_token(authority.cert)
    state = tmp_path / "state"
    base = ["--controller", "c:7480", "--node", "a", "--state-dir", str(state)]

    def opts(*extra: str) -> AgentOptions:
        return options_from(build_parser().parse_args([*base, *extra]))

    joined = JoinedFiles(state)
    o = opts("--join", token.text())
    assert o.joined and o.join_token == token and o.node_files.cert == joined.cert
    assert joined.crl in o.node_files.crls
    assert token.secret not in repr(o)
    monkeypatch.setenv("IPSECD_JOIN_TOKEN", token.text())
    assert opts().join_token == token
    monkeypatch.delenv("IPSECD_JOIN_TOKEN")
    for extra, message in (
        (("--join", token.text(), "--insecure"), "exclude each other"),
        (("--join", token.text(), "--cert", "x", "--key", "y", "--ca", "z"), "exclude each other"),
        (("--join", "ipsecd1.nope"), "not an ipsecd join token"),
        (("--join-file", str(tmp_path / "missing")), "--join-file"),
    ):
        with pytest.raises(ValueError, match=message):
            opts(*extra)
    with pytest.raises(ValueError, match="needs --controller"):
        options_from(build_parser().parse_args(["-f", "x.spd", "--join", token.text()]))
    # once joined, a restart needs no token: the files in the state directory are used
    files = _files(authority, state)
    for src, dst in ((files.cert, joined.cert), (files.key, joined.key)):
        assert src is not None
        src.rename(dst)
    o = opts()
    assert o.joined and o.join_token is None and o.node_files.key == joined.key
    # an agent with its own files also keeps the CRL the controller pushes
    o = opts("--cert", "x.pem", "--key", "x.key", "--ca", "ca.pem")
    assert not o.joined and o.node_files.crls == (joined.crl,)
