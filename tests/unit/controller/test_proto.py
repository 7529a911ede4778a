"""The committed ipsecd/v1 code matches proto/ (make proto-check), and the check can fail."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _genproto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("genproto", ROOT / "scripts" / "genproto.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["genproto_under_test"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_up_to_date() -> None:
    problems = _genproto().check()
    assert problems == [], "stale generated code; run `make proto`: " + "; ".join(problems)


def test_check_detects_a_changed_proto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _genproto()
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "ipsecd" / "v1", tmp_path / "ipsecd" / "v1")
    types = tmp_path / "proto" / "ipsecd" / "v1" / "types.proto"
    types.write_text(types.read_text() + "\nmessage AddedLater { string x = 1; }\n")
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "PROTO_ROOT", tmp_path / "proto")
    problems = gen.check()
    assert any("types_pb2.py differs" in p for p in problems), problems


def test_generated_modules_import_as_package_paths() -> None:
    from ipsecd.v1 import agent_pb2, agent_pb2_grpc, policy_pb2, status_pb2

    assert agent_pb2.DESCRIPTOR.package == "ipsecd.v1"
    assert hasattr(agent_pb2_grpc, "AgentServiceStub")
    assert policy_pb2.PushRequest().HasField("base_revision") is False
    assert status_pb2.NodeStatusRequest(node="n").node == "n"
