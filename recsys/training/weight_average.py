"""Exponential moving average (EMA) of the optimised weights, evaluated instead of the raw ones.

``trainer.ema_decay = beta > 0`` keeps a shadow copy ``w_ema`` of every parameter the optimiser
steps and, after each optimiser step t (1, 2, ...),

    w_ema <- b_t * w_ema + (1 - b_t) * w,   b_t = min(beta, (1 + t) / (10 + t))

(the warm-up ``b_t`` keeps the first validations from being pulled toward the initial weights).
Validation, the best checkpoint, test and export then see ``w_ema``; training keeps stepping
``w``. Averaging is linear and elementwise, so a nested model stays nested: the average of the
width-D weights, sliced to ``[:d]``, is the average of the width-d slices (the slicing invariant
holds for the averaged model as for any other weights).

Why not ``torch.optim.swa_utils.AveragedModel``: it deep-copies the whole module, which the
DMP-sharded item tables of a distributed run do not support, and the evaluation, checkpoint and
export paths all take the trainer's own model. A shadow list over the optimiser's parameters
(this rank's table shards and the dense replicas) works the same in one process and under
torchrun, and :meth:`WeightAverage.applied` swaps it into the model for evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


class WeightAverage:
    """EMA shadow of ``params`` (module docstring). ``params``: the optimiser's parameters."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer.ema_decay must be in (0, 1) to average weights, got {decay}")
        self.params = list(params)
        self.decay = float(decay)
        self.updates = 0
        self.shadow = [p.detach().clone() for p in self.params]

    def current_decay(self) -> float:
        """``b_t`` of the next update (the warm-up of the module docstring)."""
        t = self.updates + 1
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the parameters' current values into the shadow (call after each optimiser step)."""
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], weight)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the parameters hold the averaged weights; the raw ones come back after."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.detach() for p in self.params], self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.detach() for p in self.params], raw)

    @torch.no_grad()
    def reset_to_current(self, updates: int) -> None:
        """Shadow := the parameters' current values (as loaded from a checkpoint's averaged model)."""
        torch._foreach_copy_(self.shadow, [p.detach() for p in self.params])
        self.updates = int(updates)

    def state_dict(self) -> dict[str, Any]:
        return {"ema_updates": self.updates, "ema_decay": self.decay}
