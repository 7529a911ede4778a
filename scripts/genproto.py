"""Generate ipsecd/v1 (protobuf + gRPC Python code) from proto/ipsecd/v1/*.proto.

    python scripts/genproto.py           regenerate the committed code (make proto)
    python scripts/genproto.py --check   exit 1 when the committed code is stale (make proto-check)

The .proto files live under proto/ with the package path (ipsecd/v1/...), so the
generated modules import each other as ``ipsecd.v1.xxx_pb2`` and nothing needs
rewriting.  grpcio-tools is pinned to the grpcio version (generated code requires a
runtime at least as new as the generator).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = Path("ipsecd") / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate(out: Path) -> list[Path]:
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError as exc:
        raise SystemExit(
            "error: grpcio-tools is not installed: run `make venv` (dev extra)"
        ) from exc
    import grpc_tools

    protos = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    if not protos:
        raise SystemExit(f"error: no .proto files under {PROTO_ROOT / PACKAGE}")
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("error: protoc failed (see messages above)")
    return sorted(p for p in (out / PACKAGE).iterdir() if p.name.endswith(SUFFIXES))


def _committed() -> list[Path]:
    return sorted(p for p in (ROOT / PACKAGE).iterdir() if p.name.endswith(SUFFIXES))


def check() -> list[str]:
    """Return the problems that make the committed code stale (empty: up to date)."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in _generate(Path(tmp))}
        have = {p.name: p for p in _committed()}
        for name in sorted(fresh.keys() - have.keys()):
            problems.append(f"{PACKAGE / name} is missing")
        for name in sorted(have.keys() - fresh.keys()):
            problems.append(f"{PACKAGE / name} has no .proto any more")
        for name in sorted(fresh.keys() & have.keys()):
            if not filecmp.cmp(fresh[name], have[name], shallow=False):
                problems.append(f"{PACKAGE / name} differs from its .proto")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the code is stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(f"error: {problem}; run `make proto`", file=sys.stderr)
        return 1 if problems else 0
    with tempfile.TemporaryDirectory() as tmp:
        generated = _generate(Path(tmp))
        for old in _committed():
            old.unlink()
        for path in generated:
            shutil.copyfile(path, ROOT / PACKAGE / path.name)
            print(f"wrote {PACKAGE / path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
