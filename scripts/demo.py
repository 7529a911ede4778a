#!/usr/bin/env python3
"""ipsecd end-to-end demonstration (``make demo``): the main job, shown for real.

    scripts/demo.py [--only STEP[,STEP...]]

Steps (each says what it shows and what it does not; a failing step is reported and
the demo goes on, exiting non-zero at the end):

  spd         the SPD language: validate, file:line:col errors, 0600 rule, compile
  controller  ipsecd-controller init/issue (cluster CA, mTLS credentials), the
              controller with its private etcd serving mTLS only: push, a viewer
              refused, rejected push, history, diff, rollback, and a simulated agent
              receiving the revisions with its node certificate
  cluster     the main job (scripts/demo_cluster.py): three nodes, the controller,
              three agents, ipsecctl push, the IKEv2 mesh, status, ESP on the wire,
              a change in place, kill -9 of an agent; in the kernel lab VM when this
              kernel has no ESP

Needs root (namespaces, XFRM).  Everything it starts is stopped and every namespace it
creates (prefix ``idm-``) removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))


BIN = Path(sys.executable).parent
EXAMPLES = CHECKOUT / "examples"
PREFIX = "idm-"
USE_COLOR = sys.stdout.isatty()


class StepFailed(Exception):
    """A demo step could not show what it set out to show; the message says why."""


# ----------------------------------------------------------------------- output


def _c(code: str, text: str) -> str:
    return f"\033[{code}m{text}\033[0m" if USE_COLOR else text


def heading(title: str, shows: str, not_shown: str) -> None:
    print()
    print(_c("1;36", "=" * 78))
    print(_c("1;36", f"== {title}"))
    print(_c("1;36", "=" * 78))
    print(f"   shows:    {shows}")
    print(f"   does not: {not_shown}")


def say(text: str) -> None:
    print(_c("1", f"\n-- {text}"))


def indent(text: str, limit: int = 60) -> str:
    lines = text.rstrip("\n").splitlines()
    if len(lines) > limit:
        extra = len(lines) - limit
        lines = [*lines[:limit], f"... ({extra} more lines)"]
    return "\n".join("   " + ln for ln in lines)


def ok(text: str) -> None:
    print(_c("32", f"   ✓ {text}"))


def run(
    cmd: Sequence[str],
    *,
    expect: int | None = 0,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    show: str | None = None,
    limit: int = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``, print it and its real output; fail the step on an unexpected status."""
    shown = show or " ".join(shlex.quote(c) for c in cmd).replace(f"{BIN}/", "")
    print(_c("33", f"   $ {shown}"))
    try:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ, **(env or {})),
            cwd=CHECKOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StepFailed(f"`{shown}` did not finish within {timeout:.0f}s") from exc
    except FileNotFoundError as exc:
        raise StepFailed(f"`{shown}`: {cmd[0]} not found ({exc.strerror})") from exc
    out = (proc.stdout + proc.stderr).strip()
    if out:
        print(indent(out, limit))
    print(_c("2", f"   [exit {proc.returncode}]"))
    if expect is not None and proc.returncode != expect:
        raise StepFailed(f"`{shown}` exited {proc.returncode}, expected {expect}")
    return proc


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise StepFailed(f"{path} missing: run `make venv` (pip install -e .)")
    return str(path)


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(CHECKOUT))
    except ValueError:
        return str(p)


# ------------------------------------------------------------------------ step a


