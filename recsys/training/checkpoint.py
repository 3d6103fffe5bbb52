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

from data_prep.io import atomic_path


def atomic_torch_save(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temp file + ``os.replace`` (atomic on POSIX)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, empty, not a checkpoint, or missing keys."""


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", required: tuple[str, ...] = ("model",)
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code is unpickled) and check its keys.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` naming the file
    for one that is empty, truncated, not a torch checkpoint, or lacks one of ``required``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    hint = "it may be truncated or not a recsys checkpoint; resume from another one (e.g. checkpoints/best.pt) or start a new run"
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty: {hint}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        # torch's own message suggests weights_only=False, which would run code from the file: not offered.
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {first_line}): {hint}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of states: {hint}")
    missing = [key for key in required if key not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}: {hint}")
    return ckpt


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
