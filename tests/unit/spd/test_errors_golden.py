"""Golden error messages: every broken file in tests/data/spd/errors/ is rejected with
exactly the rendered text stored next to it (NAME.spd -> NAME.txt).

To review a new or changed message: ``SPD_GOLDEN_UPDATE=1 pytest tests/unit/spd``
rewrites the .txt files; read the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipsecd.spd import SpdError, load_text

from .conftest import DATA

CASES = sorted((DATA / "errors").glob("*.spd"))
UPDATE = os.environ.get("SPD_GOLDEN_UPDATE") == "1"


def test_there_are_many_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden_error(case: Path) -> None:
    with pytest.raises(SpdError) as info:
        load_text(case.read_text(), case.name)
    rendered = info.value.render() + "\n"
    assert str(info.value) == info.value.render()
    assert any(d.is_error for d in info.value.diagnostics)
    expected_file = case.with_suffix(".txt")
    if UPDATE:
        expected_file.write_text(rendered)
    assert expected_file.exists(), (
        f"missing golden {expected_file.name}: run with SPD_GOLDEN_UPDATE=1"
    )
    assert rendered == expected_file.read_text()


def test_every_error_has_file_line_col() -> None:
    for case in CASES:
        with pytest.raises(SpdError) as info:
            load_text(case.read_text(), case.name)
        for d in info.value.diagnostics:
            assert d.line >= 1 and d.col >= 1, (case.name, d)
            assert d.render().startswith(f"{case.name}:{d.line}:{d.col}: ")


def test_many_errors_reported_in_one_run() -> None:
    text = (DATA / "errors" / "many-errors.spd").read_text()
    with pytest.raises(SpdError) as info:
        load_text(text, "many.spd")
    lines = {d.line for d in info.value.diagnostics if d.is_error}
    assert lines == {2, 3, 4, 5}