def step_spd(tmp: Path) -> None:
    heading(
        "1. SPD language: validate, diagnostics, the 0600 rule, per-node compile",
        "ipsecctl on the example cluster policy and a classic setkey.conf; real errors "
        "with file:line:col, caret and hint; literal keys refused in a 0644 file; the "
        "kernel policies and IKE connections node-a must run, secrets redacted",
        "nothing is installed or pushed here (see the next steps)",
    )
    ctl = tool("ipsecctl")
    setkey = EXAMPLES / "setkey.conf"
    if setkey.stat().st_mode & 0o077:
        # git does not keep file modes: a fresh clone has setkey.conf 0644
        fixed = tmp / "setkey.conf"
        fixed.write_bytes(setkey.read_bytes())
        fixed.chmod(0o600)
        say(f"{rel(setkey)} is not 0600 in this checkout (git keeps no modes): using a 0600 copy")
        setkey = fixed
    say("validate the cluster policy and an unchanged setkey.conf")
    run([ctl, "validate", rel(EXAMPLES / "cluster.spd"), rel(setkey)])
    say("the cluster policy expanded for every node of its directory (overlaps, shadowing)")
    run(
        [ctl, "validate", rel(EXAMPLES / "cluster.spd"), "--nodes", rel(EXAMPLES / "cluster.nodes")]
    )

    say("a deliberately broken copy: every error of the file in one run, exit status 1")
    broken = tmp / "broken.spd"
    text = (EXAMPLES / "cluster.spd").read_text()
    text = text.replace("esp strong lifetime 1h;", "esp strnog lifetime 1h;")
    text = text.replace("between web and db;", "between web and dbs;")
    text = text.replace("bypass udp port domain;", "bypass udp port 70000;")
    broken.write_text(text)
    proc = run([ctl, "validate", str(broken)], expect=1)
    if not re.search(r"broken\.spd:\d+:\d+: error:", proc.stdout + proc.stderr):
        raise StepFailed("validate printed no FILE:LINE:COL error for the broken file")
    ok("errors carry FILE:LINE:COL, the line, a caret and a hint")

    say("literal keys in a world-readable (0644) file are refused, as ipsecd(8) does")
    loose = tmp / "keys-0644.conf"
    loose.write_bytes(setkey.read_bytes())
    loose.chmod(0o644)
    run([ctl, "validate", "-q", str(loose)], expect=1)

    say("compile for node-a: kernel policies + IKE connections (text form)")
    run(
        [
            ctl,
            "compile",
            rel(EXAMPLES / "cluster.spd"),
            "--node",
            "node-a",
            "--nodes",
            rel(EXAMPLES / "cluster.nodes"),
            "-o",
            "text",
        ],
        limit=12,
    )
    say("compile the setkey.conf (manual keys) for node-a: keys are redacted")
    proc = run(
        [
            ctl,
            "compile",
            rel(setkey),
            "--node",
            "node-a",
            "--nodes",
            rel(EXAMPLES / "cluster.nodes"),
            "-o",
            "text",
        ]
    )
    keys = [k.lower() for k in re.findall(r"0x([0-9a-fA-F]{32,})", setkey.read_text())]
    if not keys or any(k in proc.stdout.lower() for k in keys):
        raise StepFailed("compile output contains key material")
    ok(f"none of the {len(keys)} literal keys appears in the output")


# ------------------------------------------------------------------------ step b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimulatedAgent:
    """agent/stream.py's AgentStream in a background thread, acknowledging revisions."""

    def __init__(self, address: str, node: str, credentials: Any = None) -> None:
        self.address = address
        self.node = node
        self.credentials = credentials  # mTLS with the node certificate
        self.revisions: list[int] = []
        self.lines: list[str] = []
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._main, name="demo-agent", daemon=True)

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self._run())
        except BaseException as exc:  # reported by the step
            self.error = exc
        finally:
            self._loop.close()

    async def _run(self) -> None:
        from agent.stream import AgentIdentity, AgentStream, PolicyReceived, StreamConnected

        async def on_event(ev: Any) -> None:
            if isinstance(ev, StreamConnected):
                self.lines.append(
                    f"connected to {ev.controller} (current revision "
                    f"{ev.current_revision}, resumed={ev.resumed})"
                )
            elif isinstance(ev, PolicyReceived):
                how = "snapshot" if ev.via_snapshot else "update"
                self.lines.append(
                    f"received revision {ev.revision} ({how}, sha256 "
                    f"{ev.sha256[:12]}…); acknowledging"
                )
                self.revisions.append(ev.revision)
                await self._stream.ack(ev.revision)
            else:
                self.lines.append(type(ev).__name__)

        ident = AgentIdentity(self.node, ("192.0.2.1", "fd00::a"), {"role": "web"})
        self._stream = AgentStream(
            [self.address], ident, on_event=on_event, credentials=self.credentials
        )
        await self._stream.run()

    def start(self) -> None:
        self._thread.start()

    def wait_for(self, revision: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while revision not in self.revisions:
            if self.error is not None:
                raise StepFailed(f"simulated agent failed: {self.error}")
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"simulated agent did not receive revision {revision} "
                    f"within {timeout:.0f}s (got {self.revisions})"
                )
            time.sleep(0.05)

    def flush(self) -> None:
        while self.lines:
            print(_c("35", f"   [agent {self.node}] {self.lines.pop(0)}"))

    def stop(self) -> None:
        if self._stream is not None and self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._stream.close(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=5)
        self._thread.join(timeout=5)


