"""IKEv2 (RFC 7296) as a sans-I/O engine: bytes and time in; datagrams, timers, events out.

Public API (docs/ike.md; :mod:`ipsecd.ike.sa` for one SA's driver contract,
:mod:`ipsecd.ike.endpoint` for a node's ports)::

    from ipsecd.ike import IkeEndpoint, IkeConfig, ChildConfig, Identity, TrafficSelector
    ep = IkeEndpoint(lookup)                  # every IKE SA of a node
    sa = ep.initiate(config, (ip, 500), (peer, 500), now)
    ep.receive_datagram(data, local, remote, now); ep.handle_timer(now)
    ep.datagrams_to_send(); ep.get_timer(); ep.next_event()   # -> (sa, event)
    sa.delete(now); sa.close_child(spi, now); sa.rekey_child(spi, now); sa.rekey_ike(now)

The codec (:mod:`ipsecd.ike.codec`), crypto (:mod:`ipsecd.ike.crypto`), wire codes
(:mod:`ipsecd.ike.constants`) and negotiation rules (:mod:`ipsecd.ike.negotiate`) are
importable from their modules.
"""

from .config import (
    ChildConfig,
    Identity,
    IkeConfig,
    Mode,
    Proposal,
    RetransmitConfig,
    Role,
    TrafficSelector,
    Transform,
    parse_child_proposal,
    parse_ike_proposal,
)
from .endpoint import EndpointLimits, EndpointStats, IkeEndpoint
from .errors import (
    IkeError,
    IkeIntegrityError,
    IkeLocalError,
    IkeParseError,
    IkePeerError,
    IkeProtocolError,
)
from .events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaOutboundActivated,
    ChildSaRekeyed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerAddressChanged,
)
from .negotiate import DatagramRoute, cookie_challenge, route_datagram
from .sa import ConfigLookup, IkeSa, SpiAllocator, lookup_by_address
from .states import END_STATES, ChildState, IkeState

__all__ = [
    "END_STATES",
    "ChildConfig",
    "ChildSaDeleted",
    "ChildSaEstablished",
    "ChildSaFailed",
    "ChildSaOutboundActivated",
    "ChildSaRekeyed",
    "ChildState",
    "ConfigLookup",
    "DatagramRoute",
    "EndpointLimits",
    "EndpointStats",
    "Event",
    "Identity",
    "IkeConfig",
    "IkeEndpoint",
    "IkeError",
    "IkeIntegrityError",
    "IkeLocalError",
    "IkeParseError",
    "IkePeerError",
    "IkeProtocolError",
    "IkeSa",
    "IkeSaDeleted",
    "IkeSaEstablished",
    "IkeSaFailed",
    "IkeSaRekeyed",
    "IkeState",
    "Mode",
    "PeerAddressChanged",
    "Proposal",
    "RetransmitConfig",
    "Role",
    "SpiAllocator",
    "TrafficSelector",
    "Transform",
    "cookie_challenge",
    "lookup_by_address",
    "parse_child_proposal",
    "parse_ike_proposal",
    "route_datagram",
]
