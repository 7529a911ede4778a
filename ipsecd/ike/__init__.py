"""IKEv2 (RFC 7296) as a sans-I/O engine: bytes and time in; datagrams, timers, events out.

Public API (see :mod:`ipsecd.ike.engine` for the driver contract)::

    from ipsecd.ike import IkeSa, IkeConfig, ChildConfig, Identity, TrafficSelector
    sa = IkeSa(config, initiator=True, local_addr=(ip, 500), remote_addr=(peer, 500))
    sa.initiate(now)                       # or IkeSa.accept(lookup, data, ...)
    sa.receive_datagram(data, addr, now); sa.handle_timer(now)
    sa.datagrams_to_send(now); sa.get_timer(); sa.next_event()
    sa.delete(now); sa.close_child(inbound_spi, now)

The codec (:mod:`ipsecd.ike.codec`), crypto (:mod:`ipsecd.ike.crypto`) and wire codes
(:mod:`ipsecd.ike.constants`) are importable from their modules.
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
from .engine import (
    ConfigLookup,
    DatagramRoute,
    IkeSa,
    SpiAllocator,
    cookie_challenge,
    lookup_by_address,
    route_datagram,
)
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
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from .states import END_STATES, IkeState

__all__ = [
    "END_STATES",
    "ChildConfig",
    "ChildSaDeleted",
    "ChildSaEstablished",
    "ChildSaFailed",
    "ConfigLookup",
    "DatagramRoute",
    "Event",
    "Identity",
    "IkeConfig",
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
    "IkeState",
    "Mode",
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
