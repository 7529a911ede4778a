"""Network namespaces for tests: create, join with veth, run commands, always clean up.

Built on iproute2 (``ip netns``), which is what an operator would use too.  Every
namespace made here carries a caller-given prefix plus a random suffix, so parallel
test runs never collide, and :func:`sweep` removes leftovers of a prefix.

Typical use::

    with netns_pair("ipx-") as (a, b):
        a.run(["ping", "-c1", "-W1", b.addr4])

Addresses come from the documentation ranges only (192.0.2.0/24, fd00::/8).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

IP = shutil.which("ip") or "/usr/sbin/ip"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) for the calling thread (``os.setns`` only exists from Python 3.12)."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


class NetnsError(RuntimeError):
    """An iproute2 command failed; the message carries the command and its stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([IP, *args], capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def unique_name(prefix: str) -> str:
    """``prefix`` + 6 hex digits; interface names must stay ≤ 15 characters."""
    name = f"{prefix}{secrets.token_hex(3)}"
    if len(name) > 15:
        raise ValueError(f"namespace name {name!r} too long: use a prefix of at most 9 chars")
    return name


@dataclass
class Netns:
    """One network namespace, with the addresses the helpers gave it."""

    name: str
    addr4: str | None = None
    addr6: str | None = None
    ifname: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return [IP, "netns", "exec", self.name, *cmd]

    def run(
        self, cmd: Sequence[str], *, check: bool = True, timeout: float = 60, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace; on failure raise with stdout/stderr."""
        proc: subprocess.CompletedProcess[str] = subprocess.run(
            self.argv(cmd),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            **kw,  # type: ignore[call-overload]
        )
        if check and proc.returncode != 0:
            raise NetnsError(
                f"in netns {self.name}: `{' '.join(cmd)}` exited {proc.returncode}\n"
                f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
            )
        return proc

    def popen(self, cmd: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside the namespace; the caller must terminate it."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.argv(cmd), **kw)  # type: ignore[call-overload]
        return proc

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move *this thread* into the namespace for the block (setns), then back.

        For in-process sockets/netlink in a namespace.  Python code running in other
        threads is unaffected.
        """
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            setns(target)
            yield
        finally:
            setns(own)
            os.close(own)
            os.close(target)


def create(prefix: str) -> Netns:
    """Create an empty namespace with loopback up."""
    ns = Netns(unique_name(prefix))
    _ip("netns", "add", ns.name)
    try:
        ns.run(["ip", "link", "set", "lo", "up"])
    except Exception:
        delete(ns)
        raise
    return ns


def delete(ns: Netns | str) -> None:
    """Remove a namespace; killing what still runs inside it first.  Never raises."""
    name = ns.name if isinstance(ns, Netns) else ns
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    _ip("netns", "del", name, check=False)


def sweep(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (leftovers of a crash)."""
    out = _ip("netns", "list", check=False).stdout
    gone = []
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(prefix):
            delete(name)
            gone.append(name)
    return gone


def link_pair(
    a: Netns,
    b: Netns,
    *,
    addrs_a: Sequence[str] = ("192.0.2.1/24", "fd00::1/64"),
    addrs_b: Sequence[str] = ("192.0.2.2/24", "fd00::2/64"),
    ifname: str = "veth0",
) -> None:
    """Join ``a`` and ``b`` with a veth pair named ``ifname`` on both sides.

    IPv6 addresses are added with ``nodad`` so they are usable at once.
    """
    tmp_a, tmp_b = unique_name("va"), unique_name("vb")
    _ip("link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
    try:
        _ip("link", "set", tmp_a, "netns", a.name)
        _ip("link", "set", tmp_b, "netns", b.name)
    except Exception:
        _ip("link", "del", tmp_a, check=False)
        raise
    for ns, tmp, addrs in ((a, tmp_a, addrs_a), (b, tmp_b, addrs_b)):
        ns.run(["ip", "link", "set", tmp, "name", ifname])
        for addr in addrs:
            extra = ["nodad"] if ":" in addr else []
            ns.run(["ip", "addr", "add", addr, "dev", ifname, *extra])
        ns.run(["ip", "link", "set", ifname, "up"])
        ns.ifname = ifname
        for addr in addrs:
            bare = addr.split("/")[0]
            if ":" in bare:
                ns.addr6 = ns.addr6 or bare
            else:
                ns.addr4 = ns.addr4 or bare


@contextlib.contextmanager
def netns_pair(
    prefix: str,
    *,
    addrs_a: Sequence[str] = ("192.0.2.1/24", "fd00::1/64"),
    addrs_b: Sequence[str] = ("192.0.2.2/24", "fd00::2/64"),
) -> Iterator[tuple[Netns, Netns]]:
    """Two namespaces joined by veth0; both removed on exit, whatever happened."""
    a = create(prefix)
    b: Netns | None = None
    try:
        b = create(prefix)
        link_pair(a, b, addrs_a=addrs_a, addrs_b=addrs_b)
        yield a, b
    finally:
        delete(a)
        if b is not None:
            delete(b)


@contextlib.contextmanager
def netns_single(prefix: str) -> Iterator[Netns]:
    """One namespace with loopback up; removed on exit."""
    ns = create(prefix)
    try:
        yield ns
    finally:
        delete(ns)


@contextlib.contextmanager
def netns_star(
    prefix: str, addresses: Sequence[Sequence[str]]
) -> Iterator[tuple[Netns, list[Netns]]]:
    """One "switch" namespace with a bridge and one node namespace per entry of
    ``addresses`` (each a list of ``ADDR/PLEN``), joined to the bridge by ``veth0``:
    every node reaches every other on one segment.  Yields (switch, nodes); all are
    removed on exit, whatever happened."""
    made: list[Netns] = []
    try:
        switch = create(prefix)
        made.append(switch)
        switch.run(["ip", "link", "add", "br0", "type", "bridge"])
        switch.run(["ip", "link", "set", "br0", "up"])
        nodes = []
        for i, addrs in enumerate(addresses):
            ns = create(prefix)
            made.append(ns)
            port = f"p{i}"
            tmp = unique_name("vs")
            _ip("link", "add", tmp, "type", "veth", "peer", "name", port)
            _ip("link", "set", tmp, "netns", ns.name)
            _ip("link", "set", port, "netns", switch.name)
            switch.run(["ip", "link", "set", port, "master", "br0"])
            switch.run(["ip", "link", "set", port, "up"])
            ns.run(["ip", "link", "set", tmp, "name", "veth0"])
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                ns.run(["ip", "addr", "add", addr, "dev", "veth0", *extra])
            ns.run(["ip", "link", "set", "veth0", "up"])
            ns.ifname = "veth0"
            ns.addr4 = next((a.split("/")[0] for a in addrs if ":" not in a), None)
            ns.addr6 = next((a.split("/")[0] for a in addrs if ":" in a), None)
            nodes.append(ns)
        yield switch, nodes
    finally:
        for ns in made:
            delete(ns)
