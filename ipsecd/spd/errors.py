"""Diagnostics: located, rendered like a compiler (``FILE:LINE:COL: error: message``).

Every problem the SPD tool chain finds becomes a :class:`Diagnostic`.  Errors are
collected for the whole file and raised together as one :class:`SpdError`; warnings
travel on the returned :class:`~ipsecd.spd.model.Policy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Diagnostic", "Loc", "Severity", "Sink", "SpdError", "redact_line"]


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Loc:
    """A place in a source file: 1-based line and column."""

    filename: str
    line: int
    col: int
    source_line: str = field(default="", compare=False, repr=False)  # may hold keys

    def short(self) -> str:
        return f"{self.filename}:{self.line}:{self.col}"


# Long hex strings (keys; SPIs are at most 8 hex digits) and every quoted string (in
# this language strings only carry keys, PSKs and macro values that may hold them).
# Replaced by '*' of the same length so carets stay put.
_HEX_KEY = re.compile(r"0[xX][0-9A-Fa-f]{9,}")
_QUOTED = re.compile(r'"[^"\n]*"?')


def redact_line(line: str) -> str:
    """Mask literal key material in a source line before it is shown anywhere."""
    line = _HEX_KEY.sub(lambda m: m.group(0)[:2] + "*" * (len(m.group(0)) - 2), line)
    return _QUOTED.sub(lambda m: '"' + "*" * (len(m.group(0)) - 1), line)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding.  ``render()`` gives the message, the line, a caret and a hint."""

    filename: str
    line: int
    col: int
    severity: Severity
    message: str
    hint: str = ""
    source_line: str = field(default="", repr=False)  # raw: render() masks keys

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def location(self) -> str:
        if self.line <= 0:
            return self.filename
        return f"{self.filename}:{self.line}:{self.col}"

    def render(self) -> str:
        out = [f"{self.location()}: {self.severity.value}: {self.message}"]
        if self.source_line:
            shown = redact_line(self.source_line.rstrip("\n"))
            prefix = "".join("\t" if ch == "\t" else " " for ch in shown[: self.col - 1])
            out.append(f"  {shown}")
            out.append(f"  {prefix}^")
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class SpdError(Exception):
    """The only exception the SPD loader raises: all errors of one file."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...] | list[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__(self.render())

    def render(self) -> str:
        errors = [d for d in self.diagnostics if d.is_error]
        text = "\n".join(d.render() for d in self.diagnostics)
        if len(errors) > 1:
            text += f"\n{len(errors)} errors"
        return text

    def __str__(self) -> str:
        return self.render()


class Sink:
    """Collects diagnostics while a file is processed."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def error(self, loc: Loc, message: str, hint: str = "") -> None:
        self._add(loc, Severity.ERROR, message, hint)

    def warning(self, loc: Loc, message: str, hint: str = "") -> None:
        self._add(loc, Severity.WARNING, message, hint)

    def _add(self, loc: Loc, severity: Severity, message: str, hint: str) -> None:
        self.items.append(
            Diagnostic(loc.filename, loc.line, loc.col, severity, message, hint, loc.source_line)
        )

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)

    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.items if d.is_error)

    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.items if not d.is_error)

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise SpdError(sorted(self.items, key=_order))


def _order(d: Diagnostic) -> tuple[int, int, int]:
    return (d.line, d.col, 0 if d.is_error else 1)
