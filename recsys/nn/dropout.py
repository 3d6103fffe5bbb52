"""Dropout whose CPU mask costs ~1 random bit draw per 4 elements.

Why not ``torch.nn.Dropout`` alone: on a CPU, ``torch.nn.functional.dropout`` draws one Bernoulli
sample per element from the Mersenne Twister (about 13 ns an element on the AMD EPYC of the
benchmarks, 2 cores) - 11% of the ML-100K demo's training step, where every LRU block drops out
three (B, L, D) activations. Here one 64-bit draw (``Tensor.random_`` over the full int64 range)
gives four uniform 16-bit words, and an element is kept when its word is at or above a threshold:
the mask costs ~2 ns an element and the whole forward ~4 ns (3.8x less), still from torch's seeded
default generator, so ``torch.manual_seed`` and the checkpointed RNG state reproduce it exactly.

The drop probability is resolved to a multiple of 2**-16 (``p = 0.2`` drops with probability
13,107 / 65,536 = 0.199997) and kept elements are scaled by the inverse of the realised keep
probability, so ``E[dropout(x)] = x`` exactly, as with ``torch.nn.functional.dropout``. Other devices
(CUDA's Philox dropout is already fast), ``p = 1`` and evaluation mode go to torch's own dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_WORD_LEVELS = 1 << 16  # the mask compares 16-bit uniform words
_WORDS_PER_DRAW = 4  # 16-bit words in one 64-bit random draw


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """(bool mask of ``shape``, True with probability ``1 - p_q``; ``1 / (1 - p_q)``) on the CPU,
    ``p_q = round(p * 2**16) / 2**16``, from torch's default CPU generator."""
    dropped_levels = round(p * _WORD_LEVELS)
    numel = math.prod(shape)
    words = torch.empty(-(-numel // _WORDS_PER_DRAW), dtype=torch.int64).random_(-(1 << 63), None)
    threshold = -(_WORD_LEVELS // 2) + dropped_levels  # int16 words are uniform on [-32768, 32767]
    keep = words.view(torch.int16)[:numel].view(shape) >= threshold
    return keep, _WORD_LEVELS / (_WORD_LEVELS - dropped_levels)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` (any shape) with drop probability ``p``: the fast mask on a CPU,
    ``torch.nn.functional.dropout`` elsewhere. Autograd saves only the (bool) mask."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or round(p * _WORD_LEVELS) >= _WORD_LEVELS:
        return F.dropout(x, p, training)
    keep, scale = keep_mask(x.shape, p)
    return x.mul(keep).mul_(scale)


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` (same ``p``, same state dict) with :func:`dropout`'s fast CPU mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
