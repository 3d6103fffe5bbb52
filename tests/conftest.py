"""Shared fixtures; the helpers themselves live in tests/support.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import write_processed_dataset


@pytest.fixture
def processed_dataset(tmp_path: Path) -> Path:
    return write_processed_dataset(tmp_path / "dataset")


@pytest.fixture(autouse=True)
def _grad_mode_is_left_as_found():
    """A test (or the code it calls) that switches autograd off for the process would break every
    later test of the session in confusing ways: fail the test that did it, and restore."""
    import torch

    before = torch.is_grad_enabled()
    yield
    after = torch.is_grad_enabled()
    torch.set_grad_enabled(before)
    assert after == before, "the test left autograd switched " + ("off" if before else "on")
