"""Literal keys in SPD text, found and replaced by ``secret:NAME`` references.

The controller moves every literal key of a pushed policy into its secret store and
keeps the revision text with references only (docs/security.md "Secrets"), so that
what every node receives in common carries no key.  This module is the pure part:
where the literal keys are (the parser's own findings, so nothing the parser reads as
a key is missed) and the text with each one replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Sink
from .lexer import _TOKEN
from .parser import parse
from .values import parse_hex_key

__all__ = ["LiteralKey", "find_literal_keys", "replace_literal_keys"]


@dataclass(frozen=True, slots=True)
class LiteralKey:
    """One literal key: 1-based ``line``, the 0-based ``start``/``end`` of its token in
    that line, its bytes and how it was written (``string``: ``"..."``, ``hex``)."""

    line: int
    start: int
    end: int
    value: bytes = field(repr=False)
    form: str

    def __repr__(self) -> str:
        return f"LiteralKey(line={self.line}, {self.form}, {len(self.value)} bytes)"


def find_literal_keys(text: str, filename: str = "<string>") -> list[LiteralKey]:
    """Every literal key of ``text`` in source order.  Raises :class:`~ipsecd.spd.SpdError` when the
    text does not parse (validate it first: this is for a policy about to be stored)."""
    sink = Sink()
    builder = parse(text, filename, sink)
    sink.raise_if_errors()
    lines = text.split("\n")
    found: list[LiteralKey] = []
    for loc in builder.literal_keys:
        line = lines[loc.line - 1]
        m = _TOKEN.match(line, loc.col - 1)
        if m is None:  # the parser's location always starts a token
            raise AssertionError(f"no token at {loc.short()}")
        tok = m.group()
        if tok.startswith('"'):
            found.append(LiteralKey(loc.line, m.start(), m.end(), tok[1:-1].encode(), "string"))
        else:
            found.append(LiteralKey(loc.line, m.start(), m.end(), parse_hex_key(tok), "hex"))
    return found


def replace_literal_keys(
    text: str, keys: list[LiteralKey], name_of: Callable[[LiteralKey], str]
) -> str:
    """``text`` with each of ``keys`` (from :func:`find_literal_keys` on this text)
    replaced by ``secret:NAME``, ``NAME = name_of(key)``.  Nothing else changes: line
    numbers stay, so diagnostics and diffs of the stored text still match the file."""
    lines = text.split("\n")
    for key in sorted(keys, key=lambda k: (k.line, -k.start)):  # right to left per line
        line = lines[key.line - 1]
        lines[key.line - 1] = f"{line[: key.start]}secret:{name_of(key)}{line[key.end :]}"
    return "\n".join(lines)
