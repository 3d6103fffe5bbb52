"""Atomic checkpoint files that load without unpickling code (``torch.load(weights_only=True)``).

A training checkpoint ``checkpoints/{last,best}.pt`` is a plain dict of tensors, numbers, strings,
lists and dicts with flat keys:

* ``model`` (always the single-process state dict; sharded tables are gathered), ``optimizer``,
  ``scheduler``, ``rng`` (torch and CUDA generator states), ``world_size``, ``sizes``;
* the position: ``epoch``, ``batch_in_epoch`` (next batch), ``step``, ``val_history``,
  ``nonfinite_steps``; early stopping: ``best_value``, ``best_step``, ``bad_validations``;
* ``config``: the resolved run config (compared on resume);
* with ``trainer.ema_decay > 0`` (``recsys/training/weight_average.py``): ``model`` holds the
  averaged weights (what validation, test and export use), ``train_model`` the raw ones training
  continues from, and ``ema_updates``, ``ema_decay``.

Distributed runs add one ``{name}.rank{r}.pt`` per rank with that rank's ``optimizer`` (its table
shards' moments), ``rng`` and ``param_shapes``. Every file is written to a temporary file in the
same directory and renamed over the target, so a crash mid-write never leaves a truncated
checkpoint behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from data_prep.io import atomic_path
from recsys.training.distributed import DistEnv, barrier, full_state_dict, load_full_state_dict
from recsys.training.early_stopping import EarlyStopping
from recsys.training.weight_average import WeightAverage

# what a checkpoint needs to continue a run (check_resumable and restore_training_state)
RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "batch_in_epoch", "step", "sizes")


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
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {first_line}): {hint}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of states: {hint}"
        )
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


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], env: DistEnv) -> None:
    """Load a single-process state dict into ``model``, whose tables may be sharded."""
    if env.enabled:
        load_full_state_dict(model, state)
    else:
        model.load_state_dict(state)


def model_state(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor]:
    """The single-process state dict of ``model`` (sharded tables gathered: a collective)."""
    return full_state_dict(model) if env.enabled else model.state_dict()


def _param_shapes(optimizer: torch.optim.Optimizer) -> list[list[int]]:
    """Shapes of the optimised parameters on this rank (the table shards differ by rank and sharding)."""
    return [list(p.shape) for group in optimizer.param_groups for p in group["params"]]


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    early_stopping: EarlyStopping,
    progress: dict[str, Any],
    config: DictConfig,
    env: DistEnv,
) -> dict[str, Any]:
    """The checkpoint dict (module docstring); ``progress``: position, ``val_history``, ``sizes``...

    Distributed: gathering the sharded tables is a collective, every rank must call it.
    """
    return {
        "model": model_state(model, env),
        "world_size": env.world_size,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        **progress,
        **early_stopping.state_dict(),
        "config": OmegaConf.to_container(config, resolve=True),  # checked on resume
    }


def save_training_checkpoint(
    state: dict[str, Any], path: Path, optimizer: torch.optim.Optimizer, env: DistEnv
) -> None:
    """Write ``state`` to ``path`` (rank 0) and, distributed, every rank's own ``{stem}.rank{r}.pt``."""
    if not env.enabled:
        atomic_torch_save(state, path)
        return
    if env.is_main:
        atomic_torch_save(state, path)
    rank_state = {
        "optimizer": state["optimizer"],
        "rng": state["rng"],
        "param_shapes": _param_shapes(optimizer),
    }
    atomic_torch_save(rank_state, path.with_name(f"{path.stem}.rank{env.rank}.pt"))
    barrier(env)


def restore_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    early_stopping: EarlyStopping,
    sizes: tuple[int, ...],
    env: DistEnv,
    device: torch.device,
    sharding_plan: dict[str, str] | None = None,
    average: WeightAverage | None = None,
) -> dict[str, Any]:
    """Load a training checkpoint into the parts; return the progress to continue from.

    ``average`` (the run's weight average, ``trainer.ema_decay > 0``) gets the checkpoint's averaged
    weights and the model its raw ones; a checkpoint with averaged weights needs one, and one
    without cannot give it.

    Refuses (``ValueError``) a checkpoint of other sizes, of another world size, or (distributed)
    whose rank file holds optimiser state of other parameter shards. Returns ``epoch``,
    ``batch_in_epoch``, ``step``, ``val_history`` and ``nonfinite_steps``.
    """
    ckpt = load_checkpoint(path, map_location=device, required=RESUME_KEYS)
    if list(ckpt["sizes"]) != list(sizes):
        raise ValueError(
            f"checkpoint {path} was trained with sizes {ckpt['sizes']}, config has {list(sizes)}"
        )
    if int(ckpt.get("world_size", 1)) != env.world_size:
        raise ValueError(
            f"checkpoint {path} was written by {ckpt.get('world_size', 1)} processes; resume with the same world size"
        )
    if env.enabled:
        rank_path = Path(path).with_name(f"{Path(path).stem}.rank{env.rank}.pt")
        rank_ckpt = load_checkpoint(rank_path, map_location=device, required=("optimizer", "rng"))
        if rank_ckpt.get("param_shapes", _param_shapes(optimizer)) != _param_shapes(optimizer):
            raise ValueError(
                f"{rank_path} holds optimiser state of other parameter shards than this run's "
                f"(table sharding {sharding_plan}); resume with the same world size and trainer.sharding"
            )
        ckpt.update(rank_ckpt)
    averaged = "train_model" in ckpt
    if averaged != (average is not None):
        raise ValueError(
            f"checkpoint {path} was trained with trainer.ema_decay={ckpt.get('ema_decay', 0.0)}, "
            f"this run has {average.decay if average is not None else 0.0}: resume with the same trainer.ema_decay"
        )
    load_model_state(model, ckpt["model"], env)
    if average is not None:
        average.reset_to_current(int(ckpt.get("ema_updates", 0)))
        load_model_state(model, ckpt["train_model"], env)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    early_stopping.load_state_dict(ckpt)
    return {
        "epoch": ckpt["epoch"],
        "batch_in_epoch": ckpt["batch_in_epoch"],
        "step": ckpt["step"],
        "val_history": ckpt["val_history"],
        "nonfinite_steps": int(ckpt.get("nonfinite_steps", 0)),
        "seconds_before": float(ckpt.get("train_seconds", 0.0)),
    }
