"""What every fuzz script shares: coverage instrumentation of ipsecd only, the seed
corpus on disk, default libFuzzer options, and the error every invariant raises.

This module must not import ``ipsecd``: the scripts import it first, then import the
code under test inside :func:`instrumented` so that atheris adds coverage feedback to
``ipsecd`` and nothing else (not the standard library, not ``cryptography``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "KNOWN",
    "REPO",
    "STRICT",
    "Finding",
    "KnownFinding",
    "instrumented",
    "known",
    "run",
    "work_dir",
]

REPO = Path(__file__).resolve().parents[2]

#: What an installation lacking atheris is told (tests/unit/test_fuzz_smoke.py too).
INSTALL_HINT = (
    "atheris is not installed: run `make venv` (it installs the dev extras of "
    "pyproject.toml) or `.venv/bin/pip install atheris`"
)


class Finding(AssertionError):
    """An invariant of a fuzz target does not hold for this input."""


#: Findings already reported, each with the regression test that fails until it is
#: fixed.  An input that hits one is set aside (the fuzzer goes on looking for others)
#: unless IPSECD_FUZZ_STRICT=1.  Remove an entry when its bug is fixed.
KNOWN: dict[str, str] = {}
STRICT = os.environ.get("IPSECD_FUZZ_STRICT") == "1"


class KnownFinding(Exception):
    """The input hits a finding of :data:`KNOWN`."""


def known(name: str, text: str) -> None:
    """Report a known finding: a :class:`Finding` when strict, else set the input aside."""
    if name not in KNOWN:
        raise Finding(f"{text} (unregistered known finding {name!r})")
    if STRICT:
        raise Finding(f"{text} [known: {name}, see {KNOWN[name]}]")
    if name not in _seen:
        _seen.add(name)
        print(f"known finding {name} hit (set aside): {text}", file=sys.stderr)
    raise KnownFinding(name)


_seen: set[str] = set()


def _atheris() -> Any:
    import atheris  # type: ignore[import-untyped]

    return atheris


@contextlib.contextmanager
def instrumented(*packages: str) -> Iterator[None]:
    """Imports made inside get coverage instrumentation when the script runs under
    atheris (``__main__``); imported from elsewhere (the smoke test, a REPL) it does
    nothing."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    here = Path(__file__).resolve().parent
    running = script is not None and Path(script).resolve().parent == here
    if not running:
        yield
        return
    try:
        atheris = _atheris()
    except ImportError:
        sys.exit(f"error: {INSTALL_HINT}")
    with atheris.instrument_imports(include=list(packages)):
        yield


def work_dir(name: str) -> Path:
    """``$IPSECD_FUZZ_DIR/NAME`` (default: the temp dir's ``ipsecd-fuzz/NAME``):
    the generated corpus and the artifacts (crash-*, timeout-*, slow-*) go there."""
    base = os.environ.get("IPSECD_FUZZ_DIR") or os.path.join(tempfile.gettempdir(), "ipsecd-fuzz")
    path = Path(base) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_seeds(corpus: Path, seeds: Iterable[bytes]) -> int:
    corpus.mkdir(parents=True, exist_ok=True)
    n = 0
    for seed in seeds:
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)
        n += 1
    return n


def _write_dict(path: Path, words: Iterable[bytes]) -> None:
    lines = []
    for word in words:
        escaped = "".join(f"\\x{b:02x}" for b in word)
        lines.append(f'"{escaped}"')
    path.write_text("\n".join(lines) + "\n")


def run(
    name: str,
    target: Callable[[bytes], None],
    seeds: Callable[[], Iterable[bytes]],
    *,
    max_len: int = 4096,
    words: Iterable[bytes] = (),
    argv: list[str] | None = None,
) -> None:
    """Run ``target`` under libFuzzer.  Options are libFuzzer's (``-runs=N``,
    ``-max_total_time=S``, ``-seed=N``...); directories are corpora, a file is an
    input to run once (e.g. a crash-* artifact).  Without either,
    ``work_dir(name)/corpus`` is used.  The seeds are (re)written into the first corpus
    directory; the artifacts go to ``work_dir(name)/`` unless ``-artifact_prefix`` says
    otherwise.  Exits non-zero (libFuzzer's code) when an input breaks an invariant."""
    try:
        atheris = _atheris()
    except ImportError:
        sys.exit(f"error: {INSTALL_HINT}")
    args = list(sys.argv if argv is None else argv)
    flags = [a for a in args[1:] if a.startswith("-")]
    dirs = [a for a in args[1:] if not a.startswith("-")]
    work = work_dir(name)
    if not dirs:
        dirs = [str(work / "corpus")]
    if not Path(dirs[0]).is_file():  # a file: reproduce that input only
        count = _write_seeds(Path(dirs[0]), seeds())
        print(f"{name}: {count} seeds in {dirs[0]}", file=sys.stderr)

    def has(option: str) -> bool:
        return any(f.startswith(f"-{option}=") for f in flags)

    defaults = {
        "artifact_prefix": f"{work}{os.sep}",
        "max_len": str(max_len),
        # a hang is a finding too (bounded work); the slowest inputs take milliseconds
        "timeout": "20",
        "rss_limit_mb": "3072",
        "print_final_stats": "1",
    }
    words = list(words)
    if words:
        _write_dict(work / "dict.txt", words)
        defaults["dict"] = str(work / "dict.txt")
    for option, value in defaults.items():
        if not has(option):
            flags.append(f"-{option}={value}")

    def one(data: bytes) -> None:
        try:
            target(data)
        except KnownFinding:
            return

    atheris.Setup([args[0], *flags, *dirs], one)
    atheris.Fuzz()
