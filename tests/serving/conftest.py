"""Fixtures for the serving tests: a writable copy of the cached export and a re-sealer."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from serving_helpers import reseal_export
from support import trained_export


@pytest.fixture
def export_copy(tmp_path: Path) -> Path:
    """A private copy of the session's cached export (sizes 4, 8, 16), safe to tamper with."""
    copy = tmp_path / "export"
    shutil.copytree(trained_export()[1], copy, symlinks=True)
    return copy


@pytest.fixture
def reseal() -> Callable[[Path], None]:
    return reseal_export
