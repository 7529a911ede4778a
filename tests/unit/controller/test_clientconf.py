"""ipsecctl's config (controller/clientconf.py) and how ipsecctl finds and uses it:
``--config``, then ``$IPSECCTL_CONFIG``, then ``~/.config/ipsecctl/config``; every
way it can be unusable is a one-line error with the fix (exit 2)."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import controller.cli_remote as cli_remote
from controller.ca import CertificateAuthority, Role, key_pem, pem
from controller.cli import main
from controller.clientconf import ClientConfig, ConfigError, load_config, locate
from ipsecd.roles import RoleIdentity


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority.create()


def _conf(
    authority: CertificateAuthority,
    path: Path,
    address: str,
    *,
    role: Role = Role.ADMIN,
    now: dt.datetime | None = None,
    days: int = 30,
    ca: CertificateAuthority | None = None,
) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = authority.issue(role, "alice", key.public_key(), days=days, now=now)
    conf = ClientConfig((address,), pem((ca or authority).cert), pem(cert), key_pem(key))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(conf.dumps())
    path.chmod(0o600)
    return path


def test_round_trip_and_check(authority: CertificateAuthority, tmp_path: Path) -> None:
    path = _conf(authority, tmp_path / "c", "ctl:7480", role=Role.VIEWER)
    conf = load_config(path)
    assert conf.controllers == ("ctl:7480",) and conf.source == str(path)
    assert conf.check() == RoleIdentity(Role.VIEWER, "alice")
    assert "PRIVATE KEY" not in repr(conf)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"not json", "not an ipsecctl config"),
        (b'{"kind": "other"}', '"kind": "ipsecctl-config" missing'),
        (b'{"kind": "ipsecctl-config", "version": 2}', "this ipsecctl reads 1"),
        (b'{"kind": "ipsecctl-config", "version": 1, "controllers": ["a:1"]}', "ca, cert, key"),
    ],
)
def test_broken_files(tmp_path: Path, text: bytes, message: str) -> None:
    path = tmp_path / "c"
    path.write_bytes(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_unusable_certificates(authority: CertificateAuthority, tmp_path: Path) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = _conf(authority, tmp_path / "old", "a:1", now=past, days=2)
    with pytest.raises(ConfigError, match=r"expired on .*ipsecd-controller issue"):
        load_config(expired)
    foreign = _conf(authority, tmp_path / "f", "a:1", ca=CertificateAuthority.create())
    with pytest.raises(ConfigError, match="not issued by the CA in the file"):
        load_config(foreign)
    good = load_config(_conf(authority, tmp_path / "g", "a:1"))
    other_key = key_pem(ec.generate_private_key(ec.SECP256R1()))
    swapped = ClientConfig(good.controllers, good.ca_pem, good.cert_pem, other_key, source="s")
    with pytest.raises(ConfigError, match='"key" is not the key of "cert"'):
        swapped.check()


def test_others_may_not_read_it(authority: CertificateAuthority, tmp_path: Path) -> None:
    path = _conf(authority, tmp_path / "c", "a:1")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"chmod 600 {path}" in str(err.value) and "BEGIN" not in str(err.value)


def test_lookup_order(tmp_path: Path) -> None:
    flag, env, home = tmp_path / "flag", tmp_path / "env", tmp_path / "home"
    default = home / ".config" / "ipsecctl" / "config"
    for p in (flag, env, default):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    environ = {"IPSECCTL_CONFIG": str(env), "HOME": str(home)}
    assert locate(str(flag), environ) == flag
    assert locate(None, environ) == env
    assert locate(None, {"HOME": str(home)}) == default
    default.unlink()
    with pytest.raises(ConfigError) as err:
        locate(None, {"HOME": str(home)})
    text = str(err.value)
    assert "--config" in text and "$IPSECCTL_CONFIG" in text and str(default) in text
    assert "ipsecd-controller init" in text and "admin.conf" in text
    # named but missing: no silent fallback
    with pytest.raises(ConfigError, match=r"nope \(--config\): no such file"):
        locate(str(tmp_path / "nope"), environ)
    with pytest.raises(ConfigError, match=r"gone \(\$IPSECCTL_CONFIG\): no such file"):
        locate(None, {"IPSECCTL_CONFIG": str(tmp_path / "gone"), "HOME": str(home)})


def test_ipsecctl_uses_the_config_found_first(
    authority: CertificateAuthority,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each config names another (closed) port: the error says which one was dialed."""
    ports = {k: f"127.0.0.1:{_closed_port()}" for k in ("flag", "env", "home", "override")}
    flag = _conf(authority, tmp_path / "flag.conf", ports["flag"])
    env = _conf(authority, tmp_path / "env.conf", ports["env"])
    home = tmp_path / "home"
    _conf(authority, home / ".config" / "ipsecctl" / "config", ports["home"])
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("IPSECCTL_CONTROLLER", raising=False)
    monkeypatch.setenv("IPSECCTL_CONFIG", str(env))

    def dialed(argv: list[str]) -> str:
        assert main(argv) == cli_remote.EXIT["unreachable"]
        err = capsys.readouterr().err
        assert "warning" not in err  # mTLS: no --insecure warning
        return err

    assert ports["flag"] in dialed(["--config", str(flag), "history"])
    assert ports["flag"] in dialed(["history", "--config", str(flag)])
    assert ports["env"] in dialed(["history"])
    monkeypatch.delenv("IPSECCTL_CONFIG")
    assert ports["home"] in dialed(["history"])
    # the address: --controller, else $IPSECCTL_CONTROLLER, else the config's
    monkeypatch.setenv("IPSECCTL_CONTROLLER", ports["override"])
    assert ports["override"] in dialed(["history"])
    monkeypatch.delenv("IPSECCTL_CONTROLLER")
    assert ports["flag"] in dialed(["history", "--controller", ports["flag"]])


