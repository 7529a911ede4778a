"""``ipsecctl convert``: a strongSwan, Libreswan or setkey configuration -> an SPD file.

    ipsecctl convert [--from swanctl|libreswan|setkey] FILE [-o OUT.spd]
                     [--secrets-out FILE | --inline-secrets] [--secrets IPSEC_SECRETS]
                     [--node NAME] [--group NAME] [--local-side left|right]
                     [--swanctl-dir DIR]

Without ``--from`` the format is detected from the content (and said so on stderr).
The SPD goes to ``-o`` (mode 0644; 0600 with ``--inline-secrets``) or stdout.  Keys
never go to stdout or stderr: pre-shared keys and manual SA keys become
``secret:NAME`` references and their values go to ``--secrets-out`` (mode 0600, the
format ``ipsecd --secrets`` reads), or, with ``--inline-secrets``, into the ``-o``
file itself.  The output is run through the SPD validator before anything is
written.  The conversion itself is :mod:`ipsecd.spd.convert` (pure functions).

Exit codes:

====  ==========================================================================
0     converted; nothing of the input was left out
3     converted with warnings: each names FILE:LINE and what was not carried
1     input error: unreadable, malformed or undetectable input, secrets with
      nowhere to go; nothing was written
2     usage error
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from ipsecd.spd.convert import (
    FORMATS,
    Conversion,
    ConvertError,
    ConvertOptions,
    convert,
    detect_format,
    render_secrets,
    validate_output,
)
from ipsecd.spd.limits import MAX_FILE_BYTES

__all__ = ["EXIT_INPUT", "EXIT_OK", "EXIT_USAGE", "EXIT_WARNINGS", "register"]

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # SPD names (docs/spd.md section 1)

_EPILOG = """\
examples:
  ipsecctl convert /etc/swanctl/swanctl.conf -o vpn.spd --secrets-out vpn.secrets
  ipsecctl convert --from libreswan /etc/ipsec.conf --secrets /etc/ipsec.secrets \\
      -o vpn.spd --secrets-out vpn.secrets --node gw1
  ipsecctl convert setkey.conf -o hosts.spd --inline-secrets

