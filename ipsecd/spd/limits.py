"""Bounds on SPD input and on what is said about it (docs/limits.md has the table).

Every input the SPD tool chain reads is bounded, and so is its output: a hostile or
broken file costs at most a known amount of work and of text (issue #16).  The
numbers live here, in one place, so the docs, the code and the tests agree.
"""

from __future__ import annotations

__all__ = [
    "LINE_WINDOW",
    "MACRO_CAP",
    "MACRO_FLOOR",
    "MACRO_MEMO",
    "MACRO_RATIO",
    "MAX_ERRORS",
    "MAX_FILE_BYTES",
    "MAX_MESSAGE",
    "MAX_NODES_LISTED",
    "MAX_OVERLAP_WORK",
    "MAX_TOKENS",
    "MAX_WARNINGS",
    "macro_budget",
]

#: SPD (and nodes) file size.  The 10,000-rule benchmark file is about 0.9 MB.
MAX_FILE_BYTES = 8 * 1024 * 1024

#: Words, strings and punctuation of one file (the 10,000-rule benchmark has ~89,000).
MAX_TOKENS = 1_000_000

#: Macro expansion budget, in words produced by ``$NAME`` uses (and by caching the
#: expansion of a macro the first time it is used): ``MACRO_RATIO`` times the words of
#: the file, at least ``MACRO_FLOOR``, at most ``MACRO_CAP``.
MACRO_RATIO = 16
MACRO_FLOOR = 65_536
MACRO_CAP = 1_000_000
#: Expansions up to this many words are cached after their first use.
MACRO_MEMO = 64

#: Candidate pairs the overlap check examines per file (and per node) before it stops
#: with a warning; the 10,000-rule benchmark needs about 26,000 (compile of one node).
MAX_OVERLAP_WORK = 1_000_000

#: Diagnostics kept per file; the rest are counted and reported in one last line.
MAX_ERRORS = 100
MAX_WARNINGS = 100

#: Characters of a source line shown under a diagnostic (a window around the caret).
LINE_WINDOW = 256

#: Characters of one message or hint (a message quotes words of the file).
MAX_MESSAGE = 400

#: Node names listed in one de-duplicated per-node finding ("on nodes a, b, ...").
MAX_NODES_LISTED = 8


def macro_budget(file_tokens: int) -> int:
    """Words that ``$NAME`` expansion may produce in a file of ``file_tokens`` tokens."""
    return min(MACRO_CAP, max(MACRO_FLOOR, MACRO_RATIO * file_tokens))
