"""The agent's one kernel writer (docs/architecture.md "The agent's body").

Every XFRM object the agent creates goes through :class:`KernelWriter`, inside
ipsecd's ownership bands (:mod:`ipsecd.xfrm.ownership`): the policies and manual SAs
of the compiled SPD (reconciled by diff, never flushed) *and* the CHILD SAs IKE
negotiates.  The reconciler sees them all, so a policy change never deletes a
negotiated SA, and negotiated SAs bind to the SPD's policies through the reqid of
their connection.

Reqids.  Each IKE connection gets a kernel reqid that stays the same across
revisions and restarts (:class:`ReqidAllocator`: remembered in the state directory,
re-learnt from the kernel's policies when that file is gone), so adding a node to
the cluster never re-points the templates of unchanged connections away from their
SAs.

Make-before-break.  A negotiated SA's inbound half is installed before the IKE answer
that lets the peer use it; its outbound half when the engine says it is active; when
an SA goes, its outbound half is removed at once and its inbound half after
``grace`` seconds (packets already in flight).  SAs found in the kernel at start
(a previous agent's) are *adopted*: kept until a new SA of the same connection is up,
then retired the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ipsecd import spd, xfrm
from ipsecd.ike.config import Mode
from ipsecd.ike.constants import ProtocolId
from ipsecd.ike.events import ChildSaEstablished

from .kernel import ApplyResult, DesiredKernel

__all__ = ["KernelView", "KernelWriter", "ReqidAllocator", "child_states"]

log = logging.getLogger("ipsecd.agent.kernel")

#: Seconds an inbound SA stays after it was replaced or deleted (packets in flight).
GRACE = 5.0
#: Seconds an adopted SA may wait for its replacement before it is removed anyway.
ADOPT_TIMEOUT = 300.0


class ReqidAllocator:
    """Stable kernel reqids for IKE connections, in the upper half of the band."""

    def __init__(
        self, ownership: xfrm.Ownership = xfrm.DEFAULT_OWNERSHIP, path: Path | None = None
    ) -> None:
        self.own = ownership
        half = (ownership.reqid_max - ownership.reqid_min + 1) // 2
        self.first = ownership.reqid_min + half
        self.last = ownership.reqid_max - 1024  # the top is for setkey's plain "unique"
        self.path = path
        self._by_name: dict[str, int] = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                self._by_name = {str(k): int(v) for k, v in data.items() if self.owns(int(v))}
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("ignoring %s: %s (reqids are re-learnt from the kernel)", path, exc)

    def owns(self, reqid: int) -> bool:
        return self.first <= reqid <= self.last

    def get(self, name: str) -> int:
        found = self._by_name.get(name)
        if found is not None:
            return found
        taken = set(self._by_name.values())
        for reqid in range(self.first, self.last + 1):
            if reqid not in taken:
                self._by_name[name] = reqid
                return reqid
        raise xfrm.XfrmConflict("no free reqid left for IKE connections in ipsecd's band")

    def adopt(self, name: str, reqid: int) -> bool:
        """Reuse the reqid a previous run gave ``name`` (read back from the kernel)."""
        if name in self._by_name or not self.owns(reqid) or reqid in self._by_name.values():
            return False
        self._by_name[name] = reqid
        return True

    def retain(self, names: Collection[str]) -> None:
        self._by_name = {n: r for n, r in self._by_name.items() if n in names}

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self._by_name, fh, sort_keys=True)
        tmp.replace(self.path)

    @property
    def names(self) -> dict[str, int]:
        return dict(self._by_name)


def _lifetime(ev: ChildSaEstablished) -> xfrm.Lifetime:
    def soft(n: int | None) -> int | None:
        return None if n is None else max(1, n * 9 // 10)

    return xfrm.Lifetime(
        soft_add_seconds=max(1, int(ev.soft_lifetime)),
        hard_add_seconds=max(1, int(ev.lifetime)),
        soft_bytes=soft(ev.lifetime_bytes),
        hard_bytes=ev.lifetime_bytes,
        soft_packets=soft(ev.lifetime_packets),
        hard_packets=ev.lifetime_packets,
    )


def child_states(
    ev: ChildSaEstablished, reqid: int, defaults: spd.Defaults | None = None
) -> tuple[xfrm.State, xfrm.State]:
    """(inbound, outbound) kernel states of a negotiated CHILD SA.

    Outer addresses are the IKE SA's; with UDP encapsulation the states carry the IKE
    SA's ports (RFC 3948).  The SPD's ``ecn`` and ``dfbit`` defaults apply (ipsec(4)).
    """
    proto = xfrm.Proto.ESP if ev.protocol == ProtocolId.ESP else xfrm.Proto.AH
    mode = xfrm.Mode.TUNNEL if ev.mode == Mode.TUNNEL else xfrm.Mode.TRANSPORT
    local, remote = xfrm.address(ev.local_address), xfrm.address(ev.remote_address)
    enc_out = enc_in = None
    if ev.encapsulation:
        lport, rport = ev.encap_local_port or 4500, ev.encap_remote_port or 4500
        enc_out = xfrm.Encap(xfrm.EncapType.ESPINUDP, sport=lport, dport=rport)
        enc_in = xfrm.Encap(xfrm.EncapType.ESPINUDP, sport=rport, dport=lport)
    ecn = defaults.ecn if defaults is not None else True
    dfbit = xfrm.DfBit.COPY
    if mode == xfrm.Mode.TUNNEL and defaults is not None and defaults.dfbit == "clear":
        dfbit = xfrm.DfBit.CLEAR
    lifetime = _lifetime(ev)

    def state(
        src: xfrm.model.Address,
        dst: xfrm.model.Address,
        spi: int,
        enc: bytes,
        auth: bytes,
        encap: xfrm.Encap | None,
        window: int,
    ) -> xfrm.State:
        aead, crypt, integ = xfrm.child_sa_algorithms(
            proto, ev.encr_id, ev.encr_key_bits, ev.integ_id, enc, auth
        )
        return xfrm.State(
            src=src,
            dst=dst,
            spi=spi,
            proto=proto,
            mode=mode,
            reqid=reqid,
            aead=aead,
            crypt=crypt,
            auth=integ,
            encap=encap,
            esn=ev.esn,
            replay_window=window,
            lifetime=lifetime,
            ecn=ecn,
            dfbit=dfbit,
        )

    inbound = state(
        remote,
        local,
        ev.inbound_spi,
        ev.inbound_encryption_key,
        ev.inbound_integrity_key,
        enc_in,
        0 if ev.esn else 128,
    )
    outbound = state(
        local,
        remote,
        ev.outbound_spi,
        ev.outbound_encryption_key,
        ev.outbound_integrity_key,
        enc_out,
        0 if ev.esn else 32,
    )
    if ev.esn:
        inbound = _with_window(inbound, 128)
    return inbound, outbound


def _with_window(s: xfrm.State, window: int) -> xfrm.State:
    import dataclasses

    return dataclasses.replace(s, replay_window=window)


@dataclass(frozen=True)
class KernelView:
    """What :meth:`KernelWriter.inspect` saw."""

    #: Every SA of the namespace's SAD, with its counters (``State.current``).
    states: list[xfrm.State] = field(repr=False)
    #: ``policy``/``sa``/``default`` -> entries that differ from what the agent wants
    #: (None before the first policy is applied).
    drift: dict[str, int] | None


@dataclass
class _Installed:
    reqid: int
    inbound: xfrm.State = field(repr=False)
    outbound: xfrm.State = field(repr=False)
    outbound_in: bool = False


class KernelWriter:
    """See the module doc.  One per network namespace; every method is serialized."""

    def __init__(
        self,
        netns: str | int | None = None,
        *,
        ownership: xfrm.Ownership = xfrm.DEFAULT_OWNERSHIP,
        reqids: ReqidAllocator | None = None,
        grace: float = GRACE,
    ) -> None:
        self.netns = netns
        self.own = ownership
        self.reqids = reqids or ReqidAllocator(ownership)
        self.grace = grace
        self.local: frozenset[xfrm.model.Address] = frozenset()
        self._client: xfrm.XfrmClient | None = None
        self._lock = asyncio.Lock()
        self._static: DesiredKernel | None = None
        #: Negotiated CHILD SAs by inbound SPI.
        self._children: dict[int, _Installed] = {}
        #: States of SAs on their way out (inbound halves in their grace period).
        self._leaving: dict[xfrm.SaId, xfrm.State] = {}
        #: SAs a previous run left in the kernel, by reqid.
        self._adopted: dict[int, list[xfrm.State]] = {}
        self._adopted_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Kernel errors seen (status, metrics).
        self.errors = 0

    async def open(self) -> None:
        self._client = xfrm.XfrmClient(self.netns)
        self._adopted_at = asyncio.get_running_loop().time()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> xfrm.XfrmClient:
        if self._client is None:
            raise RuntimeError("KernelWriter: open() it first")
        return self._client

    # ------------------------------------------------------------------ the SPD
    async def adopt(self, provisional: DesiredKernel, names: Mapping[int, str]) -> None:
        """At start: learn the reqids a previous run gave the connections, from the
        policies still in the kernel, and keep its negotiated SAs until replaced.

        ``provisional``: the desired state mapped with the compiler's own reqids;
        ``names``: those reqids -> connection name."""
        async with self._lock:
            kernel = {
                p.key: p for p in await self.client.dump_policies() if self.own.owns_policy(p)
            }
            for want in provisional.policies:
                have = kernel.get(want.key)
                if have is None:
                    continue
                for wt, ht in zip(want.templates, have.templates, strict=False):
                    name = names.get(wt.reqid)
                    if name is not None:
                        self.reqids.adopt(name, ht.reqid)
            for st in await self.client.dump_states():
                negotiated = st.aead is not None or st.crypt is not None or st.auth is not None
                if negotiated and self.own.owns_state(st) and self.reqids.owns(st.reqid):
                    self._adopted.setdefault(st.reqid, []).append(st)
        if self._adopted:
            count = sum(len(v) for v in self._adopted.values())
            log.info("adopted %d negotiated SAs of a previous run (kept until replaced)", count)

    async def apply(
        self, desired: DesiredKernel, local: Iterable[xfrm.model.Address]
    ) -> ApplyResult:
        """Reconcile the kernel to ``desired`` plus every negotiated and adopted SA."""
        async with self._lock:
            self._static = desired
            self.local = frozenset(local)
            return await self._reconcile()

    async def _reconcile(self) -> ApplyResult:
        assert self._static is not None
        x = self.client
        wanted_reqids = {t.reqid for p in self._static.policies for t in p.templates}
        for reqid in [r for r in self._adopted if r not in wanted_reqids]:
            del self._adopted[reqid]  # its connection is gone: let the reconciler drop it
        states = self._wanted_states()
        previous = await x.get_default_policy()
        ops = xfrm.plan(
            self._static.policies,
            states,
            await x.dump_policies(),
            await x.dump_states(),
            local=self.local,
            ownership=self.own,
        )
        try:
            await xfrm.apply(x, ops)
        except xfrm.XfrmError:
            self.errors += 1
            raise
        changed = previous != self._static.default
        if changed:
            await x.set_default_policy(self._static.default)
        return ApplyResult(tuple(ops), changed, previous)

    def _wanted_states(self) -> list[xfrm.State]:
        assert self._static is not None
        wanted_reqids = {t.reqid for p in self._static.policies for t in p.templates}
        return [
            *self._static.states,
            *self._negotiated(),
            *self._leaving.values(),
            *(s for r, group in self._adopted.items() if r in wanted_reqids for s in group),
        ]

    async def inspect(self) -> KernelView:
        """The kernel's SAs (with their counters) and the drift: how many entries of
        ipsecd's bands a reconcile would change now (metrics, agent/metrics.py).  Read
        under the writer's lock, so a change in progress is never taken for drift."""
        async with self._lock:
            x = self.client
            policies = await x.dump_policies()
            states = await x.dump_states()
            if self._static is None:
                return KernelView(states, None)
            ops = xfrm.plan(
                self._static.policies,
                self._wanted_states(),
                policies,
                states,
                local=self.local,
                ownership=self.own,
            )
            default = await x.get_default_policy()
            drift = {
                "policy": sum(
                    isinstance(op, (xfrm.AddPolicy, xfrm.UpdatePolicy, xfrm.DeletePolicy))
                    for op in ops
                ),
                "sa": sum(
                    isinstance(op, (xfrm.AddState, xfrm.UpdateState, xfrm.DeleteState))
                    for op in ops
                ),
                "default": int(default != self._static.default),
            }
        return KernelView(states, drift)

    def _negotiated(self) -> list[xfrm.State]:
        out: list[xfrm.State] = []
        for inst in self._children.values():
            out.append(inst.inbound)
            if inst.outbound_in:
                out.append(inst.outbound)
        return out

    # ------------------------------------------------------------------ negotiated SAs
    async def install_child(
        self, ev: ChildSaEstablished, reqid: int, defaults: spd.Defaults | None
    ) -> None:
        """Install a new CHILD SA: inbound now, outbound too when it is active."""
        inbound, outbound = child_states(ev, reqid, defaults)
        async with self._lock:
            x = self.client
            await self._add(x, inbound)
            inst = _Installed(reqid, inbound, outbound)
            self._children[ev.inbound_spi] = inst
            if ev.outbound_active:
                try:
                    await self._add(x, outbound)
                except xfrm.XfrmError:
                    await self._delete(x, inbound)
                    del self._children[ev.inbound_spi]
                    raise
                inst.outbound_in = True
                self._retire_adopted(reqid)

    async def activate_outbound(self, inbound_spi: int) -> None:
        async with self._lock:
            inst = self._children.get(inbound_spi)
            if inst is None or inst.outbound_in:
                return
            await self._add(self.client, inst.outbound)
            inst.outbound_in = True
            self._retire_adopted(inst.reqid)

    async def remove_child(self, inbound_spi: int) -> None:
        """The outbound half now, the inbound half after the grace period."""
        async with self._lock:
            inst = self._children.pop(inbound_spi, None)
            if inst is None:
                return
            if inst.outbound_in:
                await self._delete(self.client, inst.outbound)
            self._leave(inst.inbound)

    async def update_peer(self, inbound_spi: int, new_addr: tuple[str, int]) -> None:
        """A NAT rebinding: the peer's ESP-in-UDP port changed (RFC 3948)."""
        import dataclasses

        async with self._lock:
            inst = self._children.get(inbound_spi)
            if inst is None or inst.inbound.encap is None:
                return
            port = int(new_addr[1])
            enc_in = dataclasses.replace(inst.inbound.encap, sport=port)
            inst.inbound = dataclasses.replace(inst.inbound, encap=enc_in)
            assert inst.outbound.encap is not None
            enc_out = dataclasses.replace(inst.outbound.encap, dport=port)
            inst.outbound = dataclasses.replace(inst.outbound, encap=enc_out)
            await self.client.update_state(inst.inbound)
            if inst.outbound_in:
                await self.client.update_state(inst.outbound)

    def installed(self) -> dict[int, tuple[int, bool]]:
        """inbound SPI -> (reqid, outbound half installed)."""
        return {spi: (i.reqid, i.outbound_in) for spi, i in self._children.items()}

    def adopted(self) -> int:
        return sum(len(v) for v in self._adopted.values())

    # ------------------------------------------------------------------ internals
    async def _add(self, x: xfrm.XfrmClient, st: xfrm.State) -> None:
        try:
            await x.add_state(st)
        except xfrm.XfrmExists:
            await x.update_state(st)
        except xfrm.XfrmError:
            self.errors += 1
            raise

    async def _delete(self, x: xfrm.XfrmClient, st: xfrm.State) -> None:
        with contextlib.suppress(xfrm.XfrmNotFound):
            await x.delete_state(st)

    def _leave(self, st: xfrm.State) -> None:
        self._leaving[st.id] = st
        task = asyncio.get_running_loop().create_task(self._later(st))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _later(self, st: xfrm.State) -> None:
        await asyncio.sleep(self.grace)
        async with self._lock:
            if self._leaving.pop(st.id, None) is not None:
                await self._delete(self.client, st)

    def _retire_adopted(self, reqid: int) -> None:
        """A new SA of this connection is up: the previous run's SAs go (make-before-break)."""
        old = self._adopted.pop(reqid, None)
        if not old:
            return
        for st in old:
            if st.dst in self.local:
                self._leave(st)
            else:
                task = asyncio.get_running_loop().create_task(self._drop(st))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _drop(self, st: xfrm.State) -> None:
        async with self._lock:
            await self._delete(self.client, st)

    async def expire_adopted(self) -> None:
        """Adopted SAs never replaced (their connection did not come up) go after a while."""
        loop = asyncio.get_running_loop()
        if self._adopted_at is None or loop.time() - self._adopted_at < ADOPT_TIMEOUT:
            return
        async with self._lock:
            old, self._adopted = self._adopted, {}
            for group in old.values():
                for st in group:
                    await self._delete(self.client, st)
