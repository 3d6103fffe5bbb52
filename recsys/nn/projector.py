"""Multimodal projector: item features (P, sum F) -> nested item embeddings (P, D).

concat(modality features) -> NestedLinear with un-nested input (rows sliced [:d]), optionally
-> SiLU -> hidden k*D -> NestedLinear k*D -> D; + nested id embedding [:, :d] -> NestedLayerNorm.
Row i of the output's first d dims depends only on the first d rows of every weight, so the
width-d projector is the ``[:d]`` slice of this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys.nn.nested import NestedLayerNorm, NestedLinear


class Projector(nn.Module):
    """(P, F) features and/or (P, D) id embeddings -> (P, D) normalised item embeddings."""

    def __init__(self, ladder: tuple[int, ...], in_features: int, hidden_multiplier: int = 0):
        super().__init__()
        self.input = None
        if in_features > 0:
            k = hidden_multiplier if hidden_multiplier > 0 else 1
            self.input = NestedLinear(ladder, k_out=k, in_features=in_features)
        self.hidden = (
            NestedLinear(ladder, k_in=hidden_multiplier)
            if in_features > 0 and hidden_multiplier > 0
            else None
        )
        self.norm = NestedLayerNorm(ladder)

    def forward(self, features: torch.Tensor | None, id_emb: torch.Tensor | None = None) -> torch.Tensor:
        x = None
        if self.input is not None:
            x = self.input(features)  # (P, k*D)
            if self.hidden is not None:
                x = self.hidden(F.silu(x))  # (P, D)
        if id_emb is not None:
            x = id_emb if x is None else x + id_emb
        return self.norm(x)
