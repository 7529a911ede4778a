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
from ipsecd.ike.config import SendCert
from ipsecd.ike.constants import IdType, ProtocolId
from ipsecd.ike.pki import id_matches
from ipsecd.spd.secrets import Secret, SecretRef, pair_key, pair_slot

from .credentials import CredentialError, Credentials

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
    """The pre-shared key of ``conn``, or why there is none.  Between two cluster nodes
    it is the pair's own key (docs/security.md "Per-pair keys"): as the controller sent
    it (``NAME@PEER``), else derived here from the SPD's key; with a peer outside the
    cluster it is the SPD's key itself."""
    km = conn.psk
    if isinstance(km, Secret):
        root, name = km.reveal(), ""
    elif isinstance(km, SecretRef):
        name = km.name
        if not conn.external:
            given = secrets.get(pair_slot(name, conn.peer))
            if given is not None:
                return bytes(given)
        value = secrets.get(name)
        if value is None:
            return (
                f"{conn.origin}: secret '{name}' is not available to the agent: store it "
                f"with `ipsecctl secret set {name}`, or put it in the secrets file "
                "(--secrets, mode 0600)"
            )
        root = bytes(value)
    else:
        return f"{conn.origin}: auth psk without a key"
    if conn.external or not conn.local_node:
        return root
    return pair_key(root, name, conn.local_node, conn.peer)


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


def _certificates(
    conn: spd.IkeConnection, credentials: Credentials | None
) -> dict[str, object] | str:
    """The IkeConfig fields of ``auth certificate``, or why they cannot be had."""
    creds = credentials or Credentials()
    try:
        local = creds.local(conn.auth_cert, conn.auth_key)
        trust = creds.trust(conn.auth_ca)
    except CredentialError as exc:
        return f"{conn.origin}: auth certificate: {exc}"
    me = Identity.parse(conn.local_id)
    if not id_matches(local.chain[0], me):
        subject = local.chain[0].subject.rfc4514_string()
        where = (
            "subjectAltName IP"
            if me.type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR)
            else ("subjectAltName DNS" if me.type == IdType.FQDN else "subject")
        )
        return (
            f"{conn.origin}: our certificate ({subject}) does not name our identity {me} "
            f"({where}), so the peer would refuse it: issue the certificate with it, or change "
            "the connection's 'id'"
        )
    return {
        "credentials": local,
        "trust": trust,
        "send_cert": SendCert(conn.send_cert),
        "allow_legacy_auth": conn.legacy_auth,
    }


def ike_config(
    conn: spd.IkeConnection,
    secrets: Mapping[str, bytes],
    *,
    dpd: float | None = None,
    retransmit: object | None = None,
    credentials: Credentials | None = None,
    fragment_size: int = 1280,
) -> IkeConfig | Unusable:
    """The engine configuration of ``conn``, or why it cannot run.  ``fragment_size``:
    the largest IKE datagram once RFC 7383 fragmentation is in use, 0 for none."""
    extra: dict[str, object] = {}
    if fragment_size:
        extra["fragment_size"] = fragment_size
    else:
        extra["fragmentation"] = False
    psk = b""
    if conn.auth == "certificate":
        made = _certificates(conn, credentials)
        if isinstance(made, str):
            return Unusable(conn.name, made)
        extra.update(made)
    else:
        key = _psk(conn, secrets)
        if isinstance(key, str):
            return Unusable(conn.name, key)
        psk = key
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
