"""Shared fixtures; the helpers themselves live in tests/support.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import write_processed_dataset


@pytest.fixture
def processed_dataset(tmp_path: Path) -> Path:
    return write_processed_dataset(tmp_path / "dataset")
