"""The controller's use of the SPD language (ipsecd.spd): validation and redaction.

Kept in one adapter so the rest of the controller does not depend on the compiler's
internals: ``validate`` turns ``SpdError`` diagnostics into plain values, ``redact``
masks literal key material in SPD text before it leaves the controller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from controller.errors import ValidatorUnavailable

__all__ = ["CheckedDiagnostic", "Validation", "redact", "validate"]


@dataclass(frozen=True, slots=True)
class CheckedDiagnostic:
    """A diagnostic as the API carries it (rendered text is already redacted)."""

    file: str
    line: int
    column: int
    message: str
    hint: str
    rendered: str


@dataclass(frozen=True, slots=True)
class Validation:
    """Result of checking one SPD text."""

    diagnostics: tuple[CheckedDiagnostic, ...]
    policy_digest: str  # "" when invalid

    @property
    def ok(self) -> bool:
        return not self.diagnostics


def _spd() -> Any:
    try:
        from ipsecd import spd
    except ImportError as exc:  # pragma: no cover - broken installation
        raise ValidatorUnavailable(
            f"the SPD compiler ipsecd.spd cannot be imported ({exc}); reinstall ipsecd"
        ) from exc
    if not hasattr(spd, "load_text"):
        raise ValidatorUnavailable(
            "ipsecd.spd has no load_text(): the SPD compiler is not installed in this build"
        )
    return spd


def validate(text: str, filename: str, file_mode: int | None) -> Validation:
    """Parse and check ``text`` exactly as ``ipsecctl validate`` would."""
    spd = _spd()
    try:
        policy = spd.load_text(text, filename or "<push>", file_mode=file_mode)
    except spd.SpdError as exc:
        diags = tuple(
            CheckedDiagnostic(
                file=str(getattr(d, "filename", filename)),
                line=int(getattr(d, "line", 0)),
                column=int(getattr(d, "col", 0)),
                message=str(getattr(d, "message", "")),
                hint=str(getattr(d, "hint", "")),
                rendered=d.render(),
            )
            for d in exc.diagnostics
            if getattr(d, "is_error", True)
        )
        return Validation(diags, "")
    digest = policy.digest() if hasattr(policy, "digest") else ""
    return Validation((), str(digest))


# Fallback when ipsecd.spd does not offer redact_line: hex runs longer than an SPI and
# quoted strings on lines that carry key material.
_HEX = re.compile(r"0[xX][0-9A-Fa-f]{9,}")
_QUOTED = re.compile(r'"[^"\n]*"?')
_KEYWORDS = re.compile(r"(^|\s)(-E|-A|key|psk|secret)(\s|$)")


def _fallback_redact_line(line: str) -> str:
    line = _HEX.sub(lambda m: m.group(0)[:2] + "*" * (len(m.group(0)) - 2), line)
    if _KEYWORDS.search(line):
        line = _QUOTED.sub(lambda m: '"' + "*" * (len(m.group(0)) - 1), line)
    return line


def redact(text: str) -> str:
    """Mask every literal key in SPD text (line by line, lengths kept)."""
    try:
        from ipsecd.spd.errors import redact_line
    except ImportError:
        redact_line = _fallback_redact_line
    return "".join(redact_line(line) for line in text.splitlines(keepends=True))
