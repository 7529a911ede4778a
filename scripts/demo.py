#!/usr/bin/env python3
"""ipsecd end-to-end demonstration (``make demo``): what exists today, shown honestly.

    scripts/demo.py [--lab] [--only STEP[,STEP...]]

Steps (each says what it shows and what it does not; a failing step is reported and
the demo goes on, exiting non-zero at the end):

  spd         the SPD language: validate, file:line:col errors, 0600 rule, compile
  controller  ipsecd-controller with its private etcd: push, rejected push, history,
              diff, rollback, and a simulated agent receiving the revisions
  kernel      node-a and node-b policies applied to two namespaces through
              agent/kernel.py; default policy; what is dropped and what passes
  ike         our IKEv2 engine against strongSwan charon (handshake only, host kernel)
  lab         real ESP in the kernel lab VM -- SKIPPED by default (a few minutes under
              TCG): enable with --lab or DEMO_LAB=1

Needs root (namespaces, XFRM).  Everything it starts is stopped and every namespace it
creates (prefix ``idm-d``) removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import select
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

from tests.support import netns as nsmod  # noqa: E402

BIN = Path(sys.executable).parent
EXAMPLES = CHECKOUT / "examples"
PREFIX = "idm-d"
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

    def __init__(self, address: str, node: str) -> None:
        self.address = address
        self.node = node
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
        self._stream = AgentStream([self.address], ident, on_event=on_event)
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
        "2. Controller: SPD revisions in etcd, push / reject / history / diff / rollback",
        "ipsecd-controller with its private etcd on 127.0.0.1 (temp dir), ipsecctl over "
        "gRPC, compare-and-swap revisions, and a simulated agent (agent/stream.py, the "
        "class the real agent uses) receiving and acknowledging each revision",
        "no real agent applies the revisions to a kernel here (step 3 does that part "
        "directly); plaintext gRPC on loopback (mTLS is a later issue); one replica",
    )
    ctl = tool("ipsecctl")
    address = f"127.0.0.1:{_free_port()}"
    env = {"IPSECCTL_CONTROLLER": address}
    with contextlib.ExitStack() as stack:
        proc = stack.enter_context(controller_process(tmp, address))
        say(f"ipsecd-controller --listen {address} --state-dir {rel(tmp / 'ctl')}")
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
        ok(f"controller up (pid {proc.pid}, etcd under {rel(tmp / 'ctl')})")

        say("push the cluster policy (revision 1)")
        run([ctl, "push", rel(EXAMPLES / "cluster.spd"), "-m", "initial policy"], env=env)

        agent = SimulatedAgent(address, "node-a")
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
        run([ctl, "history"], env=env)
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


def _udp(src: nsmod.Netns, dst: nsmod.Netns, ip: str, port: int, *, arrives: bool) -> None:
    """Send one datagram from ``src`` to ``ip:port`` in ``dst`` and print both ends."""
    py = sys.executable
    recv = dst.popen(
        [py, "-c", RECV, str(port), "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert recv.stdout is not None
        ready, _, _ = select.select([recv.stdout], [], [], 10)
        if not ready or recv.stdout.readline().strip() != b"listening":
            raise StepFailed(f"the UDP listener in {dst.name} did not start within 10s")
        run(
            src.argv([py, "-c", SEND, ip, str(port)]),
            expect=None,
            show=f"ip netns exec {src.name} python3 -c \"udp.sendto(b'hello from node-a', "
            f"('{ip}', {port}))\"",
        )
        out, _ = recv.communicate(timeout=5)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait(timeout=5)
    print(indent(f"node-b listener: {out.decode().strip()}"))
    if (recv.returncode == 0) != arrives:
        raise StepFailed(f"UDP to {ip}:{port} {'did not arrive' if arrives else 'arrived'}")


def _xfrm_stat(ns: nsmod.Netns) -> dict[str, int]:
    """The namespace's XFRM error counters (/proc/net/xfrm_stat is per namespace)."""
    out = ns.run(["cat", "/proc/net/xfrm_stat"]).stdout
    return {k: int(v) for k, v in (ln.split() for ln in out.splitlines() if ln.strip())}


def _show_delta(before: dict[str, int], after: dict[str, int]) -> None:
    moved = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    text = ", ".join(f"{k} +{v}" for k, v in moved.items()) or "no XFRM counter moved"
    print(indent(f"/proc/net/xfrm_stat in node-a: {text}"))


