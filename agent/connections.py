"""A compiled SPD connection (:class:`ipsecd.spd.IkeConnection`) as IKE engine
configuration (:class:`ipsecd.ike.IkeConfig`).

One IkeConnection is one IKE SA with one peer; its protocols become CHILD SAs (ESP in
IKE_AUTH, AH with CREATE_CHILD_SA: RFC 7296 has no bundles), sharing the connection's
kernel reqid so that the SPD's bundle templates find both.  A connection that cannot
run says why (:class:`Unusable`): the agent keeps its kernel policies (traffic that
needs protection stays blocked) and reports the reason per connection.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from ipsecd import spd
from ipsecd.ike import (
    ChildConfig,
    Identity,
    IkeConfig,
    IkeLocalError,
    Mode,
    TrafficSelector,
    parse_child_proposal,
    parse_ike_proposal,
)
from ipsecd.ike.constants import ProtocolId
from ipsecd.spd.secrets import Secret, SecretRef

__all__ = ["Unusable", "connection_digest", "ike_config"]


@dataclass(frozen=True, slots=True)
class Unusable:
    """Why a connection cannot be negotiated (the message names the fix)."""

    connection: str
    reason: str


def _selector(ts: spd.TrafficSelector) -> TrafficSelector:
    port = ts.port or None
    return TrafficSelector.from_cidr(str(ts.prefix), ip_protocol=ts.proto, port=port)


def _psk(conn: spd.IkeConnection, secrets: Mapping[str, bytes]) -> bytes | str:
    km = conn.psk
    if isinstance(km, Secret):
        return km.reveal()
    if isinstance(km, SecretRef):
        value = secrets.get(km.name)
        if value is None:
            return (
                f"{conn.origin}: secret '{km.name}' is not available to the agent: put it in "
                "the secrets file (--secrets, mode 0600) or write the key in the SPD"
            )
        return bytes(value)
    return f"{conn.origin}: auth psk without a key"


def connection_digest(conn: spd.IkeConnection, secrets: Mapping[str, bytes]) -> str:
    """What identifies a connection's content across revisions: a change means its SAs
    must be renegotiated (ipsecd(8) reload).  Keys enter only as a hash."""
    fields = dataclasses.asdict(conn)
    fields.pop("reqid", None)  # positional, shifts when other connections change
    fields.pop("origin", None)
    fields["psk"] = None
    psk = _psk(conn, secrets) if conn.auth == "psk" else b""
    key = hashlib.sha256(psk if isinstance(psk, bytes) else psk.encode()).hexdigest()
    return hashlib.sha256((repr(sorted(fields.items(), key=str)) + key).encode()).hexdigest()


def ike_config(
    conn: spd.IkeConnection,
    secrets: Mapping[str, bytes],
    *,
    dpd: float | None = None,
    retransmit: object | None = None,
) -> IkeConfig | Unusable:
    """The engine configuration of ``conn``, or why it cannot run."""
    if conn.auth != "psk":
        return Unusable(
            conn.name,
            f"{conn.origin}: 'auth {conn.auth}' is not available in this version (certificate "
            "authentication comes with the cluster CA); use 'auth psk secret:NAME' for now",
        )
    psk = _psk(conn, secrets)
    if isinstance(psk, str):
        return Unusable(conn.name, psk)
    try:
        ike = tuple(parse_ike_proposal(p) for p in conn.ike_proposals)
        mode = Mode.TUNNEL if conn.mode is spd.Mode.TUNNEL else Mode.TRANSPORT
        local_ts = tuple(_selector(t) for t in conn.local_ts)
        remote_ts = tuple(_selector(t) for t in conn.remote_ts)
        children: list[ChildConfig] = []
        for proto in conn.protocols:
            if proto is spd.IpsecProto.ESP:
                proposals = tuple(parse_child_proposal(p) for p in conn.esp_proposals)
                pid = ProtocolId.ESP
            elif proto is spd.IpsecProto.AH:
                proposals = tuple(parse_child_proposal(p, ProtocolId.AH) for p in conn.ah_proposals)
                pid = ProtocolId.AH
            else:
                return Unusable(
                    conn.name, f"{conn.origin}: {proto.value} cannot be negotiated by IKE"
                )
            children.append(
                ChildConfig(
                    local_ts,
                    remote_ts,
                    mode=mode,
                    protocol=pid,
                    proposals=proposals,
                    lifetime=float(conn.child_lifetime),
                    name=proto.value,
                )
            )
        extra: dict[str, object] = {}
        if retransmit is not None:
            extra["retransmit"] = retransmit
        return IkeConfig(
            name=conn.name,
            local_id=Identity.parse(conn.local_id),
            remote_id=Identity.parse(conn.remote_id),
            psk=psk,
            child=children[0],
            extra_children=tuple(children[1:]),
            ike_proposals=ike,
            local_address=str(conn.local_addr),
            remote_address=str(conn.remote_addr),
            ike_lifetime=float(conn.ike_lifetime),
            dpd_interval=float(conn.dpd) if conn.dpd else dpd,
            **extra,  # type: ignore[arg-type]
        )
    except (IkeLocalError, ValueError) as exc:
        return Unusable(conn.name, f"{conn.origin}: {exc}")
