"""Shared helpers for the SPD unit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "data" / "spd"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture
def private_copy(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Copy a file into tmp_path with mode 0600 (git checks files out as 0644)."""

    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copyfile(src, dst)
        dst.chmod(0o600)
        return dst

    return copy
