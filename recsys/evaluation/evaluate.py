"""Full-ranking evaluation at every size from one forward pass (the command: ``recsys/evaluation/cli.py``)."""

from __future__ import annotations

import logging

import torch

from recsys.data import EvalSplit
from recsys.evaluation.metrics import MetricAccumulator, validate_ks
from recsys.model import MatryoshkaRecModel

log = logging.getLogger("recsys.evaluation.evaluate")


@torch.no_grad()
def evaluate_split(
    model: MatryoshkaRecModel,
    split: EvalSplit,
    ks: tuple[int, ...] | list[int],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    user_range: tuple[int, int] | None = None,
    split_name: str = "evaluation",
) -> MetricAccumulator:
    """Rank every catalog item for each user of ``split`` at every size of ``model.ladder``, under
    both protocols (all items: ``ndcg@10``; unseen items only: ``unseen/ndcg@10``; see
    ``recsys/evaluation/metrics.py``) from the same scores.

    The catalog embeddings (N+1, D) are computed once (and what the backbone computes per catalog
    item, kept in a cache for every batch); each batch costs one backbone pass, only what the last
    position needs (``model.score``), and one fused all-sizes scoring. ``user_range`` restricts to
    users [start, stop) (used to shard users across ranks). Returns the accumulator of per-user sums (call ``.compute()``). Users whose
    scores hold a NaN or +inf count as misses and are logged (``split_name``) and counted
    (``acc.nonfinite_users()``).
    """
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(sizes=tuple(model.ladder), ks=validate_ks(ks, model.num_items))
    item_emb = model.item_embeddings()
    cache: dict = {}  # what the backbone computes per catalog item, once for every batch
    start, stop = user_range if user_range is not None else (0, len(split))
    for inputs, targets, history in split.batches(batch_size, start, stop):
        inputs, targets, history = inputs.to(device), targets.to(device), history.to(device)
        # float64 dot products: fp32 rounding of the large common score offset reorders near-ties;
        # (M, B, N+1), padding column -inf
        scores = model.score(inputs, item_emb, dtype=torch.float64, cache=cache)
        acc.update(scores, targets, history)
    model.train(was_training)
    bad = {d: n for d, n in acc.nonfinite_users().items() if n}
    if bad:
        log.warning(
            "%s: non-finite scores for %s users (size: users); they are counted as misses",
            split_name,
            ", ".join(f"d{d}: {n}" for d, n in bad.items()),
        )
    return acc
