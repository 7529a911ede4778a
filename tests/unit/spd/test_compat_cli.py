"""ipsecctl check-rollout through main(argv): exit codes, text and JSON output, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli import main as ipsecctl
from controller.cli_rollout import EXIT_INCOMPATIBLE

OLD = """
proposal esp e1 aes256gcm16;
nodes web label role=web;
connection mesh { between all and all; auth psk secret:k; esp e1; }
"""
NEW_BAD = OLD.replace("e1 aes256gcm16", "e1 chacha20poly1305")
NODES = "node-a 192.0.2.1 role=web\nnode-b 192.0.2.2 role=web\nnode-c 198.51.100.3\n"


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_compatible_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = write(tmp_path, "old.spd", OLD), write(tmp_path, "new.spd", OLD)
    nodes = write(tmp_path, "cluster.nodes", NODES)
    assert ipsecctl(["check-rollout", old, new, "--nodes", nodes]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"rollout {old} -> {new}: compatible\n")
    assert "3 nodes in 2 classes" in out


def test_incompatible_exits_3_with_the_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = write(tmp_path, "old.spd", OLD), write(tmp_path, "new.spd", NEW_BAD)
    nodes = write(tmp_path, "cluster.nodes", NODES)
    assert EXIT_INCOMPATIBLE == 3
    assert ipsecctl(["check-rollout", old, new, "--nodes", nodes]) == 3
    out, err = capsys.readouterr()
    assert err == ""
    assert "NOT compatible" in out
    assert "incompatible: connection mesh:" in out
    assert "no common ESP proposal" in out and "chacha20poly1305" in out
    assert "forced plan (--force)" in out and "until both ends run the new revision" in out


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = write(tmp_path, "old.spd", OLD), write(tmp_path, "new.spd", NEW_BAD)
    nodes = write(tmp_path, "cluster.nodes", NODES)
    assert ipsecctl(["check-rollout", old, new, "--nodes", nodes, "-o", "json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["compatible"] is False and doc["nodes"] == 3
    assert doc["synthetic_directory"] is False
    assert [c["nodes"] for c in doc["classes"]] == [["node-a", "node-b"], ["node-c"]]
    kinds = {f["kind"] for f in doc["findings"]}
    assert {"incompatible", "protection-lost"} <= kinds
    assert all(f["refusing"] for f in doc["findings"] if f["kind"] != "note")
    assert {p["until"] for p in doc["forced_plan"]} == {"both-moved"}
    assert doc["batches"] == [[1, 2]]
    assert doc["node_pairs_checked"] == 3


def test_without_nodes_uses_stand_in_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = write(tmp_path, "old.spd", OLD), write(tmp_path, "new.spd", NEW_BAD)
    assert ipsecctl(["check-rollout", old, new]) == 3
    out = capsys.readouterr().out
    assert "no --nodes: checked on" in out and "stand-in nodes" in out
    assert ipsecctl(["check-rollout", old, new, "-o", "json"]) == 3
    assert json.loads(capsys.readouterr().out)["synthetic_directory"] is True


def test_spd_errors_name_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path, "old.spd", OLD)
    new = write(tmp_path, "new.spd", OLD + "connection broken { between all and nowhere; }\n")
    assert ipsecctl(["check-rollout", old, new]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{new}:5:" in err and ": error: " in err
    assert f"error: {new} is invalid" in err
    assert "Traceback" not in err


def test_nodes_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path, "old.spd", OLD)
    nodes = write(tmp_path, "bad.nodes", "node-a not-an-address\n")
    assert ipsecctl(["check-rollout", old, old, "--nodes", nodes]) == 1
    err = capsys.readouterr().err
    assert f"{nodes}:1:8: error: 'not-an-address' is not an IP address" in err


def test_missing_file_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path, "old.spd", OLD)
    assert ipsecctl(["check-rollout", old, "/nonexistent/new.spd"]) == 1
    assert "cannot read SPD file" in capsys.readouterr().err
    assert ipsecctl(["check-rollout", old]) == 2
    assert ipsecctl(["check-rollout", old, old, "-o", "xml"]) == 2
