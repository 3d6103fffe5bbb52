"""Pipeline logic on hand-made examples: k-core, ordering, remap, split, text, manifest counts."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from data_prep import layout
from data_prep.errors import DataError
from data_prep.manifest import read_manifest, write_manifest
from data_prep.pipeline import (
    build_sequences,
    chronological,
    k_core,
    prepare,
    remap_ids,
    render_texts,
)
from data_prep.readers import RawData


def _inter(rows: list[tuple[str, str, int]], rating: list[float] | None = None) -> pl.DataFrame:
    df = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": pl.Series([r[2] for r in rows], dtype=pl.Int64),
        }
    )
    if rating is not None:
        df = df.with_columns(pl.Series("rating", rating, dtype=pl.Float64))
    return df.with_row_index("line", offset=2).with_columns(pl.col("line").cast(pl.Int64))


def _raw(
    inter: pl.DataFrame,
    items: list[str] | None = None,
    titles: dict[str, str | None] | None = None,
    tmp: Path | None = None,
) -> RawData:
    ids = items if items is not None else sorted(set(inter["item_id"].to_list()))
    titles = titles or {}
    it = pl.DataFrame(
        {"item_id": ids, "title": [titles.get(i, f"Title {i}") for i in ids]},
        schema={"item_id": pl.String, "title": pl.String},
    )
    src = {}
    if tmp is not None:
        (tmp / "inter.txt").write_text("x")
        src = {"interactions": tmp / "inter.txt"}
    return RawData(name="toy", interactions=inter, items=it, sources=src, text_template="{title}.")


def test_k_core_single_pass_known_answer():
    df = _inter([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3), ("u2", "b", 4), ("u3", "a", 5)])
    kept, _ = k_core(df, 2, 2)
    assert sorted(kept["user_id"].unique().to_list()) == ["u1", "u2"]
    assert sorted(kept["item_id"].unique().to_list()) == ["a", "b"]


def test_k_core_needs_several_iterations():
    # c has one event -> dropped; then u3 has one event -> dropped; then d has one event -> dropped;
    # then u4 has one -> dropped. Only the u1/u2 x a/b block is the 2-core.
    rows = [
        ("u1", "a", 1),
        ("u1", "b", 2),
        ("u2", "a", 3),
        ("u2", "b", 4),
        ("u3", "c", 5),
        ("u3", "d", 6),
        ("u4", "d", 7),
        ("u4", "a", 8),
    ]
    kept, passes = k_core(_inter(rows), 2, 2)
    assert passes >= 4
    assert kept.height == 4
    assert set(kept["user_id"]) == {"u1", "u2"} and set(kept["item_id"]) == {"a", "b"}
    # stable: applying it again changes nothing
    again, p2 = k_core(kept, 2, 2)
    assert again.equals(kept) and p2 == 1


def test_k_core_asymmetric_thresholds():
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 4)]
    kept, _ = k_core(_inter(rows), 3, 1)
    assert set(kept["user_id"]) == {"u1"}


def test_stable_tie_break_uses_file_order():
    rows = [("u1", "z", 5), ("u1", "a", 5), ("u1", "m", 5), ("u1", "b", 1)]
    out = chronological(_inter(rows))
    assert out["item_id"].to_list() == ["b", "z", "a", "m"]  # equal timestamps keep line order
    df, _, items = remap_ids(_inter(rows))
    seq = build_sequences(df)
    names = dict(zip(items["item_idx"].to_list(), items["item_id"].to_list()))
    assert [names[i] for i in seq["item_idx"][0].to_list()] == ["b", "z", "a", "m"]


@pytest.mark.parametrize("order", ["first-appearance", "sorted"])
def test_id_remap_round_trip(order):
    rows = [("u9", "x", 3), ("u2", "y", 1), ("u9", "y", 2), ("u1", "z", 4), ("u2", "x", 5)]
    df, users, items = remap_ids(_inter(rows), order)
    assert users["user_idx"].to_list() == list(range(1, 4))
    assert items["item_idx"].to_list() == list(range(1, 4))
    assert users["user_idx"].dtype == pl.Int32
    u = dict(zip(users["user_idx"], users["user_id"]))
    i = dict(zip(items["item_idx"], items["item_id"]))
    back = [(u[a], i[b]) for a, b in zip(df["user_idx"], df["item_idx"])]
    assert back == [(r[0], r[1]) for r in rows]
    if order == "sorted":
        assert users["user_id"].to_list() == ["u1", "u2", "u9"]
    else:  # first appearance in chronological order: y@1 (u2), y@2 (u9), x@3 ...
        assert users["user_id"].to_list() == ["u2", "u9", "u1"]
        assert items["item_id"].to_list() == ["y", "x", "z"]


def test_prepared_sequences_are_chronological_and_split_without_leak(tmp_path):
    from recsys.data import SequenceDataset  # the split production uses (leave-one-out, per layout.py)

    rows = [(f"u{u}", f"i{(u + t) % 6}", 100 * u + t) for u in range(6) for t in range(5)]
    out = prepare(_raw(_inter(rows)), tmp_path / "d", k_core_users=1, k_core_items=1)
    seqs = pl.read_parquet(out / layout.SEQUENCES)
    dataset = SequenceDataset(out, max_len=10)
    validation, test = dataset.split("validation"), dataset.split("test")
    for u, (items, ts) in enumerate(zip(seqs["item_idx"].to_list(), seqs["timestamp"].to_list())):
        assert ts == sorted(ts)  # nothing from the future feeds an earlier position
        assert int(test.targets[u]) == items[-1] and int(validation.targets[u]) == items[-2]
        assert [i for i in test.inputs[u].tolist() if i] == items[:-1][-10:]
        assert [i for i in validation.inputs[u].tolist() if i] == items[:-2][-10:]


def test_render_texts_collapses_missing_fields():
    items = pl.DataFrame(
        {
            "title": ["Toy Story", None, None, "X"],
            "year": ["1995", "1995", None, None],
            "genres": ["Animation", None, None, ""],
        },
    )
    texts = render_texts(items, "{title} ({year}). Genres: {genres}.")
    assert texts[0] == "Toy Story (1995). Genres: Animation."
    assert texts[1] == "(1995)."
    assert texts[2] is None
    assert texts[3] == "X."
    amazon = pl.DataFrame({"title": ["Pen"], "brand": [None], "price": ["$1.00"], "categories": [None]})
    t = render_texts(amazon, "{title}. Brand: {brand}. Price: {price}. Categories: {categories}.")
    assert t == ["Pen. Price: $1.00."]


def test_template_unknown_column_is_named():
    with pytest.raises(DataError, match="'nope'"):
        render_texts(pl.DataFrame({"title": ["a"]}), "{nope}")


def test_manifest_counts_add_up(tmp_path):
    rows = [(f"u{u}", f"i{(u * 7 + t) % 9}", t) for u in range(12) for t in range(u % 7)]
    rows += [rows[0], rows[1]]  # two exact duplicates
    rows += [("u1", "ghost", 99)]  # unknown item
    ratings = [float((i % 5) + 1) for i in range(len(rows))]
    items = sorted({r[1] for r in rows} - {"ghost"})
    with pytest.warns(UserWarning, match="missing from the items table"):
        out = prepare(
            _raw(_inter(rows, ratings), items, tmp=tmp_path),
            tmp_path / "d",
            k_core_users=2,
            k_core_items=2,
            rating_threshold=2.0,
        )
    m = read_manifest(out)
    steps = m["steps"]
    assert [s["step"] for s in steps] == [
        "read",
        "rating_threshold",
        "duplicates",
        "unknown_items",
        "k_core",
        "min_sequence_length",
    ]
    prev = steps[0]["after"]
    for s in steps[1:]:
        assert s["before"] == prev
        assert s["before"]["rows"] - s["dropped_rows"] == s["after"]["rows"]
        assert m["dropped"][s["step"]] == s["dropped_rows"]
        prev = s["after"]
    assert prev["rows"] == m["final"]["interactions"] == m["sequence_length"]["total"]
    assert m["final"]["users"] == prev["users"] and m["final"]["items"] == prev["items"]
    assert m["pipeline_version"] == layout.PIPELINE_VERSION
    assert m["source"]["files"]["interactions"]["sha256"]
    assert m["modalities"] == ["text"]
    items_df = pl.read_parquet(out / layout.ITEMS)
    assert items_df["item_idx"].to_list() == list(range(1, items_df.height + 1))
    assert items_df.schema == {
        "item_idx": pl.Int32,
        "item_id": pl.String,
        "text": pl.String,
        "image_path": pl.String,
    }
    seq = pl.read_parquet(out / layout.SEQUENCES)
    assert seq.schema == {"user_idx": pl.Int32, "item_idx": pl.List(pl.Int32), "timestamp": pl.List(pl.Int64)}
    assert min(seq["item_idx"].list.len()) >= layout.MIN_SEQUENCE_LENGTH


def test_short_users_dropped_and_counted(tmp_path):
    rows = [("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "x", 4), ("b", "y", 5)]
    out = prepare(_raw(_inter(rows)), tmp_path / "d", k_core_users=1, k_core_items=1)
    m = read_manifest(out)
    assert m["dropped"]["short_sequence_users"] == 1
    assert m["dropped"]["min_sequence_length"] == 2
    assert m["final"]["users"] == 1


def test_manifest_keeps_features_key(tmp_path):
    rows = [("a", "x", 1), ("a", "y", 2), ("a", "z", 3)]
    out = prepare(_raw(_inter(rows)), tmp_path / "d", k_core_users=1, k_core_items=1)
    m = read_manifest(out)
    m["features"] = {"text": "features/text.safetensors"}
    (out / layout.MANIFEST).write_text(json.dumps(m))
    prepare(_raw(_inter(rows)), out, k_core_users=1, k_core_items=1)
    assert read_manifest(out)["features"] == {"text": "features/text.safetensors"}
    write_manifest(out, {"dataset": "x"})
    assert read_manifest(out)["features"]
    assert not list(out.glob(".*tmp"))
