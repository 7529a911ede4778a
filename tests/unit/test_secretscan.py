"""The suite's secret scan (tests/support/secretscan.py) can fail: a planted value is
found in a log record, a captured section and a log file, as text and as hex, and
the report names the place but never the value."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from tests.support.secretscan import RecordHandler, Scanner, harvest


def test_harvest_finds_the_suites_secrets() -> None:
    root = Path(__file__).parents[1]
    found = harvest([root, root.parent / "examples"])
    # a literal PSK of an SPD in a test, a constant, a hex key
    assert "daemon-test-psk-0123" in found
    assert "mesh-root-psk-0123456789abcdef" in found
    assert "3f1a9c5e7b2d4f60a8c1e3b5d7f9a2c4d6e8f0a1" in found
    assert len(found) >= 20


def test_a_planted_secret_is_found_everywhere(tmp_path: Path) -> None:
    # made now, so that the suite's own scan (which harvests the sources) never knows them
    secret = "planted-" + secrets.token_hex(8)
    hexkey = secrets.token_hex(16)
    scanner = Scanner([secret, hexkey])
    log = logging.getLogger("secretscan-test")
    handler = RecordHandler(scanner)
    log.addHandler(handler)
    try:
        log.warning("nothing to see")
        assert not scanner.findings
        log.warning("the key is %s", secret.encode().hex())  # as hex
    finally:
        log.removeHandler(handler)
    assert scanner.scan(f"stdout: {secret}", "test x: Captured stdout call")
    (tmp_path / "agent.log").write_text(f"... {hexkey.upper()} ...")  # any case
    (tmp_path / "charon.log").write_text(secret)  # a third-party log: not ours
    (tmp_path / "node.key").write_text(secret)  # holds keys by design
    scanner.scan_tree(tmp_path)
    where = [f.where for f in scanner.findings]
    assert len(where) == 3, where
    assert "secretscan-test" in where[0] and where[2].endswith("agent.log")
    report = scanner.report()
    assert secret not in report and hexkey not in report.lower()
    assert "3 secret value(s)" in report
