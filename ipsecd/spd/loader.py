"""Entry points: text or file -> validated :class:`Policy`, or one :class:`SpdError`."""

from __future__ import annotations

import os
import stat

from .errors import Diagnostic, Loc, Severity, Sink, SpdError, too_big
from .limits import LINE_WINDOW, MAX_FILE_BYTES
from .model import Defaults, Policy
from .parser import Builder, parse
from .validate import validate

__all__ = ["load_file", "load_text"]


def load_text(text: str, filename: str = "<string>", *, file_mode: int | None = None) -> Policy:
    """Parse, validate and return the policy; raises only :class:`SpdError`.

    ``file_mode`` is the file's ``st_mode``: literal keys are refused when group or
    others have any access (Tru64 ipsecd(8): the SPD holds keys, so it is root-only).
    """
    try:
        if len(text) > MAX_FILE_BYTES // 4:  # a character is at most 4 bytes in UTF-8
            data = text.encode("utf-8", "surrogatepass")
            if len(data) > MAX_FILE_BYTES:
                raise SpdError([too_big(filename, data, "SPD", MAX_FILE_BYTES)])
        return _load(text, filename, file_mode)
    except SpdError:
        raise
    except Exception as exc:  # the contract: nothing but SpdError escapes
        raise SpdError(
            [
                Diagnostic(
                    filename,
                    0,
                    0,
                    Severity.ERROR,
                    f"internal error while reading the SPD ({type(exc).__name__})",
                    "please report this with the file that caused it",
                )
            ]
        ) from exc


def load_file(path: str | os.PathLike[str]) -> Policy:
    """Read ``path`` (UTF-8) and :func:`load_text` it with the file's mode."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(MAX_FILE_BYTES + LINE_WINDOW)  # the limit, and the line shown past it
    except OSError as exc:
        raise SpdError(
            [Diagnostic(name, 0, 0, Severity.ERROR, f"cannot read SPD file: {exc.strerror}")]
        ) from exc
    if len(data) > MAX_FILE_BYTES:
        raise SpdError([too_big(name, data, "SPD", MAX_FILE_BYTES)])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpdError([_decode_error(name, data, exc.start)]) from exc
    return load_text(text, name, file_mode=stat.S_IMODE(mode))


def _decode_error(name: str, data: bytes, offset: int) -> Diagnostic:
    line = data.count(b"\n", 0, offset) + 1
    start = data.rfind(b"\n", 0, offset) + 1
    col = len(data[start:offset].decode("utf-8", "replace")) + 1
    shown = data[start : data.find(b"\n", offset) if b"\n" in data[offset:] else len(data)]
    return Diagnostic(
        name,
        line,
        col,
        Severity.ERROR,
        f"byte 0x{data[offset]:02x} is not valid UTF-8",
        "save the file as UTF-8",
        shown.decode("utf-8", "replace"),
    )


def _load(text: str, filename: str, file_mode: int | None) -> Policy:
    sink = Sink()
    builder = parse(text, filename, sink)
    _check_mode(builder, filename, file_mode, sink)
    validate(builder, sink)
    sink.raise_if_errors()
    return _policy(builder, filename, sink)


def _check_mode(b: Builder, filename: str, mode: int | None, sink: Sink) -> None:
    if mode is None or not b.literal_keys or not mode & 0o077:
        return
    first: Loc = b.literal_keys[0]
    more = f" (and {len(b.literal_keys) - 1} more)" if len(b.literal_keys) > 1 else ""
    sink.error(
        first,
        f"literal key in a file that group/others can access (mode "
        f"{mode & 0o777:04o}){more}; an SPD with keys must be readable by root only",
        f"run: chmod 600 {filename}  (or use secret:NAME references instead of keys)",
    )


def _policy(b: Builder, filename: str, sink: Sink) -> Policy:
    values = dict(b.defaults)
    if "log" in values:
        values["log_unmatched"] = values.pop("log")
    if "message" in values:
        values["message_level"] = values.pop("message")
    defaults = Defaults(**values)  # type: ignore[arg-type]
    return Policy(
        filename,
        defaults,
        dict(b.proposals),
        dict(b.groups),
        tuple(b.connections),
        tuple(b.rules),
        tuple(b.spd.values()),
        tuple(b.sas.values()),
        sink.warnings(),
        bool(b.literal_keys),
        dict(b.peers),
    )
