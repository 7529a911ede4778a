#!/usr/bin/env python3
"""Kernel lab: run a command as root inside a virtme-ng VM that has real ESP/AH.

Usage::

    scripts/lab.py [--timeout S] [--memory M] [--results DIR] CMD...

The VM boots Debian's installed kernel (the newest ``/boot/vmlinuz-*-amd64``) under
QEMU with ``--disable-kvm`` (KVM hangs at boot on our machines), shares the host
filesystem read-only (with writable overlays on /etc, /tmp, /var, ...), and runs CMD
in the checkout directory with the project venv first in PATH and ``IPSECD_LAB=1``.

How the runner talks to the VM (see docs/operations.md, "Kernel lab"):

* CMD travels in a script file in a temporary shared directory (``--rwdir``): the
  ``--exec`` string rides on the kernel command line, which is limited to 2 KiB.
* The guest script writes the command's exit status to ``status`` in that directory;
  the runner exits with it.  No status file means the VM crashed, failed to boot or
  was stopped: the runner then fails with a message saying which.
* QEMU reopens ``/proc/self/fd/1`` and ``/fd/2`` (truncating regular files), so its
  stdout/stderr are pipes, streamed through to ours.
* The VM runs in its own process group; TERM/INT/HUP are forwarded to it, a timeout
  kills it, and the whole group is SIGKILLed before the runner exits, whatever
  happened: no QEMU is ever left behind.

Exit status: the guest command's, or 124 (timeout), 125 (VM ended without a status),
128+N (interrupted by signal N), 2 (the lab cannot start: the message names the fix).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, BinaryIO

CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 900.0
DEFAULT_MEMORY = "1G"

EXIT_SETUP = 2
EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125

# Loaded before CMD runs; a failure stops the run (the kernel tests need all of them).
# Tunnel mode needs no module of its own since Linux 5.2 (xfrm4_mode_tunnel is built in).
REQUIRED_MODULES = ("esp4", "esp6", "ah4", "ah6", "xfrm_user", "veth")
# Loaded when present: PF_KEY for OpenIKED, xfrm interfaces (if_id), IPIP-in-XFRM for
# IPcomp tunnels.  A failure is reported as a warning.
OPTIONAL_MODULES = ("af_key", "xfrm_interface", "xfrm4_tunnel", "xfrm6_tunnel")

# Host variables passed into the guest unchanged (the guest otherwise starts clean).
FORWARDED_ENV = ("PYTEST_ADDOPTS", "HYPOTHESIS_PROFILE", "PYTHONHASHSEED", "CI")
FORWARDED_PREFIX = "IPSECD_"

STATUS_FILE = "status"
READY_FILE = "ready"
SCRIPT_FILE = "run.sh"

# Characters that would break a virtme-ng mount argument or the kernel command line.
_UNSAFE_PATH = re.compile(r"[\s,=\"'\\]")


class LabError(Exception):
    """The lab cannot start; the message says what is missing and how to fix it."""


# --------------------------------------------------------------------------- pure parts


def kernel_version_key(name: str) -> tuple[tuple[int, ...], str]:
    """Sort key for ``vmlinuz-6.1.0-56-amd64``: the numeric parts, then the text."""
    version = name.removeprefix("vmlinuz-")
    return tuple(int(n) for n in re.findall(r"\d+", version)), version


def pick_kernel(paths: Iterable[Path]) -> Path:
    """The newest Debian amd64 kernel image among ``paths``."""
    candidates = [p for p in paths if re.fullmatch(r"vmlinuz-.+-amd64", p.name)]
    if not candidates:
        raise LabError(
            "no Debian kernel image (/boot/vmlinuz-*-amd64) found: the kernel lab boots "
            "Debian's kernel, which has ESP/AH; install it with "
            "`apt-get install linux-image-amd64` (or run `make deps`)"
        )
    return max(candidates, key=lambda p: kernel_version_key(p.name))


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The host variables the guest gets (IPSECD_* except IPSECD_LAB, and a few tools')."""
    out = {}
    for name, value in sorted(environ.items()):
        if name == "IPSECD_LAB" or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            continue
        if name in FORWARDED_ENV or name.startswith(FORWARDED_PREFIX):
            out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class GuestPlan:
    """Everything the guest script needs; all paths are the same on host and guest."""

    command: tuple[str, ...]
    checkout: Path
    venv: Path
    labdir: Path
    results: Path
    env: tuple[tuple[str, str], ...] = ()
    required_modules: tuple[str, ...] = REQUIRED_MODULES
    optional_modules: tuple[str, ...] = OPTIONAL_MODULES
    guest_tmp: Path = Path("/tmp")  # a writable overlay in the VM (guest RAM)


