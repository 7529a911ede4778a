"""XFRM message layouts on pyroute2's netlink core.

Each kernel struct is described once, as a pyroute2 ``nlmsg``/``nla`` subclass whose
``fields`` spell out every member *and every C padding byte* (``x``), flattened with a
prefix for nested structs (``sel_daddr`` is ``xfrm_userpolicy_info.sel.daddr``).
pyroute2 decodes received messages with these classes; for sending, :func:`compiled`
turns the very same ``fields`` into one precompiled :class:`struct.Struct`, which is
what makes bulk installs fast.  The unit tests check every size against the x86_64
kernel ABI and that pyroute2's encoder and the compiled one produce the same bytes.

Big-endian members (ports, SPI) are declared native here and byte-swapped by the codec.
"""

from __future__ import annotations

import struct
from typing import Any

from pyroute2.netlink import nla, nlmsg
from pyroute2.netlink.marshal import Marshal

from .consts import Attr, MsgType

Fields = tuple[tuple[str, str], ...]


def _prefixed(prefix: str, fields: Fields) -> Fields:
    return tuple(
        (f"{prefix}{name}" if not fmt.endswith("x") else "__pad", fmt) for name, fmt in fields
    )


# struct xfrm_selector (56 bytes)
SELECTOR: Fields = (
    ("daddr", "16s"),
    ("saddr", "16s"),
    ("dport", "H"),  # __be16
    ("dport_mask", "H"),
    ("sport", "H"),
    ("sport_mask", "H"),
    ("family", "H"),
    ("prefixlen_d", "B"),
    ("prefixlen_s", "B"),
    ("proto", "B"),
    ("__pad", "3x"),
    ("ifindex", "i"),
    ("user", "I"),
)
# struct xfrm_lifetime_cfg (64 bytes)
LIFETIME_CFG: Fields = (
    ("soft_byte_limit", "Q"),
    ("hard_byte_limit", "Q"),
    ("soft_packet_limit", "Q"),
    ("hard_packet_limit", "Q"),
    ("soft_add_expires_seconds", "Q"),
    ("hard_add_expires_seconds", "Q"),
    ("soft_use_expires_seconds", "Q"),
    ("hard_use_expires_seconds", "Q"),
)
# struct xfrm_lifetime_cur (32 bytes)
LIFETIME_CUR: Fields = (("bytes", "Q"), ("packets", "Q"), ("add_time", "Q"), ("use_time", "Q"))
# struct xfrm_id (24 bytes)
XFRM_ID: Fields = (("daddr", "16s"), ("spi", "I"), ("proto", "B"), ("__pad", "3x"))
# struct xfrm_userpolicy_info (168 bytes)
USERPOLICY_INFO: Fields = (
    *_prefixed("sel_", SELECTOR),
    *_prefixed("lft_", LIFETIME_CFG),
    *_prefixed("cur_", LIFETIME_CUR),
    ("priority", "I"),
    ("index", "I"),
    ("dir", "B"),
    ("action", "B"),
    ("flags", "B"),
    ("share", "B"),
    ("__pad", "4x"),
)
# struct xfrm_usersa_info (224 bytes)
USERSA_INFO: Fields = (
    *_prefixed("sel_", SELECTOR),
    *_prefixed("id_", XFRM_ID),
    ("saddr", "16s"),
    *_prefixed("lft_", LIFETIME_CFG),
    *_prefixed("cur_", LIFETIME_CUR),
    ("stats_replay_window", "I"),
    ("stats_replay", "I"),
    ("stats_integrity_failed", "I"),
    ("seq", "I"),
    ("reqid", "I"),
    ("family", "H"),
    ("mode", "B"),
    ("replay_window", "B"),
    ("flags", "B"),
    ("__pad", "7x"),
)
# struct xfrm_usersa_id (24 bytes)
USERSA_ID: Fields = (
    ("daddr", "16s"),
    ("spi", "I"),
    ("family", "H"),
    ("proto", "B"),
    ("__pad", "1x"),
)
# struct xfrm_userpolicy_id (64 bytes)
USERPOLICY_ID: Fields = (
    *_prefixed("sel_", SELECTOR),
    ("index", "I"),
    ("dir", "B"),
    ("__pad", "3x"),
)
# struct xfrm_user_tmpl (64 bytes)
USER_TMPL: Fields = (
    *_prefixed("id_", XFRM_ID),
    ("family", "H"),
    ("__pad", "2x"),
    ("saddr", "16s"),
    ("reqid", "I"),
    ("mode", "B"),
    ("share", "B"),
    ("optional", "B"),
    ("__pad", "1x"),
    ("aalgos", "I"),
    ("ealgos", "I"),
    ("calgos", "I"),
)
# struct xfrm_userspi_info (232 bytes)
USERSPI_INFO: Fields = (*USERSA_INFO, ("min", "I"), ("max", "I"))
# struct xfrm_user_acquire (280 bytes)
USER_ACQUIRE: Fields = (
    *_prefixed("id_", XFRM_ID),
    ("saddr", "16s"),
    *_prefixed("sel_", SELECTOR),
    *_prefixed("pol_", USERPOLICY_INFO),
    ("aalgos", "I"),
    ("ealgos", "I"),
    ("calgos", "I"),
    ("seq", "I"),
)
# struct xfrm_user_expire (232 bytes)
USER_EXPIRE: Fields = (*USERSA_INFO, ("hard", "B"), ("__pad", "7x"))
# struct xfrm_user_polexpire (176 bytes)
USER_POLEXPIRE: Fields = (*USERPOLICY_INFO, ("hard", "B"), ("__pad", "7x"))
# struct xfrm_user_mapping (64 bytes)
USER_MAPPING: Fields = (
    *_prefixed("id_", USERSA_ID),
    ("reqid", "I"),
    ("old_saddr", "16s"),
    ("new_saddr", "16s"),
    ("old_sport", "H"),  # __be16
    ("new_sport", "H"),  # __be16
)
# struct xfrm_userpolicy_default (3 bytes)
USERPOLICY_DEFAULT: Fields = (("in", "B"), ("fwd", "B"), ("out", "B"))
# u32 flags: the body of GETSADINFO / GETSPDINFO and their answers
INFO_FLAGS: Fields = (("flags", "I"),)
# struct xfrm_encap_tmpl (24 bytes)
ENCAP_TMPL: Fields = (
    ("encap_type", "H"),
    ("encap_sport", "H"),  # __be16
    ("encap_dport", "H"),  # __be16
    ("__pad", "2x"),
    ("encap_oa", "16s"),
)
# struct xfrm_mark (8 bytes)
MARK: Fields = (("v", "I"), ("m", "I"))
# struct xfrm_algo / xfrm_algo_auth / xfrm_algo_aead: fixed heads, key bytes follow
ALGO: Fields = (("alg_name", "64s"), ("alg_key_len", "I"))
ALGO_AUTH: Fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_trunc_len", "I"))
ALGO_AEAD: Fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))
# struct xfrm_replay_state_esn head (24 bytes), u32 bmp[bmp_len] follows
REPLAY_ESN: Fields = (
    ("bmp_len", "I"),
    ("oseq", "I"),
    ("seq", "I"),
    ("oseq_hi", "I"),
    ("seq_hi", "I"),
    ("replay_window", "I"),
)
# struct xfrm_replay_state (12 bytes)
REPLAY_STATE: Fields = (("oseq", "I"), ("seq", "I"), ("bitmap", "I"))
# struct xfrm_stats is inside usersa_info; xfrmu_spdinfo (24), xfrmu_spdhinfo (8), sadhinfo (8)
SPD_INFO: Fields = (
    ("incnt", "I"),
    ("outcnt", "I"),
    ("fwdcnt", "I"),
    ("inscnt", "I"),
    ("outscnt", "I"),
    ("fwdscnt", "I"),
)
HINFO: Fields = (("cnt", "I"), ("max", "I"))
NLMSGHDR = struct.Struct("=IHHII")

