#!/usr/bin/env python3
"""The main job, end to end: one SPD pushed to a 3-node cluster that encrypts.

    scripts/demo_cluster.py          (root; a kernel with ESP: scripts/demo.py runs it
                                      inside the kernel lab VM when the host has none)

The scene, all real: three network namespaces on a bridge (nodes a, b, c), etcd over
TLS with client certificates and ``ipsecd-controller`` with its cluster CA
(``ipsecd-controller init``; mTLS only), node certificates for a and b minted by the
operator (``ipsecd-controller issue``) while c joins with a token (``ipsecctl token
create``; it makes its own key and gets its certificate over a CSR), an ``ipsecd``
agent per node in cluster mode using its certificate for the controller stream and for
IKE (a and b in this process, c as its own process so that it can be killed), a
pre-shared key for connection ab kept in the controller's sealed secret store
(``ipsecctl secret set``: a and b each receive only their pair's derived key),
``ipsecctl push`` with
``admin.conf``, the mesh of IKEv2 SAs forming, ``ipsecctl status`` per node, an
encrypted ping on the wire (tcpdump), a policy change applied in place (only the
changed connection is renegotiated, a running ping loses nothing), and ``kill -9`` of
agent c: its kernel keeps enforcing, nothing leaves it in clear text.  Exit 0 when
every step showed what it should.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from agent.credentials import NodeFiles  # noqa: E402
from agent.daemon import AgentOptions, Daemon  # noqa: E402
from controller import cli  # noqa: E402
from controller.embedded_etcd import EtcdProcess, free_port  # noqa: E402
from controller.etcd_pki import state_etcd_pki  # noqa: E402
from controller.etcd_store import EtcdStore  # noqa: E402
from controller.main import mtls_security  # noqa: E402
from controller.secretstore import Envelope  # noqa: E402
from controller.server import Controller, ControllerConfig  # noqa: E402

PREFIX = "idm-"
NODES = {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.3"}
COLOR = sys.stdout.isatty()


class SceneFailed(Exception):
    pass


def _c(code: str, text: str) -> str:
    return f"\033[{code}m{text}\033[0m" if COLOR else text


def title(text: str) -> None:
    print(_c("1;36", f"\n== {text}"), flush=True)


def say(text: str) -> None:
    print(f"   {text}", flush=True)


def show(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        print(_c("2", f"   | {line}"))
    sys.stdout.flush()


def policy(ab_lifetime: str = "1h") -> str:
    return f"""# one policy for the whole cluster (docs/spd.md); auth certificate is the default
defaults {{ policy discard; esp_trans_deflev require; }}
nodes na name a;
nodes nb name b;
nodes nc name c;
connection ab {{ between na and nb; mode transport; esp lifetime {ab_lifetime};
                auth psk secret:ab-psk; }}  # a key from the secret store
