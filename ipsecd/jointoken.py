"""Join tokens (docs/security.md "Joining a node"): shared by the controller, which
makes and checks them, and the agent, which joins with one.

A token is one string, ``ipsecd1.ID.SECRET.PIN``:

* ``ID``: 10 hex digits, names the token (``ipsecctl token list``/``delete``); not secret;
* ``SECRET``: 32 characters of base64url (192 random bits); the controller keeps only
  its SHA-256, the agent sends it only after the pin matched;
* ``PIN``: base64url SHA-256 of the cluster CA certificate's SubjectPublicKeyInfo (as
  kubeadm's CA public-key hash): the agent trusts the CA the controller presents only
  when its key hashes to this.

:class:`JoinToken` never shows its secret in ``repr`` or ``str``; parse errors never
quote the text they were given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "TOKEN_PREFIX",
    "JoinToken",
    "TokenFormatError",
    "ca_pin",
    "new_token",
    "secret_hash",
]

TOKEN_PREFIX = "ipsecd1"
_ID = re.compile(r"[0-9a-f]{10}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{32}")
_PIN = re.compile(r"[A-Za-z0-9_-]{43}")


class TokenFormatError(ValueError):
    """Not a join token (the message says what is expected, never the text given)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ca_pin(cert: x509.Certificate) -> str:
    """The pin of a CA certificate: base64url SHA-256 of its SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _b64(hashlib.sha256(spki).digest())


def secret_hash(secret: str) -> str:
    """What the controller stores of a token's secret (hex SHA-256; the secret has 192
    random bits, so no slow hash is needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class JoinToken:
    id: str
    secret: str = field(repr=False)
    pin: str

    def __str__(self) -> str:
        return f"<join token {self.id}>"

    def text(self) -> str:
        """The whole token, secret included: only for showing it once to the admin."""
        return f"{TOKEN_PREFIX}.{self.id}.{self.secret}.{self.pin}"

    def matches(self, stored_hash: str) -> bool:
        """Whether the secret hashes to ``stored_hash`` (constant time)."""
        return hmac.compare_digest(secret_hash(self.secret), stored_hash)

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        parts = text.strip().split(".")
        if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
            raise TokenFormatError(
                f"not an ipsecd join token: expected {TOKEN_PREFIX}.ID.SECRET.PIN (as printed "
                "by `ipsecctl token create`)"
            )
        _, tid, secret, pin = parts
        if not _ID.fullmatch(tid):
            raise TokenFormatError("join token: its ID part is not 10 hex digits")
        if not _SECRET.fullmatch(secret):
            raise TokenFormatError("join token: its secret part is not 32 base64url characters")
        if not _PIN.fullmatch(pin):
            raise TokenFormatError(
                "join token: its CA pin part is not 43 base64url characters (a SHA-256)"
            )
        return cls(tid, secret, pin)


def new_token(ca: x509.Certificate) -> JoinToken:
    """A fresh token pinning ``ca``."""
    return JoinToken(secrets.token_hex(5), _b64(secrets.token_bytes(24)), ca_pin(ca))
