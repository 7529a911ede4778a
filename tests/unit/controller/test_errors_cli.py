"""Error mapping is complete: every controller error has a status code, every status
kind an exit code, and the documented exit codes are the real ones."""

from __future__ import annotations

import re

import grpc
import pytest

import controller.cli_remote as cli_remote
import controller.errors as errors
from controller.cli import build_parser
from controller.server import STATUS_OF


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_every_controller_error_has_a_status_code() -> None:
    missing = _subclasses(errors.ControllerError) - set(STATUS_OF)
    assert not missing, f"add to controller.server.STATUS_OF: {missing}"


def test_every_status_kind_has_an_exit_code() -> None:
    kinds = {kind for _code, kind in STATUS_OF.values()}
    assert kinds <= set(cli_remote.EXIT), kinds - set(cli_remote.EXIT)
    assert len(set(cli_remote.EXIT.values())) == len(cli_remote.EXIT)  # distinct


def test_documented_exit_codes_match() -> None:
    doc = cli_remote.__doc__ or ""
    documented = {int(m) for m in re.findall(r"^(\d)\s{3,}", doc, re.M)}
    assert documented == set(cli_remote.EXIT.values())


class _FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str, kind: str | None) -> None:
        meta = grpc.aio.Metadata(("ipsecd-error", kind)) if kind else grpc.aio.Metadata()
        super().__init__(code, grpc.aio.Metadata(), meta, details)


def test_rpc_errors_map_to_kinds() -> None:
    m = cli_remote._map_rpc_error
    err = m(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connect refused", None), "h:1")
    assert err.kind == "unreachable" and "h:1" in str(err)
    err = m(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "etcd down", "store-unavailable"), "h:1")
    assert err.kind == "store-unavailable" and "cannot reach etcd" in str(err)
    err = m(_FakeRpcError(grpc.StatusCode.ABORTED, "conflict: x", "conflict"), "h:1")
    assert err.kind == "conflict" and str(err) == "conflict: x"
    err = m(_FakeRpcError(grpc.StatusCode.INTERNAL, "boom", None), "h:1")
    assert err.kind == "error"


def test_remote_subcommands_are_wired_into_ipsecctl() -> None:
    parser = build_parser()
    for argv in (
        ["push", "f.spd", "--base-revision", "3", "--comment", "x"],
        ["get", "--revision", "2", "--show-secrets", "-o", "json"],
        ["history"],
        ["diff", "1", "2"],
        ["rollback"],
        ["rollback", "4"],
        ["nodes", "--controller", "127.0.0.1:1"],
        ["status", "node-1", "-o", "json"],
    ):
        args = parser.parse_args(argv)
        assert callable(args.func), argv


def test_table_rendering() -> None:
    text = cli_remote._table(["A", "LONGER"], [["xyz", "1"], ["w", "22"]])
    assert text.splitlines() == ["A    LONGER", "xyz  1", "w    22"]


def test_size_errors_map_to_clear_messages() -> None:
    m = cli_remote._map_rpc_error
    raw = "Received message larger than max (4194400 vs. 3211264)"
    err = m(_FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, raw, None), "h:1", "push")
    assert err.kind == "invalid" and cli_remote.EXIT[err.kind] == 1
    assert "too large" in str(err) and "--max-policy-bytes" in str(err) and raw in str(err)
    err = m(_FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, raw, None), "h:1", "history")
    assert err.kind == "error" and "--limit" in str(err)
    # the controller's own answer (the handler ran): its message as it is, exit 1
    said = "policy p.spd is 2,000,000 bytes; ... (--max-policy-bytes); nothing changed"
    err = m(_FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, said, "invalid"), "h:1", "push")
    assert err.kind == "invalid" and str(err) == said


def test_size_errors_of_the_controller_are_invalid_input() -> None:
    code, kind = STATUS_OF[errors.InputTooLarge]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and cli_remote.EXIT[kind] == 1
    code, kind = STATUS_OF[errors.StoreOutcomeUnknown]
    assert kind == "store-unavailable" and cli_remote.EXIT[kind] == 6


def test_controller_options_are_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    from controller.limits import POLICY_BYTES_CEILING
    from controller.main import build_parser, check_args

    parser = build_parser()
    for argv in (
        ["--max-policy-bytes", str(POLICY_BYTES_CEILING + 1)],
        ["--max-policy-bytes", "0"],
        ["--stream-drain-timeout", "-1"],
        ["--etcd-retry-budget", "0"],
    ):
        with pytest.raises(SystemExit) as info:
            check_args(parser, parser.parse_args(argv))
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "error: --" in err and "Traceback" not in err
    args = parser.parse_args(["--max-policy-bytes", str(POLICY_BYTES_CEILING)])
    check_args(parser, args)


def test_the_operations_exit_code_table_matches() -> None:
    """docs/operations.md has one exit-code table for every ipsecctl command; it lists
    exactly the codes of EXIT (plus 130, Ctrl-C)."""
    from pathlib import Path

    doc = (Path(__file__).parents[3] / "docs" / "operations.md").read_text()
    table = doc[doc.index("**Exit codes**") :]
    table = table[: table.index("\n\n", table.index("| exit |"))]
    codes = {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert codes == set(cli_remote.EXIT.values()) | {130}
