"""The suite's own secret scan (issue #12 item 6, docs/security.md "Secrets"): every
secret value the tests use is harvested from their sources, and every log record
emitted during the run, every captured output section of every test and every log
file under the run's temporary directory is searched for them.  A hit fails the run
and names where it was, never the value.

What counts as a secret value (:func:`harvest`): the quoted text of ``auth psk "..."``,
constants whose name says PSK, SECRET or KEY (at least 12 characters), and long hex
keys (32+ digits after ``0x``) in the tests and examples.  Each is searched as text
and, for text values, as hex too (a key logged with ``.hex()``).

Files our daemons never write are not scanned: third-party peers' logs (charon,
pluto, iked), and files that hold keys by design (``*.key``, ``*.spd``, secrets files,
peer configs, an agent's ``last-applied.json``): only ``*.log``, ``*.out`` and
``*.err``."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Finding", "Scanner", "harvest"]

_PSK = re.compile(r'auth psk "([^"{}]{8,})"')
_CONST = re.compile(
    r'^\s*[A-Z_]*(?:PSK|SECRET|KEY)[A-Z_0-9]*\s*=\s*b?"([^"{}\\]{12,})"', re.MULTILINE
)
_HEX = re.compile(r"0x([0-9a-fA-F]{32,})")
#: Third-party daemons' logs: not our output.
_FOREIGN = {"charon.log", "pluto.log", "iked.log"}
_SUFFIXES = {".log", ".out", ".err"}
_MAX_FILE = 16 * 1024 * 1024


def harvest(roots: Iterable[Path]) -> set[str]:
    """The secret values written in the files under ``roots`` (``*.py``, ``*.spd``)."""
    found: set[str] = set()
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix not in (".py", ".spd") or not path.is_file():
                continue
            text = path.read_text(errors="replace")
            found.update(m.group(1) for m in _PSK.finditer(text))
            found.update(m.group(1) for m in _CONST.finditer(text))
            found.update(m.group(1).lower() for m in _HEX.finditer(text))
    return {v for v in found if len(set(v)) > 3}  # not "0000...": no signal


@dataclass(frozen=True, slots=True)
class Finding:
    where: str
    which: int  # index of the value in the scanner's sorted list (never the value)


@dataclass
class Scanner:
    """Searches texts for any of ``values`` (as text, and text values as hex too)."""

    values: list[str]
    findings: list[Finding] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values = sorted(set(self.values))
        forms: dict[str, int] = {}
        for i, v in enumerate(self.values):
            forms[v.lower() if _is_hex(v) else v] = i
            if not _is_hex(v):
                forms[v.encode().hex()] = i
        self._index = forms
        pattern = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        self._re = re.compile(pattern, re.IGNORECASE) if pattern else None

    def scan(self, text: str, where: str) -> bool:
        if self._re is None or not text:
            return False
        m = self._re.search(text)
        if m is None:
            return False
        hit = m.group(0)
        which = self._index.get(hit, self._index.get(hit.lower(), -1))
        self.findings.append(Finding(where, which))
        return True

    def scan_tree(self, root: Path) -> None:
        if not root.exists():
            return
        for path in sorted(root.rglob("*")):
            if path.suffix not in _SUFFIXES or path.name in _FOREIGN or not path.is_file():
                continue
            try:
                if path.stat().st_size > _MAX_FILE:
                    continue
                text = path.read_text(errors="replace")
            except OSError:
                continue
            self.scan(text, str(path))

    def report(self) -> str:
        lines = [f"{len(self.findings)} secret value(s) found in logs or outputs:"]
        for f in self.findings[:50]:
            lines.append(f"  secret #{f.which} (of {len(self.values)}) in {f.where}")
        return "\n".join(lines)


def _is_hex(v: str) -> bool:
    return len(v) >= 32 and all(c in "0123456789abcdefABCDEF" for c in v)


class RecordHandler(logging.Handler):
    """Scans every log record of the run as it is emitted (nothing is kept)."""

    def __init__(self, scanner: Scanner) -> None:
        super().__init__(logging.NOTSET)
        self.scanner = scanner
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted is not ours to judge
            return
        self.scanner.scan(text, f"log record of {record.name} ({record.pathname}:{record.lineno})")
