"""Which kernel XFRM objects belong to ipsecd.

ipsecd shares the kernel SPD/SAD with other software (strongSwan, Libreswan, Cilium,
an operator's ``ip xfrm``).  It only ever dumps-and-compares, updates or deletes
objects carrying *its* tag, and it never flushes.

The tag:

* **Policies: a priority band** — by default 0x8000–0xBFFF (32768–49151).  Priority is
  the one policy field that does not change what traffic matches (unlike a mark or an
  ``if_id``, which would confine our policies to marked packets or xfrm interfaces),
  and it is not part of the kernel's policy identity, so re-prioritising is an
  in-place update.  Lower numbers win in the kernel: the band sits above ``ip xfrm``'s
  default 0 (an operator's manual policy still overrides ours) and below strongSwan's
  and Libreswan's computed priorities (tens to hundreds of thousands), so the cluster
  policy wins against a daemon's leftovers.  The SPD compiler orders rules inside the
  band (``band.priority(i)``).
* **States: a reqid band** — by default 0x49500000–0x4950FFFF.  Every SA ipsecd installs
  (and every template of its policies) has a reqid in it; SPIs are chosen by the
  kernel and cannot carry a tag.  strongSwan counts reqids up from 1 and Libreswan uses
  16384 + 8n, so the band does not collide with them.

Both bands are configurable for hosts where they would clash.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import XfrmConflict
from .model import Policy, State


@dataclass(frozen=True, slots=True)
class Ownership:
    """The tag of ipsecd's objects: inclusive priority and reqid bands."""

    priority_min: int = 0x8000
    priority_max: int = 0xBFFF
    reqid_min: int = 0x4950_0000
    reqid_max: int = 0x4950_FFFF

    def __post_init__(self) -> None:
        if not 0 <= self.priority_min <= self.priority_max <= 0xFFFF_FFFF:
            raise ValueError("priority band must satisfy 0 <= min <= max < 2**32")
        if not 0 < self.reqid_min <= self.reqid_max <= 0xFFFF_FFFF:
            raise ValueError("reqid band must satisfy 0 < min <= max < 2**32")

    def priority(self, rank: int) -> int:
        """Priority of the ``rank``-th rule of the band (0 = most preferred)."""
        p = self.priority_min + rank
        if rank < 0 or p > self.priority_max:
            raise ValueError(
                f"rule rank {rank} does not fit the priority band "
                f"{self.priority_min}..{self.priority_max}"
            )
        return p

    def reqid(self, n: int) -> int:
        r = self.reqid_min + n
        if n < 0 or r > self.reqid_max:
            raise ValueError(f"reqid number {n} outside the band {self.reqid_min:#x}..")
        return r

    def owns_policy(self, p: Policy) -> bool:
        return self.priority_min <= p.priority <= self.priority_max

    def owns_state(self, s: State) -> bool:
        return self.reqid_min <= s.reqid <= self.reqid_max

    def check_policy(self, p: Policy) -> None:
        """Refuse to install a policy that would not be recognised as ours later."""
        if not self.owns_policy(p):
            raise XfrmConflict(
                f"policy priority {p.priority} is outside ipsecd's band "
                f"{self.priority_min}..{self.priority_max}: it would never be reconciled"
            )
        for t in p.templates:
            if t.reqid and not self.reqid_min <= t.reqid <= self.reqid_max:
                raise XfrmConflict(
                    f"template reqid {t.reqid:#x} outside ipsecd's band "
                    f"{self.reqid_min:#x}..{self.reqid_max:#x}"
                )

    def check_state(self, s: State) -> None:
        if not self.owns_state(s):
            raise XfrmConflict(
                f"SA reqid {s.reqid:#x} is outside ipsecd's band "
                f"{self.reqid_min:#x}..{self.reqid_max:#x}: it would never be reconciled"
            )


DEFAULT_OWNERSHIP = Ownership()