#: Sizes of the x86_64 kernel structs, checked by the unit tests.
KERNEL_SIZES: dict[str, int] = {
    "SELECTOR": 56,
    "LIFETIME_CFG": 64,
    "LIFETIME_CUR": 32,
    "XFRM_ID": 24,
    "USERPOLICY_INFO": 168,
    "USERSA_INFO": 224,
    "USERSA_ID": 24,
    "USERPOLICY_ID": 64,
    "USER_TMPL": 64,
    "USERSPI_INFO": 232,
    "USER_ACQUIRE": 280,
    "USER_EXPIRE": 232,
    "USER_POLEXPIRE": 176,
    "USER_MAPPING": 64,
    "USERPOLICY_DEFAULT": 3,
    "ENCAP_TMPL": 24,
    "MARK": 8,
    "ALGO": 68,
    "ALGO_AUTH": 72,
    "ALGO_AEAD": 72,
    "REPLAY_ESN": 24,
    "REPLAY_STATE": 12,
    "SPD_INFO": 24,
}


class Compiled:
    """One precompiled struct for a field list; pack/unpack by field name."""

    __slots__ = ("names", "size", "struct")

    def __init__(self, fields: Fields) -> None:
        self.struct = struct.Struct("=" + "".join(fmt for _, fmt in fields))
        self.names = tuple(name for name, fmt in fields if not fmt.endswith("x"))
        self.size = self.struct.size

    def pack(self, values: dict[str, Any]) -> bytes:
        return self.struct.pack(*(values.get(n, 0) for n in self.names))

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any]:
        return dict(zip(self.names, self.struct.unpack_from(data, offset), strict=True))


