"""The agent's kernel seam: a compiled SPD (:class:`ipsecd.spd.NodeConfig`) as XFRM state.

Two steps, kept apart so the first is pure and unit-tested without root:

1. :func:`desired_state` maps a ``NodeConfig`` onto :mod:`ipsecd.xfrm` values
   (:class:`DesiredKernel`):

   * ``defaults { policy discard; }`` → XFRM default policy *block* for in, out and
     fwd (KAME ``def_policy``); ``none`` → *accept*.
   * every kernel policy → an :class:`ipsecd.xfrm.Policy`: selector (ports; for ICMP
     the type and code ride in the port fields, as the kernel compares them), direction,
     action (``none``/bypass → allow without templates, ``discard`` → block, ``ipsec``
     → allow with templates), templates with protocol, mode, tunnel endpoints, level
     and reqid, and a priority inside ipsecd's owned band (see below).
   * every manual SA → an :class:`ipsecd.xfrm.State` with its algorithms and keys.
     Literal keys come from the SPD; ``secret:NAME`` references are resolved through
     a mapping ``name → bytes``; a missing name raises :class:`MissingSecret` naming
     it (never the key bytes).

2. :func:`reconcile` applies a ``DesiredKernel`` to one network namespace: dump the
   owned policies and SAs, :func:`ipsecd.xfrm.plan` the difference, apply it phase by
   phase (make-before-break), then set the default policy if it differs.  Nothing is
   ever flushed, entries outside ipsecd's bands are never touched, and a second run on
   an unchanged kernel performs zero operations.

Priorities.  The compiler's automatic priorities are ``PRIORITY_DEFAULT -
specificity`` (setkey's ``prio def`` level); native ``priority N`` is used as written
and setkey ``prio`` can be anything in 0..2**32-1.  When every priority of the node
fits a band-wide window (``0 <= p < width``, or centred on ``PRIORITY_DEFAULT``: the
usual cases) the kernel priority is ``band_min + (p - window start)``: stable, so a
changed SPD only touches changed rules.
Otherwise the node's distinct priorities are ranked and rank ``i`` becomes
``band_min + i`` (the order, including ties, is kept exactly).

Reqids.  The reqid band (``Ownership.reqid_min``..``reqid_max``) is split in halves:
setkey ids (``unique:N``, ``-u N``; N < half) map to ``reqid_min + N``; the compiler's
per-connection reqids (``0x10000 + i``) map to ``reqid_min + half + i``.  A template
``unique`` without an id gets a reqid counted down from ``reqid_max`` in policy order.
A manual SA without ``-u`` gets ``reqid_min`` (slot 0, "no id"), which any template
with reqid 0 accepts.  IKE-negotiated SAs must use :func:`kernel_reqid` on
``IkeConnection.reqid`` so that they bind to the policies installed here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from ipsecd import spd, xfrm
from ipsecd.spd.algorithms import ENC
from ipsecd.spd.compiler import PRIORITY_DEFAULT
from ipsecd.spd.secrets import KeyMaterial, Secret, SecretRef
from ipsecd.xfrm.netns import Netns

__all__ = [
    "CONN_REQID_BASE",
    "ApplyResult",
    "DesiredKernel",
    "KernelConfigError",
    "MissingSecret",
    "apply_node_config",
    "default_policy",
    "desired_state",
    "kernel_priorities",
    "kernel_reqid",
    "reconcile",
]

#: The SPD compiler numbers connection reqids from here (ipsecd.spd.compiler).
CONN_REQID_BASE = 0x10000


class KernelConfigError(Exception):
    """The compiled SPD cannot be expressed as Linux XFRM state; the message says which
    entry (``FILE:LINE`` where known) and what to change.  Never carries key bytes."""


class MissingSecret(KernelConfigError):
    """A ``secret:NAME`` reference has no value in the secrets given to the agent."""

    def __init__(self, name: str, where: str) -> None:
        super().__init__(
            f"{where}: secret '{name}' is not available: provide it to the agent "
            f"(secrets mapping / store) or write the key literally in a 0600 SPD file"
        )
        self.name = name


@dataclass(frozen=True, slots=True)
class DesiredKernel:
    """What one node's kernel must hold.  States carry keys (``repr=False`` inside)."""

    node: str
    default: xfrm.DefaultPolicy
    policies: tuple[xfrm.Policy, ...]
    states: tuple[xfrm.State, ...] = field(repr=False)
    #: SPD options with no Linux XFRM equivalent that were left out (for the operator).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What :func:`reconcile` did: the operations applied and whether the default
    policy was changed.  ``total == 0`` means the kernel already matched."""

    operations: tuple[xfrm.Operation, ...] = field(repr=False)
    default_changed: bool
    previous_default: xfrm.DefaultPolicy

    @property
    def total(self) -> int:
        return len(self.operations) + int(self.default_changed)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for op in self.operations:
            counts[type(op).__name__] = counts.get(type(op).__name__, 0) + 1
        parts = [f"{n} {name}" for name, n in sorted(counts.items())]
        if self.default_changed:
            parts.append("default policy set")
        return ", ".join(parts) if parts else "nothing to do (kernel already matches)"


# ------------------------------------------------------------------------- mapping


def default_policy(defaults: spd.Defaults) -> xfrm.DefaultPolicy:
    """KAME ``def_policy``: ``discard`` blocks what no policy matches, in all directions
    (Tru64's "IP secure" mode); ``none`` lets it pass."""
    if defaults.def_policy == "discard":
        act = xfrm.DefaultAction.BLOCK
    elif defaults.def_policy == "none":
        act = xfrm.DefaultAction.ACCEPT
    else:
        raise KernelConfigError(
            f"def_policy '{defaults.def_policy}' is neither discard nor none: fix the SPD"
        )
    return xfrm.DefaultPolicy(inbound=act, forward=act, outbound=act)


def kernel_reqid(reqid: int, ownership: xfrm.Ownership = xfrm.DEFAULT_OWNERSHIP) -> int:
    """The kernel reqid (inside ipsecd's band) of an SPD reqid (see the module doc)."""
    half = (ownership.reqid_max - ownership.reqid_min + 1) // 2
    if 0 <= reqid < half:
        return ownership.reqid_min + reqid
    if CONN_REQID_BASE <= reqid < CONN_REQID_BASE + half:
        return ownership.reqid_min + half + (reqid - CONN_REQID_BASE)
    raise KernelConfigError(
        f"reqid {reqid} does not fit ipsecd's reqid band "
        f"{ownership.reqid_min:#x}..{ownership.reqid_max:#x}: use setkey ids 1..{half - 1}"
    )


def kernel_priorities(
    priorities: Collection[int], ownership: xfrm.Ownership = xfrm.DEFAULT_OWNERSHIP
) -> dict[int, int]:
    """SPD priority → kernel priority inside the band, order (and ties) kept."""
    width = ownership.priority_max - ownership.priority_min + 1
    distinct = sorted(set(priorities))
    if not distinct:
        return {}
    # Stable windows first: small native priorities, or the automatic ones around
    # setkey's ``prio def`` (PRIORITY_DEFAULT - specificity).  Inside a window the
    # mapping is a fixed offset, so an SPD edit only touches the rules it changed.
    for anchor in (0, PRIORITY_DEFAULT - width // 2):
        if anchor <= distinct[0] and distinct[-1] < anchor + width:
            return {p: ownership.priority_min + (p - anchor) for p in distinct}
    if len(distinct) > width:
        raise KernelConfigError(
            f"{len(distinct)} distinct policy priorities do not fit ipsecd's band of "
            f"{width}: use fewer distinct priorities"
        )
    return {p: ownership.priority(i) for i, p in enumerate(distinct)}


def _selector(s: spd.Selector) -> xfrm.Selector:
    if s.icmp_type is not None:  # the kernel compares ICMP type/code in the port fields
        return xfrm.Selector(s.src, s.dst, s.proto, s.icmp_type, s.icmp_code)
    return xfrm.Selector(s.src, s.dst, s.proto, s.sport or None, s.dport or None)


_PROTO = {
    spd.IpsecProto.ESP: xfrm.Proto.ESP,
    spd.IpsecProto.AH: xfrm.Proto.AH,
    spd.IpsecProto.IPCOMP: xfrm.Proto.COMP,
}
_LEVEL = {
    spd.Level.USE: xfrm.Level.USE,
    spd.Level.REQUIRE: xfrm.Level.REQUIRE,
    spd.Level.UNIQUE: xfrm.Level.UNIQUE,
}


def _mode(m: spd.Mode) -> xfrm.Mode:
    # setkey's "any" mode: Linux has no such SA mode; transport is what setkey/ip use.
    return xfrm.Mode.TUNNEL if m is spd.Mode.TUNNEL else xfrm.Mode.TRANSPORT


class _Mapper:
    def __init__(
        self,
        cfg: spd.NodeConfig,
        secrets: Mapping[str, bytes],
        ownership: xfrm.Ownership,
        reqids: Mapping[int, int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.secrets = secrets
        self.own = ownership
        self.reqids = reqids or {}
        self.notes: list[str] = []
        self.next_auto_reqid = ownership.reqid_max

    def template(self, t: spd.Template, origin: str) -> xfrm.Template:
        level = t.level
        if level is spd.Level.DEFAULT:  # the compiler resolves it; be safe anyway
            level = spd.Level.REQUIRE
        if level is spd.Level.UNIQUE and t.reqid == 0:
            reqid = self.next_auto_reqid  # plain "unique": a reqid of its own
            self.next_auto_reqid -= 1
        else:
            reqid = self.reqids.get(t.reqid) or (kernel_reqid(t.reqid, self.own) if t.reqid else 0)
        if t.src_port or t.dst_port:
            self.notes.append(
                f"{origin}: template endpoint ports [{t.src_port}]-[{t.dst_port}] have no "
                "XFRM template field; ignored"
            )
        tunnel = t.mode is spd.Mode.TUNNEL
        if tunnel and (t.src is None or t.dst is None):
            raise KernelConfigError(f"{origin}: tunnel-mode template without both endpoints")
        try:
            return xfrm.Template(
                proto=_PROTO[t.proto],
                mode=_mode(t.mode),
                src=t.src if tunnel else None,
                dst=t.dst if tunnel else None,
                reqid=reqid,
                level=_LEVEL[level],
            )
        except ValueError as exc:
            raise KernelConfigError(f"{origin}: {exc}") from exc

    def policy(self, p: spd.KernelPolicy, prio: int) -> xfrm.Policy:
        if p.action is spd.Action.IPSEC:
            action, templates = (
                xfrm.Action.ALLOW,
                tuple(self.template(t, p.origin) for t in p.templates),
            )
            if not templates:
                raise KernelConfigError(f"{p.origin}: ipsec policy without templates")
        elif p.action is spd.Action.ALLOW:
            action, templates = xfrm.Action.ALLOW, ()
        else:
            action, templates = xfrm.Action.BLOCK, ()
        try:
            sel = _selector(p.selector)
        except ValueError as exc:
            raise KernelConfigError(f"{p.origin}: {exc}") from exc
        return xfrm.Policy(
            sel, xfrm.Dir[p.direction.name], action, priority=prio, templates=templates
        )

    def key(self, km: KeyMaterial | None, where: str) -> bytes:
        if km is None:
            return b""
        if isinstance(km, Secret):
            return km.reveal()
        assert isinstance(km, SecretRef)
        value = self.secrets.get(km.name)
        if value is None:
            raise MissingSecret(km.name, where)
        return bytes(value)

    def state(self, sa: spd.ManualSa) -> xfrm.State:
        where = f"{sa.loc.short()}: SA {sa.src}->{sa.dst} {sa.proto.value} spi {sa.spi:#x}"
        if sa.proto is spd.IpsecProto.IPCOMP:
            raise KernelConfigError(
                f"{where}: IPComp SAs are not supported by ipsecd's XFRM layer; remove it"
            )
        aead: xfrm.Aead | None = None
        crypt: xfrm.Crypt | None = None
        auth: xfrm.Auth | None = None
        if sa.enc is not None:
            enc_key = self.key(sa.enc_key, where)
            self._check_len(sa.enc, enc_key, where)
            cipher = xfrm.setkey_encryption(sa.enc, enc_key)
            if isinstance(cipher, xfrm.Aead):
                aead = cipher
            else:
                crypt = cipher
        if sa.auth is not None:
            auth_key = self.key(sa.auth_key, where)
            auth = xfrm.setkey_integrity(sa.auth, auth_key)
        if aead is None and crypt is None and auth is None:
            raise KernelConfigError(f"{where}: no algorithm; give -E and/or -A")
        if sa.proto is spd.IpsecProto.ESP and crypt is None and aead is None:
            null = xfrm.setkey_encryption("null", b"")  # RFC 8221 5: ENCR_NULL
            assert isinstance(null, xfrm.Crypt)
            crypt = null
        encap = None
        for flag in sa.flags:
            if flag == "esp-udp":
                encap = xfrm.Encap()  # RFC 3948 UDP encapsulation, ports 4500
            else:
                self.notes.append(f"{where}: '{flag}' has no Linux XFRM setting; ignored")
        tunnel = sa.mode is spd.Mode.TUNNEL
        dfbit = xfrm.DfBit.COPY
        if tunnel:
            if self.cfg.defaults.dfbit == "clear":
                dfbit = xfrm.DfBit.CLEAR
            elif self.cfg.defaults.dfbit == "set":
                raise KernelConfigError(
                    f"{where}: dfbit 'set' has no per-SA setting in Linux XFRM "
                    "(only copy, or clear): use 'defaults { dfbit copy; }' or clear"
                )
        lt = sa.lifetime
        try:
            return xfrm.State(
                src=sa.src,
                dst=sa.dst,
                spi=sa.spi,
                proto=_PROTO[sa.proto],
                mode=_mode(sa.mode),
                reqid=kernel_reqid(sa.reqid, self.own),
                aead=aead,
                crypt=crypt,
                auth=auth,
                encap=encap,
                replay_window=sa.replay,
                lifetime=xfrm.Lifetime(
                    soft_bytes=lt.soft_bytes or None,
                    hard_bytes=lt.hard_bytes or None,
                    soft_add_seconds=lt.soft_seconds or None,
                    hard_add_seconds=lt.hard_seconds or None,
                ),
                ecn=self.cfg.defaults.ecn,
                dfbit=dfbit,
            )
        except ValueError as exc:
            raise KernelConfigError(f"{where}: {exc}") from exc

    @staticmethod
    def _check_len(alg: str, key: bytes, where: str) -> None:
        info = ENC.get(alg)
        if info is not None and len(key) * 8 not in info.key_bits:
            raise KernelConfigError(
                f"{where}: {alg} key is {len(key) * 8} bits, expected one of "
                f"{', '.join(str(b) for b in info.key_bits)} (check the secret's value)"
            )


def desired_state(
    cfg: spd.NodeConfig,
    *,
    secrets: Mapping[str, bytes] | None = None,
    ownership: xfrm.Ownership = xfrm.DEFAULT_OWNERSHIP,
    policies_only: bool = False,
    reqids: Mapping[int, int] | None = None,
    extra_policies: Sequence[xfrm.Policy] = (),
) -> DesiredKernel:
    """Map ``cfg`` onto XFRM values (pure).  ``policies_only`` leaves manual SAs out
    (e.g. on a kernel without ESP); ``reqids`` maps the compiler's connection reqids to
    the agent's stable kernel reqids (agent/writer.py); ``extra_policies`` are the
    agent's own (e.g. the controller bypass).  Raises
    :class:`KernelConfigError`/:class:`MissingSecret`."""
    m = _Mapper(cfg, secrets or {}, ownership, reqids)
    prios = kernel_priorities([p.priority for p in cfg.policies], ownership)
    policies = (*extra_policies, *(m.policy(p, prios[p.priority]) for p in cfg.policies))
    states = () if policies_only else tuple(m.state(sa) for sa in cfg.sas)
    return DesiredKernel(cfg.node, default_policy(cfg.defaults), policies, states, tuple(m.notes))


# ----------------------------------------------------------------------- reconcile


async def reconcile(
    desired: DesiredKernel,
    netns: Netns = None,
    *,
    local: Collection[spd.model.Address] = (),
    ownership: xfrm.Ownership = xfrm.DEFAULT_OWNERSHIP,
    dry_run: bool = False,
) -> ApplyResult:
    """Make the kernel of ``netns`` hold ``desired``: dump, diff, apply; never flush.

    ``local`` are the node's addresses (SAs towards them are inbound, created first).
    Policies and SAs are applied before the default policy changes, so bypass rules are
    in place before a ``block`` default takes effect.  Errors are the XFRM library's
    typed errors (e.g. :class:`ipsecd.xfrm.ReconcileError` whose failures say "kernel
    has no ESP"); operations already applied stay applied and the next run resumes.
    """
    async with xfrm.XfrmClient(netns) as x:
        previous = await x.get_default_policy()
        ops = xfrm.plan(
            desired.policies,
            desired.states,
            await x.dump_policies(),
            await x.dump_states(),
            local=local,
            ownership=ownership,
        )
        change_default = previous != desired.default
        if not dry_run:
            await xfrm.apply(x, ops)
            if change_default:
                await x.set_default_policy(desired.default)
    return ApplyResult(tuple(ops), change_default, previous)


async def apply_node_config(
    cfg: spd.NodeConfig,
    netns: Netns,
    *,
    local: Sequence[spd.model.Address] = (),
    secrets: Mapping[str, bytes] | None = None,
    ownership: xfrm.Ownership = xfrm.DEFAULT_OWNERSHIP,
    policies_only: bool = False,
) -> ApplyResult:
    """:func:`desired_state` then :func:`reconcile`, in one call."""
    desired = desired_state(cfg, secrets=secrets, ownership=ownership, policies_only=policies_only)
    return await reconcile(desired, netns, local=local, ownership=ownership)
