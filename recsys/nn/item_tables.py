"""Item tables as plain torchrec modules (so DistributedModelParallel can shard them unchanged).

- ``features``: one ``EmbeddingBagCollection`` table per modality, (N+1, F_m), one id per bag
  with SUM pooling (= a lookup). Frozen unless ``trainable``. Its KeyedTensor output is already
  the concatenation (P, sum F_m) in modality order. Not nested: F is the encoder's width.
- ``ids`` (optional): a trainable ``EmbeddingBagCollection`` with one nested table (N+1, D);
  the width-d model holds its columns ``[:, :d]``.
- ``categories`` (optional, modality ``categorical``): a trainable ``EmbeddingBagCollection`` with
  one table (V_f, C) per categorical field f (genres, year, ...), each item's multi-hot bag of
  values pooled (``mean`` or ``sum``) into (P, C); the fields' outputs follow the modality
  features, so the projector sees (P, sum F + fields * C). The bags themselves (which values each
  item has) are buffers ``bag_ids_<f>`` (nnz_f,) and ``bag_offsets_<f>`` (N+2,), saved with the
  weights. Not nested: C is an input width, like F.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torchrec
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

ID_FEATURE = "item_id"
CATEGORY_FEATURE = "cat_{}"  # the KJT key (and table cat_<field>_table) of a categorical field
POOLINGS = {"sum": torchrec.PoolingType.SUM, "mean": torchrec.PoolingType.MEAN}


def gather_bags(
    ids: torch.Tensor, bag_ids: torch.Tensor, bag_offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (P,) items -> (values (sum of bag lengths,), lengths (P,) int32): the items' bags, in order."""
    start = bag_offsets[ids]  # (P,)
    lengths = bag_offsets[ids + 1] - start  # (P,)
    first = torch.cumsum(lengths, 0) - lengths  # where each bag begins in the output
    total = int(lengths.sum())
    positions = torch.arange(total, device=ids.device) + torch.repeat_interleave(
        start - first, lengths, output_size=total
    )
    return bag_ids[positions], lengths.to(torch.int32)


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


def _bag_collection(
    dims: dict[str, int], num_rows: int | dict[str, int], pooling: str = "sum"
) -> EmbeddingBagCollection:
    """One table per key: (rows, dim), rows = ``num_rows`` or ``num_rows[key]``."""
    tables = [
        EmbeddingBagConfig(
            name=f"{key}_table",
            embedding_dim=dim,
            num_embeddings=num_rows[key] if isinstance(num_rows, dict) else num_rows,
            feature_names=[key],
            pooling=POOLINGS[pooling],
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
        categorical: dict[str, dict[str, int]] | None = None,
        categorical_dim: int = 32,
        categorical_pooling: str = "mean",
    ):
        """``categorical``: {field: {"vocab_size": V, "nnz": values over all items}} (None: no such tables)."""
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
        self.fields = tuple(categorical or {})
        self.categories = None
        if self.fields:
            keys = {CATEGORY_FEATURE.format(f): categorical_dim for f in self.fields}
            rows = {CATEGORY_FEATURE.format(f): int(categorical[f]["vocab_size"]) for f in self.fields}
            self.categories = _bag_collection(keys, rows, categorical_pooling)
            for p in self.categories.parameters():
                nn.init.normal_(
                    p, std=1.0 / categorical_dim**0.5
                )  # rows of about unit norm, like the text features
            for f in self.fields:
                self.register_buffer(
                    f"bag_ids_{f}", torch.zeros(int(categorical[f]["nnz"]), dtype=torch.int64)
                )
                self.register_buffer(f"bag_offsets_{f}", torch.zeros(self.num_rows + 1, dtype=torch.int64))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        feats = (
            self.features(_lookup_kjt(self.modalities, ids)).values() if self.features is not None else None
        )
        if self.categories is not None:
            pooled = self.categories(self._bags_kjt(ids)).values()  # (P, fields * C)
            feats = pooled if feats is None else torch.cat([feats, pooled], dim=1)
        id_emb = self.ids(_lookup_kjt([ID_FEATURE], ids)).values() if self.ids is not None else None
        return feats, id_emb

    def _bags_kjt(self, ids: torch.Tensor) -> KeyedJaggedTensor:
        """ids (P,) -> one bag per id and field: the item's categorical values."""
        values, lengths = [], []
        for f in self.fields:
            v, n = gather_bags(ids, getattr(self, f"bag_ids_{f}"), getattr(self, f"bag_offsets_{f}"))
            values.append(v)
            lengths.append(n)
        return KeyedJaggedTensor.from_lengths_sync(
            keys=[CATEGORY_FEATURE.format(f) for f in self.fields],
            values=torch.cat(values),
            lengths=torch.cat(lengths),
        )

    def load_categorical(self, bags: dict[str, Any]) -> None:
        """Copy each field's bags in (``recsys.data.CategoryBags``: ids (nnz,), offsets (N+2,))."""
        for f in self.fields:
            if f not in bags:
                raise ValueError(f"missing categorical field '{f}' (have {sorted(bags)})")
            for name, value in (("ids", bags[f].ids), ("offsets", bags[f].offsets)):
                buf = getattr(self, f"bag_{name}_{f}")
                if tuple(value.shape) != tuple(buf.shape):
                    raise ValueError(
                        f"categorical field '{f}': {name} of shape {tuple(value.shape)}, expected {tuple(buf.shape)}"
                    )
                buf.copy_(value)

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
