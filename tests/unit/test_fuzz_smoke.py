"""The coverage-guided fuzz targets of tests/fuzz, briefly (issue #8): each runs a few
thousand inputs under atheris with a fixed libFuzzer seed and must find nothing new.

Findings already reported are set aside by the targets (tests/fuzz/common.py
``KNOWN``); their regression tests are in tests/unit/ike/test_fuzz_findings.py.  The
long runs are ``make fuzz`` (docs/operations.md "Fuzzing").
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: target -> libFuzzer runs (the seed corpus counts; a few seconds each)
RUNS = {"codec": 4000, "endpoint": 3000, "sealed": 3000, "spd": 3000}


@pytest.mark.parametrize("target", sorted(RUNS))
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.fail(
            "atheris is not installed: run `make venv` (it installs the dev extras of "
            "pyproject.toml) or `.venv/bin/pip install atheris`"
        )
    runs = RUNS[target]
    env = dict(os.environ, IPSECD_FUZZ_DIR=str(tmp_path / "work"))
    env.pop("IPSECD_FUZZ_STRICT", None)
    script = REPO / "tests" / "fuzz" / f"fuzz_{target}.py"
    corpus = tmp_path / "corpus"
    proc = subprocess.run(
        [sys.executable, str(script), f"-runs={runs}", "-seed=1", "-timeout=120", str(corpus)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    tail = proc.stderr[-4000:]
    assert proc.returncode == 0, f"fuzz_{target}.py found something:\n{tail}"
    # libFuzzer may run one unit past -runs (it printed "Done 3001 runs" for 3000 once)
    done = re.search(r"^Done (\d+) runs", proc.stderr, re.M)
    assert done is not None and int(done.group(1)) >= runs, tail
    found = sorted(p.name for p in (tmp_path / "work" / target).glob("*-*") if p.is_file())
    assert not found, found