connection ac {{ between na and nc; mode transport; }}
connection bc {{ between nb and nc; mode transport; }}
"""


def controller_cmd(*args: str) -> str:
    """``ipsecd-controller ARGS`` (the CA commands), as an operator would run it."""
    print(_c("33", f"   $ ipsecd-controller {' '.join(args)}"), flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "controller.main", *args],
        capture_output=True,
        text=True,
        cwd=CHECKOUT,
        timeout=120,
        check=False,
    )
    show(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SceneFailed(f"ipsecd-controller {' '.join(args)} exited {done.returncode}")
    return done.stdout


def cluster_pki(work: Path, state: Path) -> Path:
    """One certificate for a and b from the controller's cluster CA, naming the node's
    name and address (its IKE identity with 'id name' / 'id address', and its identity
    for the controller stream); keys 0600."""
    d = work / "pki"
    for n, addr in NODES.items():
        if n == "c":
            continue  # c joins with a token
        controller_cmd("issue", "--state-dir", str(state), "--role", "node", "--name", n,
                       "--address", addr, "--out", str(d))  # fmt: skip
    return d


def node_files(d: Path, n: str) -> NodeFiles:
    return NodeFiles(d / f"{n}.pem", d / f"{n}.key", d / "ca.pem")


# ----------------------------------------------------------------------- namespaces


def ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def topology() -> Iterator[dict[str, str]]:
    """Namespaces idm-a/b/c joined by a bridge in idm-sw; always removed."""
    names = {n: f"{PREFIX}{n}" for n in NODES}
    switch = f"{PREFIX}sw"
    made: list[str] = []
    try:
        for ns in [switch, *names.values()]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "set", "lo", "up", ns=ns)
        ip("link", "add", "br0", "type", "bridge", ns=switch)
        ip("link", "set", "br0", "up", ns=switch)
        for i, (node, ns) in enumerate(names.items()):
            port, tmp = f"p{i}", f"idmv{i}"
            ip("link", "add", tmp, "type", "veth", "peer", "name", port)
            ip("link", "set", tmp, "netns", ns)
            ip("link", "set", port, "netns", switch)
            ip("link", "set", port, "master", "br0", ns=switch)
            ip("link", "set", port, "up", ns=switch)
            ip("link", "set", tmp, "name", "veth0", ns=ns)
            ip("addr", "add", f"{NODES[node]}/24", "dev", "veth0", ns=ns)
            ip("link", "set", "veth0", "up", ns=ns)
        yield names
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


# ----------------------------------------------------------------------- pieces


def ipsecctl(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """The real ipsecctl (controller/cli.py) over real gRPC: exit code, stdout, stderr
    (``stdin``: what it reads, e.g. a secret's value)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(args))
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


async def run_ipsecctl(*args: str, stdin: bytes | None = None) -> str:
    """Run, show its output (the token of ``token create`` shortened), return stdout."""
    shown = f" < (a value, {len(stdin)} bytes)" if stdin is not None else ""
    print(_c("33", f"   $ ipsecctl {' '.join(args)}{shown}"), flush=True)
    code, out, err = await asyncio.to_thread(functools.partial(ipsecctl, *args, stdin=stdin))
    visible = out if args[:2] != ("token", "create") else out[:24] + "...(the token)\n"
    show(visible + err)
    if code != 0:
        raise SceneFailed(f"ipsecctl {' '.join(args)} exited {code}")
    return out


async def ping(ns: str, dst: str, count: int, interval: float) -> tuple[int, int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-n",
        "-q",
        "-c",
        str(count),
        "-i",
        str(interval),
        "-W",
        "2",
        dst,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", text)
    if m is None:
        return 0, 0, text
    return int(m.group(1)), int(m.group(2)), text


class Capture:
    """tcpdump of what a namespace sends (egress: what an eavesdropper sees)."""

    def __init__(self, ns: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-Q",
                "out",
                "-i",
                "veth0",
                "-U",
                "-n",
                "--immediate-mode",
                "-Z",
                "root",
                "-w",
                str(path),
                "not",
                "arp",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        self.proc.stderr.readline()  # "listening on veth0 ..."

    def stop(self) -> list[str]:
        time.sleep(1)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        out = subprocess.run(
            ["tcpdump", "-n", "-r", str(self.path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return out.stdout.splitlines()


def summarize(lines: Sequence[str]) -> tuple[int, int]:
    esp = sum(1 for ln in lines if "ESP(spi=" in ln)
    clear = sum(1 for ln in lines if "ICMP echo" in ln)
    return esp, clear


def connections_up(daemons: dict[str, Daemon], revision: int) -> bool:
    for d in daemons.values():
        st = d.status()
        applied = st["applied"] or {}
        if applied.get("revision") != revision or len(st["connections"]) != 2:
            return False
        if any(c["state"] != "up" for c in st["connections"]):
            return False
    return True


async def wait_for(pred: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise SceneFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


# ----------------------------------------------------------------------- the scene


async def scene(work: Path) -> None:
    title("1. Three nodes: a, b, c on one bridge (network namespaces)")
    with topology() as ns:
        for n, addr in NODES.items():
            say(f"node {n}: {addr} in netns {ns[n]}")
        title("2. etcd and ipsecd-controller")
        port = free_port()
        target = f"127.0.0.1:{port}"
        state = work / "ctl"
        await asyncio.to_thread(
            controller_cmd, "init", "--state-dir", str(state), "--listen", target
        )
        etcd = EtcdProcess(work / "etcd", tls=state_etcd_pki(state))  # TLS, client certs
        etcd.start()
        sec = mtls_security(state)
        store = await EtcdStore.connect(etcd.url, tls=etcd.client_tls())
        ctl = Controller(
            store,
            ControllerConfig(replica_id="demo", advertise=target, key_root="/demo/"),
            authorizer=sec.authorizer,
            peer_credentials=sec.peer_credentials,
            envelope=Envelope.from_file(state / "envelope.key"),
            state_dir=state,
        )
        await ctl.start(
            target,
            credentials=sec.credentials,
            join_listen=f"127.0.0.1:{port + 1}",
            join_credentials=sec.join_credentials,
        )
        say(
            f"controller on {target} (mTLS only, CA in {state}), joins on port "
            f"{ctl.join_port}, etcd at {etcd.url} (TLS, client certificates)"
        )
        try:
            await _with_controller(work, ns, target, ctl, state)
        finally:
            await ctl.stop(grace=0.2)
            await store.close()
            etcd.stop(kill=True)


async def _with_controller(
    work: Path, ns: dict[str, str], target: str, ctl: Controller, state: Path
) -> None:
    """Steps 3 and 4: node identities and the agents."""
    title("3. Node identities: certificates for a and b, a join token for c; a secret")
    certs = await asyncio.to_thread(cluster_pki, work, state)
    say(f"node certificates of a and b in {certs} (keys mode 0600)")
    os.environ["IPSECCTL_CONFIG"] = str(state / "admin.conf")
    say(f"ipsecctl's credentials: IPSECCTL_CONFIG={state / 'admin.conf'}")
    token = (
        await run_ipsecctl("token", "create", "--node", "c", "--uses", "1", "--ttl", "10m")
    ).strip()
    token_file = work / "c.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    say(f"the token (it also pins the cluster CA) in {token_file}, mode 0600")
    say("a pre-shared key for connection ab, into the controller's sealed store:")
    await run_ipsecctl("secret", "set", "ab-psk", stdin=os.urandom(32).hex().encode())
    await run_ipsecctl("secret", "list")
    title("4. ipsecd agents in cluster mode (a and b here, c as its own process)")
    opts = []
    for n in ("a", "b"):
        state = work / f"agent-{n}"
        opts.append(
            AgentOptions(
                node=n,
                netns=ns[n],
                controllers=(target,),
                addresses=(NODES[n],),
                state_dir=state,
                socket_path=state / "ipsecd.sock",
                node_files=node_files(certs, n),
            )
        )
    daemons = {o.node: Daemon(o) for o in opts}
    tasks = [asyncio.create_task(d.run()) for d in daemons.values()]
    c_state = work / "agent-c"
    c_argv = [
        sys.executable,
        "-m",
        "agent.main",
        "--controller",
        target,
        "--node",
        "c",
        "--netns",
        ns["c"],
        "--addresses",
        NODES["c"],
        "--state-dir",
        str(c_state),
        "--socket",
        str(c_state / "ipsecd.sock"),
        "--join-file",
        str(token_file),
    ]
    say(
        f"$ ipsecd --controller {target} --node c --join-file c.token   (c makes its key, "
        "checks the CA against the token's pin, sends a CSR; a and b run with "
        "--cert/--key/--ca: mTLS to the controller, the same files for IKE)"
    )
    c_log = (work / "agent-c.log").open("wb")
    agent_c = subprocess.Popen(c_argv, cwd=CHECKOUT, stdout=c_log, stderr=subprocess.STDOUT)
    try:
        await _scene_body(work, ns, target, ctl, daemons, agent_c)
    finally:
        if agent_c.poll() is None:
            agent_c.terminate()
            agent_c.wait(15)
        for d in daemons.values():
            d.stop()
        for t in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 15)


async def _scene_body(
    work: Path,
    ns: dict[str, str],
    target: str,
    ctl: Controller,
    daemons: dict[str, Daemon],
    agent_c: subprocess.Popen[bytes],
) -> None:
    c_sock = work / "agent-c" / "ipsecd.sock"
    say("waiting for the three agents to connect (agent c is a new Python process)...")

    await wait_for(
        lambda: len(ctl.hub.streams) >= 3 and all(n in ctl.view.records for n in NODES),
        240,
        "three agents registered",
    )
    await run_ipsecctl("nodes")
    title("5. ipsecctl push: one SPD for the cluster")
    spd = work / "mesh.spd"
    spd.write_text(policy())
    os.chmod(spd, 0o600)
    show(spd.read_text())
    t0 = time.monotonic()
    await run_ipsecctl("push", str(spd))
    title("6. The mesh forms: IKEv2 SAs between every pair")
    say("waiting for every IKE and CHILD SA (IKE_SA_INIT, IKE_AUTH, kernel install)...")

    def c_up() -> bool:
        from agent.status import StatusError, query

        try:
            st = query(c_sock, timeout=2)
        except StatusError:
            return False
        return (
            (st.get("applied") or {}).get("revision") == 1
            and all(c["state"] == "up" for c in st["connections"])
            and len(st["connections"]) == 2
        )

    await wait_for(lambda: connections_up(daemons, 1), 240, "the mesh on a and b")
    await wait_for(c_up, 120, "the mesh on c")
    say(_c("32", f"✓ push -> every SA up in {time.monotonic() - t0:.1f} s"))
    for n, d in daemons.items():
        for c in d.status()["connections"]:
            say(
                f"{n}: {c['name']}: peer authenticated by {c['peer_auth']} "
                f"(certificate {c['peer_certificate']})"
            )
    expected = {"ab": "psk"}  # the others: the node certificates (ECDSA P-256)
    if any(
        not (c["peer_auth"] or "").startswith(expected.get(c["connection"], "ecdsa"))
        for d in daemons.values()
        for c in d.status()["connections"]
    ):
        raise SceneFailed("a peer was not authenticated as its connection says")
    for n, d in daemons.items():
        held = sorted(d.delivered)
        say(f"{n} holds from the secret store: {', '.join(held)} (its pair's key, never the root)")
    if sorted(daemons["a"].delivered) != ["ab-psk@b"] or sorted(daemons["b"].delivered) != [
        "ab-psk@a"
    ]:
        raise SceneFailed("a node received secrets other than its own pair's")
    for n in NODES:
        await run_ipsecctl("status", n)
    title("7. An encrypted ping, as seen on the wire (tcpdump of what a sends)")
    cap = Capture(ns["a"], work / "a.pcap")
    sent, got, _ = await ping(ns["a"], NODES["b"], 3, 0.3)
    lines = cap.stop()
    show("\n".join(lines[:8]))
    esp, clear = summarize(lines)
    say(f"ping a -> b: {sent} sent, {got} received; on the wire: {esp} ESP, {clear} clear echo")
    if got != sent or esp < sent or clear:
        raise SceneFailed("the ping was not carried by ESP alone")
    say(_c("32", "✓ only ESP on the wire"))
    title("8. A policy change applied in place: only connection ab is renegotiated")
    before = {
        n: {c["connection"]: c["children"] for c in d.status()["connections"]}
        for n, d in daemons.items()
    }
    flow = asyncio.create_task(ping(ns["a"], NODES["c"], 200, 0.02))
    spd.write_text(policy("30m"))
    await run_ipsecctl("push", str(spd))
    await wait_for(lambda: connections_up(daemons, 2), 240, "revision 2 on a and b")
    sent, got, _ = await flow
    after = {
        n: {c["connection"]: c["children"] for c in d.status()["connections"]}
        for n, d in daemons.items()
    }
    kept = after["a"]["ac"] == before["a"]["ac"]
    renewed = after["a"]["ab"] != before["a"]["ab"]
    say(f"a's SAs with c unchanged: {kept}; with b renegotiated: {renewed}")
    say(f"ping a -> c during the change: {sent} sent, {sent - got} lost")
    if not (kept and renewed and got == sent):
        raise SceneFailed("the change was not applied in place")
    say(_c("32", "✓ changed in place, no packet lost on the unchanged connection"))
    title("9. kill -9 the agent of node c: its kernel keeps enforcing")
    agent_c.send_signal(signal.SIGKILL)
    agent_c.wait(10)
    say(f"agent c (pid {agent_c.pid}) killed")
    cap = Capture(ns["c"], work / "c.pcap")
    sent, got, _ = await ping(ns["c"], NODES["a"], 5, 0.3)
    lines = cap.stop()
    esp, clear = summarize(lines)
    say(
        f"ping c -> a without its agent: {sent} sent, {got} received; "
        f"on the wire: {esp} ESP, {clear} clear echo"
    )
    if clear:
        raise SceneFailed("clear text left node c")
    say(
        _c(
            "32",
            "✓ no clear text: the policies, the default block and the SAs stayed in the kernel",
        )
    )
    await run_ipsecctl("status", "c")


def main() -> int:
    if os.geteuid() != 0:
        print("error: needs root (network namespaces, XFRM)", file=sys.stderr)
        return 2
    for tool_name in ("tcpdump", "ping", "etcd"):
        if shutil.which(tool_name) is None:
            print(f"error: {tool_name} not found (make deps installs it)", file=sys.stderr)
            return 2
    import logging

    logging.basicConfig(level=logging.WARNING, format="   %(name)s: %(message)s")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ipsecd-scene-") as tmp:
        try:
            asyncio.run(scene(Path(tmp)))
        except SceneFailed as exc:
            print(_c("31", f"\n   ✗ {exc}"))
            log = Path(tmp) / "agent-c.log"
            if log.exists():
                show("\n".join(log.read_text(errors="replace").splitlines()[-20:]))
            return 1
    print(
        _c("1;32", f"\nthe cluster scene showed everything in {time.monotonic() - started:.0f} s")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
