"""Diagnostics: located, rendered like a compiler (``FILE:LINE:COL: error: message``).

Every problem the SPD tool chain finds becomes a :class:`Diagnostic`.  Errors are
collected for the whole file and raised together as one :class:`SpdError`; warnings
travel on the returned :class:`~ipsecd.spd.model.Policy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from .limits import LINE_WINDOW, MAX_ERRORS, MAX_FILE_BYTES, MAX_MESSAGE, MAX_WARNINGS

__all__ = ["Diagnostic", "Loc", "Severity", "Sink", "SpdError", "clip", "redact_line", "too_big"]


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


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to about ``limit`` characters, keeping its start and its end (a
    message quotes words of the file, which may be arbitrarily long)."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head - 5
    return f"{text[:head]} ... {text[-tail:]}"


def _window(shown: str, caret: int) -> tuple[str, int]:
    """At most LINE_WINDOW characters of ``shown`` around index ``caret``, with '...'
    where the line was cut; returns the piece and the caret's index in it."""
    if len(shown) <= LINE_WINDOW:
        return shown, caret
    start = max(0, min(caret - LINE_WINDOW // 2, len(shown) - LINE_WINDOW))
    end = start + LINE_WINDOW
    head = "..." if start > 0 else ""
    tail = "..." if end < len(shown) else ""
    return head + shown[start:end] + tail, len(head) + caret - start


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
            # mask keys on the whole line first, then cut a window around the caret
            shown = redact_line(self.source_line.rstrip("\n"))
            shown, caret = _window(shown, max(self.col - 1, 0))
            prefix = "".join("\t" if ch == "\t" else " " for ch in shown[:caret])
            out.append(f"  {shown}")
            out.append(f"  {prefix}^")
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class SpdError(Exception):
    """The only exception the SPD loader raises: all errors of one file.

    ``total_errors`` counts errors that were found but not kept (see :class:`Sink`);
    by default it is the number of errors among ``diagnostics``."""

    def __init__(
        self,
        diagnostics: tuple[Diagnostic, ...] | list[Diagnostic],
        *,
        total_errors: int | None = None,
    ) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        shown = sum(1 for d in self.diagnostics if d.is_error)
        self.total_errors = shown if total_errors is None else max(total_errors, shown)
        super().__init__(self.render())

    def render(self) -> str:
        text = "\n".join(d.render() for d in self.diagnostics)
        if self.total_errors > 1:
            text += f"\n{self.total_errors} errors"
        return text

    def __str__(self) -> str:
        return self.render()


class Sink:
    """Collects diagnostics while a file is processed.

    At most ``max_errors`` errors and ``max_warnings`` warnings are kept (docs/limits.md);
    the others are only counted, and one last diagnostic, placed at the first one that
    was not kept, says how many there were.  So a file full of errors costs bounded
    memory and prints bounded text."""

    def __init__(self, max_errors: int = MAX_ERRORS, max_warnings: int = MAX_WARNINGS) -> None:
        self.items: list[Diagnostic] = []
        self.max_errors = max_errors
        self.max_warnings = max_warnings
        self.error_count = 0
        self.warning_count = 0
        self._first_dropped: dict[Severity, Loc] = {}

    def error(self, loc: Loc, message: str, hint: str = "") -> None:
        self.error_count += 1
        if self.error_count > self.max_errors:
            self._first_dropped.setdefault(Severity.ERROR, loc)
            return
        self._add(loc, Severity.ERROR, message, hint)

    def warning(self, loc: Loc, message: str, hint: str = "") -> None:
        self.warning_count += 1
        if self.warning_count > self.max_warnings:
            self._first_dropped.setdefault(Severity.WARNING, loc)
            return
        self._add(loc, Severity.WARNING, message, hint)

    def _add(self, loc: Loc, severity: Severity, message: str, hint: str) -> None:
        self.items.append(
            Diagnostic(
                loc.filename,
                loc.line,
                loc.col,
                severity,
                clip(message),
                clip(hint),
                loc.source_line,
            )
        )

    @property
    def has_errors(self) -> bool:
        return self.error_count > 0

    def _summary(self, severity: Severity) -> tuple[Diagnostic, ...]:
        loc = self._first_dropped.get(severity)
        if loc is None:
            return ()
        if severity is Severity.ERROR:
            count, limit = self.error_count - self.max_errors, self.max_errors
        else:
            count, limit = self.warning_count - self.max_warnings, self.max_warnings
        plural = "s" if count > 1 else ""
        return (
            Diagnostic(
                loc.filename,
                loc.line,
                loc.col,
                severity,
                f"{count} more {severity.value}{plural} from here on not shown "
                f"(at most {limit} {severity.value}s are listed per file)",
                "fix the ones above and check the file again",
                loc.source_line,
            ),
        )

    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.items if d.is_error) + self._summary(Severity.ERROR)

    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.items if not d.is_error) + self._summary(Severity.WARNING)

    def raise_if_errors(self) -> None:
        if self.has_errors:
            shown = sorted(self.items, key=_order)
            raise SpdError(
                shown + list(self._summary(Severity.ERROR)), total_errors=self.error_count
            )


def _order(d: Diagnostic) -> tuple[int, int, int]:
    return (d.line, d.col, 0 if d.is_error else 1)


def too_big(name: str, data: bytes, what: str, limit: int = MAX_FILE_BYTES) -> Diagnostic:
    """The error for a file over ``limit`` bytes, placed at the first byte past it."""
    offset = limit
    line = data.count(b"\n", 0, offset) + 1
    start = data.rfind(b"\n", 0, offset) + 1
    col = len(data[start:offset].decode("utf-8", "replace")) + 1
    end = data.find(b"\n", offset)
    shown = data[start : end if end >= 0 else len(data)]
    return Diagnostic(
        name,
        line,
        col,
        Severity.ERROR,
        f"the {what} file is larger than {limit} bytes; it is not read",
        "split the policy, or use fewer and broader rules (docs/limits.md)",
        shown.decode("utf-8", "replace"),
    )
