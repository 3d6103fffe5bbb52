"""Helpers shared by the test modules (on sys.path through pytest's ``pythonpath = ["tests"]``):
a small processed dataset in the layout of data_prep/layout.py, the tiny experiment config, and one
tiny trained-and-exported run cached for the whole session."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file

from data_prep import layout
from recsys.config import CONFIG_DIR
from recsys.training.runner import run


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
    pl.DataFrame(
        {
            "user_idx": pl.Series(range(1, n_users + 1), dtype=pl.Int32),
            "user_id": [f"u{u}" for u in range(1, n_users + 1)],
        }
    ).write_parquet(directory / layout.USERS)
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n_items + 1, feature_dim, generator=gen)
    features[0] = 0
    mask = torch.ones(n_items + 1, dtype=torch.bool)
    mask[0] = False
    (directory / layout.FEATURES_DIR).mkdir(exist_ok=True)
    save_file(
        {"features": features, "mask": mask},
        str(directory / layout.feature_file("text")),
        metadata={"fingerprint": "synthetic"},
    )
    manifest = {"dataset": "synthetic", "modalities": ["text"], "final": {"users": n_users, "items": n_items}}
    (directory / layout.MANIFEST).write_text(json.dumps(manifest))
    return directory


def tiny_cfg(dataset_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "config",
            overrides=["experiment=tiny", "data.name=generic", f"data.path={dataset_dir}", *overrides],
        )


@functools.cache
def trained_export(*overrides: str) -> tuple[Path, Path, dict]:
    """(run_dir, export_dir, index) of a 2-epoch tiny run exported at every size (4, 8, 16);
    ``overrides`` (e.g. "backbone=sasrec") are added to the run's config."""
    from recsys.export.exporter import export_run

    root = Path(tempfile.mkdtemp(prefix="recsys-serving-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    dataset = write_processed_dataset(root / "dataset")
    out = run(
        tiny_cfg(dataset, "trainer.max_epochs=2", "trainer.optimizer.lr=0.01", *overrides), root / "run"
    )
    run_dir = Path(out["run_dir"])
    index = export_run(run_dir, out=root / "export", parity_users=64)
    return run_dir, root / "export", index
