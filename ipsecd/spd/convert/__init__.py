"""Conversion of other IPsec configurations into SPD files (``ipsecctl convert``).

One module per input format, each a pure function from text to a
:class:`Conversion` (the SPD text, the secrets it names, warnings)::

    convert_swanctl(text, filename, options)            # strongSwan swanctl.conf
    convert_libreswan(text, filename, options,          # Libreswan ipsec.conf
                      secrets_text=..., secrets_filename=...)
    convert_setkey(text, filename, options)             # setkey.conf

:func:`convert` dispatches by format name, :func:`detect_format` guesses it from the
text, :func:`validate_output` runs the SPD validator over a result (a result that
does not validate is a converter bug and raises), :func:`render_secrets` writes the
secrets file ``ipsecd --secrets`` reads.  Inputs that cannot be read at all raise
:class:`ConvertError`; everything else that is not carried is a
:class:`ConvertWarning` naming ``FILE:LINE``.  docs/spd.md, "Converting from
strongSwan, Libreswan and setkey", has the mapping tables.
"""

from __future__ import annotations

import re

from ..errors import Diagnostic, SpdError
from ..loader import load_text
from .common import (
    Conversion,
    ConvertError,
    ConvertOptions,
    ConvertWarning,
    render_secrets,
)
from .libreswan import convert_libreswan
from .setkey import convert_setkey
from .swanctl import convert_swanctl

__all__ = [
    "FORMATS",
    "Conversion",
    "ConvertError",
    "ConvertOptions",
    "ConvertWarning",
    "convert",
    "convert_libreswan",
    "convert_setkey",
    "convert_swanctl",
    "detect_format",
    "render_secrets",
    "validate_output",
]

#: Input formats and what they are.
FORMATS: dict[str, str] = {
    "swanctl": "strongSwan swanctl.conf",
    "libreswan": "Libreswan ipsec.conf",
    "setkey": "setkey.conf",
}

_SWANCTL = re.compile(r"^\s*(connections|secrets|pools|authorities)\s*(:[^{\n]*)?\{", re.M)
_LIBRESWAN = re.compile(r"^(conn[ \t]+\S+|config[ \t]+setup)[ \t]*(#.*)?$", re.M)
_SETKEY = re.compile(
    r"^\s*(spdadd|spdupdate|spddelete|spdflush|add|delete|deleteall|flush)\b[^=\n]*(;|$)", re.M
)


def detect_format(text: str) -> str | None:
    """The input format of ``text`` (a :data:`FORMATS` key), or None if unclear."""
    found = [
        name
        for name, pattern in (("swanctl", _SWANCTL), ("libreswan", _LIBRESWAN), ("setkey", _SETKEY))
        if pattern.search(text)
    ]
    if len(found) == 1:
        return found[0]
    if "swanctl" in found and "libreswan" not in found:
        return "swanctl"  # 'add'/'flush' words inside sections
    return None


def convert(
    text: str,
    filename: str,
    fmt: str,
    options: ConvertOptions | None = None,
    *,
    secrets_text: str | None = None,
    secrets_filename: str = "ipsec.secrets",
) -> Conversion:
    """Convert ``text`` of format ``fmt`` (swanctl, libreswan or setkey)."""
    if fmt == "swanctl":
        return convert_swanctl(text, filename, options)
    if fmt == "libreswan":
        return convert_libreswan(
            text, filename, options, secrets_text=secrets_text, secrets_filename=secrets_filename
        )
    if fmt == "setkey":
        return convert_setkey(text, filename, options)
    raise ConvertError(f"unknown input format '{fmt}' (use {', '.join(FORMATS)})", filename)


def validate_output(
    conversion: Conversion, filename: str, *, inline_secrets: bool = False
) -> tuple[Diagnostic, ...]:
    """Run the SPD validator over the converted text, as a file of mode 0600 (inline
    secrets) or 0644 (which also proves that no literal key is left in it).  Returns the
    validator's warnings that the conversion did not already report; raises
    :class:`ConvertError` when the text does not validate."""
    mode = 0o600 if inline_secrets else 0o644
    try:
        policy = load_text(conversion.spd, filename, file_mode=mode)
    except SpdError as exc:
        errors = [d for d in exc.diagnostics if d.is_error]
        if errors and all(d.message.startswith("literal key in a file") for d in errors):
            raise ConvertError(
                "the converted SPD still holds literal keys (written through macros?): "
                "convert with --inline-secrets -o OUT, or move them to the secrets file",
                filename,
            ) from None
        raise ConvertError(
            "the converted SPD does not validate; this is a converter bug, please report it "
            "with the input:\n" + exc.render(),
            filename,
        ) from None
    known = [w.message for w in conversion.warnings]
    return tuple(d for d in policy.warnings if not any(d.message in k for k in known))
