"""Secrets at rest in etcd, envelope-encrypted, and what each node may receive of them.

docs/security.md "Secrets" is the design; in short:

* A secret is a ``secret:NAME`` value of the SPD.  It lives under ``secrets/NAME`` in
  etcd as a JSON record whose value is sealed twice: the value with a fresh data key
  (AES-256-GCM), the data key with the envelope key (AES-256-GCM), which is a file
  outside etcd (``STATE_DIR/envelope.key``).  Both seals bind the record's key as
  associated data, so a record copied under another name does not open.  A copy of
  etcd (a backup, a snapshot) holds no secret without the envelope key.
* Literal keys of a pushed policy are moved here at push time under a name derived
  from the value with the envelope key (``lit-`` and 16 hex digits of an HMAC), so the
  same file pushed twice stores the same text, and the name says nothing of the value.
* :func:`node_secrets` decides what one node receives for one revision: the keys of
  the manual SAs and of the connections to peers outside the cluster that its own
  compiled configuration uses, and for each connection with another cluster node the
  pair key derived for exactly that pair (:func:`ipsecd.spd.secrets.pair_key`), never
  the root it comes from.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controller.errors import InvalidArgument, NotFound, SecretsUnavailable
from controller.keys import Keys
from controller.store import Store
from ipsecd import spd
from ipsecd.spd.literals import LiteralKey, find_literal_keys, replace_literal_keys
from ipsecd.spd.secrets import SecretRef, pair_key, pair_slot

__all__ = [
    "Envelope",
    "EnvelopeError",
    "SecretMeta",
    "SecretStore",
    "node_secrets",
    "referenced_secrets",
]

_NONCE = 12
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
#: A secret value is a key: a few hundred bytes at most in practice (docs/limits.md).
MAX_SECRET_BYTES = 4096
LITERAL_PREFIX = "lit-"
_LITERAL_REF = re.compile(r"secret:(lit-[0-9a-f]{16})(?![0-9A-Za-z_.-])")


class EnvelopeError(SecretsUnavailable):
    """The envelope key file is unusable, or a record does not open with it."""


class Envelope:
    """The envelope key (key-encryption key).  Never shown by ``repr`` or ``str``."""

    __slots__ = ("_key", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise EnvelopeError(f"the envelope key must be 32 bytes, not {len(key)}")
        self._key = bytes(key)
        self.key_id = hashlib.sha256(b"ipsecd envelope key id\0" + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Envelope(key_id={self.key_id})"

    @classmethod
    def from_file(cls, path: Path) -> Envelope:
        try:
            st = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            raise EnvelopeError(
                f"{path}: cannot read the envelope key ({exc.strerror}): it is created by "
                "`ipsecd-controller init`; restore it from your backup"
            ) from None
        if st.st_mode & 0o077:
            raise EnvelopeError(
                f"{path}: the envelope key is mode {st.st_mode & 0o777:o}: run chmod 600 {path}"
            )
        return cls(data)

    def seal(self, aad: bytes, value: bytes) -> dict[str, str]:
        dek = AESGCM.generate_key(bit_length=256)
        n1, n2 = os.urandom(_NONCE), os.urandom(_NONCE)
        data = AESGCM(dek).encrypt(n1, value, aad)
        wrapped = AESGCM(self._key).encrypt(n2, dek, aad)
        return {
            "kid": self.key_id,
            "dek": base64.b64encode(n2 + wrapped).decode(),
            "data": base64.b64encode(n1 + data).decode(),
        }

    def open(self, aad: bytes, sealed: Mapping[str, object]) -> bytes:
        if sealed.get("kid") != self.key_id:
            raise EnvelopeError(
                f"sealed with envelope key {sealed.get('kid')}, ours is {self.key_id}: "
                "the controller runs with another envelope key than the one that stored it"
            )
        try:
            dek_blob = base64.b64decode(str(sealed["dek"]))
            blob = base64.b64decode(str(sealed["data"]))
            dek = AESGCM(self._key).decrypt(dek_blob[:_NONCE], dek_blob[_NONCE:], aad)
            return AESGCM(dek).decrypt(blob[:_NONCE], blob[_NONCE:], aad)
        except (InvalidTag, KeyError, ValueError) as exc:
            raise EnvelopeError(
                f"a sealed record does not open ({type(exc).__name__}): it was changed or moved"
            ) from None

    def literal_name(self, value: bytes) -> str:
        """The store name of a literal key: stable for one value and envelope key,
        telling nothing about the value without the key."""
        mac = hmac.new(self._key, b"ipsecd literal key\0" + value, hashlib.sha256)
        return LITERAL_PREFIX + mac.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SecretMeta:
    """What ``ipsecctl secret list`` shows: never the value."""

    name: str
    size: int
    author: str
    updated_unix_ms: int
    literal: bool = False  # moved here from a pushed file


@dataclass(slots=True)
class _Cached:
    mod_revision: int
    value: bytes = field(repr=False)


def check_name(name: str) -> None:
    if not name or len(name) > 128 or not set(name) <= _NAME_CHARS or name[0] in ".-":
        raise InvalidArgument(
            f"bad secret name {name[:64]!r}: use letters, digits, '_', '-' and '.', starting "
            "with a letter, a digit or '_', at most 128 characters"
        )


class SecretStore:
    """Secrets in etcd through the :class:`~controller.store.Store` seam."""

    def __init__(self, store: Store, keys: Keys, envelope: Envelope | None) -> None:
        self.store = store
        self.keys = keys
        self.envelope = envelope
        self._cache: dict[str, _Cached] = {}

    @property
    def enabled(self) -> bool:
        return self.envelope is not None

    def _need(self) -> Envelope:
        if self.envelope is None:
            raise SecretsUnavailable(
                "this controller has no envelope key, so it keeps no secrets: run it with "
                "--state-dir (created by `ipsecd-controller init`), or keep secrets in each "
                "agent's --secrets file"
            )
        return self.envelope

    def _aad(self, name: str) -> bytes:
        return self.keys.secret(name).encode()

    async def set(self, name: str, value: bytes, *, author: str, literal: str = "") -> bool:
        """Store ``value`` under ``name``; True when that changed anything.  ``literal``:
        how a pushed file wrote it (``string`` or ``hex``), "" for ``secret set``."""
        env = self._need()
        check_name(name)
        if not value:
            raise InvalidArgument(f"secret '{name}': the value is empty")
        if len(value) > MAX_SECRET_BYTES:
            raise InvalidArgument(
                f"secret '{name}': {len(value)} bytes is more than the {MAX_SECRET_BYTES} a "
                "key can use"
            )
        have = await self.get_many([name])
        if have.get(name) == value:
            return False
        record = {
            "v": 1,
            "size": len(value),
            "author": author,
            "updated_unix_ms": int(time.time() * 1000),
            "literal": bool(literal),
            "form": literal,
            **env.seal(self._aad(name), value),
        }
        await self.store.put(self.keys.secret(name), json.dumps(record).encode())
        return True

    async def delete(self, name: str) -> None:
        check_name(name)
        if await self.store.get(self.keys.secret(name)) is None:
            raise NotFound(f"no secret '{name}' (see `ipsecctl secret list`)")
        await self.store.delete(self.keys.secret(name))
        self._cache.pop(name, None)

    async def list(self) -> list[SecretMeta]:
        kvs, _ = await self.store.get_prefix(self.keys.secrets)
        out = []
        for kv in kvs:
            rec = json.loads(kv.value)
            out.append(
                SecretMeta(
                    kv.key[len(self.keys.secrets) :],
                    int(rec.get("size", 0)),
                    str(rec.get("author", "")),
                    int(rec.get("updated_unix_ms", 0)),
                    bool(rec.get("literal", False)),
                )
            )
        return out

    async def get_many(self, names: Iterable[str]) -> dict[str, bytes]:
        """The values of those of ``names`` that exist (decrypted, cached by etcd
        revision so that a node's fetch costs no AES work once warm)."""
        env = self.envelope
        if env is None:
            return {}
        out: dict[str, bytes] = {}
        for name in sorted(set(names)):
            kv = await self.store.get(self.keys.secret(name))
            if kv is None:
                self._cache.pop(name, None)
                continue
            hit = self._cache.get(name)
            if hit is None or hit.mod_revision != kv.mod_revision:
                try:
                    value = env.open(self._aad(name), json.loads(kv.value))
                except (EnvelopeError, ValueError) as exc:
                    raise EnvelopeError(f"secret '{name}': {exc}") from None
                hit = _Cached(kv.mod_revision, value)
                self._cache[name] = hit
            out[name] = hit.value
        return out

    async def intern_literals(self, text: str, filename: str, *, author: str) -> str:
        """``text`` with its literal keys stored here and replaced by references (the
        text is returned as it is without an envelope key or without literal keys)."""
        if self.envelope is None:
            return text
        env = self.envelope
        found: list[LiteralKey] = find_literal_keys(text, filename)
        if not found:
            return text
        for key in found:
            await self.set(env.literal_name(key.value), key.value, author=author, literal=key.form)
        return replace_literal_keys(text, found, lambda k: env.literal_name(k.value))

    async def reveal_literals(self, text: str) -> str:
        """``text`` with its ``secret:lit-...`` references written back as the literal
        keys that were pushed (``get --show-secrets``, admin only)."""
        names = {m.group(1) for m in _LITERAL_REF.finditer(text)}
        if not names or self.envelope is None:
            return text
        values = await self.get_many(names)
        forms: dict[str, str] = {}
        for name in values:
            kv = await self.store.get(self.keys.secret(name))
            forms[name] = str(json.loads(kv.value).get("form", "")) if kv else ""

        def back(m: re.Match[str]) -> str:
            name = m.group(1)
            value = values.get(name)
            if value is None:
                return m.group(0)
            if forms.get(name) == "string":
                with contextlib.suppress(UnicodeDecodeError):
                    decoded = value.decode()
                    if '"' not in decoded and "\n" not in decoded:
                        return f'"{decoded}"'
            return "0x" + value.hex()

        return _LITERAL_REF.sub(back, text)


def referenced_secrets(policy: spd.Policy) -> set[str]:
    """Every ``secret:NAME`` the policy names (connections and manual SAs)."""
    names: set[str] = set()
    for conn in policy.connections:
        if isinstance(conn.auth.psk, SecretRef):
            names.add(conn.auth.psk.name)
    for sa in policy.sas:
        for km in (sa.enc_key, sa.auth_key):
            if isinstance(km, SecretRef):
                names.add(km.name)
    return names


def node_secrets(cfg: spd.NodeConfig, values: Mapping[str, bytes]) -> dict[str, bytes]:
    """What the node of ``cfg`` (its own compiled configuration) receives: the values of
    its manual SAs' and external connections' references, and the pair key of each
    of its connections with another cluster node — never a root it is derived from.
    Names ``values`` lacks are left out (the agent's own --secrets file may have them)."""
    out: dict[str, bytes] = {}
    for sa in cfg.sas:
        for km in (sa.enc_key, sa.auth_key):
            if isinstance(km, SecretRef) and km.name in values:
                out[km.name] = values[km.name]
    for conn in cfg.connections:
        km = conn.psk
        if conn.auth != "psk" or not isinstance(km, SecretRef) or km.name not in values:
            continue
        if conn.external:
            out[km.name] = values[km.name]
        else:
            root = values[km.name]
            out[pair_slot(km.name, conn.peer)] = pair_key(root, km.name, cfg.node, conn.peer)
    return out
