"""XFRM netlink wire codes (include/uapi/linux/xfrm.h), as IntEnums.

Values are the kernel's ABI; they never change once released.
"""

from __future__ import annotations

import socket
from enum import IntEnum, IntFlag

NETLINK_XFRM = 6
#: ``XFRM_INF``: "no limit" for byte and packet lifetimes.
XFRM_INF = 0xFFFF_FFFF_FFFF_FFFF
#: setsockopt level/option numbers for per-socket policy (linux/in.h, linux/in6.h).
IP_XFRM_POLICY = 17
IPV6_XFRM_POLICY = 35
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11


class MsgType(IntEnum):
    NOOP = 1
    ERROR = 2
    DONE = 3
    OVERRUN = 4
    NEWSA = 0x10
    DELSA = 0x11
    GETSA = 0x12
    NEWPOLICY = 0x13
    DELPOLICY = 0x14
    GETPOLICY = 0x15
    ALLOCSPI = 0x16
    ACQUIRE = 0x17
    EXPIRE = 0x18
    UPDPOLICY = 0x19
    UPDSA = 0x1A
    POLEXPIRE = 0x1B
    FLUSHSA = 0x1C
    FLUSHPOLICY = 0x1D
    NEWAE = 0x1E
    GETAE = 0x1F
    REPORT = 0x20
    MIGRATE = 0x21
    NEWSADINFO = 0x22
    GETSADINFO = 0x23
    NEWSPDINFO = 0x24
    GETSPDINFO = 0x25
    MAPPING = 0x26
    SETDEFAULT = 0x27
    GETDEFAULT = 0x28


class Attr(IntEnum):
    UNSPEC = 0
    ALG_AUTH = 1
    ALG_CRYPT = 2
    ALG_COMP = 3
    ENCAP = 4
    TMPL = 5
    SA = 6
    POLICY = 7
    SEC_CTX = 8
    LTIME_VAL = 9
    REPLAY_VAL = 10
    REPLAY_THRESH = 11
    ETIMER_THRESH = 12
    SRCADDR = 13
    COADDR = 14
    LASTUSED = 15
    POLICY_TYPE = 16
    MIGRATE = 17
    ALG_AEAD = 18
    KMADDRESS = 19
    ALG_AUTH_TRUNC = 20
    MARK = 21
    TFCPAD = 22
    REPLAY_ESN_VAL = 23
    SA_EXTRA_FLAGS = 24
    PROTO = 25
    ADDRESS_FILTER = 26
    PAD = 27
    OFFLOAD_DEV = 28
    SET_MARK = 29
    SET_MARK_MASK = 30
    IF_ID = 31
    MTIMER_THRESH = 32


class SadAttr(IntEnum):
    """Attributes of XFRM_MSG_NEWSADINFO (enum xfrm_sadattr_type_t)."""

    UNSPEC = 0
    CNT = 1
    HINFO = 2


class SpdAttr(IntEnum):
    """Attributes of XFRM_MSG_NEWSPDINFO (enum xfrm_spdattr_type_t)."""

    UNSPEC = 0
    INFO = 1
    HINFO = 2
    IPV4_HTHRESH = 3
    IPV6_HTHRESH = 4


class Group(IntEnum):
    """Multicast groups (enum xfrm_nlgroups)."""

    ACQUIRE = 1
    EXPIRE = 2
    SA = 3
    POLICY = 4
    AEVENTS = 5
    REPORT = 6
    MIGRATE = 7
    MAPPING = 8


class Proto(IntEnum):
    """IPsec protocol numbers (``xfrm_id.proto``)."""

    ANY = 0  # only meaningful in selectors / ipsec_set_policy; IPSEC_PROTO_ANY is 255
    ESP = socket.IPPROTO_ESP  # 50
    AH = socket.IPPROTO_AH  # 51
    COMP = 108


class Mode(IntEnum):
    TRANSPORT = 0
    TUNNEL = 1
    ROUTEOPTIMIZATION = 2
    IN_TRIGGER = 3
    BEET = 4


class Dir(IntEnum):
    IN = 0
    OUT = 1
    FWD = 2


class Action(IntEnum):
    ALLOW = 0
    BLOCK = 1


class Share(IntEnum):
    ANY = 0
    SESSION = 1
    USER = 2
    UNIQUE = 3


class PolicyType(IntEnum):
    MAIN = 0
    SUB = 1


class PolicyFlag(IntFlag):
    NONE = 0
    LOCALOK = 1
    ICMP = 2


class StateFlag(IntFlag):
    NONE = 0
    NOECN = 1
    DECAP_DSCP = 2
    NOPMTUDISC = 4
    WILDRECV = 8
    ICMP = 16
    AF_UNSPEC = 32
    ALIGN4 = 64
    ESN = 128


class StateExtraFlag(IntFlag):
    NONE = 0
    DONT_ENCAP_DSCP = 1
    OSEQ_MAY_WRAP = 2


class DefaultAction(IntEnum):
    """``struct xfrm_userpolicy_default`` values."""

    UNSPEC = 0
    BLOCK = 1
    ACCEPT = 2


class EncapType(IntEnum):
    ESPINUDP_NON_IKE = 1
    ESPINUDP = 2  # RFC 3948 UDP encapsulation (NAT-T)
    ESPINTCP = 7
