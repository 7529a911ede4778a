"""Secrets never show: repr, str, to_dict, to_text, error messages, CLI output;
literal keys are refused in files that group/others can access."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest

from controller.cli import main as ipsecctl
from ipsecd.spd import (
    NodeInfo,
    Secret,
    SecretRef,
    SpdError,
    compile_node,
    load_file,
    load_text,
)

KEY_HEX = "5e" * 36
PSK = "correct-horse-battery-staple-42"
TEXT = f"""
add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 0x{KEY_HEX};
connection c {{ between all and all; auth psk "{PSK}"; }}
"""
NODES = [
    NodeInfo("a", (ipaddress.ip_address("192.0.2.1"),)),
    NodeInfo("b", (ipaddress.ip_address("192.0.2.2"),)),
]


def _assert_clean(text: str) -> None:
    assert KEY_HEX not in text and KEY_HEX.upper() not in text
    assert PSK not in text


def test_secret_value_type_is_redacted() -> None:
    s = Secret(b"\x01\x02topsecret")
    for shown in (repr(s), str(s), f"{s}", f"{s!r}", repr([s]), repr({"k": s})):
        assert "topsecret" not in shown and "\\x01" not in shown
    assert s.reveal() == b"\x01\x02topsecret" and s.bits == 88
    assert str(SecretRef("db-psk")) == "secret:db-psk"


def test_policy_and_config_reprs_and_outputs_are_redacted() -> None:
    policy = load_text(TEXT)
    cfg = compile_node(policy, NODES[0], NODES)
    _assert_clean(repr(policy))
    _assert_clean(repr(cfg))
    _assert_clean(policy.canonical())
    _assert_clean(json.dumps(cfg.to_dict()))
    _assert_clean(cfg.to_text())
    assert "<redacted>" in cfg.to_text() and "<redacted>" in json.dumps(cfg.to_dict())


def test_show_secrets_reveals_on_request_only() -> None:
    cfg = compile_node(load_text(TEXT), NODES[0], NODES)
    assert KEY_HEX in json.dumps(cfg.to_dict(redact=False))
    assert KEY_HEX in cfg.to_text(redact=False)


def test_error_messages_mask_keys_on_the_shown_line() -> None:
    bad = f"add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 0x{KEY_HEX} -m bogus;\n"
    bad += f'connection c {{ between all and all; auth psk "{PSK}"; dpd never; }}\n'
    with pytest.raises(SpdError) as info:
        load_text(bad)
    _assert_clean(str(info.value))
    _assert_clean(repr(info.value.diagnostics))  # source_line is kept raw only in memory
    for d in info.value.diagnostics:
        _assert_clean(d.render())


def test_macro_holding_a_key_is_masked_in_errors() -> None:
    with pytest.raises(SpdError) as info:
        load_text(f'k = "{PSK}";\nconnection c {{ between all and nowhere; auth psk $k; }}\n')
    _assert_clean(str(info.value))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_literal_keys_refused_unless_private(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "ipsec.spd"
    f.write_text(TEXT)
    f.chmod(mode)
    with pytest.raises(SpdError) as info:
        load_file(f)
    msg = str(info.value)
    assert f"mode {stat.S_IMODE(mode):04o}" in msg
    assert "readable by root only" in msg and f"chmod 600 {f}" in msg
    _assert_clean(msg)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_literal_keys_accepted_when_private(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "ipsec.spd"
    f.write_text(TEXT)
    f.chmod(mode)
    assert load_file(f).has_literal_keys


def test_secret_references_are_fine_in_a_world_readable_file(tmp_path: Path) -> None:
    f = tmp_path / "ipsec.spd"
    f.write_text("connection c { between all and all; auth psk secret:mesh; }\n")
    f.chmod(0o644)
    assert not load_file(f).has_literal_keys


def test_cli_never_prints_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spd = tmp_path / "p.spd"
    spd.write_text(TEXT)
    spd.chmod(0o600)
    nodes = tmp_path / "nodes"
    nodes.write_text("a 192.0.2.1\nb 192.0.2.2\n")
    for fmt in ("json", "text"):
        assert ipsecctl(["compile", str(spd), "--node", "a", "--nodes", str(nodes), "-o", fmt]) == 0
        out, err = capsys.readouterr()
        _assert_clean(out + err)
    assert ipsecctl(["validate", str(spd)]) == 0
    out, err = capsys.readouterr()
    _assert_clean(out + err)
    spd.chmod(0o644)
    assert ipsecctl(["validate", str(spd)]) == 1
    out, err = capsys.readouterr()
    _assert_clean(out + err)
    assert "chmod 600" in err


def test_redact_line_keeps_length_and_spis() -> None:
    from ipsecd.spd.errors import redact_line

    line = f'add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 0x{KEY_HEX}; psk "{PSK}"'
    shown = redact_line(line)
    assert len(shown) == len(line)
    assert "0x1000" in shown
    _assert_clean(shown)
