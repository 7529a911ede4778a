"""``ipsecd service ...``: the init-script operations of Tru64's ipsecd(8).

    ipsecd service start [DAEMON OPTIONS]   start the daemon in the background (-d)
    ipsecd service stop                     SIGTERM; waits for it to stop (5 s)
    ipsecd service reload                   SIGHUP: reread the SPD file
    ipsecd service status [-o json]         the daemon's live status
    ipsecd service secure on                the kernel drops what no policy allows
    ipsecd service secure off               no daemon: let traffic flow unprotected

``secure off`` is the seed's "IP secure off": it needs the daemon stopped, sets the
kernel's default policy to accept and removes ipsecd's policies and SAs (only those in
its ownership bands; nothing else is touched).  Traffic then flows in clear text.
``secure on`` sets the default to block in all directions (the daemon installs its
policies when it starts).  A systemd unit is in agent/systemd/ipsecd.service.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ipsecd import xfrm

from .status import DEFAULT_SOCKET, StatusError, query, render_table

__all__ = ["main"]

DEFAULT_PIDFILE = Path("/run/ipsecd/ipsecd.pid")


def _pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _start(rest: list[str], pidfile: Path, socket: Path) -> int:
    if (pid := _pid(pidfile)) is not None:
        print(f"ipsecd is already running (pid {pid})")
        return 0
    argv = [
        sys.executable,
        "-m",
        "agent.main",
        "-d",
        "--pidfile",
        str(pidfile),
        "--socket",
        str(socket),
        *rest,
    ]
    proc = subprocess.run(argv, check=False)
    if proc.returncode != 0:
        print(f"error: ipsecd did not start (exit {proc.returncode})", file=sys.stderr)
        return proc.returncode
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            query(socket, timeout=2)
            print(f"ipsecd started (pid {_pid(pidfile)})")
            return 0
        except StatusError:
            time.sleep(0.2)
    print(
        "error: ipsecd started but its status socket does not answer; see its log "
        "(syslog daemon facility)",
        file=sys.stderr,
    )
    return 1


def _signal(pidfile: Path, sig: signal.Signals, wait: float) -> int:
    pid = _pid(pidfile)
    if pid is None:
        print(f"error: ipsecd is not running (no live pid in {pidfile})", file=sys.stderr)
        return 1
    os.kill(pid, sig)
    if wait <= 0:
        return 0
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if _pid(pidfile) is None:
            return 0
        time.sleep(0.1)
    print(f"error: ipsecd (pid {pid}) did not stop within {wait:g} s", file=sys.stderr)
    return 1


def secure(
    on: bool, netns: str | None = None, ownership: xfrm.Ownership = xfrm.DEFAULT_OWNERSHIP
) -> str:
    """Set "IP secure" mode on or off (see the module doc); returns what was done."""
    with xfrm.Xfrm(netns) as x:
        if on:
            block = xfrm.DefaultAction.BLOCK
            x.set_default_policy(xfrm.DefaultPolicy(block, block, block))
            return "default policy: block (in, fwd, out)"
        ops = xfrm.plan(
            [], [], x.dump_policies(), x.dump_states(), ownership=ownership, keep_larval=False
        )
        x.apply(ops)
        accept = xfrm.DefaultAction.ACCEPT
        x.set_default_policy(xfrm.DefaultPolicy(accept, accept, accept))
        return f"default policy: accept; removed {len(ops)} of ipsecd's policies and SAs"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ipsecd service", description=__doc__.split("\n\n")[0])
    p.add_argument("operation", choices=("start", "stop", "reload", "status", "secure"))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.add_argument("--pidfile", default=str(DEFAULT_PIDFILE))
    p.add_argument("--socket", default=str(DEFAULT_SOCKET))
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    pidfile, sock = Path(args.pidfile), Path(args.socket)
    if args.operation == "start":
        return _start(args.rest, pidfile, sock)
    if args.operation == "stop":
        return _signal(pidfile, signal.SIGTERM, 8.0)
    if args.operation == "reload":
        return _signal(pidfile, signal.SIGHUP, 0)
    if args.operation == "status":
        try:
            status = query(sock)
        except StatusError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.rest[:2] == ["-o", "json"]:
            print(json.dumps(status, indent=2, sort_keys=True))
        else:
            sys.stdout.write(render_table(status))
        return 0
    if args.rest not in (["on"], ["off"]):
        print("error: usage: ipsecd service secure on|off", file=sys.stderr)
        return 2
    on = args.rest == ["on"]
    if not on and _pid(pidfile) is not None:
        print(
            "error: ipsecd is running: `ipsecd service stop` first (secure off means no "
            "daemon and no protection)",
            file=sys.stderr,
        )
        return 1
    try:
        print(secure(on))
    except xfrm.XfrmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
