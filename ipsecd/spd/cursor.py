"""Statement cursor: walks the tokens of one statement and reports located errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NoReturn, TypeVar

from .errors import Loc, Sink
from .lexer import Kind, Token
from .values import Problem

__all__ = ["STATEMENT_WORDS", "Bail", "Cursor"]

#: First words of statements (filled in by the parser), for "missing ';'" hints.
STATEMENT_WORDS: set[str] = set()

T = TypeVar("T")


class Bail(Exception):
    """Abandon the current statement (its error is already reported)."""


class Cursor:
    def __init__(self, tokens: list[Token], end: Token, sink: Sink) -> None:
        self.tokens = tokens
        self.end = end  # the ';' / '}' / EOF token that closes the statement
        self.pos = 0
        self.sink = sink

    # -- looking -----------------------------------------------------------------
    def peek(self, k: int = 0) -> Token | None:
        i = self.pos + k
        return self.tokens[i] if i < len(self.tokens) else None

    def peek_text(self, k: int = 0) -> str | None:
        i = self.pos + k
        if i < len(self.tokens):
            tok = self.tokens[i]
            if tok.kind is Kind.WORD:
                return tok.text
        return None

    def at_end(self) -> bool:
        return self.pos >= len(self.tokens)

    def here(self) -> Loc:
        tok = self.peek()
        return tok.loc if tok is not None else self.end.loc

    # -- consuming ---------------------------------------------------------------
    def next(self, what: str) -> Token:
        tok = self.peek()
        if tok is None:
            self.fail(self.end.loc, f"expected {what} before {self.end.describe()}")
        self.pos += 1
        return tok

    def word(self, what: str) -> Token:
        pos = self.pos
        if pos >= len(self.tokens):
            self.fail(self.end.loc, f"expected {what} before {self.end.describe()}")
        tok = self.tokens[pos]
        self.pos = pos + 1
        if tok.kind is not Kind.WORD:
            self.fail(tok.loc, f"expected {what}, found {tok.describe()}")
        if tok.text[0] == "$":
            raise Bail  # an undefined macro, already reported
        return tok

    def choice(self, what: str, choices: Iterable[str]) -> Token:
        options = list(choices)
        if self.at_end():
            self.fail(self.end.loc, f"expected {what} before {self.end.describe()}",
                      "one of: " + ", ".join(options))  # fmt: skip
        tok = self.word(what)
        if tok.text not in options:
            self.fail(
                tok.loc, f"expected {what}, found '{tok.text}'", "one of: " + ", ".join(options)
            )
        return tok

    def accept(self, text: str) -> Token | None:
        tok = self.peek()
        if tok is not None and tok.kind is not Kind.STRING and tok.text == text:
            self.pos += 1
            return tok
        return None

    def expect_punct(self, ch: str, what: str) -> Token:
        tok = self.next(f"'{ch}' {what}")
        if not tok.is_punct(ch):
            self.fail(tok.loc, f"expected '{ch}' {what}, found {tok.describe()}")
        return tok

    def done(self, hint: str = "") -> None:
        tok = self.peek()
        if tok is not None:
            self.fail(tok.loc, f"unexpected {tok.describe()}", hint)

    # -- reporting ---------------------------------------------------------------
    def fail(self, loc: Loc, message: str, hint: str = "") -> NoReturn:
        tok = next((t for t in self.tokens if t.line == loc.line and t.col == loc.col), None)
        structural = message.startswith(("expected", "unexpected"))
        starts_statement = (
            tok is not None and tok is not self.tokens[0] and (tok.text in STATEMENT_WORDS)
        )
        if structural and starts_statement and tok is not None:
            hint = f"'{tok.text}' starts a statement: is the ';' before it missing?"
        self.sink.error(loc, message, hint)
        raise Bail

    def value(self, tok: Token, fn: Callable[[str], T], text: str | None = None) -> T:
        """Apply a value parser to a token (or to ``text`` found inside it), turning a
        Problem into an error located at the token."""
        try:
            return fn(tok.text if text is None else text)
        except Problem as exc:
            self.fail(tok.loc, exc.message, exc.hint)
