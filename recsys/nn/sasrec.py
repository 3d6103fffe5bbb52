"""SASRec baseline (Kang & McAuley, 2018): causal self-attention, MRL-style nesting only.

Per block (pre-norm): ``x + Drop(MHA(LN(x)))`` with a causal, padding-aware mask, then
``x + Drop(FFN(LN(x)))`` (GELU, hidden ``ffn_multiplier * D``); learned positional embeddings
of ``max_len`` positions added to the item embeddings; a final LayerNorm.

Positions are counted **from the right** (the last item is position 0), so with left padding
the positions of the real items do not depend on how much padding precedes them (padding
invariance). Attention: query t reads keys s <= t that are real items; every position may also
read itself, so a padding query (whose earlier keys are all padding) has a defined softmax.
Padding rows are zeroed at the input and never read by a real query.

Nesting: **only the output is nested (MRL-style)**. The weights are ordinary dense weights, so
there is no standalone width-d SASRec: the score at size d is ``h[:, :d] . E[:, :d]^T`` from
the full-width network (the Matryoshka loss trains every prefix of h and of E). Consequently
``Backbone.slice(d)`` (``nested = False``) keeps every weight and cuts the output to ``[:d]``
(``TruncatedBackbone``, recsys/nn/backbone.py), and a sliced model's item embeddings keep the
full width D that the backbone reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys.nn.backbone import Backbone, BackboneConfig, is_int, register_backbone
from recsys.nn.dropout import Dropout


@dataclass
class SASRecConfig(BackboneConfig):
    """SASRec backbone: ``num_blocks`` causal self-attention blocks, ``heads`` heads (must divide D).

    Example::

        >>> backbone = SASRecConfig(ladder=(4, 8), max_len=10, num_blocks=1, heads=2).build()
        >>> backbone(torch.randn(2, 10, 8), torch.ones(2, 10, dtype=torch.bool)).shape
        torch.Size([2, 10, 8])
    """

    name: ClassVar[str] = "sasrec"
    dropout: float = 0.2
    ffn_multiplier: int = 4  # FFN hidden width = k * D
    heads: int = 1

    def checks(self) -> dict[str, bool]:
        heads = is_int(self.heads) and self.heads >= 1
        return {
            **super().checks(),
            "ffn_multiplier": is_int(self.ffn_multiplier) and self.ffn_multiplier >= 1,
            "heads": heads and (self.ladder is None or self.ladder[-1] % self.heads == 0),
        }


class SASRecBlock(nn.Module):
    def __init__(self, width: int, heads: int, ffn_multiplier: int, dropout: float):
        super().__init__()
        self.heads, self.dropout_p = heads, dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, ffn_multiplier * width),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(ffn_multiplier * width, width),
        )
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), allowed (B, 1, L, L) bool (True = query may read key) -> (B, L, D)."""
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout_p if self.training else 0.0
        )  # (B, H, L, D/H)
        x = x + self.dropout(self.proj(att.transpose(1, 2).reshape(batch, length, width)))
        return x + self.dropout(self.ffn(self.norm2(x)))

    def forward_last(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), allowed (B, 1, L, L) -> (B, D): ``forward(x, allowed)[:, -1]``; keys and values
        at every position, the query and everything after the attention at the last one only."""
        batch, length, width = x.shape
        h = self.norm1(x)
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(h[:, -1:], w[:width], b[:width]).view(batch, 1, self.heads, -1).transpose(1, 2)
        kv = F.linear(h, w[width:], b[width:]).view(batch, length, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(
            q, kv[0], kv[1], attn_mask=allowed[:, :, -1:], dropout_p=self.dropout_p if self.training else 0.0
        )  # (B, H, 1, D/H)
        x_last = x[:, -1] + self.dropout(self.proj(att.reshape(batch, width)))
        return x_last + self.dropout(self.ffn(self.norm2(x_last)))


@register_backbone(SASRecConfig)
class SASRecBackbone(Backbone):
    """Causal Transformer encoder (B, L, D) -> (B, L, D); weights not nested (see module docstring)."""

    nested = False

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        width = config.width
        self.positions = nn.Embedding(config.max_len, width)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(width, config.heads, config.ffn_multiplier, config.dropout)
            for _ in range(config.num_blocks)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) bool True = real -> (B, L, D)."""
        x, allowed = self._prepare(x, pad_mask)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)

    def forward_last(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, D): ``forward(x, pad_mask)[:, -1]``, the last block
        only at the last query."""
        x, allowed = self._prepare(x, pad_mask)
        for block in self.blocks[:-1]:
            x = block(x, allowed)
        return self.norm(self.blocks[-1].forward_last(x, allowed))

    def _prepare(self, x: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks' input (B, L, D) (positions added, padding zeroed) and mask (B, 1, L, L)."""
        length = x.shape[1]
        if length > self.positions.num_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_len={self.positions.num_embeddings}")
        from_right = torch.arange(length - 1, -1, -1, device=x.device)  # last item = position 0
        real = pad_mask[..., None].to(x.dtype)
        x = self.dropout(x + self.positions(from_right)) * real
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=x.device)
        allowed = ((causal & pad_mask[:, None, :]) | eye)[:, None]  # (B, 1, L, L)
        return x, allowed
