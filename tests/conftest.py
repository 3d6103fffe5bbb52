"""Shared fixtures: a small processed dataset in the layout of data_prep/layout.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import save_file

from data_prep import layout


def write_processed_dataset(
    directory: Path,
    n_users: int = 120,
    n_items: int = 60,
    min_len: int = 6,
    max_len: int = 30,
    feature_dim: int = 32,
    seed: int = 0,
) -> Path:
    """A learnable synthetic dataset: each user walks the catalog with step +1 (mod N) from a random
    start, with occasional random jumps, so next-item prediction has signal and the loss can drop."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    seqs = []
    for _ in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        item = int(rng.integers(0, n_items))
        seq = []
        for _ in range(length):
            seq.append(item + 1)
            item = (item + 1) % n_items if rng.random() < 0.85 else int(rng.integers(0, n_items))
        seqs.append(seq)
    pl.DataFrame(
        {
            "user_idx": pl.Series(range(1, n_users + 1), dtype=pl.Int32),
            "item_idx": pl.Series(seqs, dtype=pl.List(pl.Int32)),
            "timestamp": pl.Series([list(range(len(s))) for s in seqs], dtype=pl.List(pl.Int64)),
        }
    ).write_parquet(directory / layout.SEQUENCES)
    pl.DataFrame(
        {
            "item_idx": pl.Series(range(1, n_items + 1), dtype=pl.Int32),
            "item_id": [f"i{i}" for i in range(1, n_items + 1)],
            "text": [f"item {i}" for i in range(1, n_items + 1)],
            "image_path": pl.Series([None] * n_items, dtype=pl.Utf8),
        }
    ).write_parquet(directory / layout.ITEMS)
    pl.DataFrame({"user_idx": pl.Series(range(1, n_users + 1), dtype=pl.Int32), "user_id": [f"u{u}" for u in range(1, n_users + 1)]}).write_parquet(directory / layout.USERS)
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n_items + 1, feature_dim, generator=gen)
    features[0] = 0
    mask = torch.ones(n_items + 1, dtype=torch.bool)
    mask[0] = False
    (directory / layout.FEATURES_DIR).mkdir(exist_ok=True)
    save_file({"features": features, "mask": mask}, str(directory / layout.feature_file("text")), metadata={"fingerprint": "synthetic"})
    manifest = {"dataset": "synthetic", "modalities": ["text"], "final": {"users": n_users, "items": n_items}}
    (directory / layout.MANIFEST).write_text(json.dumps(manifest))
    return directory


@pytest.fixture
def processed_dataset(tmp_path: Path) -> Path:
    return write_processed_dataset(tmp_path / "dataset")
