"""Capability probe: what XFRM features does the running kernel have?

Every check *tries the thing* in a throw-away, anonymous network namespace
(``unshare(CLONE_NEWNET)`` in a helper thread; it disappears with its last socket), so
the host's SPD/SAD are never touched.  Algorithm checks rely on the kernel looking up
algorithms before the protocol type when an SA is added (xfrm_state_construct):
``ENOSYS`` means the algorithm is missing, anything else means it was found.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .client import XfrmClient
from .consts import Action, DefaultAction, Dir, Proto
from .errors import XfrmError
from .model import (
    AES_GCM,
    CHACHA20_POLY1305,
    Aead,
    Auth,
    Crypt,
    DefaultPolicy,
    Encap,
    Policy,
    Selector,
    State,
)
from .netns import open_fresh, run_in
from .sockpolicy import set_socket_policy

_A = ipaddress.ip_address("192.0.2.1")
_B = ipaddress.ip_address("192.0.2.2")


@dataclass(frozen=True, slots=True)
class Capability:
    """One probed feature: ``supported``, and in ``detail`` why not (the error)."""

    name: str
    supported: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Capabilities:
    items: tuple[Capability, ...]

    def supports(self, name: str) -> bool:
        return self[name].supported

    def __getitem__(self, name: str) -> Capability:
        for c in self.items:
            if c.name == name:
                return c
        raise KeyError(f"no capability {name!r}; known: {', '.join(c.name for c in self.items)}")

    def missing(self) -> list[Capability]:
        return [c for c in self.items if not c.supported]

    def summary(self) -> str:
        return "\n".join(
            f"{c.name:<34} {'yes' if c.supported else 'no '}  {c.detail}".rstrip()
            for c in self.items
        )


def _esp(spi: int, **kw: object) -> State:
    base: dict[str, object] = {
        "crypt": Crypt("cbc(aes)", b"\x01" * 16),
        "auth": Auth("hmac(sha256)", b"\x02" * 32, 128),
    }
    base.update(kw)
    return State(_A, _B, spi, Proto.ESP, **base)  # type: ignore[arg-type]


ALGORITHMS: dict[str, State] = {
    AES_GCM: _esp(0x1001, crypt=None, auth=None, aead=Aead(AES_GCM, b"\x01" * 20, 128)),
    CHACHA20_POLY1305: _esp(
        0x1002, crypt=None, auth=None, aead=Aead(CHACHA20_POLY1305, b"\x01" * 36, 128)
    ),
    "cbc(aes)": _esp(0x1003, auth=None),
    "hmac(sha256)": _esp(0x1004, crypt=Crypt("ecb(cipher_null)", b"")),
    "hmac(sha384)": _esp(
        0x1005, crypt=Crypt("ecb(cipher_null)", b""), auth=Auth("hmac(sha384)", b"\2" * 48, 192)
    ),
    "hmac(sha512)": _esp(
        0x1006, crypt=Crypt("ecb(cipher_null)", b""), auth=Auth("hmac(sha512)", b"\2" * 64, 256)
    ),
}


async def _probe(x: XfrmClient, ns_fd: int) -> list[Capability]:
    out: list[Capability] = []

    async def check(name: str, fn: Callable[[], Awaitable[object]]) -> bool:
        try:
            await fn()
        except XfrmError as exc:
            out.append(Capability(name, False, str(exc)))
            return False
        out.append(Capability(name, True))
        return True

    pol4 = Policy(Selector.of("192.0.2.0/24", "198.51.100.0/24"), Dir.OUT, Action.BLOCK)
    pol6 = Policy(Selector.of("fd00::/64", "fd00:1::/64"), Dir.OUT, Action.BLOCK)
    await check("policy", lambda: x.add_policy(pol4))
    await check("policy_ipv6", lambda: x.add_policy(pol6))

    async def default() -> None:
        await x.set_default_policy(DefaultPolicy(outbound=DefaultAction.BLOCK))
        got = await x.get_default_policy()
        await x.set_default_policy(DefaultPolicy())
        if got.outbound != DefaultAction.BLOCK:
            raise XfrmError(f"default policy did not stick (read back {got})")

    await check("default_policy", default)

    async def sockpol() -> None:
        def attach() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                set_socket_policy(s, "out bypass")

        run_in(ns_fd, attach)

    await check("socket_policy", sockpol)
    await check("alloc_spi", lambda: x.alloc_spi(_B, _A, reqid=1))

    esp = await check("esp", lambda: x.add_state(_esp(0x2001)))
    if esp:
        await check("esn", lambda: x.add_state(_esp(0x2002, esn=True, replay_window=128)))
        await check("udp_encap", lambda: x.add_state(_esp(0x2003, encap=Encap())))
    else:
        out.append(Capability("esn", False, "needs ESP"))
        out.append(Capability("udp_encap", False, "needs ESP"))
    ah = State(_A, _B, 0x3001, Proto.AH, auth=Auth("hmac(sha256)", b"\x02" * 32, 128))
    await check("ah", lambda: x.add_state(ah))
    for name, state in ALGORITHMS.items():
        try:
            await x.add_state(state)
        except XfrmError as exc:
            if exc.errno == errno.ENOSYS:  # algorithm not found
                out.append(Capability(f"alg:{name}", False, str(exc)))
                continue
        out.append(Capability(f"alg:{name}", True))
    return out


def probe() -> Capabilities:
    """Probe the running kernel (needs root).  Never touches the caller's namespace."""
    fd = open_fresh()
    try:

        async def main() -> list[Capability]:
            try:
                x = XfrmClient(fd)
            except XfrmError as exc:
                return [Capability("xfrm_netlink", False, str(exc))]
            try:
                return [Capability("xfrm_netlink", True), *await _probe(x, fd)]
            finally:
                x.close()

        return Capabilities(tuple(asyncio.run(main())))
    finally:
        os.close(fd)
