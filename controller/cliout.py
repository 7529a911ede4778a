"""How ipsecctl prints (docs/operations.md "ipsecctl"): ``-o table|wide|json|yaml`` on
every read command, colour only on a terminal, errors on stderr.

* ``table`` (the default) and ``wide`` (more columns) are for people; ``json`` and
  ``yaml`` for scripts, with the same fields (the API's, by their proto names).
* Colour only when the stream is a terminal, ``NO_COLOR`` is unset and ``TERM`` is not
  ``dumb`` (https://no-color.org is the convention; nothing here reads it from there).
* YAML is written by :func:`to_yaml` (block style, strings quoted when YAML would read
  them as something else), so ipsecctl needs no YAML library.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

__all__ = [
    "READ_FORMATS",
    "color_enabled",
    "emit",
    "error",
    "paint",
    "structured",
    "to_yaml",
]

#: ``-o`` of the read commands (tables for people, json/yaml for scripts).
READ_FORMATS = ("table", "wide", "json", "yaml")


def structured(args: argparse.Namespace) -> bool:
    """Whether ``-o`` asks for json or yaml."""
    return getattr(args, "output", None) in ("json", "yaml")


def wide(args: argparse.Namespace) -> bool:
    return getattr(args, "output", None) == "wide"


def emit(args: argparse.Namespace, obj: Any, stream: TextIO | None = None) -> None:
    """``obj`` (JSON-like) as ``-o`` says: yaml, else json."""
    out = stream or sys.stdout
    if getattr(args, "output", None) == "yaml":
        out.write(to_yaml(obj))
    else:
        out.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def color_enabled(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, code: str, stream: TextIO | None = None) -> str:
    """``text`` in ANSI colour ``code`` (e.g. ``"31"`` red) when ``stream`` is a colour
    terminal, else as it is."""
    return f"\033[{code}m{text}\033[0m" if color_enabled(stream or sys.stdout) else text


def error(message: str) -> None:
    """``error: MESSAGE`` on stderr (``error:`` in red on a terminal)."""
    print(f"{paint('error:', '1;31', sys.stderr)} {message}", file=sys.stderr)


# -------------------------------------------------------------------------------- YAML

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./@:+-]*$")
_RESERVED = {
    "true", "false", "yes", "no", "on", "off", "null", "~", "y", "n",
}  # fmt: skip


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED and not text.endswith(":"):
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _key(key: Any) -> str:
    return _scalar(str(key))


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        out: list[str] = []
        for k in sorted(value, key=str):
            v = value[k]
            if isinstance(v, Mapping | list | tuple) and v:
                out.append(f"{pad}{_key(k)}:")
                out += _lines(v, indent + 2)
            else:
                out.append(f"{pad}{_key(k)}: {_inline(v)}")
        return out
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if not value:
            return [pad + "[]"]
        out = []
        for item in value:
            if isinstance(item, Mapping | list | tuple) and item:
                inner = _lines(item, indent + 2)
                out.append(f"{pad}- {inner[0].lstrip()}")
                out += inner[1:]
            else:
                out.append(f"{pad}- {_inline(item)}")
        return out
    return [pad + _scalar(value)]


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list | tuple):
        return "[]"
    return _scalar(value)


def to_yaml(obj: Any) -> str:
    """``obj`` (dicts, lists, strings, numbers, booleans, None) as a YAML document."""
    return "\n".join(_lines(obj, 0)) + "\n"
