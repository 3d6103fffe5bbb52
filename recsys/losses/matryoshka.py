"""Scores at every size and the Matryoshka cross-entropy, fused.

Size-d score of position p and item i: ``h[p, :d] . E[i, :d]``. All M sizes at once: per-chunk
partial scores ``h[:, a:b] @ E[:, a:b]^T`` (chunk j = dims [s_{j-1}:s_j]) summed cumulatively
over chunks, so all sizes cost the FLOPs of ONE full (P, D) x (D, N+1) GEMM instead of M.

Loss: ``sum_m w_m * CE_m`` with CE_m the mean over positions of the full-softmax cross-entropy
at size s_m of the logits times ``t_m`` (``size_scales``, default 1: a per-size temperature, which
leaves every size's ranking unchanged); item 0 (padding) is excluded from the softmax. Weights default to equal and are
normalised to sum to 1, so the loss is on the scale of one cross-entropy whatever M is.

Self-distillation (``distill_weight`` = alpha > 0): every size but the widest learns from a
soft target, ``q_m = (1 - alpha) onehot(target) + alpha * stop_grad(p_M)`` with ``p_M`` the widest
size's softmax over the catalog, i.e. its loss is ``(1 - alpha) CE_m + alpha H(p_M, p_m)`` (H the
cross-entropy between the two distributions; the KL up to a constant). The widest size keeps the
plain CE and no gradient flows back into its distribution. Its gradient w.r.t. the logits is
``p_m - q_m``, so it rides the same fused pass: the widest size's softmax, computed first anyway,
is kept in one more (p, N+1) buffer.

Training memory: ``matryoshka_cross_entropy`` goes over positions in chunks sized so the
(M, chunk, N+1) logits fit ``budget_bytes``, and computes the gradients w.r.t. h and E chunk by
chunk inside the forward pass (a custom autograd function): the logits of a chunk are freed
before the next is built, so memory is bounded by one chunk, never M x P x (N+1).
With G_m = dLoss/dlogits_m, the gradient of chunk c is R_c = sum_{m >= c} G_m (a reverse
cumulative sum), dh[:, c] = R_c E[:, c] and dE[:, c] = R_c^T h[:, c]: again one GEMM's FLOPs each.

Training objective: :class:`FullSoftmaxLoss` (``configs/loss/full_softmax.yaml``) returns the loss
SUMMED over the target positions of the (local) batch; the trainer divides by the global target
count (see ``recsys/losses/__init__.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch

from recsys.nn.nested import chunk_bounds

DEFAULT_BUDGET_BYTES = 1 << 28  # 256 MiB on a GPU: GEMMs stay large (hundreds of rows), memory stays small
# On a CPU the chunk's M logit slabs are read and written ~8 times (GEMMs, softmax, flush, the running
# sum, the gradient GEMMs): sized to half the last-level cache they stay in it between passes. ML-100K
# demo / ML-1M reduced nested train step on the 32 MiB-L3 AMD EPYC: 0.82-0.84x the time at 256 MiB
# (16 MiB), 0.84-0.92x at 32 MiB, 0.82-0.89x at 8 MiB (interleaved, same batches; docs/model.md).
CPU_FALLBACK_BUDGET_BYTES = 1 << 24  # when the cache size cannot be read
_SYSFS_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}  # sysfs cache sizes read e.g. "32768K"
# below this, -log p(target) from an fp32 softmax is not exact (subnormal range near 1e-38): recomputed
_TINY_PROBABILITY = 1e-30
# Softmax probabilities at or below this are set to 0 in the gradient (see _flush_threshold)
_FLUSH_PROBABILITY = 1e-20
_FLT_MIN = torch.finfo(torch.float32).tiny  # smallest normal fp32 (1.18e-38)


@functools.cache
def cpu_budget_bytes() -> int:
    """Half the CPU's last-level cache (Linux sysfs), clamped to [4 MiB, 256 MiB]; 16 MiB if unknown."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (index / "size").read_text().strip()
            level = int((index / "level").read_text())
        except (OSError, ValueError):
            continue
        if size and size[-1] in _SYSFS_SIZE_UNITS and size[:-1].isdigit():
            sizes.append((level, int(size[:-1]) * _SYSFS_SIZE_UNITS[size[-1]]))
    if not sizes:
        return CPU_FALLBACK_BUDGET_BYTES
    return min(max(max(sizes)[1] // 2, 1 << 22), DEFAULT_BUDGET_BYTES)


def loss_budget_bytes(device: torch.device, budget_bytes: int | None) -> int:
    """The logits budget of the loss: ``budget_bytes`` if given, else by device (GPU 256 MiB, CPU
    :func:`cpu_budget_bytes`)."""
    if budget_bytes is not None:
        return budget_bytes
    return cpu_budget_bytes() if device.type == "cpu" else DEFAULT_BUDGET_BYTES


def _flush_threshold(factors: Sequence[float], gs: Sequence[float]) -> float:
    """Probability below which a softmax entry is set to 0 before the gradient GEMMs.

    Why: over a catalog of thousands of items a trained model's softmax puts most items at
    probabilities below 1e-38, i.e. subnormal fp32 numbers, and x86 CPUs run GEMMs that read them
    ~30x slower (microcode assists; measured: a (3000, 3418) @ (3418, 64) product 388 ms with a
    quarter of its inputs subnormal, 37 ms with them zero). ``torch.set_flush_denormal`` does not
    help: it sets the FTZ/DAZ flags of the calling thread only, not of the BLAS/OpenMP workers.
    Setting such entries to 0 changes no fp32 result in practice: a row's gradient is dominated by
    entries of at least 1/N (the row's largest probability), whose rounding error (~6e-8 of them)
    exceeds the whole dropped mass (< N * 1e-20) by orders of magnitude. The threshold is raised
    where the loss factors (weights / positions) or the cross-size factors are so small that a
    kept entry would itself become subnormal once scaled.
    """
    smallest = min([f for f in factors if f > 0] + [g for g in gs if 0 < g < 1] + [1.0])
    return max(_FLUSH_PROBABILITY, 1024 * _FLT_MIN / smallest)


def size_weights_tensor(ladder: Sequence[int], size_weights: Sequence[float] | None) -> torch.Tensor:
    """(M,) float weights normalised to sum 1 (equal when None); ValueError on bad weights."""
    if size_weights is None:
        return torch.full((len(ladder),), 1.0 / len(ladder))
    w = torch.as_tensor(list(size_weights), dtype=torch.float32)
    if w.shape != (len(ladder),) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(
            f"size_weights must be {len(ladder)} non-negative numbers with a positive sum, got {list(size_weights)}"
        )
    return w / w.sum()


def all_size_logits(hidden: torch.Tensor, items: torch.Tensor, ladder: Sequence[int]) -> torch.Tensor:
    """hidden (P, D), items (N+1, D) -> (M, P, N+1): logits at every size of the ladder.

    Example::

        >>> all_size_logits(torch.randn(2, 4), torch.randn(5, 4), (2, 4)).shape
        torch.Size([2, 2, 5])
    """
    bounds = chunk_bounds(ladder)
    if torch.is_grad_enabled() and (hidden.requires_grad or items.requires_grad):
        partials = [hidden[:, a:b] @ items[:, a:b].T for a, b in bounds]  # M x (P, N+1)
        return torch.stack(partials).cumsum(0)
    out = hidden.new_empty(len(bounds), hidden.shape[0], items.shape[0])
    for j, (a, b) in enumerate(bounds):
        if j == 0:
            torch.mm(hidden[:, a:b], items[:, a:b].T, out=out[0])
        else:
            torch.addmm(out[j - 1], hidden[:, a:b], items[:, a:b].T, out=out[j])
    return out


def positions_per_chunk(num_sizes: int, num_rows: int, budget_bytes: int) -> int:
    """Positions per chunk so that (M, chunk, N+1) fp32 logits fit in ``budget_bytes`` (at least 1)."""
    return max(1, budget_bytes // (4 * num_sizes * num_rows))


def per_chunk_cross_size_grad(cross_size_grad: float | Sequence[float], num_sizes: int) -> tuple[float, ...]:
    """The cross-size gradient rule as one g_c in [0, 1] per chunk of the ladder (M,).

    >>> per_chunk_cross_size_grad(0.5, 3)
    (0.5, 0.5, 0.5)
    >>> per_chunk_cross_size_grad([0, 1, 1], 3)
    (0.0, 1.0, 1.0)
    """
    if isinstance(cross_size_grad, (int, float)):
        gs = (float(cross_size_grad),) * num_sizes
    else:
        gs = tuple(float(g) for g in cross_size_grad)
        if len(gs) != num_sizes:
            raise ValueError(f"cross_size_grad needs one value per size ({num_sizes}), got {list(gs)}")
    if not all(0.0 <= g <= 1.0 for g in gs):
        raise ValueError(f"cross_size_grad must be in [0, 1], got {list(gs)}")
    return gs


def _chunk_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    ladder: Sequence[int],
    weights: torch.Tensor,
    scale: float,
    grad_items: torch.Tensor | None = None,
    size_scales: Sequence[float] | None = None,
    cross_size_grad: float | Sequence[float] = 1.0,
    distill: float = 0.0,
    soft_sum: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk of positions, no autograd: summed CE per size (M,) and, if ``grad_items`` (N+1, D)
    is given, dL/dh (p, D) of ``scale * sum_m w_m * sum_p loss_m[p]``, dL/dE being added into ``grad_items``.
    CE_m is of the logits times ``size_scales[m]`` (all 1 when None). ``cross_size_grad`` < 1 scales
    the gradient a size's loss sends into the smaller sizes' chunks (see :func:`matryoshka_cross_entropy`).
    ``distill`` > 0: loss_m = (1 - distill) CE_m + distill H(p_M, p_m) for m < M (module docstring),
    the summed H of each size added into ``soft_sum`` (M,) (the widest size's entry stays 0)."""
    logits = all_size_logits(hidden, items, ladder)  # (M, p, N+1)
    if size_scales is not None:
        logits.mul_(torch.tensor(list(size_scales), dtype=logits.dtype, device=logits.device)[:, None, None])
    logits[:, :, 0] = float("-inf")  # padding is never a candidate
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    ce_sum = hidden.new_empty(len(ladder))
    if grad_items is None:
        teacher = torch.softmax(logits[-1, :, 1:], dim=-1) if distill > 0 else None  # (p, N)
        for m in range(len(ladder)):
            # log_softmax/softmax kernels, not logsumexp/exp_: exp of very negative logits is slow on CPU.
            log_p = torch.log_softmax(logits[m], dim=-1)
            ce_sum[m] = -log_p[rows, targets].sum()
            if teacher is not None and soft_sum is not None and m < len(ladder) - 1:
                soft_sum[m] += -torch.linalg.vecdot(teacher, log_p[:, 1:]).sum()
        return ce_sum, None
    factors = (weights * scale).tolist()
    if size_scales is not None:
        factors = [f * t for f, t in zip(factors, size_scales)]
    gs = per_chunk_cross_size_grad(cross_size_grad, len(ladder))
    _logits_to_gradients_(
        logits, hidden, targets, items, ladder, factors, gs, size_scales, ce_sum, distill, soft_sum
    )
    grad_h = torch.empty_like(hidden)
    for c, (a, b) in enumerate(chunk_bounds(ladder)):
        # written into the column slices in place (BLAS strides): no temporaries, no extra add pass
        torch.mm(logits[c], items[:, a:b], out=grad_h[:, a:b])  # (p, N+1) @ (N+1, s_c)
        grad_items[:, a:b].addmm_(logits[c].T, hidden[:, a:b])  # += (N+1, p) @ (p, s_c)
    return ce_sum, grad_h


def _logits_to_gradients_(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    ladder: Sequence[int],
    factors: Sequence[float],
    gs: Sequence[float],
    size_scales: Sequence[float] | None,
    ce_sum: torch.Tensor,
    distill: float = 0.0,
    soft_sum: torch.Tensor | None = None,
) -> None:
    """Turn the (M, p, N+1) logits (padding column at -inf) in place into the chunk gradients R_c
    the GEMMs read, writing the summed CE of each size into ``ce_sum`` (M,).

    ``factors[m]`` = w_m * scale * t_m, ``gs[m]`` the cross-size gradient rule of chunk m;
    ``hidden`` (p, D), ``targets`` (p,) and ``items`` (N+1, D) only for the exact CE of rows whose
    target probability underflows. No entry of the result is subnormal (see :func:`_flush_threshold`).
    ``distill`` > 0: sizes m < M get the soft target (module docstring); their summed H(p_M, p_m)
    is added into ``soft_sum`` (M,).
    """
    rows = torch.arange(logits.shape[1], device=logits.device)
    widest = len(ladder) - 1
    teacher = None  # (p, N+1): the widest size's softmax, kept for the soft targets of the others
    # In place, from the largest size down: logits[m] becomes R_m = sum_{m' >= m} G_m', with
    # G_m = w_m * scale * t_m * (softmax_m - onehot(target)) = dLoss/d(unscaled logits_m).
    # With cross_size_grad g_m < 1 for chunk m: R_m = G_m + g_m * S_{m+1}, S_{m+1} = sum_{m' > m} G_m'
    # kept in one extra (p, N+1) buffer, as (1 - g_m) G_m + g_m S_m.
    exact = all(g == 1.0 for g in gs)
    flush = _flush_threshold([*factors, *(f * distill for f in factors)], gs)
    suffix = None
    for m in range(len(ladder) - 1, -1, -1):
        grad = logits[m]  # (p, N+1)
        soft = teacher is not None
        if soft:
            # H(p_M, p_m) = logsumexp(logits_m) - p_M . logits_m = logits_m[target] + CE_m - p_M . logits_m:
            # read off the logits before the softmax overwrites them (padding column left out: p_M = 0 there)
            teacher_dot = torch.linalg.vecdot(teacher[:, 1:], grad[:, 1:])  # (p,)
            logit_target = grad[rows, targets]  # (p,) a copy (advanced indexing)
        torch._softmax(grad, -1, False, out=grad)  # in-place softmax (row-wise kernel, safe)
        # CE = -log p(target) from the softmax just taken: one pass over the logits fewer than a
        # separate log_softmax (the loss is memory-bound); exact where p(target) is not tiny, and
        # recomputed from the logits of those rows where it is (fp32 would lose it below ~1e-38)
        p_target = grad[rows, targets]  # (p,)
        ce = -torch.log(p_target)
        tiny = p_target < _TINY_PROBABILITY
        if bool(tiny.any()):
            scale_m = 1.0 if size_scales is None else size_scales[m]
            ce[tiny] = _exact_ce(hidden[tiny], targets[tiny], items, ladder[m], scale_m)
        ce_sum[m] = ce.sum()
        if distill > 0 and m == widest:
            teacher = torch.nn.functional.threshold(grad, flush, 0.0)  # p_M, flushed like the gradients
        torch.nn.functional.threshold_(grad, flush, 0.0)  # no subnormals into the GEMMs (_flush_threshold)
        if soft:
            if soft_sum is not None:
                soft_sum[m] += (logit_target + ce - teacher_dot).sum()
            # gradient p_m - q_m with q_m = (1 - distill) onehot(target) + distill p_M
            teacher_target = teacher[rows, targets]
            grad.sub_(teacher, alpha=distill)
            grad[rows, targets] = p_target - distill * teacher_target - (1.0 - distill)
        else:
            grad[rows, targets] = p_target - 1.0
        if m == len(ladder) - 1:
            grad.mul_(factors[m])
            if not exact and m > 0:
                suffix = grad.clone()
        elif exact:
            torch.add(logits[m + 1], grad, alpha=factors[m], out=grad)
        else:
            grad.mul_(factors[m])
            suffix.add_(grad)  # S_m
            if gs[m] == 1.0:
                grad.copy_(suffix)
            else:
                grad.mul_(1.0 - gs[m]).add_(suffix, alpha=gs[m])


def _exact_ce(
    hidden: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, size: int, scale: float
) -> torch.Tensor:
    """(r,) CE at one size of r positions, from their logits recomputed: hidden (r, D), targets (r,)."""
    logits = hidden[:, :size] @ items[:, :size].T * scale  # (r, N+1)
    logits[:, 0] = float("-inf")
    return -torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]


class _FusedMatryoshkaCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, targets, items, ladder, weights, budget_bytes, size_scales, cross_size_grad, distill
    ):
        # one more (p, N+1) buffer when a cross_size_grad < 1 (the running sum of larger sizes'
        # gradients), one more for self-distillation (the widest size's softmax)
        slabs = len(ladder) + any(g != 1.0 for g in cross_size_grad) + (distill > 0)
        chunk = positions_per_chunk(slabs, items.shape[0], budget_bytes)
        num = hidden.shape[0]
        per_size = hidden.new_zeros(len(ladder))
        soft = hidden.new_zeros(len(ladder))  # summed H(p_M, p_m) (distill > 0)
        grad_h = torch.empty_like(hidden)
        grad_items = torch.zeros_like(items)
        for start in range(0, num, chunk):
            ce, gh = _chunk_loss(
                hidden[start : start + chunk],
                targets[start : start + chunk],
                items,
                ladder,
                weights,
                1.0 / num,
                grad_items,
                size_scales,
                cross_size_grad,
                distill,
                soft,
            )
            per_size += ce
            grad_h[start : start + chunk] = gh
        per_size /= num
        ctx.save_for_backward(grad_h, grad_items)
        ctx.mark_non_differentiable(per_size)
        return _objective(weights, per_size, soft / num, distill), per_size

    @staticmethod
    def backward(ctx, grad_total, _grad_per_size):
        grad_h, grad_items = ctx.saved_tensors
        return grad_h * grad_total, None, grad_items * grad_total, None, None, None, None, None, None


def _objective(weights: torch.Tensor, ce: torch.Tensor, soft: torch.Tensor, distill: float) -> torch.Tensor:
    """sum_m w_m loss_m from the mean CE (M,) and mean H(p_M, p_m) (M,) of each size: the widest size
    (and every size with ``distill`` 0) on its CE alone."""
    w = weights.to(ce.dtype)
    if distill == 0:
        return (w * ce).sum()
    alpha = torch.full_like(ce, distill)
    alpha[-1] = 0.0
    return (w * ((1.0 - alpha) * ce + alpha * soft)).sum()


def matryoshka_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    ladder: Sequence[int],
    size_weights: Sequence[float] | None = None,
    budget_bytes: int | None = None,
    size_scales: Sequence[float] | None = None,
    cross_size_grad: float | Sequence[float] = 1.0,
    distill_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matryoshka full-softmax cross-entropy.

    hidden (P, D) at the positions to score, targets (P,) item ids in 1..N, items (N+1, D);
    ``size_scales`` (M,) positive logit multipliers per size (None = 1: plain softmax).
    Returns (total scalar = sum_m w_m CE_m, per_size (M,) detached mean CE at each size).
    Differentiable w.r.t. hidden and items (gradients computed chunk by chunk in the forward).
    ``budget_bytes``: cap on one chunk's logits (None: by device, :func:`loss_budget_bytes`); the
    chunking changes only the order of floating-point sums.

    ``cross_size_grad`` in [0, 1] is a gradient rule, not a different loss (the value returned is
    the same): the gradient that size m's loss sends into the partial score of chunk c < m (the
    dimensions it shares with the smaller sizes) is multiplied by it, i.e. size m's logits are
    ``P_m + sum_{c<m} (g P_c + (1 - g) stop_grad(P_c))``. 1 = the exact Matryoshka gradient; 0 =
    chunk c of h and E is trained by the size-s_c loss only, each larger size learning its new
    dimensions on top of the smaller ones (the nested layers' counterpart:
    ``recsys.nn.nested.set_cross_size_grad``, ``model.cross_size_grad``). A sequence of M values
    gives each chunk c its own g_c (the widest chunk's value has no effect: no larger size reaches it).

    ``distill_weight`` alpha in [0, 1): self-distillation (module docstring); the total is then
    ``sum_m w_m ((1 - alpha_m) CE_m + alpha_m H(p_M, p_m))`` with alpha_M = 0, per_size still the CE.
    """
    if not 0.0 <= float(distill_weight) < 1.0:
        raise ValueError(f"distill_weight must be in [0, 1), got {distill_weight}")
    distill_weight = float(distill_weight) if len(ladder) > 1 else 0.0
    cross_size_grad = per_chunk_cross_size_grad(cross_size_grad, len(ladder))
    weights = size_weights_tensor(ladder, size_weights).to(hidden.device)
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, items.dtype), torch.float32)
    hidden, items = (
        hidden.to(dtype),
        items.to(dtype),
    )  # softmax over the catalog in >= fp32, even under autocast
    if hidden.shape[0] == 0:
        raise ValueError("matryoshka_cross_entropy needs at least one position")
    budget_bytes = loss_budget_bytes(hidden.device, budget_bytes)
    if size_scales is not None:
        size_scales = tuple(float(t) for t in size_scales)
        if len(size_scales) != len(ladder) or not all(t > 0 and t < float("inf") for t in size_scales):
            raise ValueError(
                f"size_scales must be {len(ladder)} positive finite numbers, got {list(size_scales)}"
            )
    if torch.is_grad_enabled() and (hidden.requires_grad or items.requires_grad):
        with torch.autocast(hidden.device.type, enabled=False):  # the loss's GEMMs in fp32 too
            total, per_size = _FusedMatryoshkaCE.apply(
                hidden,
                targets,
                items,
                tuple(ladder),
                weights,
                budget_bytes,
                size_scales,
                cross_size_grad,
                distill_weight,
            )
        return total, per_size.detach()
    chunk = positions_per_chunk(len(ladder) + (distill_weight > 0), items.shape[0], budget_bytes)
    with torch.autocast(hidden.device.type, enabled=False):
        per_size, soft = _loss_sums(
            hidden, targets, items, ladder, weights, chunk, size_scales, distill_weight
        )
    return _objective(weights, per_size, soft, distill_weight), per_size


def _loss_sums(
    hidden, targets, items, ladder, weights, chunk, size_scales=None, distill: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) mean CE and (M,) mean H(p_M, p_m) (zeros unless ``distill``) per size, without gradients."""
    soft = hidden.new_zeros(len(ladder))
    ce = sum(
        _chunk_loss(
            hidden[s : s + chunk],
            targets[s : s + chunk],
            items,
            ladder,
            weights,
            1.0,
            None,
            size_scales,
            distill=distill,
            soft_sum=soft,
        )[0]
        for s in range(0, hidden.shape[0], chunk)
    )
    return ce / hidden.shape[0], soft / hidden.shape[0]


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


def size_logit_scales(ladder: Sequence[int], exponent: float) -> list[float] | None:
    """Per-size logit multipliers ``(s_M / s_m) ** exponent`` (None for exponent 0: plain softmax).

    A size-s dot product sums s terms, so its logits are about sqrt(s) smaller than the widest
    size's at the same per-dimension scale; exponent 0.5 sharpens the small sizes' softmax by that
    much, so that the shared leading dimensions need not grow to serve them.

        >>> size_logit_scales([8, 32], 0.5)
        [2.0, 1.0]
    """
    if exponent == 0:
        return None
    return [(ladder[-1] / s) ** exponent for s in ladder]


def full_softmax_sum(
    model,
    seq: torch.Tensor,
    targets: torch.Tensor,
    size_weights: Sequence[float] | None,
    logit_scale_exponent: float = 0.0,
    cross_size_grad: float | Sequence[float] = 1.0,
    distill_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """seq (B, L), targets (B, L) (0 = ignored) -> (total_sum, per_size_sum (M,) detached, count).

    The full-catalog Matryoshka CE summed over the ``count`` target positions; every catalog item is
    looked up through ``model.tables`` (sharded tables: the KJT all-to-all gathers the rows).
    """
    item_emb = embed_ids(model, model.item_ids)  # (N+1, D)
    keep = targets != 0
    hidden = model.encode_at(seq, keep, item_emb)  # (P, D), P = count
    count = int(keep.sum())
    if count == 0:  # this rank's shard has no target: zero loss that still touches every parameter
        zero = hidden.sum() * 0.0 + item_emb.sum() * 0.0
        return zero, torch.zeros(len(model.ladder)), 0
    total, per_size = matryoshka_cross_entropy(
        hidden,
        targets[keep],
        item_emb,
        model.ladder,
        size_weights,
        model.config.loss_budget_bytes,
        size_logit_scales(model.ladder, logit_scale_exponent),
        cross_size_grad,
        distill_weight,
    )
    return total * count, per_size * count, count


class FullSoftmaxLoss:
    """``loss=full_softmax``: the Matryoshka cross-entropy over the whole catalog at every size.

    ``loss(model, seq (B, L), targets (B, L), step_seed) -> (total_sum, per_size_sum (M,), count)``;
    ``step_seed`` is unused (the loss draws nothing). ``size_weights``: one per trained size, None = equal.
    ``logit_scale_exponent``: size s_m's logits are multiplied by ``(s_M / s_m) ** exponent`` (0 = off).
    ``cross_size_grad``: how much of a larger size's gradient reaches the dimensions it shares with
    the smaller sizes (1 = the exact Matryoshka gradient; see :func:`matryoshka_cross_entropy`);
    ``cross_size_grad_chunks``: the same, one value per trained size (chunk c = the dims size s_c adds;
    the widest chunk's value has no effect), e.g. ``[0, 1, 1, 1, 1, 1]``: the rule on the first chunk only.
    ``distill_weight`` alpha: every size but the widest learns from ``(1 - alpha) onehot + alpha p_M``,
    the widest size's (detached) softmax (module docstring); 0 = off.
    """

    def __init__(
        self,
        size_weights: Sequence[float] | None = None,
        logit_scale_exponent: float = 0.0,
        cross_size_grad: float = 1.0,
        cross_size_grad_chunks: Sequence[float] | None = None,
        distill_weight: float = 0.0,
    ) -> None:
        if not 0.0 <= float(distill_weight) < 1.0:
            raise ValueError(f"loss.distill_weight must be in [0, 1), got {distill_weight}")
        if not 0.0 <= float(logit_scale_exponent) <= 2.0:
            raise ValueError(f"loss.logit_scale_exponent must be in [0, 2], got {logit_scale_exponent}")
        if not 0.0 <= float(cross_size_grad) <= 1.0:
            raise ValueError(f"loss.cross_size_grad must be in [0, 1], got {cross_size_grad}")
        if cross_size_grad_chunks is not None:
            if float(cross_size_grad) != 1.0:
                raise ValueError(
                    "set loss.cross_size_grad or loss.cross_size_grad_chunks, not both "
                    f"(got {cross_size_grad} and {list(cross_size_grad_chunks)})"
                )
            if not all(0.0 <= float(g) <= 1.0 for g in cross_size_grad_chunks):
                raise ValueError(
                    f"loss.cross_size_grad_chunks must be in [0, 1], got {list(cross_size_grad_chunks)}"
                )
        self.size_weights = list(size_weights) if size_weights is not None else None
        self.logit_scale_exponent = float(logit_scale_exponent)
        self.cross_size_grad: float | list[float] = (
            float(cross_size_grad)
            if cross_size_grad_chunks is None
            else [float(g) for g in cross_size_grad_chunks]
        )
        self.distill_weight = float(distill_weight)

    def prepare(self, train_targets: torch.Tensor, num_items: int) -> None:
        """Nothing to learn from the training data."""

    def __call__(
        self, model, seq: torch.Tensor, targets: torch.Tensor, step_seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        return full_softmax_sum(
            model,
            seq,
            targets,
            self.size_weights,
            self.logit_scale_exponent,
            self.cross_size_grad,
            self.distill_weight,
        )
