"""IKE fragmentation (RFC 7383): negotiation, our large messages split into SKF
fragments, the peer's fragments checked one by one and reassembled within bounds.

Negotiation (RFC 7383 2.3): each side that allows it (``IkeConfig.fragmentation``)
puts an empty N(IKEV2_FRAGMENTATION_SUPPORTED) in IKE_SA_INIT; a responder only when
the request had it.  Fragmentation is in use on an IKE SA when both did
(:attr:`ipsecd.ike.sa.IkeSa.fragmentation`); an IKE SA made by a rekey inherits it (as
strongSwan's ``inherit_post`` does).

Sending (RFC 7383 2.5): only protected messages (IKE_AUTH and later, requests and
answers) are fragmented, never IKE_SA_INIT, and only when the whole message would not
fit ``IkeConfig.fragment_size``: the size of the IP datagram, IP header (20 bytes
IPv4, 40 IPv6, no options), UDP header (8) and the non-ESP marker on port 4500 (4)
included, exactly what strongSwan's ``charon.fragment_size`` counts
(``message.c:fragment()``).  The fragments are built once: a retransmission (2.6)
resends the same datagrams, and the response cache keeps all of them.

Receiving (RFC 7383 2.6): every fragment is integrity-checked and decrypted *before*
it is stored, so only data from the holder of the IKE SA's keys is ever buffered.
:class:`Reassembly` holds at most one message per direction (the expected request,
the answer to our outstanding request), of at most :data:`MAX_FRAGMENTS` fragments and
:data:`MAX_REASSEMBLED` bytes of plaintext, for at most the retransmission horizon
(``RetransmitConfig.give_up_after()``: by then a peer retransmitting like us has given
up on it).  Duplicates are ignored without decrypting them; a fragment of another
message ID replaces the partial message (the newer one wins); a larger Total
Fragments restarts the reassembly, a smaller one is dropped (2.6, as strongSwan
reads it).  The reassembled plaintext goes through the same parse step as an SK
payload (:meth:`ipsecd.ike.protect.SaKeys.parse`).

Sources.  Checked in other implementations: fragment 1 alone triggers the cached
answer to a retransmitted request (RFC 7383 2.6.1, quoted by OpenBSD iked's commit
2117af4583b; strongSwan ``task_manager_v2.c`` hashes only fragment 1, Libreswan
``ikev2.c`` answers only fragment 1); a smaller Total Fragments is dropped and a larger
one restarts (strongSwan ``message.c:add_fragment_v2``, citing 2.6); fragments are
ignored unless both sides sent the notification (Libreswan
``collect_v2_incoming_fragment``).  From memory of the RFC text, not re-read here:
that 2.3 makes accepting fragments depend on the negotiation, and that 2.5.1 names
1,280 (IPv6) and 576 (IPv4) as the sizes to start from.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .codec import Message, NotifyPayload, Payload
from .constants import NotifyType
from .errors import IkePeerError

if TYPE_CHECKING:
    from .protect import SaKeys

__all__ = [
    "MAX_FRAGMENTS",
    "MAX_REASSEMBLED",
    "MAX_REASSEMBLED_HALF_OPEN",
    "PartialMessage",
    "Reassembled",
    "Reassembly",
    "ip_udp_overhead",
    "offered",
    "supported_notify",
]

log = logging.getLogger("ipsecd.ike")

#: Total Fragments we accept in one message.  strongSwan takes 255, Libreswan 32
#: ("Windows has been observed to send 29 fragments").  64 fragments of 1,280 bytes
#: carry about 76 KB (more than :data:`MAX_REASSEMBLED`), of 576 bytes about 33 KB.
MAX_FRAGMENTS = 64
#: Plaintext bytes of one reassembled message.  An IKE_AUTH with a chain of four
#: RSA-4096 certificates is roughly 9 KB; strongSwan refuses reassembled messages over
#: its ``max_packet`` (10,000 bytes).
MAX_REASSEMBLED = 64 * 1024
#: The same bound for a half-open responder (IKE_SA_INIT answered, nobody authenticated
#: yet): anyone who can do a Diffie-Hellman can make one, so its buffer is smaller.
#: 2,000 half-open SAs (``EndpointLimits.max_half_open``) hold at most 31 MiB.
MAX_REASSEMBLED_HALF_OPEN = 16 * 1024
_UDP_HEADER = 8
_IPV4_HEADER = 20
_IPV6_HEADER = 40


def supported_notify(enabled: bool) -> list[Payload]:
    """N(IKEV2_FRAGMENTATION_SUPPORTED) (empty, RFC 7383 2.3) when ``enabled``."""
    return [NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)] if enabled else []


def offered(payloads: Sequence[Payload]) -> bool:
    """True when an IKE_SA_INIT message carries N(IKEV2_FRAGMENTATION_SUPPORTED)."""
    return any(
        isinstance(p, NotifyPayload) and p.notify_type == NotifyType.IKEV2_FRAGMENTATION_SUPPORTED
        for p in payloads
    )


def ip_udp_overhead(remote_ip: str) -> int:
    """IP and UDP header bytes of a datagram to ``remote_ip`` (no IP options or IPv6
    extension headers, as strongSwan assumes)."""
    ip = ipaddress.ip_address(remote_ip)
    return (_IPV4_HEADER if ip.version == 4 else _IPV6_HEADER) + _UDP_HEADER


@dataclass(slots=True)
class PartialMessage:
    """The authentic fragments of one message received so far.  Never logged whole."""

    message_id: int
    exchange: int
    total: int
    started: float
    #: Next Payload of fragment 1: the first inner payload's type (RFC 7383 2.5).
    first_payload: int = 0
    chunks: dict[int, bytes] = field(default_factory=dict, repr=False)
    size: int = 0
    #: Fragment 1 as received: what a retransmission of the request is compared with
    #: (RFC 7383 2.6.1: only fragment 1 triggers the cached answer).
    first_datagram: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Reassembled:
    """A complete message: its inner payload chain, still to be parsed."""

    first_payload: int
    plaintext: bytes = field(repr=False)
    #: Fragment 1 as received (the response cache files the request under it).
    first_datagram: bytes = field(repr=False)


class Reassembly:
    """The peer's fragmented messages of one IKE SA (see the module doc): at most one
    request and one response in progress."""

    def __init__(self, timeout: float) -> None:
        #: Seconds a partial message is kept after its first fragment.
        self.timeout = timeout
        self._partial: dict[bool, PartialMessage] = {}
        #: Per direction, the message ID last refused for exceeding MAX_REASSEMBLED:
        #: its later fragments are dropped unread.
        self._refused: dict[bool, int] = {}
        #: Per direction, the message ID last reassembled: the rest of a retransmitted
        #: copy of it is expected traffic, not an error.
        self._done: dict[bool, int] = {}

    @property
    def held(self) -> int:
        """Plaintext bytes buffered (both directions)."""
        return sum(p.size for p in self._partial.values())

    def partial(self, *, response: bool) -> PartialMessage | None:
        """The message being reassembled in one direction, if any."""
        return self._partial.get(response)

    def deadline(self) -> float | None:
        """When the oldest partial message is discarded."""
        starts = [p.started for p in self._partial.values()]
        return min(starts) + self.timeout if starts else None

    def expire(self, now: float) -> list[PartialMessage]:
        """Discard the partial messages older than ``timeout``; returns them."""
        old = [p for p in self._partial.values() if now >= p.started + self.timeout]
        self._partial = {d: p for d, p in self._partial.items() if now < p.started + self.timeout}
        return old

    def clear(self) -> None:
        self._partial.clear()
        self._refused.clear()
        self._done.clear()

    def completed(self, msg: Message) -> bool:
        """``msg`` is a fragment of the message last reassembled in its direction."""
        return msg.skf is not None and self._done.get(msg.is_response) == msg.message_id

    def receive(
        self,
        msg: Message,
        data: bytes,
        keys: SaKeys,
        now: float,
        *,
        limit: int = MAX_REASSEMBLED,
    ) -> Reassembled | None:
        """One fragment of the message the caller expects (the next request, or the
        answer to our outstanding request): the whole message once complete, else None.
        ``limit``: the plaintext bytes the message may reach.

        Raises IkePeerError (dropped, counted) for a fragment beyond the bounds,
        IkeIntegrityError for one that does not authenticate (dropped before anything is
        stored), IkeParseError for an authentic one whose padding is wrong."""
        skf = msg.skf
        assert skf is not None
        direction = msg.is_response
        mid = msg.message_id
        if skf.total_fragments > MAX_FRAGMENTS:
            raise IkePeerError(
                f"message {mid} in {skf.total_fragments} fragments, more than {MAX_FRAGMENTS}"
            )
        if self._refused.get(direction) == mid:
            raise IkePeerError(f"fragment of message {mid}, already refused as too large")
        for p in self.expire(now):
            log.debug(
                "partial message %d (%d of %d fragments) expired",
                p.message_id,
                len(p.chunks),
                p.total,
            )
        current = self._partial.get(direction)
        if (
            current is not None
            and current.message_id == mid
            and current.exchange == msg.exchange_type
            and current.total == skf.total_fragments
            and skf.fragment_number in current.chunks
        ):
            log.debug("duplicate fragment %d of %d ignored", skf.fragment_number, current.total)
            return None
        # RFC 7383 2.6: authenticate before anything is kept
        chunk = keys.open_fragment(data, msg)
        if (
            current is None
            or current.message_id != mid
            or current.exchange != msg.exchange_type
            or current.total < skf.total_fragments
        ):
            # a newer message, or the same one split smaller (RFC 7383 2.6: a larger
            # Total Fragments restarts the reassembly)
            current = PartialMessage(mid, msg.exchange_type, skf.total_fragments, now)
            self._partial[direction] = current
        elif current.total > skf.total_fragments:
            # RFC 7383 2.6: a fragment of an older, larger-fragment split: discarded
            log.debug(
                "fragment %d of %d ignored: message %d is in %d fragments",
                skf.fragment_number,
                skf.total_fragments,
                mid,
                current.total,
            )
            return None
        if current.size + len(chunk) > limit:
            del self._partial[direction]
            self._refused[direction] = mid
            raise IkePeerError(f"fragmented message {mid} exceeds {limit} bytes: discarded")
        current.chunks[skf.fragment_number] = chunk
        current.size += len(chunk)
        if skf.fragment_number == 1:
            current.first_payload = skf.first_payload
            current.first_datagram = bytes(data)
        if len(current.chunks) < current.total:
            return None
        del self._partial[direction]
        self._done[direction] = mid
        plaintext = b"".join(current.chunks[i] for i in range(1, current.total + 1))
        log.debug("message %d reassembled from %d fragments", mid, current.total)
        return Reassembled(current.first_payload, plaintext, current.first_datagram)
