"""Training losses as *sums* over positions, shared by single-process and distributed training.

Both losses return ``(total_sum, per_size_sum, count)``: the weighted Matryoshka loss summed over
the target positions of the (local) batch, the per-size sums (detached) and the number of
positions. The trainer divides by the GLOBAL count of target positions of the global batch, so
that the union of the ranks' shards gives the single-process loss and gradients exactly.

* ``full_softmax``: the fused full-catalog Matryoshka cross-entropy of ``recsys.losses``; every
  catalog item is looked up through ``model.tables`` (sharded tables: the KJT all-to-all gathers
  the rows) and projected.
* ``sampled_softmax``: candidates = the batch's positive items plus ``num_negatives`` negatives
  drawn from a sampling distribution q (uniform or training popularity), shared by every
  position. Only the items of the batch (inputs, targets, negatives) are looked up through the
  tables. Logits at every size are built fused (per-chunk partial scores + cumsum,
  :func:`recsys.losses.all_size_logits`) and corrected by logQ: candidate i's logit becomes
  ``s(p, i) - log Q(i)`` with ``Q(i) = P * pop(i) + K * q(i)`` the expected number of times item i
  enters the candidate set (P positions whose targets follow the popularity ``pop``, K sampled
  negatives from q) -- the correction of Yi et al. (RecSys 2019) / mixed negative sampling
  (Yang et al., WWW 2020). The correction is applied to every candidate, the positive included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recsys.losses import all_size_logits, matryoshka_cross_entropy, size_weights_tensor

KNOWN_SAMPLERS = ("uniform", "popularity")


def item_popularity(train_targets: torch.Tensor, num_items: int, smoothing: float = 1.0) -> torch.Tensor:
    """(N+1,) probabilities of each item as a training target (add-``smoothing``); entry 0 = 0."""
    counts = torch.bincount(train_targets[train_targets != 0].flatten(), minlength=num_items + 1).double()
    counts = counts[: num_items + 1] + smoothing
    counts[0] = 0.0
    return counts / counts.sum()


def sample_negatives(
    num_negatives: int, num_items: int, generator: torch.Generator, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """K ids in 1..N, uniform (``probs`` None) or drawn from ``probs`` (N+1,), with replacement."""
    if probs is None:
        return torch.randint(1, num_items + 1, (num_negatives,), generator=generator)
    return torch.multinomial(probs.float(), num_negatives, replacement=True, generator=generator)


def log_expected_count(
    candidates: torch.Tensor, num_positions: int, num_negatives: int, popularity: torch.Tensor, q: torch.Tensor | None
) -> torch.Tensor:
    """log Q(i) = log(P * pop(i) + K * q(i)) for each candidate id (q None = uniform 1/N)."""
    num_items = popularity.shape[0] - 1
    q_c = torch.full(candidates.shape, 1.0 / num_items, dtype=torch.float64) if q is None else q[candidates]
    return torch.log(num_positions * popularity[candidates] + num_negatives * q_c)


def sampled_matryoshka_ce_sum(
    hidden: torch.Tensor,
    target_index: torch.Tensor,
    cand_emb: torch.Tensor,
    log_q: torch.Tensor,
    ladder: Sequence[int],
    size_weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (P, D), target_index (P,) index into the C candidates, cand_emb (C, D), log_q (C,).

    Returns (sum_m w_m sum_p CE_m[p], per-size sums (M,) detached) with
    ``CE_m[p] = -log softmax_c(h[p,:s_m] . e_c[:s_m] - log_q[c])[target]``.
    """
    weights = size_weights_tensor(ladder, size_weights).to(hidden.device)
    logits = all_size_logits(hidden.float(), cand_emb.float(), ladder)  # (M, P, C), fused cumsum
    logits = logits - log_q.to(logits)[None, None, :]
    logp = torch.log_softmax(logits, dim=-1)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    per_size = -logp[:, rows, target_index].sum(1)  # (M,)
    return (weights * per_size).sum(), per_size.detach()


def full_softmax_sum(model, seq, targets, size_weights):
    """Full-catalog Matryoshka CE summed over positions: (total_sum, per_size_sum, count)."""
    item_emb = embed_ids(model, model.item_ids)
    hidden = model.encode(seq, item_emb)
    keep = targets != 0
    count = int(keep.sum())
    if count == 0:  # this rank's shard has no target: zero loss that still touches every parameter
        zero = hidden.sum() * 0.0 + item_emb.sum() * 0.0
        return zero, torch.zeros(len(model.ladder)), 0
    total, per_size = matryoshka_cross_entropy(
        hidden[keep], targets[keep], item_emb, model.ladder, size_weights, model.config.loss_budget_bytes
    )
    return total * count, per_size * count, count


def embed_ids(model, ids: torch.Tensor) -> torch.Tensor:
    """(n,) item ids -> (n, D) projected embeddings through the (possibly sharded) tables; id 0 -> 0.

    Same numbers as ``model.item_embeddings()`` for ``ids = model.item_ids``. Frozen feature rows
    are detached: with torchrec's fused (optimiser-in-backward) kernels of sharded tables, no
    gradient may reach a frozen table.
    """
    features, id_emb = model.tables(ids)
    if features is not None and not model.config.trainable_features:
        features = features.detach()
    emb = model.projector(features, id_emb)
    return emb * (ids != 0)[:, None].to(emb.dtype)


def sampled_softmax_sum(model, seq, targets, size_weights, negatives, popularity, q=None):
    """Sampled Matryoshka CE summed over positions: (total_sum, per_size_sum, count).

    ``negatives`` (K,) sampled ids; ``popularity`` (N+1,) target probabilities; ``q`` the
    negatives' sampling distribution (None = uniform).
    """
    device = seq.device
    keep = targets != 0
    pos = targets[keep]
    zero_id = torch.zeros(1, dtype=seq.dtype, device=device)
    ids = torch.unique(torch.cat([zero_id, seq.flatten(), pos, negatives.to(device)]))  # sorted, ids[0] = 0
    emb = embed_ids(model, ids)  # (U, D)
    hidden = model.encode(torch.searchsorted(ids, seq), emb)  # padding id 0 -> local index 0
    count = int(keep.sum())
    if count == 0:
        return hidden.sum() * 0.0 + emb.sum() * 0.0, torch.zeros(len(model.ladder)), 0
    cands = torch.unique(torch.cat([pos, negatives.to(device)]))
    cand_emb = emb[torch.searchsorted(ids, cands)]
    log_q = log_expected_count(cands.cpu(), count, int(negatives.numel()), popularity, q).to(device)
    total, per_size = sampled_matryoshka_ce_sum(
        hidden[keep], torch.searchsorted(cands, pos), cand_emb, log_q, model.ladder, size_weights
    )
    return total, per_size, count
