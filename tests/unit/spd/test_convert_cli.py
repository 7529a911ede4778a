"""``ipsecctl convert`` through main(argv): exit codes (0 clean, 3 warnings, 1 input
error, 2 usage), file modes, format detection, and keys that never reach stdout,
stderr or a warning."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from agent.daemon import read_secrets
from controller.cli import main as ipsecctl

from .conftest import DATA

SAMPLES = DATA / "convert"
#: Every key of the samples, as text (the hex ones as they are written in the input).
KEYS = [
    "Xq3vT8pLw2Rn5sKd9HfJ4mZb7Yc1Ge6A",
    "6c61622d707265736861726564206b65792d3031323334353637383961626364",
    "lab-preshared key",  # the text of that hex key
    "n3wY0rk-is-a-long-and-random-psk",
    "0123456789abcdef0123456789abcdef",
    "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2001020304",
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
    "fedcba9876543210",
    "a shared legacy key that is long enough",
    "carols-eap-password",
]


def _copy(tmp_path: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        dst = tmp_path / name
        shutil.copyfile(SAMPLES / name, dst)
        out.append(dst)
    return out


def _no_keys(*texts: str) -> None:
    for text in texts:
        for key in KEYS:
            assert key not in text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_swanctl_to_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (src,) = _copy(tmp_path, "swanctl-psk.conf")
    out, keys = tmp_path / "vpn.spd", tmp_path / "vpn.secrets"
    assert ipsecctl(["convert", str(src), "-o", str(out), "--secrets-out", str(keys)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout == ""
    assert f"{src}: detected swanctl (strongSwan swanctl.conf)" in stderr
    assert f"-> {out}, 2 key(s) -> {keys}: converted" in stderr and "0 warnings" in stderr
    _no_keys(stdout, stderr, out.read_text())
    assert (_mode(out), _mode(keys)) == (0o644, 0o600)
    assert read_secrets(keys)["ike-branch"] == KEYS[0].encode()
    assert ipsecctl(["validate", str(out)]) == 0


def test_warnings_give_exit_status_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (src,) = _copy(tmp_path, "swanctl-unsupported.conf")
    out, keys = tmp_path / "o.spd", tmp_path / "o.secrets"
    status = ipsecctl(["convert", str(src), "-o", str(out), "--secrets-out", str(keys)])
    assert status == 3
    stdout, stderr = capsys.readouterr()
    assert f"{src}:14: warning: connection 'legacy': 'mobike = yes' is not carried" in stderr
    assert "30 warnings" in stderr
    _no_keys(stdout, stderr, out.read_text())
    assert "# Not carried (30 warnings):" in out.read_text()


def test_libreswan_with_its_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, secrets = _copy(tmp_path, "libreswan.conf", "libreswan.secrets")
    out, keys = tmp_path / "o.spd", tmp_path / "o.secrets"
    argv = ["convert", "--from", "libreswan", str(src), "--secrets", str(secrets),
            "-o", str(out), "--secrets-out", str(keys)]  # fmt: skip
    assert ipsecctl(argv) == 3  # config setup and the RSA entry
    stdout, stderr = capsys.readouterr()
    assert "detected" not in stderr  # --from given
    assert f"{secrets}:4: warning: RSA entry is not carried" in stderr
    assert "note: " in stderr  # 'left' was taken as this host
    _no_keys(stdout, stderr, out.read_text())
    assert read_secrets(keys) == {
        "nyc-psk": KEYS[3].encode(),
        "chicago-psk": bytes.fromhex(KEYS[4]),
    }


def test_setkey_keys_to_the_secrets_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (src,) = _copy(tmp_path, "setkey-hosts.conf")
    out, keys = tmp_path / "o.spd", tmp_path / "o.secrets"
    assert ipsecctl(["convert", str(src), "-o", str(out), "--secrets-out", str(keys)]) == 0
    stdout, stderr = capsys.readouterr()
    assert "detected setkey" in stderr
    _no_keys(stdout, stderr, out.read_text())
    assert len(read_secrets(keys)) == 6


def test_inline_secrets_need_and_get_a_private_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (src,) = _copy(tmp_path, "swanctl-psk.conf")
    out = tmp_path / "o.spd"
    assert ipsecctl(["convert", str(src), "--inline-secrets"]) == 2
    assert "--inline-secrets needs -o OUT" in capsys.readouterr().err
    assert ipsecctl(["convert", str(src), "-o", str(out), "--inline-secrets"]) == 0
    stdout, stderr = capsys.readouterr()
    _no_keys(stdout, stderr)
    assert _mode(out) == 0o600 and KEYS[0] in out.read_text()
    assert ipsecctl(["validate", str(out)]) == 0


def test_keys_without_a_place_to_go_are_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (src,) = _copy(tmp_path, "swanctl-psk.conf")
    out = tmp_path / "o.spd"
    assert ipsecctl(["convert", str(src), "-o", str(out)]) == 1
    stdout, stderr = capsys.readouterr()
    assert "holds 2 key(s) (secret:ike-branch, secret:ike-lab)" in stderr
    assert "--secrets-out FILE" in stderr and "nothing was written" in stderr
    assert not out.exists() and stdout == ""
    _no_keys(stderr)


def test_spd_on_stdout_when_there_are_no_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert ipsecctl(["convert", str(SAMPLES / "swanctl-cert.conf")]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout.startswith("# Converted by 'ipsecctl convert' from ")
    assert "connection partner {" in stdout
    assert "<stdout>" not in stderr and "converted (strongSwan swanctl.conf)" in stderr


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["convert", "/nonexistent/swanctl.conf"], 1, "cannot read input file"),
        (["convert", "--from", "ipsec-tools", "x"], 2, "invalid choice"),
        (["convert", "{src}", "--group", "all"], 2, "not a usable group or node name"),
        (["convert", "{src}", "--node", "1bad"], 2, "not a usable group or node name"),
        (["convert", "{src}", "-o", "{src}"], 2, "-o must not overwrite the input"),
        (["convert", "{src}", "--secrets-out", "{src}"], 2, "must be a file of its own"),
        (["convert", "{src}", "--secrets", "{src}"], 1, "--secrets is for Libreswan input"),
    ],
)
def test_usage_and_input_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    message: str,
) -> None:
    (src,) = _copy(tmp_path, "swanctl-cert.conf")
    assert ipsecctl([a.replace("{src}", str(src)) for a in argv]) == status
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err


def test_undetectable_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mystery.conf"
    src.write_text("hello world\n")
    assert ipsecctl(["convert", str(src)]) == 1
    assert "give --from swanctl|libreswan|setkey" in capsys.readouterr().err


def test_malformed_input_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "swanctl.conf"
    src.write_text("connections {\n  gw {\n    remote_addrs = 203.0.113.1\n")
    assert ipsecctl(["convert", str(src)]) == 1
    assert f"{src}:2: error: section 'gw' is never closed" in capsys.readouterr().err


def test_non_utf8_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "setkey.conf"
    src.write_bytes(b"flush;\nspdflush; # \xff\n")
    assert ipsecctl(["convert", str(src)]) == 1
    assert f"{src}:2: error: byte 0xff is not valid UTF-8" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert ipsecctl(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    assert "3 converted with warnings" in out and "--secrets-out" in out
