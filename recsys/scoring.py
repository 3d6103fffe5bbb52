"""Ranking scores: the one place a hidden state and the catalog become scores over items.

The model (training-time evaluation, ``MatryoshkaRecModel.score``), the exported program, the
python serving engine and the exporter's parity check all score with :func:`score_items`, so
they rank alike. Torch only: serving imports it without torchrec.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recsys.losses.matryoshka import all_size_logits


def score_items(hidden: torch.Tensor, catalog: torch.Tensor, ladder: Sequence[int]) -> torch.Tensor:
    """hidden (B, >= d) last-position states, catalog (N+1, >= d) item embeddings (row 0 = padding)
    -> (M, B, N+1): for each size d of ``ladder``, ``hidden[:, :d] @ catalog[:, :d].T``, with
    column 0 at -inf (padding is never recommended). One GEMM's FLOPs for all M sizes.

    Example::

        >>> scores = score_items(torch.randn(2, 8), torch.randn(5, 8), (4, 8))
        >>> scores.shape, bool(torch.isneginf(scores[..., 0]).all())
        (torch.Size([2, 2, 5]), True)
    """
    scores = all_size_logits(hidden, catalog, ladder)  # (M, B, N+1), a new tensor
    scores[..., 0] = float("-inf")
    return scores