def step_kernel(tmp: Path) -> None:
    heading(
        "3. Kernel: the compiled SPD of node-a and node-b in two namespaces (XFRM)",
        "agent/kernel.py maps each node's compiled policy to XFRM policies + the default "
        "policy and reconciles two namespaces joined by veth (dump, diff, apply; never "
        "flush); re-applying does nothing; with def_policy discard, traffic the SPD "
        "protects is dropped without an SA, bypassed DNS passes, and traffic no rule "
        "matches is blocked by the kernel's default policy",
        "no ESP: the host kernel has none, and no IKE daemon runs in this step, so the "
        "protected traffic is dropped rather than encrypted (ESP on the wire: step 5)",
    )
    from agent.kernel import apply_node_config, desired_state
    from ipsecd import spd

    policy = spd.load_file(EXAMPLES / "cluster.spd")
    nodes = spd.load_nodes_file(EXAMPLES / "cluster.nodes")
    by_name = {n.name: n for n in nodes}
    with nsmod.netns_pair(
        PREFIX,
        addrs_a=("192.0.2.1/24", "fd00::a/64", "203.0.113.1/24"),
        addrs_b=("192.0.2.2/24", "fd00::b/64", "203.0.113.2/24"),
    ) as (a, b):
        say(
            f"namespaces {a.name} (node-a 192.0.2.1, fd00::a) and {b.name} (node-b "
            "192.0.2.2, fd00::b), veth0; 203.0.113.1/.2 as a non-cluster subnet"
        )
        say("before any policy: node-a pings node-b in clear (baseline)")
        run(
            a.argv(["ping", "-c", "1", "-W", "2", "192.0.2.2"]),
            show=f"ip netns exec {a.name} ping -c 1 -W 2 192.0.2.2",
        )
        say("apply each node's compiled SPD with agent/kernel.py, then apply it again")
        for ns, name in ((a, "node-a"), (b, "node-b")):
            me = by_name[name]
            cfg = spd.compile_node(policy, me, nodes)
            result = asyncio.run(apply_node_config(cfg, ns.name, local=me.addresses))
            print(
                f"   {name}: {len(desired_state(cfg).policies)} policies wanted; "
                f"applied: {result.summary()}"
            )
            again = asyncio.run(apply_node_config(cfg, ns.name, local=me.addresses))
            print(f"   {name}: applied again: {again.summary()}")
            if again.total != 0:
                raise StepFailed(f"re-applying {name} performed {again.total} operations")
        say("node-a gets revision 2 (adds 'bypass tcp port 22;'), then revision 1 again")
        me = by_name["node-a"]
        v2 = spd.load_text(
            (EXAMPLES / "cluster.spd").read_text() + "bypass tcp port 22;\n", "cluster-v2.spd"
        )
        for label, pol in (("revision 2", v2), ("revision 1", policy)):
            cfg = spd.compile_node(pol, me, nodes)
            result = asyncio.run(apply_node_config(cfg, a.name, local=me.addresses))
            print(f"   node-a {label}: applied: {result.summary()}")
            if result.total != 8 or result.default_changed:
                raise StepFailed(f"{label}: expected exactly the 8 port-22 policies to change")
        ok("only the difference was applied (the other policies kept their kernel entries)")

        say("node-a: the kernel default policy and its outbound policies")
        run(
            a.argv(["ip", "xfrm", "policy", "getdefault"]),
            show=f"ip netns exec {a.name} ip xfrm policy getdefault",
        )
        run(
            a.argv(["ip", "xfrm", "policy", "list", "dir", "out"]),
            show=f"ip netns exec {a.name} ip xfrm policy list dir out",
            limit=40,
        )

        say(
            "ping node-b: the SPD requires ESP between cluster nodes; no SA exists and no "
            "IKE daemon runs here, so the kernel drops it (it would ask a key manager)"
        )
        before = _xfrm_stat(a)
        proc = run(
            a.argv(["ping", "-c", "2", "-W", "1", "192.0.2.2"]),
            expect=None,
            show=f"ip netns exec {a.name} ping -c 2 -W 1 192.0.2.2",
        )
        if proc.returncode == 0:
            raise StepFailed("ping crossed although the SPD requires an SA")
        _show_delta(before, _xfrm_stat(a))
        ok("dropped: matches the ipsec policy (esp/transport, require) and no SA exists")

        say("UDP to 203.0.113.2 port 53: the SPD bypasses DNS, so it passes in clear")
        _udp(a, b, "203.0.113.2", 53, arrives=True)
        ok("passed: 'bypass udp port domain' is an allow policy on both nodes")
        say("UDP to 203.0.113.2 port 9999: no policy matches, def_policy discard blocks it")
        before = _xfrm_stat(a)
        _udp(a, b, "203.0.113.2", 9999, arrives=False)
        _show_delta(before, _xfrm_stat(a))
        ok("blocked by the kernel's default policy (out: block) at the sender: EPERM")


