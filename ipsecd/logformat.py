"""Log line formats of both daemons: ``--log-format text|json`` (docs/operations.md
"Logs").

``json`` writes one JSON object per line: ``time`` (RFC 3339, UTC, milliseconds),
``level`` (``debug``, ``info``, ``warning``, ``error``, ``critical``), ``logger``,
``message``, the daemon's own fields (``node`` for an agent, ``replica`` for a
controller), ``pid``, then the structured fields a log call passes with
``extra={...}`` (``connection``, ``revision``, ...), and ``exception`` with the
traceback when there is one.  The message is the same text the ``text`` format
prints; nothing else of the record (in particular not its raw ``args``) is written,
so a line holds no more than the text format does: never a key, PSK or token
(docs/security.md).

The levels are the agent's ``-m`` (and the controller's): ``quiet`` = warnings and
errors, ``default`` = adds info (policy changes, SA events), ``verbose`` = adds debug.
Other libraries' loggers (gRPC, etcd3aio, pyroute2) stay at warnings whatever ``-m``
says: their debug output may dump requests, and requests carry policies with keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "configure", "make_formatter"]

FORMATS = ("text", "json")
LEVELS = {"quiet": logging.WARNING, "default": logging.INFO, "verbose": logging.DEBUG}

#: Attributes every LogRecord has: everything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("x", logging.INFO, "x", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module doc); ``fields`` are added to every
    line (the node or replica name)."""

    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        millis = int((record.created - seconds) * 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
        out: dict[str, Any] = {
            "time": stamp,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.fields,
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = _plain(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def make_formatter(
    fmt: str, text_format: str, fields: Mapping[str, str] | None = None
) -> logging.Formatter:
    """The formatter for ``--log-format fmt`` (``text_format`` is the daemon's text line)."""
    if fmt == "json":
        return JsonFormatter(fields)
    if fmt == "text":
        return logging.Formatter(text_format)
    raise ValueError(f"--log-format {fmt!r}: use one of {', '.join(FORMATS)}")


def configure(
    level: str,
    fmt: str,
    *,
    ours: Sequence[str],
    text_format: str,
    fields: Mapping[str, str] | None = None,
    stream: Any = None,
) -> logging.Handler:
    """Log to stderr: the loggers named ``ours`` (and their children) at ``level``
    (quiet/default/verbose), every other logger at warnings; returns the handler."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    top = logging.getLogger()
    for old in list(top.handlers):
        top.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(fmt, text_format, fields))
    handler.setLevel(LEVELS[level])
    top.addHandler(handler)
    top.setLevel(logging.WARNING)
    for name in ours:
        logger = logging.getLogger(name)
        logger.setLevel(LEVELS[level])
        logger.propagate = True
        for old in list(logger.handlers):
            logger.removeHandler(old)
    return handler
