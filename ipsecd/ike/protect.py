"""Protection of IKE messages with the keys of one IKE SA (RFC 7296 2.14, 3.14).

:class:`SaKeys` holds SK_d, SK_pi, SK_pr and the two directions' ciphers (all
``repr=False``) and turns inner payloads into an SK-protected datagram, or into SKF
fragments (RFC 7383 2.5, :meth:`SaKeys.seal_fragments`), and back.
Opening is split in two steps because RFC 7296 treats their failures differently:

1. :meth:`SaKeys.authenticate` checks the integrity (ICV or AEAD tag) and decrypts:
   a failure is :class:`~ipsecd.ike.errors.IkeIntegrityError`, dropped silently
   (RFC 7296 2.21.2); a message without SK payload is a peer error, dropped too.
   A fragment is checked and decrypted alone (:meth:`SaKeys.open_fragment`, RFC 7383
   2.6) before :class:`ipsecd.ike.fragments.Reassembly` keeps it; the reassembled
   plaintext then takes step 2 like an SK payload's.
2. :meth:`SaKeys.parse` parses the decrypted payload chain: the message is now
   authenticated, so a syntax error is answered INVALID_SYNTAX (RFC 7296 3.10.1).

An SKF payload on an IKE SA that did not negotiate fragmentation (RFC 7383 2.3) goes
to :meth:`SaKeys.authenticate` and is a peer error (dropped), never an internal one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import codec
from . import crypto as ikecrypto
from .codec import Message, Payload
from .errors import IkeLocalError, IkePeerError

__all__ = ["SaKeys"]


@dataclass(frozen=True, slots=True)
class SaKeys:
    """Keying material of one IKE SA from our point of view.  Never logged."""

    prf_id: int
    sk_d: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)
    out_cipher: ikecrypto.SkCipher = field(repr=False)
    in_cipher: ikecrypto.SkCipher = field(repr=False)

    @classmethod
    def of(cls, keys: ikecrypto.IkeKeys, *, initiator: bool) -> SaKeys:
        mine, theirs = keys.initiator_cipher(), keys.responder_cipher()
        if not initiator:
            mine, theirs = theirs, mine
        return cls(keys.suite.prf_id, keys.sk_d, keys.sk_pi, keys.sk_pr, mine, theirs)

    def seal(self, header: Message, inner: Sequence[Payload]) -> bytes:
        """``header`` (no clear payloads) with ``inner`` in an SK payload."""
        return codec.encrypt_sk(header, list(inner), self.out_cipher)

    def seal_fragments(
        self, header: Message, inner: Sequence[Payload], max_message: int
    ) -> list[bytes]:
        """``inner`` split into SKF fragments (RFC 7383 2.5), each an IKE message of at
        most ``max_message`` bytes (non-ESP marker, UDP and IP headers not included)."""
        return codec.encrypt_skf(header, list(inner), self.out_cipher, max_message)

    def open_fragment(self, data: bytes, msg: Message) -> bytes:
        """Step 1 for one fragment (RFC 7383 2.6): its plaintext chunk once its ICV or
        tag verifies (IkeIntegrityError otherwise; IkeParseError for bad padding)."""
        skf = msg.skf
        if skf is None:
            raise IkeLocalError("open_fragment: message has no SKF payload")
        raw = bytes(data)
        prefix = raw[: len(raw) - len(skf.body)]
        try:
            return self.in_cipher.open(prefix, skf.body)
        except IkeLocalError as exc:  # a body our cipher cannot even frame
            raise IkePeerError(f"Encrypted Fragment payload cannot be opened: {exc}") from None

    def authenticate(self, data: bytes, msg: Message) -> tuple[int, bytes]:
        """Step 1: (first inner payload type, plaintext) of an authentic message."""
        if msg.skf is not None:
            raise IkePeerError("fragmented message (SKF), but IKE fragmentation was not negotiated")
        sk = msg.sk
        if sk is None:
            raise IkePeerError(
                f"{'response' if msg.is_response else 'request'} without an Encrypted "
                "payload after IKE_SA_INIT"
            )
        raw = bytes(data)
        prefix = raw[: len(raw) - len(sk.body)]
        try:
            return sk.first_payload, self.in_cipher.open(prefix, sk.body)
        except IkeLocalError as exc:  # a body our cipher cannot even frame
            raise IkePeerError(f"Encrypted payload cannot be opened: {exc}") from None

    @staticmethod
    def parse(first: int, plaintext: bytes) -> tuple[Payload, ...]:
        """Step 2: the inner payloads (IkeParseError / IkeProtocolError if malformed)."""
        return codec.parse_payloads(plaintext, first, where="inside SK: ")
