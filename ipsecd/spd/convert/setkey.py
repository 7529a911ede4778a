"""``setkey.conf`` -> SPD.

An SPD file accepts setkey(8) statements as they are (docs/spd.md, "setkey
compatibility"), so this converter validates rather than translates: the file goes
through the SPD loader; every statement the SPD refuses (host names, ``spdadd
tagged``, DES keys, ...) is taken out with a warning naming its line and the reason
(its text stays in the output as a comment, keys masked), and the loader's own
warnings (``-ctx`` ignored, ``get``/``dump`` ignored, ...) are passed on.  Literal keys
of manual SAs (``add ... -E ALG KEY -A ALG KEY``, native ``sa ... enc ALG KEY``) become
``secret:NAME`` references with the values in the secrets file, unless the caller wants
them inline.
"""

from __future__ import annotations

import re

from ..errors import Diagnostic, Sink, SpdError, redact_line
from ..lexer import Kind, Token, tokenize
from ..loader import load_text
from ..values import Problem, parse_hex_key
from .common import Conversion, ConvertError, ConvertOptions, Names, Report

__all__ = ["convert_setkey"]

FORMAT = "setkey"
LABEL = "setkey.conf"
_MAX_ROUNDS = 64


class _Statement:
    __slots__ = ("end", "start", "tokens")

    def __init__(self, tokens: list[Token], start: int, end: int) -> None:
        self.tokens = tokens
        self.start = start  # offset of the first character
        self.end = end  # offset past the terminating ';' or '}'


def _offsets(lines: list[str]) -> list[int]:
    out, pos = [], 0
    for line in lines:
        out.append(pos)
        pos += len(line) + 1
    return out