_CACHE: dict[int, Compiled] = {}


def compiled(fields: Fields) -> Compiled:
    key = id(fields)
    c = _CACHE.get(key)
    if c is None:
        c = _CACHE[key] = Compiled(fields)
    return c


# --------------------------------------------------------------------------------------
# pyroute2 classes: NLA payloads and messages


class _attrs:
    """Mixin: the XFRMA_* attribute table shared by SA and policy messages."""

    class mark(nla):  # type: ignore[misc]
        fields = MARK

    class encap(nla):  # type: ignore[misc]
        fields = ENCAP_TMPL

    class lifetime_cur(nla):  # type: ignore[misc]
        fields = LIFETIME_CUR

    class replay_state(nla):  # type: ignore[misc]
        fields = REPLAY_STATE

    class policy_info(nla):  # type: ignore[misc]
        fields = USERPOLICY_INFO

    class usersa_info(nla):  # type: ignore[misc]
        fields = USERSA_INFO


XFRMA_MAP: tuple[tuple[int, str, str], ...] = (
    (Attr.ALG_AUTH, "XFRMA_ALG_AUTH", "cdata"),
    (Attr.ALG_CRYPT, "XFRMA_ALG_CRYPT", "cdata"),
    (Attr.ALG_COMP, "XFRMA_ALG_COMP", "cdata"),
    (Attr.ENCAP, "XFRMA_ENCAP", "encap"),
    (Attr.TMPL, "XFRMA_TMPL", "cdata"),
    (Attr.SA, "XFRMA_SA", "usersa_info"),
    (Attr.POLICY, "XFRMA_POLICY", "policy_info"),
    (Attr.SEC_CTX, "XFRMA_SEC_CTX", "cdata"),
    (Attr.LTIME_VAL, "XFRMA_LTIME_VAL", "lifetime_cur"),
    (Attr.REPLAY_VAL, "XFRMA_REPLAY_VAL", "replay_state"),
    (Attr.REPLAY_THRESH, "XFRMA_REPLAY_THRESH", "uint32"),
    (Attr.ETIMER_THRESH, "XFRMA_ETIMER_THRESH", "uint32"),
    (Attr.SRCADDR, "XFRMA_SRCADDR", "cdata"),
    (Attr.COADDR, "XFRMA_COADDR", "cdata"),
    (Attr.LASTUSED, "XFRMA_LASTUSED", "uint64"),
    (Attr.POLICY_TYPE, "XFRMA_POLICY_TYPE", "cdata"),
    (Attr.ALG_AEAD, "XFRMA_ALG_AEAD", "cdata"),
    (Attr.ALG_AUTH_TRUNC, "XFRMA_ALG_AUTH_TRUNC", "cdata"),
    (Attr.MARK, "XFRMA_MARK", "mark"),
    (Attr.TFCPAD, "XFRMA_TFCPAD", "uint32"),
    (Attr.REPLAY_ESN_VAL, "XFRMA_REPLAY_ESN_VAL", "cdata"),
    (Attr.SA_EXTRA_FLAGS, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
    (Attr.PROTO, "XFRMA_PROTO", "uint8"),
    (Attr.PAD, "XFRMA_PAD", "cdata"),
    (Attr.OFFLOAD_DEV, "XFRMA_OFFLOAD_DEV", "cdata"),
    (Attr.SET_MARK, "XFRMA_SET_MARK", "uint32"),
    (Attr.SET_MARK_MASK, "XFRMA_SET_MARK_MASK", "uint32"),
    (Attr.IF_ID, "XFRMA_IF_ID", "uint32"),
    (Attr.MTIMER_THRESH, "XFRMA_MTIMER_THRESH", "uint32"),
)


class _xfrm_msg(nlmsg, _attrs):  # type: ignore[misc]
    __slots__ = ()
    nla_map = XFRMA_MAP


class userpolicy_info_msg(_xfrm_msg):
    """NEWPOLICY / UPDPOLICY and GETPOLICY answers."""

    fields = USERPOLICY_INFO


class userpolicy_id_msg(_xfrm_msg):
    """GETPOLICY / DELPOLICY requests."""

    fields = USERPOLICY_ID


class usersa_info_msg(_xfrm_msg):
    """NEWSA / UPDSA and GETSA answers."""

    fields = USERSA_INFO


class usersa_id_msg(_xfrm_msg):
    """GETSA / DELSA requests."""

    fields = USERSA_ID


class userspi_info_msg(_xfrm_msg):
    fields = USERSPI_INFO


class user_acquire_msg(_xfrm_msg):
    fields = USER_ACQUIRE


class user_expire_msg(_xfrm_msg):
    fields = USER_EXPIRE


class user_polexpire_msg(_xfrm_msg):
    fields = USER_POLEXPIRE


class user_mapping_msg(_xfrm_msg):
    fields = USER_MAPPING


class userpolicy_default_msg(nlmsg):  # type: ignore[misc]
    __slots__ = ()
    fields = USERPOLICY_DEFAULT


class sadinfo_msg(nlmsg):  # type: ignore[misc]
    __slots__ = ()
    fields = INFO_FLAGS
    nla_map = (
        (1, "XFRMA_SAD_CNT", "uint32"),
        (2, "XFRMA_SAD_HINFO", "hinfo"),
    )

    class hinfo(nla):  # type: ignore[misc]
        fields = HINFO


class spdinfo_msg(nlmsg):  # type: ignore[misc]
    __slots__ = ()
    fields = INFO_FLAGS
    nla_map = (
        (1, "XFRMA_SPD_INFO", "spdinfo"),
        (2, "XFRMA_SPD_HINFO", "hinfo"),
    )

    class spdinfo(nla):  # type: ignore[misc]
        fields = SPD_INFO

    class hinfo(nla):  # type: ignore[misc]
        fields = HINFO


#: Message class per type for what the kernel sends us (answers, dumps, events).
MSG_MAP: dict[int, type[nlmsg]] = {
    MsgType.NEWSA: usersa_info_msg,
    MsgType.UPDSA: usersa_info_msg,
    MsgType.DELSA: usersa_id_msg,
    MsgType.NEWPOLICY: userpolicy_info_msg,
    MsgType.UPDPOLICY: userpolicy_info_msg,
    MsgType.DELPOLICY: userpolicy_id_msg,
    MsgType.ACQUIRE: user_acquire_msg,
    MsgType.EXPIRE: user_expire_msg,
    MsgType.POLEXPIRE: user_polexpire_msg,
    MsgType.MAPPING: user_mapping_msg,
    MsgType.GETDEFAULT: userpolicy_default_msg,
    MsgType.NEWSADINFO: sadinfo_msg,
    MsgType.NEWSPDINFO: spdinfo_msg,
}


class XfrmMarshal(Marshal):  # type: ignore[misc]
    """pyroute2 marshal for NETLINK_XFRM, for code that drives pyroute2's own sockets
    (``marshal_class = XfrmMarshal``); :mod:`.client` frames messages itself."""

    msg_map = MSG_MAP
