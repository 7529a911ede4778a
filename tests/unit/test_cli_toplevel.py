"""`ipsecctl --controller X --insecure COMMAND` and `ipsecctl COMMAND --controller X
--insecure` both work (the config options: tests/unit/controller/test_clientconf.py)."""

from __future__ import annotations

import socket

import pytest

from controller.cli import build_parser, main


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_top_level_flag_is_parsed() -> None:
    args = build_parser().parse_args(["--controller", "127.0.0.1:9", "history"])
    assert args.controller == "127.0.0.1:9"


@pytest.mark.parametrize("position", ["before", "after"])
def test_either_position_reaches_the_given_address(
    position: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IPSECCTL_CONTROLLER", raising=False)
    address = f"127.0.0.1:{_closed_port()}"
    argv = (
        ["--controller", address, "--insecure", "history"]
        if position == "before"
        else ["history", "--controller", address, "--insecure"]
    )
    assert main(argv) == 5  # unreachable
    err = capsys.readouterr().err
    assert f"cannot reach the controller at {address}" in err
    assert err.startswith(f"warning: --insecure: plaintext gRPC to {address}")
    assert "Traceback" not in err
