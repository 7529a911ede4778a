"""Per-socket IPsec policy: ``setsockopt(IP_XFRM_POLICY / IPV6_XFRM_POLICY)``.

A socket policy overrides the SPD for one socket and one direction.  It is a
``struct xfrm_userpolicy_info`` (selector family set, prefixes 0 = any) followed by
zero or more ``struct xfrm_user_tmpl``; the kernel compiles it in
net/xfrm/xfrm_user.c ``xfrm_compile_policy``.

The KAME ``ipsec_set_policy(3)`` text form is accepted too::

    in bypass            out discard
    out none             in entrust
    out ipsec esp/transport//require
    out ipsec esp/tunnel/192.0.2.1-192.0.2.2/unique:7 ah/transport//use

Linux meanings: ``bypass`` and ``none`` → an ALLOW policy without templates (the socket
skips the SPD, and also the host default policy); ``discard`` → BLOCK; ``ipsec`` →
ALLOW with the templates; ``entrust`` → remove the socket's policies (both directions:
Linux clears them together) so the SPD applies again.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from . import codec, wire
from .consts import IP_XFRM_POLICY, IPV6_XFRM_POLICY, Action, Dir, Mode, Proto
from .errors import Op, XfrmError, XfrmInvalid, from_errno
from .model import Level, Lifetime, Template, address

_POL = wire.compiled(wire.USERPOLICY_INFO)


@dataclass(frozen=True, slots=True)
class SocketPolicy:
    """A per-socket policy; ``entrust`` clears the socket's policies instead."""

    dir: Dir
    action: Action = Action.ALLOW
    templates: tuple[Template, ...] = ()
    entrust: bool = False

    def __post_init__(self) -> None:
        if self.dir not in (Dir.IN, Dir.OUT):
            raise ValueError("a socket policy is 'in' or 'out' (the kernel has no fwd here)")
        if self.action == Action.BLOCK and self.templates:
            raise ValueError("a discarding socket policy takes no templates")


_LEVELS = {"default": Level.REQUIRE, "use": Level.USE, "require": Level.REQUIRE}
_PROTOS = {"esp": Proto.ESP, "ah": Proto.AH, "ipcomp": Proto.COMP}
_MODES = {"transport": Mode.TRANSPORT, "tunnel": Mode.TUNNEL, "any": Mode.TRANSPORT}


class PolicySyntaxError(XfrmInvalid):
    """An ipsec_set_policy string could not be parsed; the message shows where."""


def _fail(text: str, word: str, why: str) -> PolicySyntaxError:
    col = text.find(word) + 1 if word else len(text) + 1
    return PolicySyntaxError(f"ipsec policy {text!r}, column {col}: {why}")


def _request(text: str, spec: str) -> Template:
    # protocol/mode/src-dst/level   (ipsec_set_policy(3))
    parts = spec.split("/")
    if len(parts) != 4:
        raise _fail(text, spec, f"expected protocol/mode/src-dst/level, got {spec!r}")
    proto_s, mode_s, ends, level_s = parts
    if proto_s not in _PROTOS:
        raise _fail(text, spec, f"unknown protocol {proto_s!r} (esp, ah or ipcomp)")
    if mode_s not in _MODES:
        raise _fail(text, spec, f"unknown mode {mode_s!r} (transport or tunnel)")
    mode = _MODES[mode_s]
    src = dst = None
    if ends:
        if "-" not in ends:
            raise _fail(text, spec, f"tunnel endpoints must be src-dst, got {ends!r}")
        a, b = ends.split("-", 1)
        try:
            src, dst = address(a), address(b)
        except ValueError as exc:
            raise _fail(text, spec, f"bad endpoint address: {exc}") from exc
    if mode == Mode.TUNNEL and src is None:
        raise _fail(text, spec, "tunnel mode needs src-dst endpoint addresses")
    reqid = 0
    if level_s.startswith("unique"):
        level = Level.UNIQUE
        _, _, num = level_s.partition(":")
        if num:
            if not num.isdigit():
                raise _fail(text, spec, f"unique:N needs a number, got {num!r}")
            reqid = int(num)
        else:
            raise _fail(text, spec, "Linux has no automatic reqid: write unique:N (N > 0)")
        if reqid == 0:
            raise _fail(text, spec, "unique:N needs N > 0")
    elif level_s in _LEVELS:
        level = _LEVELS[level_s]
    else:
        raise _fail(text, spec, f"unknown level {level_s!r} (default, use, require, unique)")
    return Template(_PROTOS[proto_s], mode, src, dst, reqid=reqid, level=level)


def parse_ipsec_policy(text: str) -> SocketPolicy:
    """Parse the ``ipsec_set_policy(3)`` syntax into a :class:`SocketPolicy`."""
    words = text.split()
    if not words:
        raise _fail(text, "", "empty policy: expected 'in' or 'out'")
    if words[0] not in ("in", "out"):
        raise _fail(text, words[0], f"direction must be 'in' or 'out', got {words[0]!r}")
    direction = Dir.IN if words[0] == "in" else Dir.OUT
    if len(words) < 2:
        raise _fail(text, "", "missing action: discard, none, bypass, entrust or ipsec")
    action, rest = words[1], words[2:]
    if action in ("discard", "none", "bypass", "entrust") and rest:
        raise _fail(text, rest[0], f"'{action}' takes no requests")
    if action == "discard":
        return SocketPolicy(direction, Action.BLOCK)
    if action in ("none", "bypass"):
        return SocketPolicy(direction, Action.ALLOW)
    if action == "entrust":
        return SocketPolicy(direction, entrust=True)
    if action == "ipsec":
        if not rest:
            raise _fail(text, "", "'ipsec' needs at least one protocol/mode/src-dst/level")
        return SocketPolicy(direction, Action.ALLOW, tuple(_request(text, r) for r in rest))
    raise _fail(text, action, f"unknown action {action!r}")


def socket_policy_bytes(policy: SocketPolicy, family: int) -> bytes:
    """``xfrm_userpolicy_info`` + templates, as setsockopt wants them."""
    anyaddr = b"\0" * 16
    sel = (anyaddr, anyaddr, 0, 0, 0, 0, family, 0, 0, 0, 0, 0)
    head = _POL.struct.pack(
        *sel,
        *codec.lifetime_tuple(Lifetime()),
        0,
        0,
        0,
        0,
        0,
        0,
        policy.dir,
        policy.action,
        0,
        0,
    )
    return head + b"".join(codec.template_bytes(t, family) for t in policy.templates)


def set_socket_policy(sock: socket.socket, policy: SocketPolicy | str) -> None:
    """Attach ``policy`` (a value or an ipsec_set_policy string) to ``sock``."""
    pol = parse_ipsec_policy(policy) if isinstance(policy, str) else policy
    family = sock.family
    if family == socket.AF_INET:
        level, opt = socket.IPPROTO_IP, IP_XFRM_POLICY
    elif family == socket.AF_INET6:
        level, opt = socket.IPPROTO_IPV6, IPV6_XFRM_POLICY
    else:
        raise XfrmInvalid(f"socket policy needs an AF_INET or AF_INET6 socket, not {family!r}")
    target = f"on {socket.AddressFamily(family).name} socket fd {sock.fileno()}"
    try:
        if pol.entrust:
            sock.setsockopt(level, opt, None, 0)  # NULL, 0: drop both directions
        else:
            sock.setsockopt(level, opt, socket_policy_bytes(pol, family))
    except OSError as exc:
        err: XfrmError = from_errno(Op.SOCKET_POLICY, exc.errno or 0, target)
        raise err from exc