@contextlib.contextmanager
def controller_process(tmp: Path, address: str) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp / "controller.log").open("wb")
    proc = subprocess.Popen(
        [tool("ipsecd-controller"), "--listen", address, "--state-dir", str(tmp / "ctl")],
        # (serves mTLS with the CA and certificate of `ipsecd-controller init`)
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=CHECKOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        log.close()


def step_controller(tmp: Path) -> None:
    heading(
        "2. Controller: a cluster CA, mTLS, SPD revisions in etcd, push / reject / "
        "history / diff / rollback",
        "ipsecd-controller init (cluster CA, serving certificate, admin.conf) and issue "
        "(a node and a viewer credential), the controller with its private etcd on "
        "127.0.0.1 (temp dir) serving mTLS only, ipsecctl with admin.conf, a viewer "
        "refused a push, compare-and-swap revisions whose author is the certificate, "
        "and a simulated agent (agent/stream.py, the class the real agent uses) "
        "streaming with its node certificate and acknowledging each revision",
        "no real agent applies the revisions to a kernel here (step 3 does that part); one replica",
    )
    ctl = tool("ipsecctl")
    daemon = tool("ipsecd-controller")
    address = f"127.0.0.1:{_free_port()}"
    state = tmp / "ctl"
    say("the cluster CA, the serving certificate and the first admin's credentials")
    run([daemon, "init", "--state-dir", str(state), "--listen", address])
    say("a node's certificate (also its IKE certificate) and a read-only viewer's config")
    run([daemon, "issue", "--state-dir", str(state), "--role", "node", "--name", "node-a",
         "--address", "192.0.2.1", "--address", "fd00::a",
         "--out", str(tmp / "node-a")])  # fmt: skip
    viewer = tmp / "auditor.conf"
    run([daemon, "issue", "--state-dir", str(state), "--role", "viewer", "--name", "auditor",
         "--out", str(viewer)])  # fmt: skip
    env = {"IPSECCTL_CONFIG": str(state / "admin.conf")}
    say(f"ipsecctl finds its credentials through $IPSECCTL_CONFIG={rel(state / 'admin.conf')}")
    with contextlib.ExitStack() as stack:
        proc = stack.enter_context(controller_process(tmp, address))
        say(f"ipsecd-controller --listen {address} --state-dir {rel(state)}")
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(
                [ctl, "history"],
                capture_output=True,
                text=True,
                env=dict(os.environ, **env),
                timeout=20,
                check=False,
            )
            if probe.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (tmp / "controller.log").read_text(errors="replace")
                raise StepFailed(
                    f"controller did not come up: {probe.stderr.strip()}\n{indent(log, 20)}"
                )
            time.sleep(0.3)
        ok(f"controller up (pid {proc.pid}, mTLS, etcd under {rel(state)})")

        say("plaintext is refused: this controller serves mTLS only")
        run([ctl, "--insecure", "--controller", address, "history"], expect=5)
        say("the viewer may read but not push (authorization by the certificate's role)")
        run([ctl, "--config", str(viewer), "push", rel(EXAMPLES / "cluster.spd")], expect=7)

        say("push the cluster policy (revision 1)")
        run([ctl, "push", rel(EXAMPLES / "cluster.spd"), "-m", "initial policy"], env=env)

        import grpc

        node = tmp / "node-a"
        creds = grpc.ssl_channel_credentials(
            (node / "ca.pem").read_bytes(),
            (node / "node-a.key").read_bytes(),
            (node / "node-a.pem").read_bytes(),
        )
        agent = SimulatedAgent(address, "node-a", creds)
        stack.callback(agent.stop)
        agent.start()
        agent.wait_for(1)
        agent.flush()

        say("push an invalid SPD: rejected with its diagnostics, nothing written")
        bad = tmp / "invalid.spd"
        bad.write_text(
            (EXAMPLES / "cluster.spd")
            .read_text()
            .replace("between all and all;", "between all and nobody;")
        )
        run([ctl, "push", str(bad), "-m", "should be refused"], env=env, expect=1)
        hist = run([ctl, "history"], env=env)
        revs = [ln.split()[0] for ln in hist.stdout.splitlines()[1:] if ln.strip()]
        if revs != ["1*"]:
            raise StepFailed(f"after the rejected push the history is {revs}, expected [1*]")
        ok("still one revision, and it is current: the pointer did not move")

        say("push a second revision (SSH allowed in clear)")
        second = tmp / "cluster-v2.spd"
        second.write_text((EXAMPLES / "cluster.spd").read_text() + "bypass tcp port 22;\n")
        run([ctl, "push", str(second), "-m", "allow ssh"], env=env)
        agent.wait_for(2)
        agent.flush()

        say("history, diff 1 2, rollback (to the previous revision, as a new revision)")
        run([ctl, "history"], env=env)
        run([ctl, "diff", "1", "2"], env=env)
        run([ctl, "rollback", "-m", "undo ssh"], env=env)
        agent.wait_for(3)
        agent.flush()
        hist = run([ctl, "history"], env=env)
        if "admin/admin" not in hist.stdout:
            raise StepFailed("the revisions' author is not the admin certificate's identity")
        ok("every revision's author is the identity of the certificate that pushed it")
        time.sleep(0.5)  # let the node record catch the last ack (batched writes)
        run([ctl, "nodes"], env=env)
        ok(f"the simulated agent received revisions {agent.revisions} in order")


# ------------------------------------------------------------------------ step c


SEND = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"hello from node-a", (sys.argv[1], int(sys.argv[2])))
    print("sent")
