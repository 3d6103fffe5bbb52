"""Full-ranking metrics for leave-one-out evaluation, for every size of the ladder at once.

Every user has exactly one target item, so with the 0-based rank ``r`` of the target among all
catalog items (padding excluded):

* Recall@k = 1[r < k]                (equal to HitRate@k with a single target)
* NDCG@k   = 1[r < k] / log2(r + 2)  (the ideal DCG of one relevant item is 1)
* MRR@k    = 1[r < k] / (r + 1)

Ties are counted against the target: ``r = #{score > s_t} + #{score == s_t, other items}``.
A model that scores everything equally therefore gets rank N-1, not 0, so degenerate models
cannot look good.

Results are accumulated as per-user *sums* and a user count, so that shards of users (batches,
or ranks of a distributed job) combine by summation, never by averaging averages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

METRIC_NAMES = ("recall", "ndcg", "mrr")
DEFAULT_KS = (5, 10, 20, 50)


def validate_ks(ks: Iterable[int]) -> tuple[int, ...]:
    """Return ``ks`` as a sorted tuple, raising ``ValueError`` for an empty list or a k <= 0."""
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("metrics.ks must name at least one cut-off k")
    bad = [k for k in ks if k <= 0]
    if bad:
        raise ValueError(f"metrics.ks must be positive integers, got {bad} in {list(ks)}")
    return tuple(sorted(set(ks)))


def mask_history(scores: torch.Tensor, history: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Set the scores of items the user has already seen to -inf, except the target itself.

    scores: (..., B, N+1); history: (B, H) item ids, 0 = padding; targets: (B,).
    Returns a new tensor; the padding column is left as it was.
    """
    b = torch.arange(history.shape[0], device=history.device)[:, None].expand_as(history)
    keep = (history != 0) & (history != targets[:, None])
    masked = scores.clone()
    masked[..., b[keep], history[keep]] = float("-inf")
    return masked


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among all items, ties counted against the target.

    scores: (..., B, N+1) with the padding column already at -inf; targets: (B,) in 1..N.
    Returns (..., B) long.
    """
    index = targets.view(*([1] * (scores.dim() - 2)), -1, 1).expand(*scores.shape[:-1], 1)
    target_scores = scores.gather(-1, index)  # (..., B, 1)
    higher = (scores > target_scores).sum(-1)
    ties = (scores == target_scores).sum(-1) - 1  # the target equals itself
    return higher + ties


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-user metric values from 0-based ranks. ranks: (..., B) -> {"recall@k": (..., B), ...}."""
    ranks = ranks.to(torch.float64)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = (ranks < k).to(torch.float64)
        out[f"recall@{k}"] = hit
        out[f"ndcg@{k}"] = hit / torch.log2(ranks + 2.0)
        out[f"mrr@{k}"] = hit / (ranks + 1.0)
    return out


@dataclass
class MetricAccumulator:
    """Sums per-user metric values for every size; ``compute()`` divides by the user count.

    Combine shards (batches, ranks) with :meth:`merge` or by summing :attr:`sums` and
    :attr:`count` across processes.
    """

    sizes: tuple[int, ...]
    ks: tuple[int, ...] = DEFAULT_KS
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # metric -> (M,) float64
    count: int = 0

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """scores: (M, B, N+1) for the M sizes, padding column at -inf; targets: (B,)."""
        if scores.shape[0] != len(self.sizes):
            raise ValueError(f"scores hold {scores.shape[0]} sizes, accumulator expects {len(self.sizes)}")
        per_user = metrics_from_ranks(target_ranks(scores, targets), self.ks)
        for name, values in per_user.items():
            total = values.sum(-1).cpu()
            self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.count += int(targets.shape[0])

    def merge(self, other: MetricAccumulator) -> None:
        for name, total in other.sums.items():
            self.sums[name] = self.sums[name] + total if name in self.sums else total.clone()
        self.count += other.count

    def compute(self) -> dict[int, dict[str, float]]:
        """{size: {"recall@10": value, ...}} averaged over all users seen."""
        if self.count == 0:
            raise ValueError("no users were evaluated")
        return {
            size: {name: float(total[i] / self.count) for name, total in sorted(self.sums.items())}
            for i, size in enumerate(self.sizes)
        }
