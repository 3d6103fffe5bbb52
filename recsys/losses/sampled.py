"""Sampled Matryoshka softmax (``loss=sampled_softmax``), for catalogs too large for a full softmax.

Candidates = the UNIQUE items among the batch's positive items and ``num_negatives`` negatives
drawn from a sampling distribution q (uniform or training popularity), shared by every position.
Only the items of the batch (inputs, targets, negatives) are looked up through the tables. Logits
at every size are built fused (per-chunk partial scores + cumsum,
:func:`recsys.losses.matryoshka.all_size_logits`) and logQ-corrected. Like every training loss
(``recsys/losses/__init__.py``) it returns the loss SUMMED over the batch's target positions.

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

from recsys.losses.matryoshka import all_size_logits, embed_ids, size_weights_tensor

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


def log_inclusion_probability(
    candidates: torch.Tensor,
    num_positives: int,
    num_negatives: int,
    popularity: torch.Tensor,
    q: torch.Tensor | None,
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
    with torch.autocast(hidden.device.type, enabled=False):  # logits and softmax in fp32, even under autocast
        logits = all_size_logits(hidden.float(), cand_emb.float(), ladder)  # (M, P, C), fused cumsum
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    corr = log_q.to(logits)[None, :].expand(hidden.shape[0], -1)  # (P, C)
    if target_log_q is not None:
        corr = corr.clone()
        corr[rows, target_index] = target_log_q.to(logits)
    logp = torch.log_softmax(logits - corr[None], dim=-1)
    per_size = -logp[:, rows, target_index].sum(1)  # (M,)
    return (weights * per_size).sum(), per_size.detach()


def sampled_softmax_sum(
    model,
    seq: torch.Tensor,
    targets: torch.Tensor,
    size_weights: Sequence[float] | None,
    negatives: torch.Tensor,
    popularity: torch.Tensor,
    q: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """seq (B, L), targets (B, L) (0 = ignored) -> (total_sum, per_size_sum (M,) detached, count).

    ``negatives`` (K,) sampled ids; ``popularity`` (N+1,) target probabilities; ``q`` the
    negatives' sampling distribution (None = uniform).
    """
    device = seq.device
    keep = targets != 0
    pos = targets[keep]
    zero_id = torch.zeros(1, dtype=seq.dtype, device=device)
    ids = torch.unique(torch.cat([zero_id, seq.flatten(), pos, negatives.to(device)]))  # sorted, ids[0] = 0
    emb = embed_ids(model, ids)  # (U, D)
    hidden = model.encode_at(torch.searchsorted(ids, seq), keep, emb)  # (P, D); padding id 0 -> index 0
    count = int(keep.sum())
    if count == 0:
        return hidden.sum() * 0.0 + emb.sum() * 0.0, torch.zeros(len(model.ladder)), 0
    cands = torch.unique(torch.cat([pos, negatives.to(device)]))
    cand_emb = emb[torch.searchsorted(ids, cands)]
    # Negatives of row p: the P - 1 other positions' targets and the K samples (module docstring).
    log_q = log_inclusion_probability(cands.cpu(), count - 1, int(negatives.numel()), popularity, q)
    total, per_size = sampled_matryoshka_ce_sum(
        hidden,
        torch.searchsorted(cands, pos),
        cand_emb,
        log_q.to(device),
        model.ladder,
        size_weights,
        target_log_q=torch.zeros(count, device=device),  # the row's own target: in S surely
    )
    return total, per_size, count


class SampledSoftmaxLoss:
    """``loss=sampled_softmax``: :func:`sampled_softmax_sum` with ``num_negatives`` negatives per step.

    ``loss(model, seq (B, L), targets (B, L), step_seed) -> (total_sum, per_size_sum (M,), count)``;
    the negatives are drawn from a generator seeded with ``step_seed`` (the trainer derives it from
    the run's seed, the step and the rank: resumable, distinct per rank). ``sampler``: ``uniform``
    or ``popularity`` (training-target frequency, also the in-batch model of the correction).
    :meth:`prepare` must be called with the training targets before the first step. The values
    are checked by ``recsys.config.validate`` (``loss.num_negatives``, ``loss.sampler``).
    """

    def __init__(
        self, size_weights: Sequence[float] | None = None, num_negatives: int = 256, sampler: str = "uniform"
    ) -> None:
        self.size_weights = list(size_weights) if size_weights is not None else None
        self.num_negatives, self.sampler = int(num_negatives), sampler
        self.popularity: torch.Tensor | None = None

    def prepare(self, train_targets: torch.Tensor, num_items: int) -> None:
        """train_targets (W, L) next-item ids (0 = padding) -> the (N+1,) target popularity."""
        self.popularity = item_popularity(train_targets, num_items)

    def __call__(
        self, model, seq: torch.Tensor, targets: torch.Tensor, step_seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.popularity is None:
            raise RuntimeError("SampledSoftmaxLoss.prepare(train_targets, num_items) was not called")
        q = self.popularity if self.sampler == "popularity" else None
        generator = torch.Generator().manual_seed(step_seed)
        negatives = sample_negatives(self.num_negatives, model.num_items, generator, q)
        return sampled_softmax_sum(model, seq, targets, self.size_weights, negatives, self.popularity, q)
