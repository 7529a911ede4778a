"""``ipsecd`` — the per-node IPsec daemon (Tru64 ipsecd(8) options).

    ipsecd [-b] [-d] [-h] [-l] [-p] [-f FILE] [-m quiet|default|verbose] [-o FILE]

Only ``-p`` (parse the SPD file, report every error, exit) works today; the daemon
modes say so plainly and exit 2.  Exit codes: 0 valid, 1 invalid SPD, 2 not available
or usage error.
"""

from __future__ import annotations

import argparse
import sys

from ipsecd.spd import SpdError, load_file

__all__ = ["BACKUP_SPD", "DEFAULT_SPD", "main"]

DEFAULT_SPD = "/etc/ipsec.spd"
BACKUP_SPD = "/etc/ipsec.spd.bak"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipsecd",
        description="IPsec daemon: policy manager and IKE daemon for this node",
    )
    p.add_argument("-b", action="store_true", dest="backup",
                   help=f"read the backup SPD file ({BACKUP_SPD}) instead")  # fmt: skip
    p.add_argument("-d", action="store_true", dest="daemon", help="run as a daemon")
    p.add_argument("-f", metavar="FILE", dest="file", default=DEFAULT_SPD,
                   help=f"SPD file to read (default {DEFAULT_SPD})")  # fmt: skip
    p.add_argument("-l", action="store_true", dest="log_unmatched",
                   help="log packets that match no selector")  # fmt: skip
    p.add_argument("-m", choices=("quiet", "default", "verbose"), default="default",
                   dest="level", help="message level")  # fmt: skip
    p.add_argument("-o", metavar="FILE", dest="debug_file", help="debug output file")
    p.add_argument("-p", action="store_true", dest="parse_only",
                   help="parse the SPD file, report errors, and exit")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    path = BACKUP_SPD if args.backup else args.file
    if args.parse_only:
        try:
            return _parse_only(path, args.level)
        except Exception as exc:  # last resort: a message, never a traceback
            print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(
        "error: the ipsecd daemon is not implemented yet; only the parse-only check works "
        f"(ipsecd -p -f {path})",
        file=sys.stderr,
    )
    return 2


def _parse_only(path: str, level: str) -> int:
    try:
        policy = load_file(path)
    except SpdError as exc:
        print(exc.render(), file=sys.stderr)
        print(f"error: {path} is invalid", file=sys.stderr)
        return 1
    if level != "quiet":
        for warning in policy.warnings:
            print(warning.render(), file=sys.stderr)
    if level == "verbose":
        print(
            f"{path}: ok: {len(policy.spd)} setkey policies, {len(policy.sas)} manual SAs, "
            f"{len(policy.connections)} connections, {len(policy.rules)} rules, "
            f"{len(policy.groups)} node groups, {len(policy.warnings)} warnings"
        )
    elif level == "default":
        print(f"{path}: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
