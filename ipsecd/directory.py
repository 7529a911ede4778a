"""The node directory as both ends of the agent stream hold it, with its digest.

The controller sends the directory once (in a snapshot, or as a whole
``NodeDirectory``) and then only per-node changes (``NodeDirectoryDelta``: entries
added or changed, names removed), each from one version to the next
(docs/architecture.md "The stream").  Both sides keep a :class:`Directory`; its
:meth:`~Directory.digest` is order-independent and updated per change (the sum of one
SHA-256 per entry, modulo 2**256), so a delta costs O(changed entries), never O(nodes).

The digest lets an agent resume a directory it saved (or got from another replica):
the controller compares the agent's digest with its own before it sends changes, and
the agent checks the digest a delta announces after applying it.  A mismatch on either
side means "send the whole directory", never a wrong directory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ipsecd.v1 import types_pb2

__all__ = ["DIGEST_BYTES", "Directory", "DirectoryMismatch", "entry_hash"]

DIGEST_BYTES = 32
_MOD = 1 << (8 * DIGEST_BYTES)


class DirectoryMismatch(Exception):
    """A delta does not apply to the directory held (base version or digest differ)."""


def _put(h: hashlib._Hash, text: str) -> None:
    data = text.encode()
    h.update(len(data).to_bytes(4, "big"))
    h.update(data)


def entry_hash(entry: types_pb2.NodeEntry) -> int:
    """SHA-256 of one entry's canonical form (name, addresses in order, labels sorted),
    as an integer; every field is length-prefixed so no two entries share a form."""
    h = hashlib.sha256()
    _put(h, entry.name)
    h.update(len(entry.addresses).to_bytes(4, "big"))
    for address in entry.addresses:
        _put(h, address)
    labels = sorted(entry.labels.items())
    h.update(len(labels).to_bytes(4, "big"))
    for key, value in labels:
        _put(h, key)
        _put(h, value)
    return int.from_bytes(h.digest(), "big")


class Directory:
    """Node name -> entry at a version, with an incrementally kept digest."""

    __slots__ = ("_hashes", "_sum", "entries", "version")

    def __init__(self) -> None:
        self.entries: dict[str, types_pb2.NodeEntry] = {}
        self._hashes: dict[str, int] = {}
        self._sum = 0
        self.version = 0

    def __len__(self) -> int:
        return len(self.entries)

    def digest(self) -> bytes:
        return self._sum.to_bytes(DIGEST_BYTES, "big")

    def replace(self, version: int, nodes: Iterable[types_pb2.NodeEntry]) -> None:
        """The whole directory at ``version``."""
        self.entries.clear()
        self._hashes.clear()
        self._sum = 0
        self.version = version
        for entry in nodes:
            self._set(entry)

    def _set(self, entry: types_pb2.NodeEntry) -> None:
        old = self._hashes.get(entry.name)
        new = entry_hash(entry)
        self.entries[entry.name] = entry
        self._hashes[entry.name] = new
        self._sum = (self._sum - (old or 0) + new) % _MOD

    def _remove(self, name: str) -> bool:
        old = self._hashes.pop(name, None)
        if old is None:
            return False
        del self.entries[name]
        self._sum = (self._sum - old) % _MOD
        return True

    def same(self, entry: types_pb2.NodeEntry) -> bool:
        """True when ``entry`` is what the directory holds for its name."""
        old = self._hashes.get(entry.name)
        return old is not None and old == entry_hash(entry)

    def change(
        self,
        version: int,
        changed: Iterable[types_pb2.NodeEntry] = (),
        removed: Iterable[str] = (),
    ) -> None:
        """Apply changes (entries added or replaced, names removed) and move to
        ``version``; unknown names in ``removed`` are ignored."""
        for entry in changed:
            self._set(entry)
        for name in removed:
            self._remove(name)
        self.version = version

    def apply_delta(
        self,
        base_version: int,
        version: int,
        changed: Iterable[types_pb2.NodeEntry],
        removed: Iterable[str],
        digest: bytes,
    ) -> None:
        """Apply a delta from the controller; :class:`DirectoryMismatch` (the directory
        is then unusable: ask for the whole one) when it is not for this version or the
        result's digest is not the announced one."""
        if base_version != self.version:
            raise DirectoryMismatch(
                f"a directory change from version {base_version} arrived, but the "
                f"directory held is at version {self.version}"
            )
        self.change(version, changed, removed)
        if digest and digest != self.digest():
            raise DirectoryMismatch(
                f"the node directory at version {version} does not have the digest the "
                "controller announced"
            )

    def nodes(self) -> list[types_pb2.NodeEntry]:
        """Every entry, sorted by name (the order of a whole ``NodeDirectory``)."""
        return [self.entries[name] for name in sorted(self.entries)]
