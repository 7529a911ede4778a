"""Tokens for both dialects.

A *word* is anything up to whitespace, ``;``, ``{``, ``}``, ``,``, ``"`` or ``#``: so
``10.0.0.0/24[80]``, ``esp/tunnel/192.0.2.1-192.0.2.2/require``, ``role=worker`` and
``secret:db-psk`` are each one word, exactly as setkey(8) reads them.
"""

from __future__ import annotations

import re
from enum import StrEnum

from .errors import Loc, Sink
from .limits import MAX_TOKENS

__all__ = ["Kind", "Source", "Token", "tokenize"]


class Kind(StrEnum):
    WORD = "word"
    STRING = "string"
    PUNCT = "punct"
    EOF = "end of file"


class Source:
    """The file a token came from (shared by all its tokens)."""

    __slots__ = ("filename", "lines")

    def __init__(self, filename: str, lines: list[str]) -> None:
        self.filename = filename
        self.lines = lines


class Token:
    """A token; its :class:`Loc` is built only when asked for (errors, statements)."""

    __slots__ = ("col", "kind", "line", "src", "text")

    def __init__(self, kind: Kind, text: str, src: Source, line: int, col: int) -> None:
        self.kind = kind
        self.text = text
        self.src = src
        self.line = line
        self.col = col

    @property
    def loc(self) -> Loc:
        lines = self.src.lines
        source = lines[self.line - 1] if 0 < self.line <= len(lines) else ""
        return Loc(self.src.filename, self.line, self.col, source)

    def at(self, text: str, kind: Kind | None = None) -> Token:
        """A token with other text at this token's place (macro use, sub-fields)."""
        return Token(kind or self.kind, text, self.src, self.line, self.col)

    def is_punct(self, ch: str) -> bool:
        return self.kind is Kind.PUNCT and self.text == ch

    def describe(self) -> str:
        if self.kind is Kind.EOF:
            return "end of file"
        if self.kind is Kind.STRING:
            return "a quoted string"
        return f"'{self.text}'"

    def __repr__(self) -> str:
        return f"Token({self.kind.value}, {self.text!r}, {self.line}:{self.col})"


# One line at a time; finditer skips the blanks between tokens by itself.  The first
# character tells the kind: punctuation, a quote (a string, or an unterminated one when
# the closing quote is missing), '#' (a comment: the rest of the line), else a word.
_TOKEN = re.compile(r'[^\s;{},"#]+|[;{},]|"[^"]*"?|#')
_PUNCT = frozenset(";{},")


def tokenize(
    text: str, filename: str, sink: Sink, max_tokens: int = MAX_TOKENS
) -> tuple[list[Token], list[str]]:
    """Split ``text`` into tokens; returns the tokens and the source lines.

    At most ``max_tokens`` tokens are read (docs/limits.md): the first one past the
    limit gets an error and the file ends there."""
    lines = text.split("\n")
    src = Source(filename, lines)
    tokens: list[Token] = []
    append = tokens.append
    word, string, punct = Kind.WORD, Kind.STRING, Kind.PUNCT
    finditer = _TOKEN.finditer
    for line_no, line in enumerate(lines, 1):
        if len(tokens) + len(line) >= max_tokens:  # a line has at most len(line) tokens
            if _scan_near_limit(tokens, max_tokens, src, line_no, line, sink):
                break
            continue
        for m in finditer(line):
            tok = m.group()
            first = tok[0]
            if first in _PUNCT:
                append(Token(punct, tok, src, line_no, m.start() + 1))
            elif first == "#":
                break
            elif first != '"':
                append(Token(word, tok, src, line_no, m.start() + 1))
            elif len(tok) >= 2 and tok[-1] == '"':
                append(Token(string, tok[1:-1], src, line_no, m.start() + 1))
            else:
                _unterminated(src, line_no, m.start() + 1, sink)
    append(Token(Kind.EOF, "", src, len(lines), len(lines[-1]) + 1))
    return tokens, lines


def _unterminated(src: Source, line_no: int, col: int, sink: Sink) -> None:
    bad = Token(Kind.STRING, "", src, line_no, col)
    sink.error(bad.loc, "unterminated string", 'close the string with " on the same line')


def _scan_near_limit(
    tokens: list[Token], limit: int, src: Source, line_no: int, line: str, sink: Sink
) -> bool:
    """The tokenizer's loop for a line that may cross the limit: one check per token.
    True when the limit was crossed (reported; the caller stops reading)."""
    for m in _TOKEN.finditer(line):
        tok = m.group()
        first, col = tok[0], m.start() + 1
        if first == "#":
            break
        if len(tokens) >= limit:
            sink.error(
                Token(Kind.WORD, tok, src, line_no, col).loc,
                f"the file has more than {limit} words, strings and punctuation marks; "
                "reading stops here",
                "split the policy, or use fewer and broader rules (docs/limits.md)",
            )
            return True
        if first in _PUNCT:
            tokens.append(Token(Kind.PUNCT, tok, src, line_no, col))
        elif first != '"':
            tokens.append(Token(Kind.WORD, tok, src, line_no, col))
        elif len(tok) >= 2 and tok[-1] == '"':
            tokens.append(Token(Kind.STRING, tok[1:-1], src, line_no, col))
        else:
            _unterminated(src, line_no, col, sink)
    return False
