"""Early stopping on one validation metric at one size, or its mean over the sizes (higher is better:
recall, NDCG, MRR).

Example::

    >>> stopper = EarlyStopping("ndcg@10", size=64, patience=2)
    >>> [stopper.update(v, step) for step, v in enumerate([0.10, 0.12, float("nan"), 0.11])]
    [True, True, False, False]
    >>> stopper.best_value, stopper.best_step, stopper.should_stop
    (0.12, 1, True)
"""

from __future__ import annotations

import math
from typing import Any

from recsys.evaluation.reporting import SizeMetrics

MEAN = "mean"  # size of a stopper that reads the mean over all sizes


class EarlyStopping:
    """Tracks ``monitor`` (e.g. ``ndcg@10``) at ``size`` over validations; ``size="mean"``: the
    unweighted mean of ``monitor`` over every size of the results (``trainer.monitor_mean``).

    ``update`` returns whether the value is a new best; a non-finite value is never best and counts
    as a validation without improvement. ``should_stop`` once ``patience`` validations in a row did
    not improve (``patience`` 0: never). The state (``state_dict``) goes into every checkpoint.
    """

    def __init__(self, monitor: str, size: int | str, patience: int) -> None:
        if isinstance(size, str) and size != MEAN:
            raise ValueError(f"early stopping size must be a trained size or {MEAN!r}, got {size!r}")
        self.monitor, self.size, self.patience = monitor, size, patience
        self.best_value, self.best_step, self.bad_validations = -math.inf, -1, 0

    def monitored(self, results: SizeMetrics) -> float:
        """The monitored value of one validation's results ({size: {metric: value}})."""
        if self.size == MEAN:
            return sum(r[self.monitor] for r in results.values()) / len(results)
        return results[self.size][self.monitor]

    @property
    def label(self) -> str:
        """Where the metric is read: ``d256`` or ``mean over sizes``."""
        return "mean over sizes" if self.size == MEAN else f"d{self.size}"

    def update(self, value: float, step: int) -> bool:
        improved = math.isfinite(value) and value > self.best_value
        if improved:
            self.best_value, self.best_step, self.bad_validations = value, step, 0
        else:
            self.bad_validations += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_validations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_step": self.best_step,
            "bad_validations": self.bad_validations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.bad_validations = state["bad_validations"]