# ------------------------------------------------------------------------ step d


class _Collect(logging.Handler):
    """Keeps the log records of the handshake, to print them afterwards."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _ike_handshake(ours: nsmod.Netns, charon: Any, conn: Any) -> tuple[Any, Any]:
    from agent.ike_driver import IkeDriver
    from ipsecd.ike.config import RetransmitConfig
    from ipsecd.ike.events import ChildSaEstablished, IkeSaEstablished
    from tests.support.charon import engine_config_for

    cfg = engine_config_for(
        conn, retransmit=RetransmitConfig(timeout=0.5, base=1.5, max_retransmits=3)
    )
    handler = _Collect(logging.INFO)
    records = handler.records
    logger = logging.getLogger("ipsecd")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with IkeDriver([cfg], netns=ours.name, install=False) as drv:
            drv.initiate(cfg.name)
            ike = await drv.wait_for(IkeSaEstablished, timeout=15)
            child = await drv.wait_for(ChildSaEstablished, timeout=5)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    say("our engine's log (logger 'ipsecd', INFO)")
    print(indent("\n".join(f"{r.name}: {r.getMessage()}" for r in records) or "(nothing logged)"))
    return ike, child


def step_ike(tmp: Path) -> None:
    heading(
        "4. IKEv2: our engine (agent/ike_driver.py) against strongSwan charon",
        "a real IKE_SA_INIT + IKE_AUTH (PSK, AES-GCM-256, ECP-384) between our asyncio "
        "driver in one namespace and charon 5.9 in another; our events and `swanctl "
        "--list-sas` agree on the IKE and ESP SPIs and the algorithms",
        "handshake only: the host kernel has no ESP, so charon uses its userspace ESP "
        "(kernel-libipsec, tunnel mode, UDP-encapsulated) and our side installs no SA; "
        "no traffic crosses the negotiated SAs here (that is the kernel lab's job); "
        "libipsec makes charon claim a NAT, hence port 4500 and 'NAT detected' below",
    )
    from tests.support.charon import CHARON_BIN, Charon, Child, Conn

    if not Path(CHARON_BIN).exists():
        raise StepFailed(f"{CHARON_BIN} missing: install Debian strongswan-charon (make deps)")
    ours_ip, charon_ip = "192.0.2.1", "192.0.2.2"
    ours_in, charon_in = "198.51.100.1/32", "198.51.100.2/32"
    psk = "demo-psk-" + os.urandom(8).hex()
    child = Child("child", (charon_in,), (ours_in,), ("aes256gcm16",), mode="tunnel")
    conn = Conn(
        "demo",
        (charon_ip,),
        (ours_ip,),
        "charon.demo",
        "ipsecd.demo",
        psk,
        ("aes256gcm16-prfsha384-ecp384",),
        (child,),
    )
    with nsmod.netns_pair(PREFIX, addrs_a=(f"{ours_ip}/24",), addrs_b=(f"{charon_ip}/24",)) as (
        ours,
        other,
    ):
        ours.run(["ip", "addr", "add", ours_in, "dev", "lo"])
        other.run(["ip", "addr", "add", charon_in, "dev", "lo"])
        say(f"charon in {other.name} ({charon_ip}), our driver in {ours.name} ({ours_ip})")
        with Charon.started(other, tmp / "charon") as charon:
            charon.load([conn])
            ike, ch = asyncio.run(asyncio.wait_for(_ike_handshake(ours, charon, conn), 40))
            say("our events (ipsecd.ike.events, keys are never printed)")
            print(
                indent(
                    f"IkeSaEstablished  spi_i={ike.spi_i.hex()} spi_r={ike.spi_r.hex()} "
                    f"initiator={ike.initiator}\n"
                    f"                  {ike.local_addr[0]}:{ike.local_addr[1]} <-> "
                    f"{ike.remote_addr[0]}:{ike.remote_addr[1]} remote_id={ike.remote_id}\n"
                    f"                  encr={ike.encryption} integ={ike.integrity} "
                    f"prf={ike.prf} dh={ike.dh_group}\n"
                    f"ChildSaEstablished {ch.protocol.name} {ch.mode.name.lower()} "
                    f"spi_in={ch.inbound_spi:08x} spi_out={ch.outbound_spi:08x}\n"
                    f"                  encr={ch.encryption} ({ch.encryption_key_bits} bits "
                    f"with salt) ts {[str(t) for t in ch.local_ts]} === "
                    f"{[str(t) for t in ch.remote_ts]}"
                )
            )
            say("charon's view")
            print(_c("33", "   $ swanctl --list-sas --uri unix://…/charon.vici"))
            print(indent(charon.swanctl("--list-sas")))
            sas = [sa for sa in charon.list_sas() if sa.get("state") == "ESTABLISHED"]
    if len(sas) != 1:
        raise StepFailed(f"charon has {len(sas)} established IKE SAs, expected 1")
    sa = sas[0]
    (cch,) = sa["child-sas"].values()
    checks = {
        "IKE initiator SPI": (sa["initiator-spi"], ike.spi_i.hex()),
        "IKE responder SPI": (sa["responder-spi"], ike.spi_r.hex()),
        "ESP SPI charon→us": (cch["spi-out"], f"{ch.inbound_spi:08x}"),
        "ESP SPI us→charon": (cch["spi-in"], f"{ch.outbound_spi:08x}"),
        "IKE encryption": (f"{sa['encr-alg']}-{sa['encr-keysize']}", "AES_GCM_16-256"),
        "IKE DH group": (sa["dh-group"], "ECP_384"),
        "ESP encryption": (f"{cch['encr-alg']}-{cch['encr-keysize']}", "AES_GCM_16-256"),
    }
    if ch.encryption != "rfc4106(gcm(aes))" or ch.encryption_key_bits != 288:
        raise StepFailed(f"our ESP algorithm {ch.encryption}/{ch.encryption_key_bits} bits")
    bad = {k: v for k, v in checks.items() if v[0] != v[1]}
    for name, (theirs, _) in checks.items():
        if name not in bad:
            ok(f"{name}: {theirs} on both sides")
    if bad:
        raise StepFailed(f"charon and our engine disagree: {bad}")


# ------------------------------------------------------------------------ step e


LAB_TESTS = ("tests/kernel/test_xfrm_esp.py",)


def step_lab(tmp: Path) -> None:
    heading(
        "5. Kernel lab: real ESP in a virtme-ng VM (Debian's 6.1 kernel, TCG)",
        "scripts/lab.py boots the VM, runs the kernel tests that install SAs and "
        "policies through ipsecd.xfrm in two namespaces, ping across, and capture ESP "
        "(and no clear text) on the wire",
        "IKE-negotiated SAs applied by a running agent (not built yet); takes minutes",
    )
    missing = [t for t in LAB_TESTS if not (CHECKOUT / t).exists()]
    if missing:
        raise StepFailed(f"kernel tests missing: {', '.join(missing)}")
    cmd = [
        sys.executable,
        "scripts/lab.py",
        "--timeout",
        "900",
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "kernel",
        *LAB_TESTS,
    ]
    print(_c("33", "   $ " + " ".join(cmd).replace(f"{BIN}/", "")))
    # streamed: the VM takes minutes; lab.py bounds it (--timeout) and kills QEMU itself
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
        raise StepFailed(f"the kernel lab run exited {rc} (see its output above)")


# ------------------------------------------------------------------------- main

STEPS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "spd": ("SPD language", step_spd),
    "controller": ("controller + simulated agent", step_controller),
    "kernel": ("kernel policies in namespaces", step_kernel),
    "ike": ("IKEv2 against strongSwan", step_ike),
    "lab": ("real ESP in the kernel lab", step_lab),
}


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo.py", description=__doc__.splitlines()[0])
    p.add_argument("--lab", action="store_true", help="also run the kernel lab step (minutes)")
    p.add_argument("--only", help="comma-separated steps: " + ",".join(STEPS))
    args = p.parse_args(argv)
    lab = args.lab or os.environ.get("DEMO_LAB") == "1"
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

    print(_c("1", "ipsecd demo — what exists today, run for real on this machine"))
    for i, (name, (title, _)) in enumerate(STEPS.items(), 1):
        note = ""
        if name == "lab" and not lab:
            note = "  (skipped by default: enable with --lab or DEMO_LAB=1)"
        print(f"  {i}. {name:<11} {title}{note}")

    results: dict[str, str] = {}
    start = time.monotonic()
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="ipsecd-demo-") as tmpdir:
        try:
            for name in chosen:
                if name == "lab" and not lab:
                    results[name] = "skipped (--lab or DEMO_LAB=1 to run it)"
                    continue
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
            left = nsmod.sweep(PREFIX)
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