exit status: 0 converted cleanly, 3 converted with warnings (each names FILE:LINE and
what was not carried), 1 input error (nothing written), 2 usage error.
"""


def register(subparsers: Any) -> None:
    """Add ``convert`` to the ``ipsecctl`` subcommands (controller/cli.py REGISTRARS)."""
    p = subparsers.add_parser(
        "convert",
        help="turn a swanctl.conf, Libreswan ipsec.conf or setkey.conf into an SPD file",
        description="Convert another IPsec configuration into an SPD file. Everything "
        "the SPD cannot carry is a warning naming FILE:LINE (docs/spd.md, 'Converting "
        "from strongSwan, Libreswan and setkey').",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="the configuration to convert")
    p.add_argument(
        "--from",
        dest="source_format",
        choices=tuple(FORMATS),
        help="input format (default: detected from the content)",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="write the SPD here (default: stdout)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--secrets-out",
        metavar="FILE",
        help="write the keys here (mode 0600), as ipsecd --secrets reads them",
    )
    keys.add_argument(
        "--inline-secrets",
        action="store_true",
        help="write the keys into the -o file (mode 0600) instead",
    )
    p.add_argument(
        "--secrets", metavar="IPSEC_SECRETS", help="Libreswan: the ipsec.secrets file with the PSKs"
    )
    p.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME",
        help="the cluster node(s) the input came from (repeat or comma-separate); "
        "default: select the host by its addresses",
    )
    p.add_argument(
        "--group",
        default="local",
        metavar="NAME",
        help="name of the node group for that host (default: local)",
    )
    p.add_argument(
        "--local-side",
        choices=("left", "right"),
        help="Libreswan: which side is this host (default: guessed, else left)",
    )
    p.add_argument(
        "--swanctl-dir",
        default="/etc/swanctl",
        metavar="DIR",
        help="swanctl: where relative certificate paths live (default: /etc/swanctl)",
    )
    p.set_defaults(func=_convert)


def _read(path: str, what: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConvertError(f"cannot read {what}: {exc.strerror}", path) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConvertError(f"the {what} is larger than {MAX_FILE_BYTES} bytes", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConvertError(f"byte 0x{data[exc.start]:02x} is not valid UTF-8", path, line) from None


def _write(path: str, text: str, mode: int) -> None:
    """Write atomically with ``mode`` (the file never exists with wider permissions)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _usage(message: str) -> int:
    print(f"ipsecctl convert: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _convert(args: argparse.Namespace) -> int:
    if args.inline_secrets and not args.output:
        return _usage("--inline-secrets needs -o OUT (keys are never printed)")
    outputs = [p for p in (args.output, args.secrets_out) if p]
    if args.secrets_out and os.path.abspath(args.secrets_out) in (
        os.path.abspath(args.file),
        os.path.abspath(args.output or ""),
    ):
        return _usage("--secrets-out must be a file of its own")
    if args.output and os.path.abspath(args.output) == os.path.abspath(args.file):
        return _usage("-o must not overwrite the input")
    nodes = tuple(n.strip() for arg in args.node for n in arg.split(",") if n.strip())
    for name in (args.group, *nodes):
        if not _NAME.fullmatch(name) or name == "all":
            return _usage(
                f"'{name}' is not a usable group or node name (letters, digits, "
                "'_', '-' and '.', starting with a letter; not 'all')"
            )
    try:
        conversion = _run(args, nodes)
        out_name = args.output or "<stdout>"
        extra = validate_output(conversion, out_name, inline_secrets=args.inline_secrets)
        if conversion.secrets and not args.secrets_out:
            raise ConvertError(
                f"the input holds {len(conversion.secrets)} key(s) "
                f"({', '.join('secret:' + n for n in sorted(conversion.secrets))}): write them "
                "with --secrets-out FILE (mode 0600), or with --inline-secrets -o OUT",
                args.file,
            )
        if conversion.secrets and args.secrets_out:
            _write(args.secrets_out, render_secrets(conversion.secrets, args.file), 0o600)
        if args.output:
            _write(args.output, conversion.spd, 0o600 if args.inline_secrets else 0o644)
        else:
            sys.stdout.write(conversion.spd)
    except ConvertError as exc:
        print(exc.render(), file=sys.stderr)
        print("error: nothing was written", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        print(
            f"error: cannot write {exc.filename or ', '.join(outputs)}: {exc.strerror}",
            file=sys.stderr,
        )
        return EXIT_INPUT
    for w in conversion.warnings:
        print(w.render(), file=sys.stderr)
    for d in extra:
        print(d.render(), file=sys.stderr)
    for note in conversion.notes:
        print(f"note: {note}", file=sys.stderr)
    count = len(conversion.warnings) + len(extra)
    written = f" -> {args.output}" if args.output else ""
    if conversion.secrets and args.secrets_out:
        written += f", {len(conversion.secrets)} key(s) -> {args.secrets_out}"
    print(
        f"{args.file}{written}: converted ({FORMATS[conversion.source_format]}), "
        f"{count} warning{'s' if count != 1 else ''}",
        file=sys.stderr,
    )
    return EXIT_WARNINGS if count else EXIT_OK


def _run(args: argparse.Namespace, nodes: tuple[str, ...]) -> Conversion:
    text = _read(args.file, "input file")
    fmt = args.source_format
    if fmt is None:
        fmt = detect_format(text)
        if fmt is None:
            raise ConvertError(
                "cannot tell which format this is: give --from swanctl|libreswan|setkey",
                args.file,
            )
        print(f"ipsecctl convert: {args.file}: detected {fmt} ({FORMATS[fmt]})", file=sys.stderr)
    secrets_text = None
    if args.secrets is not None:
        if fmt != "libreswan":
            raise ConvertError(
                "--secrets is for Libreswan input (swanctl.conf holds its secrets itself)",
                args.secrets,
            )
        secrets_text = _read(args.secrets, "secrets file")
    options = ConvertOptions(
        group=args.group,
        nodes=nodes,
        inline_secrets=args.inline_secrets,
        local_side=args.local_side,
        swanctl_dir=args.swanctl_dir,
    )
    return convert(
        text,
        args.file,
        fmt,
        options,
        secrets_text=secrets_text,
        secrets_filename=args.secrets or "ipsec.secrets",
    )
