"""ipsecctl validate/compile and ipsecd -p through main(argv): exit codes and output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import agent.main as agent_main
from controller import cli
from controller.cli import main as ipsecctl

from .conftest import DATA, EXAMPLES


def _copy(tmp_path: Path, src: Path, mode: int = 0o600) -> Path:
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    dst.chmod(mode)
    return dst


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _copy(tmp_path, EXAMPLES / "cluster.spd")
    assert ipsecctl(["validate", str(f)]) == 0
    assert capsys.readouterr().out == f"{f}: ok (0 warnings)\n"


def test_validate_reports_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _copy(tmp_path, EXAMPLES / "cluster.spd")
    bad = _copy(tmp_path, DATA / "errors" / "many-errors.spd")
    assert ipsecctl(["validate", str(bad), str(good)]) == 1
    out, err = capsys.readouterr()
    assert f"{good}: ok" in out
    assert err.count(": error: ") == 5 and f"error: {bad} is invalid" in err
    assert "Traceback" not in err


def test_validate_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert ipsecctl(["validate", "/nonexistent/x.spd"]) == 1
    err = capsys.readouterr().err
    assert "/nonexistent/x.spd: error: cannot read SPD file: No such file or directory" in err


def test_validate_non_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bin.spd"
    f.write_bytes(b"bypass udp port 53;\nbypass \xff\xfe;\n")
    assert ipsecctl(["validate", str(f)]) == 1
    assert f"{f}:2:8: error: byte 0xff is not valid UTF-8" in capsys.readouterr().err


def test_validate_warnings_and_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "partial.conf"
    f.write_text(
        "spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require;\n"
        "spdadd 0.0.0.0/0 0.0.0.0/0[53] udp -P out none;\n"
    )
    assert ipsecctl(["validate", str(f)]) == 0
    assert ": warning: " in capsys.readouterr().err
    assert ipsecctl(["validate", "-q", str(f)]) == 0
    assert capsys.readouterr().err == ""


def test_compile_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spd = _copy(tmp_path, EXAMPLES / "cluster.spd")
    nodes = str(EXAMPLES / "cluster.nodes")
    assert ipsecctl(["compile", str(spd), "--node", "node-b", "--nodes", nodes, "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["node"] == "node-b" and len(data["connections"]) == 4
    assert ipsecctl(["compile", str(spd), "--node", "node-b", "--nodes", nodes]) == 0
    assert capsys.readouterr().out.startswith("# node node-b\n")


def test_compile_unknown_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spd = _copy(tmp_path, EXAMPLES / "cluster.spd")
    nodes = str(EXAMPLES / "cluster.nodes")
    assert ipsecctl(["compile", str(spd), "--node", "zz", "--nodes", nodes]) == 1
    assert capsys.readouterr().err == f"error: node 'zz' is not in {nodes}\n"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert ipsecctl([]) == 2
    assert ipsecctl(["compile", "x.spd"]) == 2
    assert "--node" in capsys.readouterr().err


def test_registration_hook_adds_subcommands(monkeypatch: pytest.MonkeyPatch) -> None:
    def register(subparsers):  # type: ignore[no-untyped-def]
        p = subparsers.add_parser("hello")
        p.set_defaults(func=lambda args: 7)

    monkeypatch.setattr(cli, "REGISTRARS", [*cli.REGISTRARS, register])
    assert ipsecctl(["hello"]) == 7


def test_ipsecd_parse_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _copy(tmp_path, EXAMPLES / "cluster.spd")
    assert agent_main.main(["-p", "-f", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    assert agent_main.main(["-p", "-f", str(good), "-m", "quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert agent_main.main(["-p", "-f", str(good), "-m", "verbose"]) == 0
    assert "2 connections" in capsys.readouterr().out
    bad = _copy(tmp_path, DATA / "errors" / "key-length.spd")
    assert agent_main.main(["-p", "-f", str(bad)]) == 1
    assert "key-length.spd:1:50: error:" in capsys.readouterr().err


def test_ipsecd_backup_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """-b reads the backup: FILE.bak beside -f FILE, else /etc/ipsec.spd.bak."""
    backup = _copy(tmp_path, EXAMPLES / "cluster.spd")
    named = backup.with_name("policy.spd.bak")
    backup.rename(named)
    assert agent_main.main(["-p", "-b", "-f", str(tmp_path / "policy.spd")]) == 0
    assert capsys.readouterr().out == f"{named}: ok\n"
    monkeypatch.setattr(agent_main, "BACKUP_SPD", str(named))
    assert agent_main.main(["-p", "-b"]) == 0
    assert capsys.readouterr().out == f"{named}: ok\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--controller", "c:7480", "--node", "n"], "pass --insecure"),
        (["--controller", "c:7480", "-f", "x", "--insecure"], "exclude each other"),
        (["--controller", "c:7480", "-b", "--insecure"], "-b is for standalone"),
        (["--labels", "nokey", "-f", "x"], "not key=value"),
    ],
)
def test_ipsecd_option_errors_name_the_fix(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert agent_main.main(argv) == 2
    assert message in capsys.readouterr().err


def test_ipsecd_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_main.main(["-h"]) == 0
    assert "-p" in capsys.readouterr().out


def test_unexpected_exception_is_a_message_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def register(subparsers):  # type: ignore[no-untyped-def]
        def boom(args):  # type: ignore[no-untyped-def]
            raise OSError("disk on fire")

        subparsers.add_parser("boom").set_defaults(func=boom)

    monkeypatch.setattr(cli, "REGISTRARS", [*cli.REGISTRARS, register])
    assert ipsecctl(["boom"]) == 1
    assert capsys.readouterr().err == "error: unexpected OSError: disk on fire\n"
