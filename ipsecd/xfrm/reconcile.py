"""Reconciler primitive: desired vs. kernel → the minimal ordered list of operations.

Pure: no I/O.  :func:`plan` compares what ipsecd wants with what a dump returned
(only objects ipsecd owns are considered, see :mod:`.ownership`) and returns
operations in a make-before-break order:

1. inbound SAs (destination is a local address) are created first, so traffic the
   peer starts sending with a new SA is accepted at once;
2. then outbound SAs;
3. then policies are created or updated — updates in place with UPDPOLICY (never
   delete + add, which would open a window without protection); ``in``/``fwd``
   before ``out``;
4. then policies that are no longer wanted are deleted (``out`` first);
5. finally SAs that are no longer wanted are deleted: outbound before inbound, so
   the old inbound SA lives until nothing can still send on the old outbound one.

Entries equal to their desired value are never touched.  An SA whose keys or
algorithms changed but kept its SPI cannot be made-before-broken (the SPI *is* its
identity): it is replaced (delete, then add) inside the SA phase and reported as such.
A larval SA (from ALLOCSPI) with the desired identity is completed with UPDSA.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace

from .consts import Dir
from .model import Address, Policy, PolicyKey, SaId, State
from .ownership import DEFAULT_OWNERSHIP, Ownership

# Phases, in execution order.  Operations of one phase may be pipelined together.
PHASE_REPLACE_IN = 0
PHASE_ADD_IN = 1
PHASE_REPLACE_OUT = 2
PHASE_ADD_OUT = 3
PHASE_POLICY_IN = 4
PHASE_POLICY_OUT = 5
PHASE_POLICY_DELETE = 6
PHASE_STATE_DELETE_OUT = 7
PHASE_STATE_DELETE_IN = 8


@dataclass(frozen=True, slots=True)
class AddState:
    state: State
    phase: int = field(default=PHASE_ADD_OUT, compare=False)


@dataclass(frozen=True, slots=True)
class UpdateState:
    """UPDSA: lifetimes/encapsulation changed, or a larval SA gets its keys."""

    state: State
    phase: int = field(default=PHASE_ADD_OUT, compare=False)


@dataclass(frozen=True, slots=True)
class DeleteState:
    sa: SaId
    phase: int = field(default=PHASE_STATE_DELETE_OUT, compare=False)


@dataclass(frozen=True, slots=True)
class AddPolicy:
    policy: Policy
    phase: int = field(default=PHASE_POLICY_OUT, compare=False)


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    policy: Policy
    phase: int = field(default=PHASE_POLICY_OUT, compare=False)


@dataclass(frozen=True, slots=True)
class DeletePolicy:
    key: PolicyKey
    phase: int = field(default=PHASE_POLICY_DELETE, compare=False)


Operation = AddState | UpdateState | DeleteState | AddPolicy | UpdatePolicy | DeletePolicy


def _is_larval(s: State) -> bool:
    return s.aead is None and s.crypt is None and s.auth is None


def _updatable(old: State, new: State) -> bool:
    """UPDSA on a valid SA only changes lifetimes and the encap ports/address
    (net/xfrm/xfrm_state.c xfrm_state_update); everything else needs a new SA."""
    if (old.encap is None) != (new.encap is None):
        return False
    if old.encap is not None and new.encap is not None and old.encap.type != new.encap.type:
        return False
    return replace(old, lifetime=new.lifetime, encap=new.encap) == new


def plan(
    desired_policies: Iterable[Policy],
    desired_states: Iterable[State],
    current_policies: Iterable[Policy],
    current_states: Iterable[State],
    *,
    local: Collection[Address] = (),
    ownership: Ownership = DEFAULT_OWNERSHIP,
    keep_larval: bool = True,
) -> list[Operation]:
    """Operations that turn the kernel's owned entries into the desired ones.

    ``local`` holds this node's addresses: an SA whose destination is local is
    inbound.  ``current_*`` may be whole dumps; entries outside ``ownership`` are
    ignored (never updated, never deleted).  Desired entries must be owned
    (:class:`~ipsecd.xfrm.errors.XfrmConflict` otherwise).  With ``keep_larval``, larval
    SAs (SPIs reserved by an IKE exchange in progress) that are not desired are left
    to expire by themselves.
    """
    # Each key is hashed as few times as possible: hashing a selector hashes its two
    # networks, and this runs on every policy change over whole dumps.
    want_pol: dict[PolicyKey, Policy] = {}
    for p in desired_policies:
        ownership.check_policy(p)
        k = p.key
        first = want_pol.setdefault(k, p)
        if first is not p:
            if first != p:
                raise ValueError(f"two desired policies share one kernel identity: {k}")
            want_pol[k] = p
    want_sa: dict[SaId, State] = {}
    for s in desired_states:
        ownership.check_state(s)
        i = s.id
        first_sa = want_sa.setdefault(i, s)
        if first_sa is not s:
            if first_sa != s:
                raise ValueError(f"two desired SAs share one identity: {i}")
            want_sa[i] = s
    have_pol = {p.key: p for p in current_policies if ownership.owns_policy(p)}
    have_sa = {s.id: s for s in current_states if ownership.owns_state(s)}
    local_set = frozenset(local)

    def inbound(s: State | SaId) -> bool:
        return s.dst in local_set

    ops: list[Operation] = []
    # SAs to create / complete / update / replace; what is left in have_sa is unwanted
    for sid, want in want_sa.items():
        have = have_sa.pop(sid, None)
        inb = inbound(want)
        if have is None:
            ops.append(AddState(want, PHASE_ADD_IN if inb else PHASE_ADD_OUT))
        elif have == want:
            continue
        elif _is_larval(have) or _updatable(have, want):
            ops.append(UpdateState(want, PHASE_ADD_IN if inb else PHASE_ADD_OUT))
        else:
            ph = PHASE_REPLACE_IN if inb else PHASE_REPLACE_OUT
            ops.append(DeleteState(sid, ph))
            ops.append(AddState(want, ph))
    # policies to create / update in place; what is left in have_pol is unwanted
    for key, want_p in want_pol.items():
        have_p = have_pol.pop(key, None)
        ph = PHASE_POLICY_OUT if key.dir == Dir.OUT else PHASE_POLICY_IN
        if have_p is None:
            ops.append(AddPolicy(want_p, ph))
        elif have_p != want_p:
            ops.append(UpdatePolicy(want_p, ph))
    # policies to delete: out, fwd, in
    order = {Dir.OUT: 0, Dir.FWD: 1, Dir.IN: 2}
    stale = sorted(have_pol, key=lambda k: order[k.dir])
    ops.extend(DeletePolicy(k) for k in stale)
    # SAs to delete: outbound, then inbound
    for sid, have in have_sa.items():
        if keep_larval and _is_larval(have):
            continue
        ops.append(
            DeleteState(sid, PHASE_STATE_DELETE_IN if inbound(sid) else PHASE_STATE_DELETE_OUT)
        )
    # stable sort keeps each replace pair (delete, add) together and in order
    ops.sort(key=lambda op: op.phase)
    return ops
