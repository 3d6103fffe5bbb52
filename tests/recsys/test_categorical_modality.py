"""The categorical modality end to end on the model side: dataset bags -> torchrec
EmbeddingBagCollection (multi-hot, mean/sum pooling) -> projector -> training step -> slicing
invariant -> save/load -> export; and the training run with ``model.modalities=[text,categorical]``."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from support import tiny_cfg, write_processed_dataset
from test_model import NUM_ITEMS, assert_scores_match, batch, check_every_size, train_steps

from data_prep import layout
from data_prep.categorical import build_categorical_table, category_lists
from recsys.data import CategoryBags, SequenceDataset
from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn import LRUConfig
from recsys.nn.item_tables import gather_bags
from recsys.training.runner import run

FIELDS = {"genres": {"vocab_size": 5, "nnz": 0}, "year": {"vocab_size": 3, "nnz": 0}}


def random_bags(num_items: int, vocab: int, max_values: int, seed: int) -> CategoryBags:
    """Bags of 0..max_values distinct values per item (item 0: empty)."""
    rng = np.random.default_rng(seed)
    lists = [[]] + [
        list(rng.choice(vocab, rng.integers(0, max_values + 1), replace=False)) for _ in range(num_items)
    ]
    offsets = torch.tensor(np.cumsum([0] + [len(v) for v in lists]), dtype=torch.int64)
    ids = torch.tensor([int(i) for v in lists for i in v], dtype=torch.int64)
    return CategoryBags(ids, offsets, [f"v{i}" for i in range(vocab)])


def make_model(pooling: str = "mean", seed: int = 0) -> tuple[MatryoshkaRecModel, dict[str, CategoryBags]]:
    torch.manual_seed(seed)
    bags = {"genres": random_bags(NUM_ITEMS, 5, 3, seed), "year": random_bags(NUM_ITEMS, 3, 1, seed + 1)}
    fields = {f: {"vocab_size": len(b.vocab), "nnz": int(b.ids.numel())} for f, b in bags.items()}
    config = ModelConfig(
        ladder=(4, 12, 40),
        backbone=LRUConfig(num_blocks=1, dropout=0.1),
        modalities=("text", "categorical"),
        categorical_dim=8,
        categorical_pooling=pooling,
    )
    model = MatryoshkaRecModel(config, NUM_ITEMS, {"text": 16}, fields)
    model.load_item_features({"text": torch.randn(NUM_ITEMS + 1, 16)}, bags)
    return model, bags


def test_gather_bags_returns_each_items_values_in_order():
    bags = random_bags(20, 7, 4, seed=3)
    ids = torch.tensor([5, 0, 5, 19, 2])
    values, lengths = gather_bags(ids, bags.ids, bags.offsets)
    expected = [bags.ids[bags.offsets[i] : bags.offsets[i + 1]].tolist() for i in ids.tolist()]
    assert lengths.tolist() == [len(e) for e in expected]
    assert values.tolist() == [v for e in expected for v in e]


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_pooled_features_are_the_mean_or_sum_of_the_items_value_rows(pooling):
    model, bags = make_model(pooling)
    ids = torch.arange(NUM_ITEMS + 1)
    feats, _ = model.tables(ids)
    assert feats.shape == (NUM_ITEMS + 1, 16 + 2 * 8)
    for j, field in enumerate(("genres", "year")):
        table = model.tables.categories.embedding_bags[f"cat_{field}_table"].weight
        for i in (0, 1, 7, NUM_ITEMS):
            rows = table[bags[field].ids[bags[field].offsets[i] : bags[field].offsets[i + 1]]]
            want = torch.zeros(8) if len(rows) == 0 else (rows.mean(0) if pooling == "mean" else rows.sum(0))
            got = feats[i, 16 + 8 * j : 16 + 8 * (j + 1)]
            assert torch.allclose(got, want, atol=1e-6)


def test_slices_with_categorical_tables_score_like_the_full_model_before_and_after_training():
    model, _ = make_model()
    check_every_size(model.eval())
    before = {n: p.detach().clone() for n, p in model.tables.categories.named_parameters()}
    check_every_size(train_steps(model))
    after = dict(model.tables.categories.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before), "categorical tables were not trained"


def test_save_and_load_keep_the_bags_and_the_scores(tmp_path):
    model, _ = make_model()
    model = train_steps(model)
    model.slice(12).save(tmp_path / "s")
    loaded = MatryoshkaRecModel.load(tmp_path / "s").eval()
    assert loaded.categorical == model.categorical
    seq = batch()[0]
    with torch.no_grad():
        assert_scores_match(loaded.score(seq)[-1], model.score(seq)[1])


def test_modality_and_fields_must_come_together():
    config = ModelConfig(ladder=(4, 8), backbone=LRUConfig(num_blocks=1), modalities=("text", "categorical"))
    with pytest.raises(ValueError, match="categorical"):
        MatryoshkaRecModel(config, NUM_ITEMS, {"text": 16})
    with pytest.raises(ValueError, match="categorical"):
        MatryoshkaRecModel(ModelConfig(ladder=(4, 8)), NUM_ITEMS, {"text": 16}, FIELDS)


def dataset_with_categories(tmp_path):
    directory = write_processed_dataset(tmp_path / "dataset", n_items=60)
    items = pl.read_parquet(directory / layout.ITEMS)
    genres = [" ".join(f"g{(i + k) % 7}" for k in range(i % 3)) for i in range(items.height)]
    items = items.with_columns(
        pl.Series("genres", genres), pl.Series("year", [str(1990 + i % 5) for i in range(items.height)])
    )
    items = items.with_columns(**category_lists(items, {"genres": " ", "year": ""})).drop("genres", "year")
    items.write_parquet(directory / layout.ITEMS)
    build_categorical_table(directory, items)
    manifest = json.loads((directory / layout.MANIFEST).read_text())
    manifest["modalities"] = ["text", "categorical"]
    (directory / layout.MANIFEST).write_text(json.dumps(manifest))
    return directory


def test_a_training_run_with_genres_and_year_learns_and_exports(tmp_path):
    from recsys.export.exporter import export_run

    directory = dataset_with_categories(tmp_path)
    assert set(SequenceDataset(directory, max_len=10).load_categorical()) == {"genres", "year"}
    cfg = tiny_cfg(directory, "model.modalities=[text,categorical]", "trainer.optimizer.lr=0.01")
    out = run(cfg, tmp_path / "run")
    trainer = out["trainer"]
    assert trainer.model.tables.categories is not None
    assert trainer.parameter_kinds["tables.categories.embedding_bags.cat_genres_table.weight"] == "embedding"
    history = trainer.val_history
    assert history[-1]["value"] > 0 and all("seconds" in v for v in history)
    index = export_run(out["run_dir"], out=tmp_path / "export", parity_users=16)
    assert index["sizes"] == [4, 8, 16]


def test_a_dataset_without_the_table_names_the_fix(tmp_path):
    directory = write_processed_dataset(tmp_path / "dataset")
    with pytest.raises(FileNotFoundError, match="recsys-prep"):
        SequenceDataset(directory, max_len=10).load_categorical()