def guest_script(plan: GuestPlan) -> str:
    """The /bin/sh script run inside the VM.

    It marks that the guest is up, sets the environment, loads the modules, runs the
    command in the checkout and writes its exit status atomically (write, then rename)
    to ``STATUS_FILE``.
    """
    q = shlex.quote
    status = plan.labdir / STATUS_FILE
    lines = [
        "#!/bin/sh",
        "# Generated by scripts/lab.py; runs inside the kernel lab VM.",
        f": > {q(str(plan.labdir / READY_FILE))}",
        "finish() {",
        f'    echo "$1" > {q(str(status))}.tmp && mv {q(str(status))}.tmp {q(str(status))}',
        '    exit "$1"',
        "}",
        "export IPSECD_LAB=1",
        f"export IPSECD_LAB_OUT={q(str(plan.results))}",
        f"export VIRTUAL_ENV={q(str(plan.venv))}",
        'export PATH="$VIRTUAL_ENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin'
        ':/sbin:/bin"',
        "export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
    ]
    lines += [f"export {name}={q(value)}" for name, value in plan.env]
    lines += [
        # The root filesystem is read-only; /tmp is a writable overlay (in guest RAM).
        f"TMPDIR=$(mktemp -d {q(str(plan.guest_tmp))}/ipsecd-lab.XXXXXX) || {{",
        f'    echo "lab: error: cannot create a temporary directory in {plan.guest_tmp}" >&2',
        f"    finish {EXIT_NO_STATUS}",
        "}",
        "export TMPDIR",
        # pytest's cache would go to the read-only checkout.
        'export PYTEST_ADDOPTS="-o cache_dir=$TMPDIR/pytest-cache ${PYTEST_ADDOPTS:-}"',
    ]
    if plan.required_modules:
        mods = " ".join(plan.required_modules)
        lines += [
            f"if ! modprobe -a {mods}; then",
            f'    echo "lab: error: cannot load kernel modules ({mods}) in the VM:'
            ' is /lib/modules/$(uname -r) installed (linux-image-amd64)?" >&2',
            f"    finish {EXIT_NO_STATUS}",
            "fi",
        ]
    for mod in plan.optional_modules:
        lines.append(
            f'modprobe -q {mod} || echo "lab: warning: optional kernel module {mod} not loaded" >&2'
        )
    lines += [
        f"cd {q(str(plan.checkout))} || finish {EXIT_NO_STATUS}",
        shlex.join(plan.command),
        'finish "$?"',
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the runner exits: the status, and an error message when the run failed."""

    code: int
    error: str | None = None


def judge(
    status_text: str | None,
    *,
    booted: bool,
    timed_out: bool,
    signalled: int | None,
    vm_status: int | None,
    timeout: float,
) -> Verdict:
    """Turn what the VM left behind into the runner's exit status.

    ``status_text`` is the content of the guest's status file (None if absent),
    ``booted`` whether the guest script started, ``vm_status`` vng's own exit status.
    """
    if signalled is not None:
        name = signal.Signals(signalled).name
        return Verdict(128 + signalled, f"interrupted by {name}: the lab VM was stopped")
    if status_text is not None:
        text = status_text.strip()
        if text.isdigit() and 0 <= int(text) <= 255:
            return Verdict(int(text))
        return Verdict(
            EXIT_NO_STATUS,
            f"the guest's status file holds {text[:40]!r}, not an exit status (0-255): "
            "the guest script was cut short",
        )
    if timed_out:
        return Verdict(
            EXIT_TIMEOUT,
            f"the lab VM timed out after {timeout:g} s and was killed "
            f"({'the command was still running' if booted else 'it never finished booting'})"
            "; raise --timeout or make the tests lighter",
        )
    where = (
        "the command started but the VM ended without reporting its exit status: "
        "the guest kernel crashed or the VM was killed"
        if booted
        else "the VM ended before running the command: it failed to boot "
        "(rerun with --verbose to see the kernel console)"
    )
    return Verdict(EXIT_NO_STATUS, f"{where} (vng exit status {vm_status}); see the output above")


def read_status(labdir: Path) -> str | None:
    """The guest's status file content, or None when the guest never wrote it."""
    try:
        return (labdir / STATUS_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None


def check_path(path: Path, what: str) -> None:
    """Paths go on the kernel command line and in mount arguments: keep them plain."""
    if _UNSAFE_PATH.search(str(path)):
        raise LabError(
            f"{what} {str(path)!r} contains spaces, commas, quotes, '=' or backslashes, "
            "which virtme-ng cannot pass to the guest: use a plain path"
        )


def vng_argv(
    vng: Path,
    kernel: Path,
    *,
    checkout: Path,
    rwdirs: Sequence[Path],
    script: Path,
    memory: str,
    cpus: int | None,
    verbose: bool,
) -> list[str]:
    """The virtme-ng command line: Debian's kernel, TCG (never KVM), root, shared dirs."""
    argv = [str(vng), "--run", str(kernel), "--disable-kvm", "--user", "root"]
    argv += ["--cwd", str(checkout), "--memory", memory]
    if cpus is not None:
        argv += ["--cpus", str(cpus)]
    for d in rwdirs:
        argv += ["--rwdir", str(d)]
    if verbose:
        argv.append("--verbose")
    argv += ["--exec", f"/bin/sh {script}"]
    return argv


# --------------------------------------------------------------------------- the host side


def _log(msg: str) -> None:
    sys.stderr.write(f"lab: {msg}\n")
    sys.stderr.flush()


def _find_prerequisites(kernel_arg: Path | None) -> tuple[Path, Path, Path]:
    """The kernel image, vng and the venv, or a LabError naming the fix."""
    if os.geteuid() != 0:
        raise LabError("the kernel lab must run as root (it reads /boot and loads modules)")
    venv = CHECKOUT / ".venv"
    if not (venv / "bin" / "python").exists():
        raise LabError(f"no project venv at {venv}: run `make venv`")
    vng = venv / "bin" / "vng"
    if not vng.exists():
        raise LabError(f"virtme-ng is not installed in {venv} (no {vng}): run `make venv`")
    if shutil.which("qemu-system-x86_64") is None:
        raise LabError("qemu-system-x86_64 not found: `apt-get install qemu-system-x86`")
    kernel = kernel_arg if kernel_arg is not None else pick_kernel(Path("/boot").glob("vmlinuz-*"))
    if not kernel.is_file():
        raise LabError(f"kernel image {kernel} does not exist")
    if not os.access(kernel, os.R_OK):
        raise LabError(f"kernel image {kernel} is not readable")
    release = kernel.name.removeprefix("vmlinuz-")
    if not Path("/lib/modules", release, "modules.dep").exists():
        raise LabError(
            f"no modules for kernel {release} (/lib/modules/{release}/modules.dep): "
            "reinstall it with `apt-get install --reinstall linux-image-amd64`"
        )
    return kernel, vng, venv


def _pump(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy a pipe to one of our streams as data arrives, until EOF."""
    try:
        while chunk := os.read(src.fileno(), 65536):
            try:
                dst.write(chunk)
                dst.flush()
            except (BrokenPipeError, ValueError):
                pass  # our reader went away: keep draining so QEMU never blocks
    finally:
        src.close()


def _kill_group(pgid: int, sig: int) -> bool:
    """Signal the VM's process group; False when nothing is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


class Runner:
    """One VM run: start, stream, wait (bounded), and always clean up."""

    GRACE = 10.0  # seconds QEMU gets to exit after TERM before it is SIGKILLed

    def __init__(self, argv: list[str], labdir: Path, timeout: float) -> None:
        self.argv = argv
        self.labdir = labdir
        self.timeout = timeout
        self.signalled: int | None = None
        self.timed_out = False
        self.boot_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def booted(self) -> bool:
        """Whether the guest script started (it touches READY_FILE first thing)."""
        return self.boot_seconds is not None or (self.labdir / READY_FILE).exists()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signalled is None:
            self.signalled = signum
        if self._proc is not None:
            _kill_group(self._proc.pid, signum)

    def run(self) -> int | None:
        """Run the VM to its end; returns vng's exit status (None if it had to be killed)."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(self.argv[0]).parent}:{env.get('PATH', '/usr/sbin:/usr/bin')}"
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        start = time.monotonic()
        pumps: list[threading.Thread] = []
        try:
            # Pipes, never files: QEMU reopens /proc/self/fd/1 and /fd/2 and would
            # truncate a regular file.  stdin is /dev/null: CI has no terminal.
            self._proc = proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
            assert proc.stdout is not None and proc.stderr is not None
            for src, dst in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
                t = threading.Thread(target=_pump, args=(src, dst), daemon=True)
                t.start()
                pumps.append(t)
            deadline = start + self.timeout
            stop_at: float | None = None  # when TERM was sent: SIGKILL after GRACE
            while True:
                try:
                    return proc.wait(timeout=0.25)
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if self.boot_seconds is None and (self.labdir / READY_FILE).exists():
                    self.boot_seconds = now - start
                    _log(f"VM up, command started after {self.boot_seconds:.1f} s")
                if self.signalled is not None and stop_at is None:
                    # Forwarded by _on_signal already; again in case it came before Popen.
                    _kill_group(proc.pid, self.signalled)
                    stop_at = now
                if now >= deadline and stop_at is None and not self.timed_out:
                    self.timed_out = True
                    _log(f"timeout after {self.timeout:g} s: stopping the VM")
                    _kill_group(proc.pid, signal.SIGTERM)
                    stop_at = now
                if stop_at is not None and now - stop_at > self.GRACE:
                    _kill_group(proc.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=self.GRACE)
                    return None
        finally:
            if self._proc is not None:
                # Whatever happened, nothing of the VM survives the runner.
                _kill_group(self._proc.pid, signal.SIGKILL)
                if self._proc.poll() is None:
                    self._proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._proc.wait(timeout=self.GRACE)
            for t in pumps:
                t.join(timeout=5)
            for s, handler in previous.items():
                signal.signal(s, handler)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lab.py",
        description="Run CMD as root inside the kernel lab VM (real ESP/AH), in the checkout.",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds before the VM is killed (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--memory", default=DEFAULT_MEMORY, help=f"guest memory (default {DEFAULT_MEMORY})"
    )
    parser.add_argument("--cpus", type=int, default=None, help="guest CPUs (default: vng's)")
    parser.add_argument(
        "--kernel", type=Path, default=None, help="kernel image (default: newest vmlinuz-*-amd64)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="host directory the guest may write to; the guest sees it as $IPSECD_LAB_OUT "
        "(default: a temporary directory, removed afterwards)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show the guest kernel console (boot problems)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given: e.g. `scripts/lab.py pytest -m kernel tests/kernel`")
    if not args.timeout > 0:
        parser.error("--timeout must be a positive number of seconds")
    if not re.fullmatch(r"\d+[KMGT]?", args.memory):
        parser.error(f"--memory {args.memory!r}: expected a size such as 1G or 1536M")
    return args


#: Several TCG guests on the two shared cores slow each other down badly
#: (docs/operations.md "Measured"): one VM at a time on a machine.
LOCK_FILE = Path("/tmp/ipsecd-lab.lock")


def _one_vm_at_a_time() -> IO[bytes]:
    """Hold an exclusive lock while the VM runs; wait (and say so) if another one is up."""
    handle = LOCK_FILE.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _log(f"another kernel-lab VM is running ({LOCK_FILE}); waiting for it to finish")
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    labdir: Path | None = None
    try:
        kernel, vng, venv = _find_prerequisites(args.kernel)
        check_path(CHECKOUT, "the checkout")
        # Under the host's /tmp, not $TMPDIR: the guest must see the same path, and e.g.
        # /run is a fresh tmpfs inside the VM.
        labdir = Path(tempfile.mkdtemp(prefix="ipsecd-lab-", dir="/tmp"))
        check_path(labdir, "the temporary directory")
        results = labdir / "out"
        if args.results is not None:
            results = args.results.resolve()
            results.mkdir(parents=True, exist_ok=True)
            check_path(results, "--results")
        else:
            results.mkdir()
        plan = GuestPlan(
            command=tuple(args.command),
            checkout=CHECKOUT,
            venv=venv,
            labdir=labdir,
            results=results,
            env=tuple(forwarded_env(os.environ).items()),
        )
        script = labdir / SCRIPT_FILE
        script.write_text(guest_script(plan), encoding="utf-8")
        rwdirs = [labdir] if args.results is None else [labdir, results]
        argv_vng = vng_argv(
            vng,
            kernel,
            checkout=CHECKOUT,
            rwdirs=rwdirs,
            script=script,
            memory=args.memory,
            cpus=args.cpus,
            verbose=args.verbose,
        )
        lock = _one_vm_at_a_time()
        _log(f"booting {kernel.name} under QEMU/TCG (timeout {args.timeout:g} s)")
        started = time.monotonic()
        runner = Runner(argv_vng, labdir, args.timeout)
        vm_status = runner.run()
        verdict = judge(
            read_status(labdir),
            booted=runner.booted,
            timed_out=runner.timed_out,
            signalled=runner.signalled,
            vm_status=vm_status,
            timeout=args.timeout,
        )
        elapsed = time.monotonic() - started
        lock.close()
        if verdict.error is not None:
            _log(f"error: {verdict.error}")
        _log(f"done in {elapsed:.1f} s, exit status {verdict.code}")
        return verdict.code
    except LabError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_SETUP
    except OSError as exc:
        sys.stderr.write(f"error: kernel lab: {exc}\n")
        return EXIT_SETUP
    finally:
        if labdir is not None:
            shutil.rmtree(labdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
