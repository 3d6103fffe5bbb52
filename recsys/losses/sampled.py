"""Training losses as *sums* over positions, shared by single-process and distributed training.

Both losses return ``(total_sum, per_size_sum, count)``: the weighted Matryoshka loss summed over
the target positions of the (local) batch, the per-size sums (detached) and the number of
positions. The trainer divides by the GLOBAL count of target positions of the global batch, so
that the union of the ranks' shards gives the single-process loss and gradients exactly.

* ``full_softmax``: the fused full-catalog Matryoshka cross-entropy of ``recsys.losses.matryoshka``; every
  catalog item is looked up through ``model.tables`` (sharded tables: the KJT all-to-all gathers
  the rows) and projected.
* ``sampled_softmax``: candidates = the UNIQUE items among the batch's positive items and
  ``num_negatives`` negatives drawn from a sampling distribution q (uniform or training
  popularity), shared by every position. Only the items of the batch (inputs, targets,
  negatives) are looked up through the tables. Logits at every size are built fused (per-chunk
  partial scores + cumsum, :func:`recsys.losses.matryoshka.all_size_logits`) and logQ-corrected.

  Correction (see :func:`log_inclusion_probability`). Model of the candidate process: the P
  target positions of the batch draw their targets i.i.d. from the popularity ``pop`` and the K
  negatives are drawn i.i.d. from q; the candidate set S is the union, each item at most once.
  For row p (target t_p), an item j != t_p is in S iff one of the P - 1 OTHER positions or one
  of the K negatives drew it, with probability

      pi(j) = 1 - (1 - pop(j))^(P-1) (1 - q(j))^K     (computed as -expm1(sum of log1p)),

  the same for every row. Row p's logit of candidate j becomes ``s(p, j) - log pi(j)`` for
  j != t_p, and its target logit ``s(p, t_p)`` is NOT corrected: t_p is in S with probability 1
  given row p. Then ``exp(s_t) + sum_{j in S, j != t} exp(s_j) / pi(j)`` is the Horvitz-Thompson
  (unbiased) estimate of the full partition function, so the loss and its gradients are
  consistent estimates of the full softmax's (Bengio & Senecal 2008; Blanc & Rendle 2018; the
  inclusion-probability form is TF's ``*_candidate_sampler(unique=True)`` expected counts, and
  the in-batch form of Yi et al., RecSys 2019). Correcting by the expected number of draws
  ``P pop(j) + K q(j)`` instead (right only for a multiset that keeps duplicates) over-corrects
  popular items, up to ~log(15) nats, since a unique candidate appears once. Correcting the
  target by its own log pi would multiply its weight in the partition function by 1/pi(t) > 1,
  shrinking the loss and gradient of rows with rare targets. Since S is unique, the target
  appears once in each row's softmax and is never also one of its own negatives, even when it
  was sampled as a negative or is another position's target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recsys.losses.matryoshka import all_size_logits, matryoshka_cross_entropy, size_weights_tensor

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
    """candidates (C,) ids -> (C,) float64 log(P * pop(i) + K * q(i)) (q None = uniform 1/N).

    The expected number of occurrences of each item in the candidate MULTISET (duplicates kept).
    Not the correction of :func:`sampled_softmax_sum`, whose candidates are unique: see
    :func:`log_inclusion_probability`.
    """
    num_items = popularity.shape[0] - 1
    q_c = torch.full(candidates.shape, 1.0 / num_items, dtype=torch.float64) if q is None else q[candidates]
    return torch.log(num_positions * popularity[candidates] + num_negatives * q_c)


def log_inclusion_probability(
    candidates: torch.Tensor, num_positives: int, num_negatives: int, popularity: torch.Tensor, q: torch.Tensor | None
) -> torch.Tensor:
    """candidates (C,) ids in 1..N -> (C,) float64 log pi(i) <= 0, pi(i) = 1 - (1-pop(i))^P' (1-q(i))^K.

    pi(i) is the probability that item i is in the UNIQUE candidate set formed by ``num_positives``
    (P') i.i.d. draws from ``popularity`` (N+1,) and ``num_negatives`` (K) i.i.d. draws from ``q``
    (N+1,; None = uniform over 1..N). Computed stably as ``log(-expm1(P' log1p(-pop) + K
    log1p(-q)))``: ~ log(P' pop + K q) for rare items (no cancellation), -> 0 for items almost
    surely drawn. An item that cannot be drawn (pi = 0) is clamped to the smallest positive
    float64, so that its correction stays finite.
    """
    popularity = popularity.double()
    num_items = popularity.shape[0] - 1
    if q is None:
        q_c = torch.full(candidates.shape, 1.0 / num_items, dtype=torch.float64, device=candidates.device)
    else:
        q_c = q.double()[candidates]
    log_miss = num_positives * torch.log1p(-popularity[candidates]) + num_negatives * torch.log1p(-q_c)
    pi = (-torch.expm1(log_miss)).clamp(torch.finfo(torch.float64).tiny, 1.0)
    return torch.log(pi)


def sampled_matryoshka_ce_sum(
    hidden: torch.Tensor,
    target_index: torch.Tensor,
    cand_emb: torch.Tensor,
    log_q: torch.Tensor,
    ladder: Sequence[int],
    size_weights: Sequence[float] | None = None,
    target_log_q: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (P, D), target_index (P,) index into the C candidates, cand_emb (C, D), log_q (C,).

    ``log_q[c]`` corrects candidate c as a negative; ``target_log_q`` (P,) corrects row p's own
    target (None: ``log_q[target_index]``, i.e. every candidate corrected alike;
    :func:`sampled_softmax_sum` passes zeros). Returns (sum_m w_m sum_p CE_m[p], per-size sums
    (M,) detached) with ``CE_m[p] = -log softmax_c(h[p,:s_m] . e_c[:s_m] - corr[p, c])[target]``,
    ``corr[p, c] = log_q[c]`` for c != target_index[p] and ``target_log_q[p]`` at the target.
    """
    weights = size_weights_tensor(ladder, size_weights).to(hidden.device)
    logits = all_size_logits(hidden.float(), cand_emb.float(), ladder)  # (M, P, C), fused cumsum
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    corr = log_q.to(logits)[None, :].expand(hidden.shape[0], -1)  # (P, C)
    if target_log_q is not None:
        corr = corr.clone()
        corr[rows, target_index] = target_log_q.to(logits)
    logp = torch.log_softmax(logits - corr[None], dim=-1)
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
    # Negatives of row p: the P - 1 other positions' targets and the K samples (module docstring).
    log_q = log_inclusion_probability(cands.cpu(), count - 1, int(negatives.numel()), popularity, q)
    total, per_size = sampled_matryoshka_ce_sum(
        hidden[keep],
        torch.searchsorted(cands, pos),
        cand_emb,
        log_q.to(device),
        model.ladder,
        size_weights,
        target_log_q=torch.zeros(count, device=device),  # the row's own target: in S surely
    )
    return total, per_size, count
