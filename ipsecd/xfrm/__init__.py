"""Linux XFRM netlink on pyroute2's netlink core: policies, states, defaults, events.

Quick tour::

    from ipsecd import xfrm

    async with xfrm.XfrmClient("ns1") as x:          # or netns=None / an fd
        await x.add_policy(xfrm.Policy(xfrm.Selector.of("192.0.2.0/24", "198.51.100.0/24"),
                                       xfrm.Dir.OUT, priority=0x8000,
                                       templates=(xfrm.Template(),)))
        await x.add_state(xfrm.State(src, dst, spi, aead=xfrm.aes_gcm(key)))
        ops = xfrm.plan(desired_pols, desired_sas, await x.dump_policies(),
                        await x.dump_states(), local=my_addrs)
        await x.apply(ops)

Modules: :mod:`.model` (values), :mod:`.codec` (wire encode/decode), :mod:`.decoder`
(fast dump decoding), :mod:`.wire` (pyroute2 message classes), :mod:`.client` (async
client, listener, sync wrapper), :mod:`.algorithms` (the one table of kernel algorithm
names: IKEv2 transform IDs and setkey names → XFRM attributes), :mod:`.sockpolicy`,
:mod:`.ownership`, :mod:`.reconcile`, :mod:`.errors`, :mod:`.probe`, :mod:`.stats`.
"""

from .algorithms import (
    child_sa_algorithm_names,
    child_sa_algorithms,
    setkey_encryption,
    setkey_integrity,
)
from .client import ReconcileError, Request, Xfrm, XfrmClient, XfrmListener, apply
from .consts import (
    Action,
    DefaultAction,
    Dir,
    EncapType,
    Group,
    Mode,
    MsgType,
    PolicyFlag,
    Proto,
    StateFlag,
)
from .errors import (
    XfrmBusy,
    XfrmConflict,
    XfrmError,
    XfrmExists,
    XfrmInvalid,
    XfrmNamespaceError,
    XfrmNotFound,
    XfrmPermission,
    XfrmUnsupported,
)
from .model import (
    AES_GCM,
    CHACHA20_POLY1305,
    AcquireRequested,
    Aead,
    Auth,
    Crypt,
    DefaultPolicy,
    DfBit,
    Encap,
    Level,
    Lifetime,
    LifetimeCurrent,
    MappingChanged,
    Mark,
    Policy,
    PolicyExpired,
    PolicyKey,
    SadInfo,
    SaId,
    SaStats,
    Selector,
    SpdInfo,
    State,
    StateExpired,
    Template,
    XfrmEvent,
    address,
    aes_cbc,
    aes_gcm,
    chacha20_poly1305,
    hmac_sha2,
    network,
)
from .ownership import DEFAULT_OWNERSHIP, Ownership
from .probe import Capabilities, Capability, probe
from .reconcile import (
    AddPolicy,
    AddState,
    DeletePolicy,
    DeleteState,
    Operation,
    UpdatePolicy,
    UpdateState,
    plan,
)
from .sockpolicy import PolicySyntaxError, SocketPolicy, parse_ipsec_policy, set_socket_policy
from .stats import parse_xfrm_stat, xfrm_stat

__all__ = [
    "AES_GCM",
    "CHACHA20_POLY1305",
    "DEFAULT_OWNERSHIP",
    "AcquireRequested",
    "Action",
    "AddPolicy",
    "AddState",
    "Aead",
    "Auth",
    "Capabilities",
    "Capability",
    "Crypt",
    "DefaultAction",
    "DefaultPolicy",
    "DeletePolicy",
    "DeleteState",
    "DfBit",
    "Dir",
    "Encap",
    "EncapType",
    "Group",
    "Level",
    "Lifetime",
    "LifetimeCurrent",
    "MappingChanged",
    "Mark",
    "Mode",
    "MsgType",
    "Operation",
    "Ownership",
    "Policy",
    "PolicyExpired",
    "PolicyFlag",
    "PolicyKey",
    "PolicySyntaxError",
    "Proto",
    "ReconcileError",
    "Request",
    "SaId",
    "SaStats",
    "SadInfo",
    "Selector",
    "SocketPolicy",
    "SpdInfo",
    "State",
    "StateExpired",
    "StateFlag",
    "Template",
    "UpdatePolicy",
    "UpdateState",
    "Xfrm",
    "XfrmBusy",
    "XfrmClient",
    "XfrmConflict",
    "XfrmError",
    "XfrmEvent",
    "XfrmExists",
    "XfrmInvalid",
    "XfrmListener",
    "XfrmNamespaceError",
    "XfrmNotFound",
    "XfrmPermission",
    "XfrmUnsupported",
    "address",
    "aes_cbc",
    "aes_gcm",
    "apply",
    "chacha20_poly1305",
    "child_sa_algorithm_names",
    "child_sa_algorithms",
    "hmac_sha2",
    "network",
    "parse_ipsec_policy",
    "parse_xfrm_stat",
    "plan",
    "probe",
    "set_socket_policy",
    "setkey_encryption",
    "setkey_integrity",
    "xfrm_stat",
]