def test_ipsecctl_config_errors_are_usage_errors(
    authority: CertificateAuthority,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("IPSECCTL_CONFIG", raising=False)
    monkeypatch.delenv("IPSECCTL_CONTROLLER", raising=False)
    assert main(["history"]) == cli_remote.EXIT["usage"] == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no ipsecctl config") and err.count("\n") == 1
    assert "ipsecd-controller init" in err
    loose = _conf(authority, tmp_path / "loose.conf", "127.0.0.1:1")
    loose.chmod(0o640)
    assert main(["--config", str(loose), "push", "x.spd"]) == 2
    err = capsys.readouterr().err
    assert f"run chmod 600 {loose}" in err and "Traceback" not in err
    # --insecure needs no config, and warns
    port = f"127.0.0.1:{_closed_port()}"
    assert main(["--insecure", "--controller", port, "history"]) == 5
    assert capsys.readouterr().err.startswith(f"warning: --insecure: plaintext gRPC to {port}")


class _FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_tls_failures_are_said_plainly() -> None:
    target = cli_remote.Target("h:1", grpc.ssl_channel_credentials(), Path("/c/admin.conf"))
    plain = cli_remote.Target("h:1")
    m = cli_remote._map_rpc_error
    unknown_ca = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls "
        "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
        "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer"
    )
    err = m(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, unknown_ca), "h:1", "", target)
    assert err.kind == "permission-denied"
    assert "the CA in /c/admin.conf did not sign" in str(err)
    name = "Custom verification check failed with error: Hostname Verification Check failed."
    err = m(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, name), "h:1", "", target)
    assert "does not name h" in str(err) and "--advertise" in str(err)
    version = "Tls handshake failed: WRONG_VERSION_NUMBER"
    err = m(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, version), "h:1", "", target)
    assert "does not speak TLS" in str(err) and "--insecure" in str(err)
    closed = "failed to connect to all addresses; last error: UNAVAILABLE: x: Socket closed"
    err = m(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, closed), "h:1", "", target)
    assert "did not accept the client certificate of /c/admin.conf" in str(err)
    err = m(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, closed), "h:1", "", plain)
    assert err.kind == "unreachable" and "use --config instead of --insecure" in str(err)
    err = m(_FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "revoked"), "h:1", "", target)
    assert err.kind == "permission-denied" and "refused the credentials of /c/admin.conf" in str(
        err
    )
