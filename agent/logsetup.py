"""Logging of the agent (Tru64 ipsecd(8) ``-m``, ``-o``, ``-l``).

* ``-m quiet``: errors and warnings only; ``default``: policy changes and SA events;
  ``verbose``: every IKE exchange.  They govern the ``ipsecd`` loggers (the IKE
  engine logs as ``ipsecd.ike``).
* ``-o FILE``: everything at debug level goes to FILE too (mode 0600).
* ``-l``: packets that match no selector go to syslog's auth facility (and the
  normal log) through the ``ipsecd.unmatched`` logger.

No key, PSK or nonce is ever logged at any level (the engine and the SPD model keep
them in ``repr=False`` fields; tests check the logs).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

__all__ = ["LEVELS", "setup_logging"]

LEVELS = {"quiet": logging.WARNING, "default": logging.INFO, "verbose": logging.DEBUG}
FORMAT = "%(asctime)s ipsecd[%(process)d] %(levelname)s %(name)s: %(message)s"


def setup_logging(
    level: str = "default",
    *,
    debug_file: str | None = None,
    foreground: bool = True,
    log_unmatched: bool = False,
) -> None:
    root = logging.getLogger("ipsecd")
    root.setLevel(logging.DEBUG)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(FORMAT)
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
            auth.setFormatter(logging.Formatter("ipsecd: %(message)s"))
            logging.getLogger("ipsecd.unmatched").addHandler(auth)


def _syslog(facility: int) -> logging.Handler | None:
    """A syslog handler when /dev/log exists (else None: no syslog daemon)."""
    if not Path("/dev/log").exists():
        return None
    try:
        return logging.handlers.SysLogHandler(address="/dev/log", facility=facility)
    except OSError:
        return None
