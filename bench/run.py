"""Run every benchmark script in bench/ (bench_*.py) and print one JSON document.

Each script prints a single JSON object on its last stdout line.  Benchmarks print
figures side by side with a reference measured in the same run; they never assert
on time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    only = set(sys.argv[1:])
    results: dict[str, object] = {}
    failed = []
    for script in sorted(here.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"# running {script.name}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=False
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode != 0 or not lines:
            failed.append(name)
            results[name] = {"error": (proc.stderr or proc.stdout)[-2000:]}
            continue
        results[name] = json.loads(lines[-1])
        print(f"# {script.name} took {time.monotonic() - t0:.1f}s", file=sys.stderr)
    print(json.dumps(results, indent=2, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