except OSError as e:
    print("send failed:", errno.errorcode.get(e.errno, e.errno), e.strerror)
    sys.exit(1)
"""

RECV = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
print("listening", flush=True)
try:
    data, peer = s.recvfrom(100)
    print(f"received {data!r} from {peer[0]}")
except TimeoutError:
    print("nothing received")
    sys.exit(1)
"""


def step_cluster(tmp: Path) -> None:
    heading(
        "3. The main job: one SPD pushed to a 3-node cluster that encrypts",
        "three nodes in namespaces, etcd over TLS + ipsecd-controller with its cluster CA "
        "(mTLS), node certificates issued for a and b while c joins with a token, a PSK "
        "in the sealed secret store (each node gets only its pair's derived key), an "
        "ipsecd agent per node (cluster mode, its certificate for the controller and for "
        "IKE), ipsecctl push, the IKEv2 mesh forming, ipsecctl status per node, "
        "an encrypted ping on the wire, a policy change applied in place, kill -9 of an "
        "agent with no clear text leaking",
        "certificate renewal and node removal (tests/kernel/test_agent_join.py); one "
        "controller replica",
    )
    scene = [sys.executable, "scripts/demo_cluster.py"]
    if _kernel_has_esp():
        say("this kernel has ESP: the scene runs here")
        cmd = scene
    else:
        say(
            "this kernel has no ESP (CONFIG_INET_ESP): the scene runs in the kernel lab, "
            "a VM with Debian's kernel under QEMU/TCG (booting takes ~30 s, the scene a "
            "few minutes; everything below is the VM's real output)"
        )
        cmd = [sys.executable, "scripts/lab.py", "--timeout", "600", *scene]
    print(_c("33", "   $ " + " ".join(cmd).replace(f"{BIN}/", "")), flush=True)
    proc = subprocess.Popen(
        cmd, cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(indent(line), flush=True)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()  # lab.py forwards it to the VM's process group
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    print(_c("2", f"   [exit {rc}]"))
    if rc != 0:
        raise StepFailed(f"the cluster scene exited {rc} (see its output above)")


def _kernel_has_esp() -> bool:
    """Can this kernel hold an ESP SA?  (A throw-away namespace, ipsecd.xfrm.probe.)"""
    try:
        from ipsecd.xfrm import probe

        return probe().supports("esp")
    except Exception:
        return False


def _sweep(prefix: str) -> list[str]:
    """Remove namespaces a crashed run left (the scene removes its own)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    gone = []
    for line in out.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            gone.append(name)
    return gone


# ------------------------------------------------------------------------- main

STEPS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "spd": ("SPD language", step_spd),
    "controller": ("controller + simulated agent", step_controller),
    "cluster": ("the main job: push, mesh, status, ESP, change, kill -9", step_cluster),
}


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo.py", description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated steps: " + ",".join(STEPS))
    args = p.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(STEPS)
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        print(f"error: unknown step(s) {', '.join(unknown)}; known: {', '.join(STEPS)}")
        return 2
    if os.geteuid() != 0:
        print("error: the demo needs root (network namespaces, XFRM): run `sudo make demo`")
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    print(_c("1", "ipsecd demo — the main job, run for real on this machine"))
    for i, (name, (title, _)) in enumerate(STEPS.items(), 1):
        print(f"  {i}. {name:<11} {title}")

    results: dict[str, str] = {}
    start = time.monotonic()
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="ipsecd-demo-") as tmpdir:
        try:
            for name in chosen:
                step_dir = Path(tmpdir) / name
                step_dir.mkdir()
                t0 = time.monotonic()
                results[name] = "interrupted"
                try:
                    STEPS[name][1](step_dir)
                    results[name] = f"ok ({time.monotonic() - t0:.1f}s)"
                except StepFailed as exc:
                    results[name] = f"FAILED: {exc}"
                    print(_c("31", f"\n   ✗ step '{name}' failed: {exc}"))
                except Exception as exc:  # a bug or a missing piece: say where
                    results[name] = f"FAILED: {type(exc).__name__}: {exc}"
                    print(_c("31", f"\n   ✗ step '{name}' failed: {type(exc).__name__}: {exc}"))
                    print(indent(traceback.format_exc(), 30))
        except KeyboardInterrupt:
            interrupted = True
            print(_c("31", "\n   interrupted: cleaning up"))
        finally:
            left = _sweep(PREFIX)
            if left:
                print(f"   removed leftover namespaces: {', '.join(left)}")

    print()
    print(_c("1", f"summary ({time.monotonic() - start:.0f}s)"))
    for name in chosen:
        print(f"  {name:<11} {results.get(name, 'not run')}")
    if interrupted:
        return 130
    failed = [n for n, r in results.items() if r.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
