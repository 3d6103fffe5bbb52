"""LRU backbone (LRURec): linear recurrent units with a parallel scan, fully nested.

One LRU layer, per position t of a (B, L, D) sequence::

    lambda = exp(-exp(nu) + i*exp(theta))              (D,) complex, |lambda| < 1
    h_t    = lambda * h_{t-1} + gamma * (B x_t)         (B, L, D) complex, gamma = exp(gamma_log)
    y_t    = Re(C h_t) + skip * x_t                     (B, L, D)

Nesting: B (real and imaginary parts) and C (real and imaginary parts) are NestedLinear D -> D,
and nu, theta, gamma_log, skip are elementwise, sliced ``[:d]``. State chunk j is thus driven by
input chunks <= j only and output chunk j reads state chunks <= j only.

The recurrence is a first-order linear scan, solved in O(log L) depth by recursive doubling
(Hillis-Steele) on pairs (a_t, b_t) with h_t = a_t h_{t-1} + b_t. Padding positions get a = 1,
b = 0: they never change the state, wherever they are.

Inference needs the last position only (``forward_last``): the last block's LRU state h_L is one
weighted sum, ``sum_t gamma * lambda^(n_t) * (B x_t)`` with n_t the real positions after t, and its
output map, the FFN and the norms run at that position alone. With one block the input map runs
once per catalog item, not per position (``forward_last_items``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys.nn.backbone import Backbone, BackboneConfig, is_int, is_real, register_backbone
from recsys.nn.dropout import Dropout
from recsys.nn.nested import NestedGatedFFN, NestedLayerNorm, NestedLinear

#: elements of one (rows, L, D) temporary of LRU.forward_last_items (complex64: 8 MiB)
LAST_CHUNK_ELEMENTS = 1 << 20


@dataclass
class LRUConfig(BackboneConfig):
    """LRU backbone: ``num_blocks`` blocks of (LRU, nested gated FFN); eigenvalues start in a ring.

    Example::

        >>> backbone = LRUConfig(ladder=(4, 8), max_len=10, num_blocks=1).build()
        >>> backbone(torch.randn(2, 10, 8), torch.ones(2, 10, dtype=torch.bool)).shape
        torch.Size([2, 10, 8])
    """

    name: ClassVar[str] = "lru"
    ffn_multiplier: int = 4  # hidden width of the nested gated FFN = k * D
    # ring init radii of |lambda|: [0.5, 0.95] measured best on ML-100K (docs/model.md, quality);
    # the published LRURec/fMRLRec code uses [0, 0.1], a memory of two or three steps
    r_min: float = 0.5
    r_max: float = 0.95

    def checks(self) -> dict[str, bool]:
        radii = is_real(self.r_min) and is_real(self.r_max)
        return {
            **super().checks(),
            "ffn_multiplier": is_int(self.ffn_multiplier) and self.ffn_multiplier >= 1,
            "r_min": radii and 0.0 <= self.r_min < self.r_max,
            "r_max": radii and self.r_max < 1.0,
        }


def _doubling_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t, h_{-1} = 0, over dim 1, by recursive doubling (Hillis-Steele)."""
    length, offset = b.shape[1], 1
    while offset < length:
        # After this step, (a_t, b_t) composes the 2*offset steps ending at t.
        b = torch.cat([b[:, :offset], torch.addcmul(b[:, offset:], a[:, offset:], b[:, :-offset])], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return b


def _sequential_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same recurrence step by step: L small fused multiply-adds. On CPU this beats recursive
    doubling (ceil(log2 L) passes over the whole (B, L, D) tensor, plus a cat each): 4.2 ms vs 28 ms
    for (32, 50, 1024) complex64 at 2 threads, with the same result to rounding."""
    h = torch.empty_like(b)
    h[:, 0] = b[:, 0]
    for t in range(1, b.shape[1]):
        torch.addcmul(b[:, t], a[:, t], h[:, t - 1], out=h[:, t])
    return h


def _sequential_scan_reversed(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The adjoint recurrence s_t = g_t + conj(a_{t+1}) s_{t+1}, s_{L-1} = g_{L-1}, step by step
    from the end (no flipped copies)."""
    a_conj = a[:, 1:].conj().resolve_conj()  # (B, L-1, ...): conj(a_{t+1}) at t
    s = torch.empty_like(g)
    s[:, -1] = g[:, -1]
    for t in range(g.shape[1] - 2, -1, -1):
        torch.addcmul(g[:, t], a_conj[:, t], s[:, t + 1], out=s[:, t])
    return s


def _step_by_step(t: torch.Tensor) -> bool:
    """Whether the scans on ``t``'s device run step by step (CPU) or by recursive doubling (GPU:
    log-depth parallel passes beat L dependent kernel launches)."""
    return t.device.type == "cpu"


def _scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t: see ``_step_by_step``."""
    return _sequential_scan(a, b) if _step_by_step(b) else _doubling_scan(a, b)


class _LinearScan(torch.autograd.Function):
    """Memory-lean autograd for the scan: keeps only a and h, not the log L intermediate levels.

    Backward (PyTorch's conjugate-gradient convention): the adjoint s_t = dL/db_t solves the
    reversed recurrence s_t = g_t + conj(a_{t+1}) s_{t+1}, itself a scan, and dL/da_t = s_t conj(h_{t-1}).
    """

    @staticmethod
    def forward(ctx, a, b):
        h = _scan(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h = ctx.saved_tensors
        if _step_by_step(grad_h):
            grad_b = _sequential_scan_reversed(a, grad_h.contiguous())
        else:
            a_next = torch.cat([a[:, 1:], torch.ones_like(a[:, :1])], dim=1).conj()  # (B, L, ...)
            grad_b = _doubling_scan(a_next.flip(1), grad_h.flip(1)).flip(1)
        grad_a = torch.empty_like(grad_b)
        grad_a[:, :1] = 0
        torch.mul(grad_b[:, 1:], h[:, :-1].conj(), out=grad_a[:, 1:])
        return grad_a, grad_b


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t with h_{-1} = 0, over dim 1, in ceil(log2 L) steps.

    a, b: (B, L, ...) (real or complex, broadcastable to the same shape) -> h (B, L, ...).
    """
    a, b = torch.broadcast_tensors(a, b)
    return _LinearScan.apply(a.contiguous(), b.contiguous())


class LRU(nn.Module):
    """One linear recurrent unit (B, L, D) -> (B, L, D); state size D complex, nested."""

    # elementwise recurrence parameters: exempt from weight decay under trainer.no_decay=[recurrence]
    no_decay_parameters = ("nu_log", "theta_log", "gamma_log", "skip")

    def __init__(
        self, ladder: tuple[int, ...], r_min: float = 0.5, r_max: float = 0.95, max_phase: float = 2 * math.pi
    ):
        super().__init__()
        width = ladder[-1]
        # Ring init (Orvieto et al. 2023): |lambda| uniform on the ring [r_min, r_max] in area.
        u1 = torch.rand(width).clamp_min(1e-6)
        u2 = torch.rand(width).clamp_min(1e-6)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = torch.log(max_phase * u2)
        modulus = torch.exp(-torch.exp(nu_log))
        self.nu_log = nn.Parameter(nu_log)
        self.theta_log = nn.Parameter(theta_log)
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - modulus**2)))  # keeps E|h|^2 ~ E|Bx|^2
        self.skip = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.B_re = NestedLinear(ladder, bias=False)
        self.B_im = NestedLinear(ladder, bias=False)
        self.C_re = NestedLinear(ladder, bias=False)
        self.C_im = NestedLinear(ladder, bias=False)

    def eigenvalues(self) -> torch.Tensor:
        """(D,) complex lambda."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) bool True = real -> (B, L, D)."""
        gamma = torch.exp(self.gamma_log)  # (D,)
        real = pad_mask[..., None]  # (B, L, 1)
        # The recurrence runs in the parameters' precision even under autocast (no bf16 complex).
        bx = (
            torch.complex(self.B_re(x).to(gamma.dtype) * gamma, self.B_im(x).to(gamma.dtype) * gamma) * real
        )  # (B, L, D)
        lam = self.eigenvalues()
        decay = torch.where(real, lam, torch.ones_like(lam))  # (B, L, D): padding keeps the state
        h = linear_scan(decay, bx)  # (B, L, D) complex
        return self.C_re(h.real) - self.C_im(h.imag) + self.skip * x

    def forward_packed(
        self, x: torch.Tensor, keep: torch.Tensor, pad_mask: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``forward`` on the kept positions only: x (N, D) = the kept rows of a (B, L, D) input in
        row-major order, ``keep`` (N,) their flat indices into B*L, pad_mask (B, L) -> (N, D).
        The input map runs on the N kept rows, the recurrence on the (B, L) grid and the output
        map on the rows ``out`` (P,) of the N (default all: -> (N, D); given: -> (P, D)). A kept
        padding position (the last one of an all-padding row) drives nothing, as in ``forward``."""
        gamma = torch.exp(self.gamma_log)  # (D,)
        rows, width = pad_mask.numel(), x.shape[-1]
        real = pad_mask.reshape(-1)[keep][:, None]  # (N, 1)
        drive = (
            torch.complex(self.B_re(x).to(gamma.dtype) * gamma, self.B_im(x).to(gamma.dtype) * gamma) * real
        )
        bx = drive.new_zeros(rows, width).index_copy(0, keep, drive).view(*pad_mask.shape, width)
        lam = self.eigenvalues()
        decay = torch.where(pad_mask[..., None], lam, torch.ones_like(lam))  # (B, L, D)
        read = keep if out is None else keep[out]
        h = linear_scan(decay, bx).reshape(rows, width).index_select(0, read)  # (N or P, D) complex
        return self.C_re(h.real) - self.C_im(h.imag) + self.skip * (x if out is None else x[out])

    # Inference at the last position only. The last state is one weighted sum instead of a scan:
    # h_L = sum_t gamma * lambda^(n_t) * (B x_t), n_t = the real positions after t (padding keeps
    # the state, so it does not count, and its input is 0, so its weight is 0).
    def _last_weights(self, pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pad_mask (B, L) -> powers (L+1, D) complex, ``gamma * lambda^n`` for n < L and 0 in row L,
        and index (B, L) long: the row weighting position t (n_t, or L at padding)."""
        length = pad_mask.shape[1]
        counts = pad_mask.flip(1).long().cumsum(1).flip(1)  # (B, L): real positions s >= t (exact)
        after = torch.cat([counts[:, 1:], torch.zeros_like(counts[:, :1])], dim=1)  # s > t
        gamma = torch.exp(self.gamma_log)  # (D,)
        n = torch.arange(length, device=pad_mask.device, dtype=gamma.dtype)[:, None]  # (L, 1)
        log_lam = torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))  # lambda = exp(log_lam)
        powers = torch.exp(n * log_lam) * gamma  # (L, D)
        powers = torch.cat([powers, torch.zeros_like(powers[:1])])  # (L+1, D)
        return powers, torch.where(pad_mask, after, length)

    def _drive(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> B x (..., D) complex, in the parameters' precision: one GEMM whose output
        interleaves the rows of B_re and B_im (real, imaginary pairs)."""
        weight = torch.stack([self.B_re.effective_weight(), self.B_im.effective_weight()], dim=1)  # (D, 2, D)
        out = F.linear(x, weight.flatten(0, 1)).to(self.gamma_log.dtype)  # (..., 2D)
        return torch.view_as_complex(out.unflatten(-1, (-1, 2)))

    def _readout(self, h: torch.Tensor, x_last: torch.Tensor) -> torch.Tensor:
        """Last state h (B, D) complex, LRU input at the last position (B, D) -> output (B, D)."""
        return self.C_re(h.real) - self.C_im(h.imag) + self.skip * x_last

    def forward_last(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, D): ``forward(x, pad_mask)[:, -1]``, without the scan."""
        powers, index = self._last_weights(pad_mask)
        h = (powers[index] * self._drive(x)).sum(1)  # (B, D) complex
        return self._readout(h, x[:, -1])

    def forward_last_items(
        self, items: torch.Tensor, seq: torch.Tensor, table: torch.Tensor | None = None
    ) -> torch.Tensor:
        """items (N+1, D): the LRU's input for each item id, seq (B, L) ids (0 = padding) ->
        ``forward(items[seq], seq != 0)[:, -1]`` (B, D), B projected once per item, not per position.
        ``table``: ``self._drive(items)`` (N+1, D) complex, when the caller already has it."""
        powers, index = self._last_weights(seq != 0)
        table = self._drive(items) if table is None else table  # (N+1, D) complex
        h = powers.new_empty(seq.shape[0], powers.shape[1])
        # rows in chunks: (rows, L, D) temporaries of ~8 MiB, reused by the allocator, not fresh pages
        step = max(1, LAST_CHUNK_ELEMENTS // (seq.shape[1] * powers.shape[1]))
        for a in range(0, seq.shape[0], step):
            torch.sum(powers[index[a : a + step]] * table[seq[a : a + step]], dim=1, out=h[a : a + step])
        return self._readout(h, items[seq[:, -1]])

    def sliced_state(self, d: int) -> dict[str, torch.Tensor]:
        state = {n: getattr(self, n)[:d] for n in ("nu_log", "theta_log", "gamma_log", "skip")}
        for name in ("B_re", "B_im", "C_re", "C_im"):
            state.update({f"{name}.{k}": v for k, v in getattr(self, name).sliced_state(d).items()})
        return state


class LRUBlock(nn.Module):
    """Pre-norm residual block: x + Drop(LRU(LN(x))), then x + Drop(FFN(LN(x))). (B, L, D) -> (B, L, D)."""

    def __init__(
        self, ladder: tuple[int, ...], ffn_multiplier: int, dropout: float, r_min: float, r_max: float
    ):
        super().__init__()
        self.norm1 = NestedLayerNorm(ladder)
        self.lru = LRU(ladder, r_min, r_max)
        self.norm2 = NestedLayerNorm(ladder)
        self.ffn = NestedGatedFFN(ladder, ffn_multiplier, dropout)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, L, D)."""
        x = x + self.dropout(self.lru(self.norm1(x), pad_mask))
        return x + self.dropout(self.ffn(self.norm2(x)))

    def forward_packed(
        self, x: torch.Tensor, keep: torch.Tensor, pad_mask: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``forward`` on the real positions only: x (N, D), keep (N,), pad_mask (B, L) -> (N, D)
        (see ``LRU.forward_packed``): norms and FFN run on N rows instead of B*L; with ``out`` (P,)
        rows of the N, everything after the recurrence runs on those P rows only -> (P, D)."""
        x = (x if out is None else x[out]) + self.dropout(
            self.lru.forward_packed(self.norm1(x), keep, pad_mask, out)
        )
        return x + self.dropout(self.ffn(self.norm2(x)))

    def forward_last(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, D): ``forward(x, pad_mask)[:, -1]``; the LRU reads every
        position, the rest (its output map, the FFN, the norms after it) runs at the last one only."""
        x_last = x[:, -1] + self.dropout(self.lru.forward_last(self.norm1(x), pad_mask))
        return x_last + self.dropout(self.ffn(self.norm2(x_last)))

    def forward_last_items(
        self, items: torch.Tensor, seq: torch.Tensor, cache: dict | None = None
    ) -> torch.Tensor:
        """items (N+1, D) per item id, seq (B, L) -> ``forward_last(items[seq], seq != 0)`` (B, D):
        the norm and the LRU's input map run once per item of the catalog, and once per ``cache``
        (a dict the caller keeps across batches while ``items`` and the weights stay unchanged)."""
        hit = cache.get(self) if cache is not None else None
        if hit is None or hit[0] is not items:
            normed = self.norm1(items)
            hit = (items, normed, self.lru._drive(normed))
            if cache is not None:
                cache[self] = hit
        _, normed, table = hit
        x_last = items[seq[:, -1]] + self.dropout(self.lru.forward_last_items(normed, seq, table))
        return x_last + self.dropout(self.ffn(self.norm2(x_last)))


@register_backbone(LRUConfig)
class LRUBackbone(Backbone):
    """``num_blocks`` LRU blocks then a final NestedLayerNorm. (B, L, D) -> (B, L, D)."""

    def __init__(self, config: LRUConfig):
        super().__init__(config)
        self.blocks = nn.ModuleList(
            LRUBlock(config.ladder, config.ffn_multiplier, config.dropout, config.r_min, config.r_max)
            for _ in range(config.num_blocks)
        )
        self.norm = NestedLayerNorm(config.ladder)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) bool True = real -> (B, L, D), zero at padding positions
        except the last one (an all-padding row still has its last position, as inference reads it).

        Every map but the recurrence is per position, so they run on the real positions (and the
        last one) only (``forward_packed``): in a batch of ML-100K windows a third to a half of the
        positions are padding. ``forward_padded`` is the reference that runs everything everywhere.
        """
        kept = pad_mask.clone()
        kept[:, -1] = True
        keep = kept.reshape(-1).nonzero().squeeze(1)  # (N,) flat indices of the kept positions
        h = x.reshape(-1, x.shape[-1]).index_select(0, keep)  # (N, D)
        for block in self.blocks:
            h = block.forward_packed(h, keep, pad_mask)
        h = self.norm(h)
        return h.new_zeros(pad_mask.numel(), h.shape[-1]).index_copy(0, keep, h).view(*pad_mask.shape, -1)

    def forward_at(self, x: torch.Tensor, pad_mask: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L), at (B, L) bool -> (P, D) = ``forward(x, pad_mask)[at]``.

        Every block but the last runs on the real positions (the next recurrence reads them all);
        the last block's recurrence too, but its output map, FFN and the final norm run at the P
        positions of ``at`` only. With training windows that overlap (``data.train_stride`` below
        ``max_len``) only the last ``stride`` positions of a window are scored, so most of the
        per-position work is skipped; with non-overlapping windows ``at`` is every real position."""
        kept = pad_mask | at
        keep = kept.reshape(-1).nonzero().squeeze(1)  # (N,) flat indices of the positions read
        out = at.reshape(-1).index_select(0, keep).nonzero().squeeze(1)  # (P,) rows of the N scored
        h = x.reshape(-1, x.shape[-1]).index_select(0, keep)  # (N, D)
        for block in self.blocks[:-1]:
            h = block.forward_packed(h, keep, pad_mask)
        return self.norm(self.blocks[-1].forward_packed(h, keep, pad_mask, out))  # (P, D)

    def forward_padded(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, L, D): every position through every map (reference
        for ``forward``, equal at real positions)."""
        for block in self.blocks:
            x = block(x, pad_mask)
        return self.norm(x)

    def forward_last(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, D), the last position: every block but the last runs
        over all positions (the next block's recurrence reads them), the last one only what h_L needs."""
        for block in self.blocks[:-1]:
            x = block(x, pad_mask)
        return self.norm(self.blocks[-1].forward_last(x, pad_mask))

    def forward_last_items(
        self, items: torch.Tensor, seq: torch.Tensor, cache: dict | None = None
    ) -> torch.Tensor:
        """items (N+1, D), seq (B, L) -> (B, D), the last position of ``items[seq]``. One block and a
        catalog smaller than the batch's positions (or a ``cache`` that already holds its tables):
        the block's per-position maps run per item."""
        block = self.blocks[0]
        cached = cache is not None and block in cache and cache[block][0] is items
        if len(self.blocks) > 1 or (items.shape[0] >= seq.numel() and not cached):
            return super().forward_last_items(items, seq, cache)
        return self.norm(block.forward_last_items(items, seq, cache))
