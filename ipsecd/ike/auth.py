"""Authentication in IKE_AUTH (RFC 7296 2.15): our AUTH payload and the check of the
peer's, for the two ways a connection may authenticate each direction.

* **Pre-shared key** (AUTH method 2): AUTH = prf(prf(PSK, "Key Pad for IKEv2"),
  SignedOctets).  Used for our side when the connection has no ``credentials``, and
  expected from the peer when it has no ``trust``.
* **Certificates** (RFC 7427 signatures, :mod:`.signature`): our side signs with
  ``IkeConfig.credentials`` (certificate chain and key) and sends the chain in CERT
  payloads (X.509 Certificate - Signature, RFC 7296 3.6) always, or only when the
  peer sent a CERTREQ, or never (``send_cert``); the first CERT holds the key that
  signed (3.6).  The peer must send its certificate, which must chain to an anchor of
  ``IkeConfig.trust`` (:mod:`.pki`: validity, key usage, revocation), carry the peer's
  IKE identity (IDi/IDr, RFC 4945 3.1), and hold the key its AUTH verifies with.
  A connection with ``trust`` also sends a CERTREQ naming its anchors (RFC 7296 3.7).

Every refusal raises :class:`AuthFailed` (AUTHENTICATION_FAILED, RFC 7296 2.21.2)
whose message says what was wrong and, where there is one, the fix; the reason is
logged by the IKE_AUTH task, never any key material.

:class:`Trust` is mutable on purpose: the agent swaps in refreshed CRLs with
:meth:`Trust.update`, and every IKE_AUTH from then on sees them without touching the
connection (no renegotiation).  It also holds the wall clock certificate validity is
checked against: the engine's own ``now`` is a monotonic driver clock.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from . import crypto as ikecrypto
from .codec import AuthPayload, CertPayload, CertReqPayload, Payload
from .config import Identity, SendCert
from .constants import AuthMethod, CertEncoding, NotifyType
from .errors import IkeProtocolError
from .negotiate import auth_method_name, prf_id
from .pki import CertificateError, TrustStore, check_identity, load_der_certificate
from .signature import choose_scheme, sign, verify

if TYPE_CHECKING:
    from .config import IkeConfig
    from .sa import IkeSa

__all__ = [
    "AuthFailed",
    "PeerAuth",
    "Trust",
    "certreq_payloads",
    "check_peer",
    "our_auth",
    "uses_signatures",
]


class AuthFailed(IkeProtocolError):
    """The peer did not authenticate (answered or reported AUTHENTICATION_FAILED)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, notify=NotifyType.AUTHENTICATION_FAILED)


