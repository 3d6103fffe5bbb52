"""Item tables as plain torchrec modules (so DistributedModelParallel can shard them unchanged).

- ``features``: one ``EmbeddingBagCollection`` table per modality, (N+1, F_m), one id per bag
  with SUM pooling (= a lookup). Frozen unless ``trainable``. Its KeyedTensor output is already
  the concatenation (P, sum F_m) in modality order. Not nested: F is the encoder's width.
- ``ids`` (optional): a trainable ``EmbeddingBagCollection`` with one nested table (N+1, D);
  the width-d model holds its columns ``[:, :d]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torchrec
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

ID_FEATURE = "item_id"


class _DropFxTracingNotice(logging.Filter):
    """torchrec's KeyedJaggedTensor asks ``torch.fx.is_fx_tracing()`` on every lookup, and torch
    2.13 logs a deprecation notice the first time ("is_fx_tracing will return true for both
    fx.symbolic_trace and torch.export ..."): advice for torchrec's authors, noise for a user of
    ours. Only that record of that logger is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("is_fx_tracing will return true")


logging.getLogger("torch.fx._symbolic_trace").addFilter(_DropFxTracingNotice())


def _lookup_kjt(keys: Sequence[str], ids: torch.Tensor) -> KeyedJaggedTensor:
    """One bag of length 1 per id, for every key: ids (P,) -> KJT of P bags per key."""
    values = ids.repeat(len(keys))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys), values=values, lengths=torch.ones_like(values, dtype=torch.int32)
    )


def _bag_collection(dims: dict[str, int], num_rows: int) -> EmbeddingBagCollection:
    tables = [
        EmbeddingBagConfig(
            name=f"{key}_table",
            embedding_dim=dim,
            num_embeddings=num_rows,
            feature_names=[key],
            pooling=torchrec.PoolingType.SUM,
        )
        for key, dim in dims.items()
    ]
    return EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))


class ItemTables(nn.Module):
    """ids (P,) -> (features (P, sum F) or None, id embeddings (P, D) or None)."""

    def __init__(
        self,
        num_items: int,
        feature_dims: dict[str, int],
        width: int,
        use_id_table: bool = False,
        trainable_features: bool = False,
    ):
        super().__init__()
        self.num_rows, self.modalities = num_items + 1, tuple(feature_dims)
        self.features = _bag_collection(dict(feature_dims), self.num_rows) if feature_dims else None
        if self.features is not None:
            for p in self.features.parameters():
                nn.init.zeros_(p)  # filled by load_features
                p.requires_grad_(trainable_features)
        self.ids = _bag_collection({ID_FEATURE: width}, self.num_rows) if use_id_table else None
        if self.ids is not None:
            for p in self.ids.parameters():
                nn.init.normal_(p, std=0.02)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        feats = (
            self.features(_lookup_kjt(self.modalities, ids)).values() if self.features is not None else None
        )
        id_emb = self.ids(_lookup_kjt([ID_FEATURE], ids)).values() if self.ids is not None else None
        return feats, id_emb

    def feature_table(self, modality: str) -> torch.Tensor:
        """(N+1, F) parameter of one modality."""
        return self.features.embedding_bags[f"{modality}_table"].weight

    def id_table(self) -> torch.Tensor:
        """(N+1, D) parameter of the nested id table."""
        return self.ids.embedding_bags[f"{ID_FEATURE}_table"].weight

    def load_features(self, features: dict[str, torch.Tensor]) -> None:
        """Copy (N+1, F) tables in, one per modality (ValueError on missing modality or bad shape)."""
        for modality in self.modalities:
            if modality not in features:
                raise ValueError(f"missing features for modality '{modality}'")
            table = self.feature_table(modality)
            if tuple(features[modality].shape) != tuple(table.shape):
                raise ValueError(
                    f"features['{modality}'] has shape {tuple(features[modality].shape)}, expected {tuple(table.shape)}"
                )
            with torch.no_grad():
                table.copy_(features[modality])

    def sliced_state(self, d: int) -> dict[str, torch.Tensor]:
        state = dict(self.state_dict())
        if self.ids is not None:
            state[f"ids.embedding_bags.{ID_FEATURE}_table.weight"] = self.id_table()[:, :d]
        return state
