"""Categorical item features end to end in data prep: reader columns -> items.parquet cat_* lists ->
features/categorical.safetensors bags and vocabularies -> recsys' checked loader."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from data_prep import layout
from data_prep.categorical import build_categorical_table, category_lists
from data_prep.features import build_feature_tables
from data_prep.pipeline import prepare
from data_prep.readers import read_movielens_atomic
from recsys.data import CategoryBags, SequenceDataset

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEMS = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Children's Comedy\n"
    "2\tHeat\t1995\tAction Crime Thriller\n"
    "3\tSabrina\t1995\tComedy Romance\n"
    "4\tCasino\t1995\tDrama Crime\n"
    "5\tUnknown\t\t\n"
)


def movielens(tmp: Path) -> Path:
    inter, item = tmp / "x.inter", tmp / "x.item"
    rows = [f"u{u}\t{i}\t4\t{100 * u + i}\n" for u in range(1, 7) for i in range(1, 6)]
    inter.write_text(HEADER + "".join(rows))
    item.write_text(ITEMS)
    raw = read_movielens_atomic(inter, item)
    assert raw.categorical == {"genres": " ", "year": ""}
    return prepare(raw, tmp / "out", k_core_users=1, k_core_items=1)


def test_category_lists_split_strip_and_dedupe():
    items = pl.DataFrame({"genres": ["A  B A", None, ""], "brand": [" X ", None, "Y"]})
    lists = category_lists(items, {"genres": " ", "brand": "", "absent": " "})
    assert set(lists) == {"cat_genres", "cat_brand"}
    assert lists["cat_genres"].to_list() == [["A", "B"], [], []]
    assert lists["cat_brand"].to_list() == [["X"], [], ["Y"]]


def test_movielens_genres_and_year_become_bags(tmp_path):
    out = movielens(tmp_path)
    items = pl.read_parquet(out / layout.ITEMS)
    by_id = dict(zip(items["item_id"].to_list(), items["cat_genres"].to_list()))
    assert by_id["1"] == ["Animation", "Children's", "Comedy"] and by_id["5"] == []
    entry = build_categorical_table(out, items)
    assert entry["fields"]["genres"]["vocab_size"] == 8
    assert entry["fields"]["genres"]["items_with_value"] == 4
    assert entry["fields"]["year"]["vocab_size"] == 1
    with safe_open(str(out / entry["file"]), framework="pt") as f:
        meta = f.metadata()
        vocab = json.loads(meta["vocab.genres"])
        ids, offsets = f.get_tensor("genres.ids"), f.get_tensor("genres.offsets")
    assert json.loads(meta["fields"]) == ["genres", "year"]
    # vocabulary: most items first (Comedy, Crime: 2 each), then by name
    assert vocab[:2] == ["Comedy", "Crime"]
    assert offsets.shape == (items.height + 2,) and offsets[0] == 0 and offsets[1] == 0
    for row, values in enumerate(items["cat_genres"].to_list(), start=1):
        assert [vocab[i] for i in ids[offsets[row] : offsets[row + 1]].tolist()] == values


def test_feature_tables_add_the_modality_and_recsys_loads_it(tmp_path, monkeypatch):
    out = movielens(tmp_path)
    import data_prep.features as features

    class Tiny:  # a 4-d text encoder stand-in (the real one is tested in test_features_encoders.py)
        dim, name = 4, "tiny"

        def encode(self, texts):
            return torch.ones(len(texts), 4), torch.ones(len(texts), dtype=torch.bool)

    monkeypatch.setattr(features, "get_text_encoder", lambda *a, **k: Tiny())
    build_feature_tables(out, image_encoder=None)
    manifest = json.loads((out / layout.MANIFEST).read_text())
    assert manifest["modalities"] == ["text", "categorical"]
    assert manifest["dataset_version"] == layout.DATASET_VERSION and layout.is_current(out)
    bags = SequenceDataset(out, max_len=5).load_categorical()
    assert set(bags) == {"genres", "year"} and isinstance(bags["genres"], CategoryBags)


def test_a_crafted_categorical_table_is_refused_with_its_path(tmp_path, monkeypatch):
    out = movielens(tmp_path)
    items = pl.read_parquet(out / layout.ITEMS)
    build_categorical_table(out, items)
    path = out / layout.feature_file(layout.CATEGORICAL)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["genres.ids"] = tensors["genres.ids"] + 100  # outside the vocabulary
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(
        ValueError, match=r"categorical.safetensors field 'genres': ids outside the vocabulary"
    ):
        SequenceDataset(out, max_len=5).load_categorical()


def test_an_older_dataset_is_not_current(tmp_path):
    out = movielens(tmp_path)
    manifest = json.loads((out / layout.MANIFEST).read_text())
    manifest.pop("dataset_version")
    (out / layout.MANIFEST).write_text(json.dumps(manifest))
    assert not layout.is_current(out)
    assert not layout.is_current(tmp_path / "nothing")