class Trust:
    """The anchors and CRLs peers are checked against, and the wall clock (seconds
    since the epoch) validity is checked at.  Shared by the connections that trust the
    same CAs; :meth:`update` replaces the store for every later check."""

    __slots__ = ("_store", "clock")

    def __init__(self, store: TrustStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.clock = clock

    @property
    def store(self) -> TrustStore:
        return self._store

    def update(self, store: TrustStore) -> None:
        """Use ``store`` from now on (e.g. with refreshed CRLs)."""
        self._store = store

    def __repr__(self) -> str:
        return f"<Trust {len(self._store.anchors)} anchors, {len(self._store.crls)} CRLs>"


@dataclass(frozen=True, slots=True)
class PeerAuth:
    """How the peer authenticated: ``method`` is ``"psk"`` or a signature scheme name;
    with certificates, its end-entity certificate and the chain it sent."""

    method: str
    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string() if self.certificate else ""


def uses_signatures(cfg: IkeConfig) -> bool:
    """True when either direction of ``cfg`` authenticates with certificates (then
    SIGNATURE_HASH_ALGORITHMS goes in IKE_SA_INIT, RFC 7427 4)."""
    return cfg.credentials is not None or cfg.trust is not None


def _psk_auth(sa: IkeSa, psk: bytes, octets: bytes) -> bytes:
    # RFC 7296 2.15: AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)
    assert sa.ike_choice is not None
    return ikecrypto.psk_auth_data(prf_id(sa.ike_choice), psk, octets)


def certreq_payloads(cfg: IkeConfig) -> list[Payload]:
    """A CERTREQ naming our anchors, when we expect the peer's certificate."""
    if cfg.trust is None:
        return []
    return [CertReqPayload(CertEncoding.X509_SIGNATURE, cfg.trust.store.certreq_data())]


def our_auth(sa: IkeSa, cfg: IkeConfig, octets: bytes, *, peer_asked: bool) -> list[Payload]:
    """Our CERT payloads (if any) and AUTH payload over ``octets`` (our SignedOctets).
    Raises :class:`~ipsecd.ike.signature.NoCommonScheme` when we cannot sign in a way
    the peer accepts."""
    creds = cfg.credentials
    if creds is None:
        return [AuthPayload(AuthMethod.PSK, _psk_auth(sa, cfg.psk, octets))]
    scheme = choose_scheme(creds.key, sa.peer_hashes, allow_legacy=cfg.allow_legacy_auth)
    out: list[Payload] = []
    if cfg.send_cert is SendCert.ALWAYS or (cfg.send_cert is SendCert.IF_ASKED and peer_asked):
        out += [
            CertPayload(CertEncoding.X509_SIGNATURE, cert.public_bytes(Encoding.DER))
            for cert in creds.chain
        ]
    out.append(AuthPayload(scheme.method, sign(creds.key, scheme, octets)))
    return out


def _certificates(inner: Sequence[Payload], who: str) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for p in inner:
        if not isinstance(p, CertPayload):
            continue
        if p.encoding != CertEncoding.X509_SIGNATURE:
            if not certs:
                raise AuthFailed(
                    f"peer {who} sent a certificate of encoding {int(p.encoding)} first; only "
                    "X.509 certificates (encoding 4) are supported"
                )
            continue  # anything else after the end entity is ignored (RFC 7296 3.6)
        try:
            certs.append(load_der_certificate(p.data))
        except CertificateError as exc:
            raise AuthFailed(f"peer {who} sent a CERT payload that {exc.message}") from None
    return certs


def check_peer(
    sa: IkeSa, cfg: IkeConfig, peer_id: Identity, inner: Sequence[Payload], octets: bytes
) -> PeerAuth:
    """Check the peer's AUTH (over its SignedOctets ``octets``) and, with certificates,
    its chain and identity.  Raises :class:`AuthFailed` saying why not."""
    auth = next((p for p in inner if isinstance(p, AuthPayload)), None)
    if auth is None:
        raise IkeProtocolError("IKE_AUTH message lacks AUTH", notify=NotifyType.INVALID_SYNTAX)
    who = str(peer_id)
    trust = cfg.trust
    if trust is None:
        if auth.method != AuthMethod.PSK:
            raise AuthFailed(
                f"peer {who} authenticated with {auth_method_name(auth.method)}, but connection "
                f"{cfg.name!r} authenticates it with a pre-shared key"
            )
        if not hmac.compare_digest(_psk_auth(sa, cfg.psk, octets), auth.data):
            raise AuthFailed(f"peer {who}: its AUTH does not match our pre-shared key")
        return PeerAuth("psk")
    if auth.method == AuthMethod.PSK:
        raise AuthFailed(
            f"peer {who} authenticated with a pre-shared key, but connection {cfg.name!r} "
            "requires a certificate from its CA"
        )
    certs = _certificates(inner, who)
    if not certs:
        raise AuthFailed(
            f"peer {who} sent no certificate; connection {cfg.name!r} requires one (it may "
            "send it only when asked: we sent a CERTREQ)"
        )
    end_entity, others = certs[0], certs[1:]
    try:
        trust.store.validate(end_entity, others, trust.clock())
    except CertificateError as exc:
        raise AuthFailed(
            f"certificate of peer {who} refused ({exc.failure.value}): {exc.message}"
        ) from None
    try:
        check_identity(end_entity, peer_id)
    except CertificateError as exc:
        raise AuthFailed(exc.message) from None
    key = end_entity.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise AuthFailed(
            f"certificate of peer {who} holds a {type(key).__name__}: ECDSA, RSA or Ed25519 "
            "keys only"
        )
    scheme = verify(key, auth.method, auth.data, octets, allow_legacy=cfg.allow_legacy_auth)
    return PeerAuth(scheme.name, end_entity, tuple(certs))
