"""Full-ranking metrics for leave-one-out evaluation, for every size of the ladder at once.

Every user has exactly one target item, so with the 0-based rank ``r`` of the target among all
catalog items (padding excluded):

* Recall@k = 1[r < k]                (equal to HitRate@k with a single target)
* NDCG@k   = 1[r < k] / log2(r + 2)  (the ideal DCG of one relevant item is 1)
* MRR@k    = 1[r < k] / (r + 1)

Ties are counted against the target: ``r = #{score > s_t} + #{score == s_t, other items}``.
A model that scores everything equally therefore gets rank N-1, not 0, so degenerate models
cannot look good. Non-finite scores never help the target: a NaN item score counts as higher
than the target, and a non-finite target score (NaN, +inf or -inf) is a miss (rank N, beyond
every cut-off). The accumulator counts such users per size (``nonfinite``) so they are reported.

Two protocols from the same scores, both always reported:

* **all items** (names ``ndcg@10``, ...): the target ranked among every catalog item, as the
  published fMRLRec code measures;
* **unseen items** (names ``unseen/ndcg@10``, ...): items the user already has in their history
  (other than the target) are left out of the ranking, as serving returns them and as RecBole
  and RecTools benchmarks report. The unseen rank is the all-items rank minus the distinct seen
  items scored at or above the target, so it costs one gather of the history's scores, not a
  second ranking.

Results are accumulated as per-user *sums* and a user count, so that shards of users (batches,
or ranks of a distributed job) combine by summation, never by averaging averages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

METRIC_NAMES = ("recall", "ndcg", "mrr")
DEFAULT_KS = (5, 10, 20, 50)
PROTOCOLS = ("all", "unseen")
UNSEEN = "unseen/"  # name prefix of the unseen-items protocol


def protocol_of(name: str) -> str:
    """ "all" for ``ndcg@10``, "unseen" for ``unseen/ndcg@10``."""
    return "unseen" if name.startswith(UNSEEN) else "all"


def validate_ks(ks: Iterable[int], num_items: int | None = None) -> tuple[int, ...]:
    """Return ``ks`` as a sorted tuple, raising ``ValueError`` for an empty list, a k <= 0, or
    (when the catalog size ``num_items`` is given) a k >= ``num_items``, which every ranking
    would hit trivially (Recall@k = 1)."""
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("metrics.ks must name at least one cut-off k")
    bad = [k for k in ks if k <= 0]
    if bad:
        raise ValueError(f"metrics.ks must be positive integers, got {bad} in {list(ks)}")
    if num_items is not None:
        too_big = [k for k in ks if k >= num_items]
        if too_big:
            raise ValueError(
                f"metrics.ks {too_big} are not below the catalog size {num_items}: every ranking would hit "
                f"(Recall@k = 1); use cut-offs smaller than {num_items}"
            )
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
    """0-based rank of each target among all items, ties and non-finite scores counted against it.

    scores: (..., B, N+1) with the padding column already at -inf; targets: (B,) in 1..N.
    Returns (..., B) long: ``#{score > s_t} + #{score == s_t, other items} + #{score is NaN}``,
    or N (a miss at every cut-off k < N) where the target's own score is not finite.
    """
    index = targets.view(*([1] * (scores.dim() - 2)), -1, 1).expand(*scores.shape[:-1], 1)
    target_scores = scores.gather(-1, index)  # (..., B, 1)
    # >= counts the target itself once; a NaN item compares False, so it is added explicitly
    not_below = ((scores >= target_scores) | scores.isnan()).sum(-1) - 1
    num_items = scores.shape[-1] - 1
    return torch.where(target_scores.squeeze(-1).isfinite(), not_below, torch.full_like(not_below, num_items))


def seen_not_below(scores: torch.Tensor, history: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How many DISTINCT seen items (history ids other than 0 and the target) score at or above the
    target (or NaN): what the unseen-items protocol removes from the all-items rank.

    scores: (..., B, N+1); history: (B, H) item ids, 0 = padding; targets: (B,) -> (..., B) long.
    """
    ids, _ = history.sort(dim=1)  # (B, H): duplicates side by side
    valid = (ids != 0) & (ids != targets[:, None])
    valid[:, 1:] &= ids[:, 1:] != ids[:, :-1]  # each seen item once
    lead = scores.shape[:-2]
    seen = scores.gather(-1, ids.expand(*lead, *ids.shape))  # (..., B, H)
    index = targets.view(*([1] * len(lead)), -1, 1).expand(*lead, targets.shape[0], 1)
    target_scores = scores.gather(-1, index)  # (..., B, 1)
    return (((seen >= target_scores) | seen.isnan()) & valid).sum(-1)


