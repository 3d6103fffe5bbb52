"""Categorical item features (genres, release year, categories, brand) as multi-hot bags.

Two steps, both in ``recsys-prep``:

1. :func:`category_lists` (pipeline): each categorical column of the raw items table (the reader
   names them and their separators in ``RawData.categorical``) becomes an items.parquet column
   ``cat_<field>: list[str]``: the item's distinct values in order of appearance, ``[]`` if none.
2. :func:`build_categorical_table` (features): one vocabulary per field (values by number of items,
   then by name) and the bag of every item, written to ``features/categorical.safetensors``
   (layout.py): ``<field>.ids`` int64 (nnz,) and ``<field>.offsets`` int64 (N+2,), the bag of item
   i being ``ids[offsets[i]:offsets[i+1]]`` (item 0 = padding: empty); metadata ``fields`` and
   ``vocab.<field>`` (JSON lists of strings), ``fingerprint``. Training pools each field's bag
   with a torchrec ``EmbeddingBagCollection`` (recsys/nn/item_tables.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors.torch import save_file

from data_prep import layout
from data_prep.io import atomic_path

log = logging.getLogger(__name__)


def category_lists(items: pl.DataFrame, fields: dict[str, str]) -> dict[str, pl.Series]:
    """{``cat_<field>``: list[str] Series aligned with ``items``} for the fields present in ``items``.

    ``fields``: column -> separator ("" = the whole value is one category). Values are stripped;
    empty ones dropped; duplicates within an item kept once (first occurrence)."""
    out: dict[str, pl.Series] = {}
    for column, sep in fields.items():
        if column not in items.columns:
            continue
        lists = []
        for value in items[column].cast(pl.String).to_list():
            parts = [value] if value is not None and not sep else (value.split(sep) if value else [])
            seen: list[str] = []
            for p in (p.strip() for p in parts):
                if p and p not in seen:
                    seen.append(p)
            lists.append(seen)
        out[f"{layout.CATEGORY_PREFIX}{column}"] = pl.Series(lists, dtype=pl.List(pl.String))
    return out


def _bags(lists: list[list[str]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Vocabulary (most items first, then by name), ids (nnz,), offsets (N+2,) with item 0 empty."""
    counts: dict[str, int] = {}
    for values in lists:
        for v in values:
            counts[v] = counts.get(v, 0) + 1
    vocab = sorted(counts, key=lambda v: (-counts[v], v))
    index = {v: i for i, v in enumerate(vocab)}
    ids = [index[v] for values in lists for v in values]
    lengths = [0] + [len(values) for values in lists]
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    return vocab, torch.tensor(ids, dtype=torch.int64), offsets


def build_categorical_table(dataset_dir: Path, items: pl.DataFrame) -> dict[str, Any] | None:
    """Write ``features/categorical.safetensors`` from the ``cat_*`` columns of ``items`` (sorted by
    item_idx 1..N); return its manifest entry, or None (and remove a stale table) when there are none."""
    columns = [c for c in items.columns if c.startswith(layout.CATEGORY_PREFIX)]
    path = dataset_dir / layout.feature_file(layout.CATEGORICAL)
    if not columns:
        path.unlink(missing_ok=True)
        return None
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    fields: dict[str, dict[str, Any]] = {}
    digest = hashlib.sha256(layout.PIPELINE_VERSION.encode())
    for column in columns:
        field = column.removeprefix(layout.CATEGORY_PREFIX)
        lists = [list(v or []) for v in items[column].to_list()]
        vocab, ids, offsets = _bags(lists)
        if not vocab:
            log.warning("categorical field %s: no item has a value; left out", field)
            continue
        tensors[f"{field}.ids"], tensors[f"{field}.offsets"] = ids, offsets
        metadata[f"vocab.{field}"] = json.dumps(vocab)
        digest.update(json.dumps([field, lists]).encode())
        with_value = sum(1 for v in lists if v)
        fields[field] = {
            "vocab_size": len(vocab),
            "items_with_value": with_value,
            "values_per_item": round(len(ids) / max(1, with_value), 3),
        }
        log.info(
            "categorical %s: %d values, %d of %d items have one", field, len(vocab), with_value, len(lists)
        )
    if not fields:
        path.unlink(missing_ok=True)
        return None
    metadata.update(
        {"fields": json.dumps(list(fields)), "fingerprint": digest.hexdigest(), "n_items": str(items.height)}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return {
        "file": layout.feature_file(layout.CATEGORICAL),
        "fields": fields,
        "fingerprint": metadata["fingerprint"],
    }
