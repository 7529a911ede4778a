"""The node directory: names, addresses, labels; group membership.

Nodes file format (one node per line, ``#`` starts a comment)::

    # name      addresses (comma-separated)     labels (key=value ...)
    node-a      192.0.2.1,fd00::1               role=worker zone=a
    node-b      192.0.2.2                       role=db
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import Diagnostic, Loc, Severity, Sink, SpdError, too_big
from .limits import LINE_WINDOW, MAX_FILE_BYTES
from .model import Address, NodeGroup

__all__ = ["NodeInfo", "load_nodes_file", "load_nodes_text", "members", "node_in_group"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_LABEL = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_./-]*)=(\S+)")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    addresses: tuple[Address, ...]
    labels: Mapping[str, str] = field(default_factory=dict)

    def address(self, version: int) -> Address | None:
        """The first address of an IP version (4 or 6), or None."""
        for addr in self.addresses:
            if addr.version == version:
                return addr
        return None


def node_in_group(node: NodeInfo, group: NodeGroup | None) -> bool:
    """``None`` stands for the built-in group ``all``."""
    if group is None:
        return True
    if node.name in group.names:
        return True
    for clause in group.labels:
        if all(node.labels.get(k) == v for k, v in clause):
            return True
    return any(a in p for a in node.addresses for p in group.prefixes if a.version == p.version)


def members(
    directory: list[NodeInfo] | tuple[NodeInfo, ...], group: NodeGroup | None
) -> list[NodeInfo]:
    return [n for n in directory if node_in_group(n, group)]


def load_nodes_file(path: str | os.PathLike[str]) -> list[NodeInfo]:
    """Read a nodes file; raises only :class:`SpdError`."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + LINE_WINDOW)  # the limit, and the line shown past it
        if len(data) > MAX_FILE_BYTES:
            raise SpdError([too_big(name, data, "nodes", MAX_FILE_BYTES)])
        text = data.decode("utf-8")
    except OSError as exc:
        raise SpdError(
            [Diagnostic(name, 0, 0, Severity.ERROR, f"cannot read nodes file: {exc.strerror}")]
        ) from exc
    except UnicodeDecodeError as exc:
        raise SpdError(
            [Diagnostic(name, 0, 0, Severity.ERROR, f"nodes file is not UTF-8 (byte {exc.start})")]
        ) from exc
    return load_nodes_text(text, name)


def load_nodes_text(text: str, filename: str = "<nodes>") -> list[NodeInfo]:
    sink = Sink()
    nodes: list[NodeInfo] = []
    names: dict[str, Loc] = {}
    owners: dict[Address, Loc] = {}
    for line_no, line in enumerate(text.split("\n"), start=1):
        fields = [(m.group(), m.start() + 1) for m in re.finditer(r"[^\s#]+|#.*", line)]
        fields = [f for f in fields if not f[0].startswith("#")]
        if not fields:
            continue
        node = _node(fields, Loc(filename, line_no, 1, line), sink, names, owners)
        if node is not None:
            nodes.append(node)
    sink.raise_if_errors()
    return nodes


def _node(
    fields: list[tuple[str, int]],
    base: Loc,
    sink: Sink,
    names: dict[str, Loc],
    owners: dict[Address, Loc],
) -> NodeInfo | None:
    def at(col: int) -> Loc:
        return Loc(base.filename, base.line, col, base.source_line)

    name, col = fields[0]
    if not _NAME.fullmatch(name):
        sink.error(at(col), f"bad node name '{name}'", "letters, digits, '_', '-' and '.'")
        return None
    if name in names:
        sink.error(
            at(col), f"node '{name}' is listed twice", f"first listed at {names[name].short()}"
        )
        return None
    names[name] = at(col)
    if len(fields) < 2:
        sink.error(
            at(col + len(name)),
            f"node '{name}' has no address",
            "write: NAME ADDRESS[,ADDRESS] [key=value ...]",
        )
        return None
    addresses = _addresses(fields[1], at, sink, owners)
    labels: dict[str, str] = {}
    for text, lcol in fields[2:]:
        m = _LABEL.fullmatch(text)
        if m is None:
            sink.error(at(lcol), f"bad label '{text}'", "labels are key=value")
        elif m.group(1) in labels:
            sink.error(at(lcol), f"label '{m.group(1)}' is given twice")
        else:
            labels[m.group(1)] = m.group(2)
    return NodeInfo(name, tuple(addresses), labels)


def _addresses(
    field_: tuple[str, int], at: Callable[[int], Loc], sink: Sink, owners: dict[Address, Loc]
) -> list[Address]:
    text, col = field_
    out: list[Address] = []
    offset = 0
    for part in text.split(","):
        loc = at(col + offset)
        offset += len(part) + 1
        try:
            addr = ipaddress.ip_address(part)
        except ValueError:
            sink.error(
                loc,
                f"'{part}' is not an IP address",
                "addresses are numeric, comma-separated, without spaces",
            )
            continue
        if addr in owners:
            sink.error(
                loc,
                f"address {addr} is already used by another node",
                f"see {owners[addr].short()}",
            )
            continue
        owners[addr] = loc
        out.append(addr)
    return out
