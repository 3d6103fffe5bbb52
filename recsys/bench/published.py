"""A re-implementation, for timing only, of the model block of the published fMRLRec code
(github.com/yueqirex/fMRLRec, ``model/lru.py``), written from its description; torch only.

What makes it "the published block" (and what the framework's default does instead):

- every nested linear is one ``nn.Linear`` per ladder chunk, run one after the other and
  concatenated (framework: a few large GEMM pieces of one block-triangular weight);
- the LRU's input and output maps are complex-valued chunk linears applied to a complex copy of
  the input (framework: real maps B_re/B_im, C_re/C_im);
- the FFN is gated and square: ``w2(silu(gate(x)) * dropout(w1(x)))``, D -> D -> D (framework:
  gated 4D hidden width by default);
- layer norms per chunk; the sequence is left-padded to a power of two (50 -> 64) for its
  block-doubling scan, and every map runs on every position, padding included;
- the scores are one full-catalog matmul per size over ALL positions, concatenated into
  (M*B, L, N+1), and one ``cross_entropy(ignore_index=0)`` over them (framework: fused
  all-sizes loss on the target positions only).

``PublishedStyleModel.loss(seq, targets)`` has the worker's model interface.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn


def _chunk_sizes(ladder: tuple[int, ...]) -> list[int]:
    return [b - a for a, b in zip((0, *ladder[:-1]), ladder)]


class ChunkLinear(nn.Module):
    """(..., D) -> (..., D): output chunk j = Linear(x[..., :s_j]); one nn.Linear per chunk."""

    def __init__(self, ladder: tuple[int, ...], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.ladder = ladder
        with warnings.catch_warnings():  # "Complex modules are a new feature": they work for this
            warnings.simplefilter("ignore", UserWarning)
            self.parts = nn.ModuleList(
                nn.Linear(s, size, bias=False).to(dtype) for s, size in zip(ladder, _chunk_sizes(ladder))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x[..., :s]) for part, s in zip(self.parts, self.ladder)], dim=-1)


class ChunkLayerNorm(nn.Module):
    """(..., D) -> (..., D): one nn.LayerNorm per chunk."""

    def __init__(self, ladder: tuple[int, ...]):
        super().__init__()
        self.sizes = _chunk_sizes(ladder)
        self.norms = nn.ModuleList(nn.LayerNorm(size) for size in self.sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([norm(c) for norm, c in zip(self.norms, x.split(self.sizes, dim=-1))], dim=-1)


class ComplexLRU(nn.Module):
    """(B, L, D) real, L a power of two -> (B, L, D): complex chunk maps around a block-doubling scan."""

    def __init__(self, ladder: tuple[int, ...], dropout: float, r_min: float, r_max: float):
        super().__init__()
        width = ladder[-1]
        u1, u2 = torch.rand(width), torch.rand(width)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = torch.log(u2 * 2 * math.pi)
        modulus = torch.exp(-torch.exp(nu_log))
        gamma_log = torch.log(torch.sqrt(1 - modulus**2))
        self.params_log = nn.Parameter(torch.stack([nu_log, theta_log, gamma_log]))
        self.in_map = ChunkLinear(ladder, torch.cfloat)
        self.out_map = ChunkLinear(ladder, torch.cfloat)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        nu, theta, gamma = torch.exp(self.params_log)
        lam = torch.exp(torch.complex(-nu, theta))[None]  # (1, D): lambda^1
        h = self.in_map(x.to(torch.cfloat)) * gamma  # (B, L, D) complex
        batch, length, width = h.shape
        span = 1
        while span < length:  # blocks of 2*span: the second half absorbs the first half's last state
            h = h.reshape(-1, 2 * span, width)
            carry = h[:, span - 1 : span] * real.reshape(-1, 2 * span)[:, span - 1 : span, None]
            h = torch.cat([h[:, :span], h[:, span:] + lam * carry], dim=1)
            lam = torch.cat([lam, lam * lam[-1:]], dim=0)  # lambda^1 .. lambda^(2*span)
            span *= 2
        return self.dropout(self.out_map(h.reshape(batch, length, width)).real)


class SquareGatedFFN(nn.Module):
    def __init__(self, ladder: tuple[int, ...], dropout: float):
        super().__init__()
        self.gate, self.w1, self.w2 = ChunkLinear(ladder), ChunkLinear(ladder), ChunkLinear(ladder)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.gate(x)) * self.dropout(self.w1(x))))


class PublishedBlock(nn.Module):
    def __init__(self, ladder: tuple[int, ...], dropout: float, r_min: float, r_max: float):
        super().__init__()
        self.norm1, self.norm2 = ChunkLayerNorm(ladder), ChunkLayerNorm(ladder)
        self.lru = ComplexLRU(ladder, dropout, r_min, r_max)
        self.ffn = SquareGatedFFN(ladder, dropout)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = x + self.lru(self.norm1(x), real)
        return x + self.ffn(self.norm2(x))


class PublishedStyleModel(nn.Module):
    """Frozen item features (N+1, F) -> Linear -> D; ``num_blocks`` published blocks; scores per size."""

    def __init__(
        self,
        ladder: tuple[int, ...],
        num_items: int,
        feature_dim: int,
        num_blocks: int = 1,
        dropout: float = 0.1,
        r_min: float = 0.0,
        r_max: float = 0.1,
    ):
        super().__init__()
        self.ladder = tuple(ladder)
        self.register_buffer("features", torch.zeros(num_items + 1, feature_dim))
        self.projector = nn.Linear(feature_dim, self.ladder[-1])
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            PublishedBlock(self.ladder, dropout, r_min, r_max) for _ in range(num_blocks)
        )

    def scores(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) -> (M*B, L, N+1): every size's scores at every position."""
        items = self.projector(self.features)  # (N+1, D)
        x = self.embed_dropout(self.projector(self.features[seq]))  # (B, L, D)
        length = seq.shape[1]
        padded = 1 << max(0, math.ceil(math.log2(length)))
        x = F.pad(x, (0, 0, padded - length, 0))
        real = F.pad(seq != 0, (padded - length, 0))
        for block in self.blocks:
            x = block(x, real)
        x = x[:, -length:]
        return torch.cat([x[..., :s] @ items[:, :s].T for s in self.ladder], dim=0)

    def loss(self, seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the target positions of every size (target 0 ignored)."""
        logits = self.scores(seq)
        labels = targets.repeat(len(self.ladder), 1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=0)
