"""Atomic checkpoint files that load without unpickling code (``torch.load(weights_only=True)``).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts: model and optimiser
state, scheduler state, RNG states, the epoch/step/data-order position and early-stopping state.
It is written to a temporary file in the same directory and renamed over the target, so a
crash mid-write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data_prep.atomic import atomic_path


def atomic_torch_save(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temp file + ``os.replace`` (atomic on POSIX)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: no code is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