def unseen_ranks(
    ranks: torch.Tensor, scores: torch.Tensor, history: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """(..., B) ranks among unseen items from the all-items ``ranks`` of :func:`target_ranks`; a
    miss (rank N: non-finite target score) stays a miss."""
    num_items = scores.shape[-1] - 1
    return torch.where(ranks >= num_items, ranks, ranks - seen_not_below(scores, history, targets))


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int], prefix: str = "") -> dict[str, torch.Tensor]:
    """Per-user metric values from 0-based ranks. ranks: (..., B) -> {"recall@k": (..., B), ...}
    (names prefixed with ``prefix``, e.g. ``unseen/``)."""
    ranks = ranks.to(torch.float64)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = (ranks < k).to(torch.float64)
        out[f"{prefix}recall@{k}"] = hit
        out[f"{prefix}ndcg@{k}"] = hit / torch.log2(ranks + 2.0)
        out[f"{prefix}mrr@{k}"] = hit / (ranks + 1.0)
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
    nonfinite: torch.Tensor | None = None  # (M,) users whose scores held a NaN/inf (counted as misses)

    def update(
        self, scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor | None = None
    ) -> None:
        """scores: (M, B, N+1) for the M sizes, padding column at -inf; targets: (B,); history
        (B, H) item ids (0 = padding): with it, the unseen-items protocol is accumulated too."""
        if scores.shape[0] != len(self.sizes):
            raise ValueError(f"scores hold {scores.shape[0]} sizes, accumulator expects {len(self.sizes)}")
        # -inf is legitimate (padding, filtered history); NaN and +inf are not
        bad = (scores.isnan() | (scores == float("inf"))).any(-1).sum(-1).cpu()  # (M,)
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite + bad
        ranks = target_ranks(scores, targets)
        unseen = unseen_ranks(ranks, scores, history, targets) if history is not None else None
        self.update_ranks(ranks, unseen)

    def update_ranks(self, ranks: torch.Tensor, unseen: torch.Tensor | None = None) -> None:
        """ranks: (M, B) 0-based target ranks (see :func:`target_ranks`); ``unseen`` (M, B) the
        same among unseen items (:func:`unseen_ranks`), or None."""
        per_user = metrics_from_ranks(ranks, self.ks)
        if unseen is not None:
            per_user.update(metrics_from_ranks(unseen, self.ks, UNSEEN))
        for name, values in per_user.items():
            total = values.sum(-1).cpu()
            self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.count += int(ranks.shape[-1])

    def merge(self, other: MetricAccumulator) -> None:
        for name, total in other.sums.items():
            self.sums[name] = self.sums[name] + total if name in self.sums else total.clone()
        if other.nonfinite is not None:
            self.nonfinite = (
                other.nonfinite.clone() if self.nonfinite is None else self.nonfinite + other.nonfinite
            )
        self.count += other.count

    def nonfinite_users(self) -> dict[int, int]:
        """{size: number of users whose scores held a NaN or +inf} (0 everywhere for a healthy model)."""
        counts = (
            self.nonfinite if self.nonfinite is not None else torch.zeros(len(self.sizes), dtype=torch.long)
        )
        return {size: int(counts[i]) for i, size in enumerate(self.sizes)}

    def compute(self) -> dict[int, dict[str, float]]:
        """{size: {"recall@10": value, ...}} averaged over all users seen."""
        if self.count == 0:
            raise ValueError("no users were evaluated")
        return {
            size: {name: float(total[i] / self.count) for name, total in sorted(self.sums.items())}
            for i, size in enumerate(self.sizes)
        }
