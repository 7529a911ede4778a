"""Logging of the agent (Tru64 ipsecd(8) ``-m``, ``-o``, ``-l``).

* ``-m quiet``: errors and warnings only; ``default``: policy changes and SA events;
  ``verbose``: every IKE exchange.  They govern the ``ipsecd`` loggers (the IKE
  engine logs as ``ipsecd.ike``).
* ``-o FILE``: everything at debug level goes to FILE too (mode 0600).
* ``-l``: packets that match no selector go to syslog's auth facility (and the
  normal log) through the ``ipsecd.unmatched`` logger.
* ``--log-format text|json``: the line format of the log and of the debug file
  (:mod:`ipsecd.logformat`: JSON is one object per line with time, level, logger,
  message, the node's name and the call's structured fields).

The agent's loggers are ``ipsecd.*`` and ``agent.*`` (the controller stream); other
libraries' loggers (gRPC, pyroute2) log warnings and errors only, in the same format.

No key, PSK or nonce is ever logged at any level (the engine and the SPD model keep
them in ``repr=False`` fields; tests check the logs).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from ipsecd.logformat import FORMATS, LEVELS, make_formatter

__all__ = ["FORMATS", "LEVELS", "OURS", "setup_logging"]

FORMAT = "%(asctime)s ipsecd[%(process)d] %(levelname)s %(name)s: %(message)s"
#: The agent's own loggers (everything else: warnings and errors only).
OURS = ("ipsecd", "agent")


def setup_logging(
    level: str = "default",
    *,
    debug_file: str | None = None,
    foreground: bool = True,
    log_unmatched: bool = False,
    log_format: str = "text",
    node: str = "",
) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: their debug output may dump requests
    for name in OURS:
        ours = logging.getLogger(name)
        ours.setLevel(logging.DEBUG)  # the handlers filter: -m for the main one
        ours.propagate = True
        for handler in list(ours.handlers):
            ours.removeHandler(handler)
    formatter = make_formatter(log_format, FORMAT, {"node": node} if node else None)
    main: logging.Handler
    if foreground:
        main = logging.StreamHandler(sys.stderr)
    else:
        main = _syslog(logging.handlers.SysLogHandler.LOG_DAEMON) or logging.NullHandler()
    main.setLevel(LEVELS[level])
    main.setFormatter(formatter)
    root.addHandler(main)
    if debug_file is not None:
        path = Path(debug_file)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        debug = logging.FileHandler(path, encoding="utf-8")
        debug.setLevel(logging.DEBUG)
        debug.setFormatter(formatter)
        root.addHandler(debug)
    if log_unmatched:
        auth = _syslog(logging.handlers.SysLogHandler.LOG_AUTH)
        if auth is not None:
            auth.setLevel(logging.INFO)
            auth.setFormatter(
                make_formatter(log_format, "ipsecd: %(message)s", {"node": node} if node else None)
            )
            logging.getLogger("ipsecd.unmatched").addHandler(auth)


def _syslog(facility: int) -> logging.Handler | None:
    """A syslog handler when /dev/log exists (else None: no syslog daemon)."""
    if not Path("/dev/log").exists():
        return None
    try:
        return logging.handlers.SysLogHandler(address="/dev/log", facility=facility)
    except OSError:
        return None
