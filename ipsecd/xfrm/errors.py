"""Typed XFRM errors: what failed, on which object, and what to do about it.

Netlink answers with a bare errno (and, on newer kernels, an extended-ack text).  The
mapping below turns (operation, errno, ext-ack) into one of these types with a message
that names what is missing, e.g. "kernel has no ESP (CONFIG_INET_ESP)".
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Mapping
from enum import Enum


class XfrmError(Exception):
    """Base of every error raised by :mod:`ipsecd.xfrm`.

    ``errno`` is the kernel's (positive) errno when the error came from netlink, else 0;
    ``op`` the operation (``"add policy"``), ``target`` the object it was about.
    """

    def __init__(self, message: str, *, errno: int = 0, op: str = "", target: str = "") -> None:
        super().__init__(message)
        self.errno = errno
        self.op = op
        self.target = target


class XfrmExists(XfrmError):
    """EEXIST: the object is already in the kernel (possibly owned by other software)."""


class XfrmNotFound(XfrmError):
    """ENOENT / ESRCH: no such policy / SA."""


class XfrmPermission(XfrmError):
    """EPERM / EACCES: CAP_NET_ADMIN is needed (run as root or grant the capability)."""


class XfrmUnsupported(XfrmError):
    """The running kernel lacks a feature (protocol module, algorithm, message type)."""


class XfrmInvalid(XfrmError):
    """EINVAL and friends: the kernel rejected the values (see the message)."""


class XfrmBusy(XfrmError):
    """EBUSY / EAGAIN / ENOBUFS: retry later, or the socket buffer overflowed."""


class XfrmNamespaceError(XfrmError):
    """The network namespace could not be entered (missing /run/netns/NAME, bad fd)."""


class XfrmConflict(XfrmError):
    """Refused to touch an object that ipsecd does not own (see ipsecd.xfrm.ownership)."""


class Op(Enum):
    """Operations, for error messages and for the errno table."""

    ADD_POLICY = "add policy"
    UPDATE_POLICY = "update policy"
    DELETE_POLICY = "delete policy"
    GET_POLICY = "get policy"
    DUMP_POLICIES = "dump policies"
    ADD_STATE = "add SA"
    UPDATE_STATE = "update SA"
    DELETE_STATE = "delete SA"
    GET_STATE = "get SA"
    DUMP_STATES = "dump SAs"
    ALLOC_SPI = "allocate SPI"
    SET_DEFAULT = "set default policy"
    GET_DEFAULT = "get default policy"
    GET_INFO = "read SAD/SPD info"
    SOCKET_POLICY = "set socket policy"


#: errno → (error type, what it means).  Complete for every errno we handle; the unit
#: test checks that each has a type and a text, and that unknown errnos still map.
ERRNO_MAP: Mapping[int, tuple[type[XfrmError], str]] = {
    _errno.EEXIST: (XfrmExists, "already exists"),
    _errno.ENOENT: (XfrmNotFound, "not found"),
    _errno.ESRCH: (XfrmNotFound, "not found"),
    _errno.EPERM: (XfrmPermission, "permission denied: needs CAP_NET_ADMIN (run as root)"),
    _errno.EACCES: (XfrmPermission, "permission denied: needs CAP_NET_ADMIN (run as root)"),
    _errno.EPROTONOSUPPORT: (XfrmUnsupported, "protocol not supported by the kernel"),
    _errno.ENOSYS: (XfrmUnsupported, "algorithm not available in the kernel"),
    _errno.EOPNOTSUPP: (XfrmUnsupported, "operation not supported by the kernel"),
    _errno.EAFNOSUPPORT: (XfrmUnsupported, "address family not supported (CONFIG_IPV6?)"),
    _errno.EINVAL: (XfrmInvalid, "invalid argument"),
    _errno.ERANGE: (XfrmInvalid, "value out of range"),
    _errno.EMSGSIZE: (XfrmInvalid, "message too large or too small for the kernel"),
    _errno.EBADMSG: (XfrmInvalid, "malformed message"),
    _errno.EBUSY: (XfrmBusy, "busy, try again"),
    _errno.EAGAIN: (XfrmBusy, "temporarily unavailable, try again"),
    _errno.ENOBUFS: (XfrmBusy, "netlink socket buffer overflow"),
    _errno.ENOMEM: (XfrmBusy, "kernel out of memory"),
}


def _hint(op: Op, err: int, ext: str | None, detail: Mapping[str, str]) -> str:
    """The 'what is missing' part for the cases people actually hit."""
    ext_l = (ext or "").lower()
    proto = detail.get("proto", "")
    if op in (Op.ADD_STATE, Op.UPDATE_STATE, Op.ALLOC_SPI):
        if err == _errno.EPROTONOSUPPORT or "type not found" in ext_l:
            if proto == "ah":
                return "kernel has no AH (CONFIG_INET_AH / CONFIG_INET6_AH: modprobe ah4 ah6)"
            if proto == "comp":
                return "kernel has no IPComp (CONFIG_INET_IPCOMP)"
            return "kernel has no ESP (CONFIG_INET_ESP / CONFIG_INET6_ESP: modprobe esp4 esp6)"
        if err == _errno.ENOSYS or "algorithm not found" in ext_l:
            algos = detail.get("algorithms", "the requested algorithm")
            return f"kernel lacks {algos} (crypto module not built or not loaded)"
        if err == _errno.EINVAL and "encap" in ext_l:
            return "kernel refused the UDP encapsulation (NAT-T works for ESP only)"
    if op == Op.SET_DEFAULT and err in (_errno.EINVAL, _errno.EOPNOTSUPP):
        return "kernel has no default-policy support (XFRM_MSG_SETDEFAULT needs Linux ≥ 5.16)"
    if op == Op.SOCKET_POLICY and err == _errno.ENOPROTOOPT:
        return "kernel has no per-socket IPsec policy (CONFIG_XFRM)"
    return ""


def from_errno(
    op: Op,
    err: int,
    target: str,
    ext: str | None = None,
    detail: Mapping[str, str] | None = None,
) -> XfrmError:
    """Build the typed error for a failed ``op`` on ``target`` (a description, no keys)."""
    cls, meaning = ERRNO_MAP.get(err, (XfrmError, _errno.errorcode.get(err, f"errno {err}")))
    hint = _hint(op, err, ext, detail or {})
    if hint:
        cls = XfrmUnsupported
    parts = [f"{op.value} {target}: {hint or meaning}"]
    if ext:
        parts.append(f"(kernel: {ext})")
    name = _errno.errorcode.get(err, str(err))
    parts.append(f"[{name}]")
    if cls is XfrmExists:
        parts.append("— another owner may hold it; ipsecd never overwrites foreign entries")
    return cls(" ".join(parts), errno=err, op=op.value, target=target)