def _statements(tokens: list[Token], starts: list[int]) -> list[_Statement]:
    """Top-level statements (a ``{ ... }`` block ends its statement)."""

    def offset(tok: Token) -> int:
        return starts[tok.line - 1] + tok.col - 1

    out: list[_Statement] = []
    current: list[Token] = []
    depth = 0
    for tok in tokens:
        if tok.kind is Kind.EOF:
            break
        current.append(tok)
        if tok.is_punct("{"):
            depth += 1
        elif tok.is_punct("}"):
            depth = max(depth - 1, 0)
        if depth == 0 and (tok.is_punct(";") or tok.is_punct("}")):
            out.append(_Statement(current, offset(current[0]), offset(tok) + 1))
            current = []
    if current:
        last = current[-1]
        end = offset(last) + len(last.text) + (2 if last.kind is Kind.STRING else 0)
        out.append(_Statement(current, offset(current[0]), end))
    return [s for s in out if not (len(s.tokens) == 1 and s.tokens[0].is_punct(";"))]


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the spans blanked (newlines kept, so lines and columns stay)."""
    chars = list(text)
    for start, end in spans:
        for i in range(start, min(end, len(chars))):
            if chars[i] != "\n":
                chars[i] = " "
    return "".join(chars)


def convert_setkey(
    text: str, filename: str = "setkey.conf", options: ConvertOptions | None = None
) -> Conversion:
    """Validate a setkey.conf as SPD; raises :class:`ConvertError` when nothing of it is
    a setkey statement the SPD accepts."""
    options = options or ConvertOptions()
    report = Report()
    lines = text.split("\n")
    starts = _offsets(lines)
    tokens, _ = tokenize(text, filename, Sink())
    statements = _statements(tokens, starts)
    dropped: dict[int, str] = {}
    warnings: tuple[Diagnostic, ...] = ()
    for _round in range(_MAX_ROUNDS):
        current = _blank(text, [(statements[i].start, statements[i].end) for i in dropped])
        try:
            warnings = load_text(current, filename).warnings
            break
        except SpdError as exc:
            progress = False
            for d in exc.diagnostics:
                if not d.is_error:
                    continue
                index = _statement_at(statements, starts, d)
                if index is None:
                    raise ConvertError(
                        f"{d.message} ({d.hint})" if d.hint else d.message,
                        filename,
                        d.line,
                    ) from None
                if index not in dropped:
                    dropped[index] = d.message + (f" ({d.hint})" if d.hint else "")
                    progress = True
            if not progress:
                raise ConvertError(exc.render(), filename) from None
    else:
        raise ConvertError("too many statements the SPD refuses", filename)
    if statements and len(dropped) == len(statements):
        raise ConvertError(
            "no statement of it is one the SPD accepts: is it a setkey.conf? "
            "(--from says what it is)",
            filename,
        )
    for index, why in sorted(dropped.items()):
        st = statements[index]
        first = st.tokens[0]
        report.warn(filename, first.line, f"'{first.text}' statement not carried: {why}")
    for w in warnings:
        report.warn(filename, w.line, f"{w.message}" + (f" ({w.hint})" if w.hint else ""))
    edits: list[tuple[int, int, str]] = []
    comments: dict[int, list[str]] = {}
    for index in dropped:
        st = statements[index]
        edits.append((st.start, st.end, ""))
        shown = " ".join(redact_line(ln.strip()) for ln in text[st.start : st.end].split("\n"))
        comments.setdefault(st.tokens[0].line, []).append(f"# not carried: {shown}")
    secrets: dict[str, bytes] = {}
    if not options.inline_secrets:
        names = Names()
        for index, st in enumerate(statements):
            if index not in dropped:
                edits += _key_edits(st, starts, names, secrets)
    for line_no, texts in comments.items():
        pos = starts[line_no - 1]
        edits.append((pos, pos, "".join(t + "\n" for t in texts)))
    body = text
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        body = body[:start] + replacement + body[end:]
    sorted_warnings = report.sorted_warnings()
    header = [
        f"# Converted by 'ipsecctl convert' from {filename}",
        f'# ({LABEL}).  setkey statements are SPD statements (docs/spd.md, "setkey',
        '# compatibility"): they go to the nodes that own their addresses, or wrap them',
        "# in 'on GROUP { ... }'.",
    ]
    if secrets:
        header.append("# Manual SA keys are secret:NAME references: the values are in the")
        header.append("# secrets file written with it (ipsecd --secrets FILE).")
    trailer = []
    if sorted_warnings:
        trailer.append(f"# Not carried ({len(sorted_warnings)} warnings):")
        trailer += [f"#   {w.location()}: {w.message}" for w in sorted_warnings]
    out = "\n".join(header) + "\n\n" + body.rstrip("\n") + "\n"
    if trailer:
        out += "\n" + "\n".join(trailer) + "\n"
    return Conversion(FORMAT, out, secrets, sorted_warnings, tuple(report.notes))


def _statement_at(statements: list[_Statement], starts: list[int], d: Diagnostic) -> int | None:
    if d.line <= 0 or d.line > len(starts):
        return None
    pos = starts[d.line - 1] + max(d.col - 1, 0)
    for i, st in enumerate(statements):
        if st.start <= pos < st.end:
            return i
    # an error placed just past a statement (e.g. at the ';'): the one before it
    before = [i for i, st in enumerate(statements) if st.end <= pos]
    after = [i for i, st in enumerate(statements) if st.start > pos]
    if before and (not after or statements[before[-1]].tokens[0].line == d.line):
        return before[-1]
    return after[0] if after else None


_FLAGS = frozenset({"-4", "-6", "-n"})


def _key_edits(
    st: _Statement, starts: list[int], names: Names, secrets: dict[str, bytes]
) -> list[tuple[int, int, str]]:
    """Literal keys of one statement (or of the statements of its block) replaced by
    ``secret:NAME``: setkey ``add ... -E ALG KEY -A ALG KEY`` and native ``sa ... enc
    ALG KEY`` (one line, or clauses inside its ``{ ... }``)."""
    edits: list[tuple[int, int, str]] = []
    block: tuple[str, str] | None = None  # (proto, spi) of the 'sa { ... }' we are in
    sub: list[Token] = []
    for tok in [*st.tokens, None]:
        if tok is not None and not (tok.kind is Kind.PUNCT and tok.text in ";{}"):
            sub.append(tok)
            continue
        words = [t.text for t in sub]
        if words and words[0] == "add":
            edits += _add_keys(sub, starts, names, secrets)
        elif len(words) >= 3 and words[0] == "sa":
            edits += _clause_keys(sub, 3, (words[1], words[2]), starts, names, secrets)
        elif block is not None and words and words[0] in ("enc", "auth"):
            edits += _clause_keys(sub, 0, block, starts, names, secrets)
        if tok is not None and tok.is_punct("{") and len(words) >= 3 and words[0] == "sa":
            block = (words[1], words[2])
        elif tok is not None and tok.is_punct("}"):
            block = None
        sub = []
    return edits


def _literal(tok: Token) -> bytes | None:
    if tok.kind is Kind.STRING:
        return tok.text.encode() if tok.text else None
    if tok.kind is Kind.WORD and tok.text.lower().startswith("0x"):
        try:
            return parse_hex_key(tok.text)
        except Problem:
            return None
    return None


def _replace(
    tok: Token, name: str, starts: list[int], value: bytes, secrets: dict[str, bytes]
) -> tuple[int, int, str]:
    secrets[name] = value
    start = starts[tok.line - 1] + tok.col - 1
    length = len(tok.text) + (2 if tok.kind is Kind.STRING else 0)
    return (start, start + length, f"secret:{name}")


def _spi_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.lower())


def _add_keys(
    sub: list[Token], starts: list[int], names: Names, secrets: dict[str, bytes]
) -> list[tuple[int, int, str]]:
    words = [t.text for t in sub]
    i = 1
    while i < len(words) and words[i] in _FLAGS:
        i += 1
    if i + 3 >= len(words):
        return []
    proto, spi = words[i + 2], words[i + 3]
    edits = []
    for j in range(i + 4, len(sub) - 2):
        if words[j] in ("-E", "-A"):
            value = _literal(sub[j + 2])
            if value is None:
                continue
            what = "enc" if words[j] == "-E" else "auth"
            name = names.get(f"{_spi_name(proto)}-{_spi_name(spi)}-{what}", "sa")
            edits.append(_replace(sub[j + 2], name, starts, value, secrets))
    return edits


def _clause_keys(
    sub: list[Token],
    first: int,
    sa: tuple[str, str],
    starts: list[int],
    names: Names,
    secrets: dict[str, bytes],
) -> list[tuple[int, int, str]]:
    """``enc ALG KEY`` / ``auth ALG KEY`` clauses of a native ``sa`` from ``sub[first:]``."""
    words = [t.text for t in sub]
    edits = []
    for j in range(first, len(sub) - 2):
        if words[j] in ("enc", "auth") and sub[j + 1].kind is Kind.WORD:
            value = _literal(sub[j + 2])
            if value is None:
                continue
            name = names.get(f"{_spi_name(sa[0])}-{_spi_name(sa[1])}-{words[j]}", "sa")
            edits.append(_replace(sub[j + 2], name, starts, value, secrets))
    return edits
