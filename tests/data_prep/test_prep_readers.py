"""Each reader on small fixture files written in tmp_path."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from data_prep import layout
from data_prep.manifest import read_manifest
from data_prep.pipeline import prepare
from data_prep.readers import AMAZON_TEMPLATE, read_amazon, read_generic, read_movielens_atomic

INTER_SCHEMA = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}


def _check_common(raw) -> None:
    sch = raw.interactions.schema
    for k, v in INTER_SCHEMA.items():
        assert sch[k] == v
    assert sch["line"] == pl.Int64
    if "rating" in sch:
        assert sch["rating"] == pl.Float64
    assert raw.items.schema["item_id"] == pl.String


def write_atomic(tmp: Path) -> tuple[Path, Path]:
    inter = tmp / "toy.inter"
    inter.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t4\t100\n1\t11\t3\t101\n2\t10\t5\t100\n\n2\t12\t2.5\t99.0\n1\t12\t1\t102\n"
    )
    item = tmp / "toy.item"
    item.write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Comedy\n11\tunkonwn\tunkonwn\tunknown\n12\tHeat\t1995.0\tAction\n"
    )
    return inter, item


def test_movielens_atomic(tmp_path):
    raw = read_movielens_atomic(*write_atomic(tmp_path))
    _check_common(raw)
    assert raw.interactions["line"].to_list() == [2, 3, 4, 6, 7]  # blank line 5 ignored, numbers kept
    assert raw.interactions["timestamp"].to_list() == [100, 101, 100, 99, 102]
    assert raw.interactions["rating"].to_list() == [4.0, 3.0, 5.0, 2.5, 1.0]
    assert raw.items.columns == ["item_id", "title", "year", "genres"]
    row = raw.items.filter(pl.col("item_id") == "11").row(0, named=True)
    assert row["title"] is None and row["year"] is None  # placeholder -> missing
    assert raw.item_counts["placeholder_titles"] == 1
    assert raw.items.filter(pl.col("item_id") == "12")["year"].item() == "1995"


def test_movielens_atomic_prepared_text(tmp_path):
    raw = read_movielens_atomic(*write_atomic(tmp_path))
    out = prepare(raw, tmp_path / "d", k_core_users=1, k_core_items=1)
    items = pl.read_parquet(out / layout.ITEMS)
    texts = dict(zip(items["item_id"], items["text"]))
    assert texts["10"] == "Toy Story (1995). Genres: Animation Comedy."
    assert texts["11"] == "Genres: unknown."


def _amazon_2014(tmp: Path, gz: bool) -> tuple[Path, Path]:
    reviews = [
        {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1300000000},
        {"reviewerID": "A1", "asin": "B02", "overall": 3.0, "unixReviewTime": 1300000100},
        {"reviewerID": "A2", "asin": "B01", "overall": 4.0, "unixReviewTime": 1300000050},
        {"reviewerID": "A1", "asin": "B01", "overall": 4.0, "unixReviewTime": 1300000200},
    ]
    meta = [
        # python-dict literal, as in the real 2014 files
        "{'asin': 'B01', 'title': 'Red Pen', 'price': 1.5, 'imUrl': 'http://x/images/I/abc.jpg', "
        "'categories': [['Office', 'Pens'], ['Office']], 'brand': 'Bic'}",
        json.dumps(
            {"asin": "B02", "title": "Blue Pen", "categories": [["Office"]], "imUrl": "http://x/zzz.jpg"}
        ),
    ]
    rtext = "\n".join(json.dumps(r) for r in reviews) + "\n"
    mtext = "\n".join(meta) + "\n"
    if gz:
        rp, mp = tmp / "reviews.json.gz", tmp / "meta.json.gz"
        rp.write_bytes(gzip.compress(rtext.encode()))
        mp.write_bytes(gzip.compress(mtext.encode()))
    else:
        rp, mp = tmp / "reviews.json", tmp / "meta.json"
        rp.write_text(rtext)
        mp.write_text(mtext)
    return rp, mp


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_2014(tmp_path, gz):
    rp, mp = _amazon_2014(tmp_path, gz)
    images = tmp_path / "img"
    images.mkdir()
    (images / "abc.jpg").write_bytes(b"\xff\xd8fake")  # found through the URL's basename
    raw = read_amazon(rp, mp, fmt="2014", images=images)
    _check_common(raw)
    assert raw.interactions["user_id"].to_list() == ["A1", "A1", "A2", "A1"]
    assert raw.interactions["rating"].to_list() == [5.0, 3.0, 4.0, 4.0]
    b01 = raw.items.filter(pl.col("item_id") == "B01").row(0, named=True)
    assert b01["categories"] == "Office, Pens"
    assert b01["price"] == "$1.50" and b01["brand"] == "Bic"
    assert b01["image_path"] == str((images / "abc.jpg").resolve())
    assert raw.items.filter(pl.col("item_id") == "B02")["image_path"].item() is None
    assert raw.item_counts["missing_images"] == 1 and raw.item_counts["with_image"] == 1
    assert raw.text_template == AMAZON_TEMPLATE
    out = prepare(raw, tmp_path / "d", k_core_users=1, k_core_items=1)
    m = read_manifest(out)
    assert m["modalities"] == ["text", "image"]
    assert m["items_table"]["missing_images"] == 1


def test_amazon_2018(tmp_path):
    rp = tmp_path / "Toys.json"
    rp.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {
                    "reviewerID": "U1",
                    "asin": "P1",
                    "overall": 5.0,
                    "unixReviewTime": 1500000000,
                    "reviewText": "ok",
                },
                {"reviewerID": "U1", "asin": "P2", "overall": 1.0, "unixReviewTime": 1500000001},
            ]
        )
        + "\n"
    )
    mp = tmp_path / "meta_Toys.json.gz"
    mp.write_bytes(
        gzip.compress(
            (
                "\n".join(
                    json.dumps(r)
                    for r in [
                        {
                            "asin": "P1",
                            "title": "Ball",
                            "brand": "Acme",
                            "price": "$12.99",
                            "category": ["Toys", "Balls"],
                            "imageURL": ["http://i/small.jpg"],
                            "imageURLHighRes": ["http://i/P1-large.jpg"],
                        },
                        {
                            "asin": "P2",
                            "title": "Kite",
                            "price": "<span>junk</span>",
                            "category": [],
                            "imageURL": [],
                        },
                        {"asin": "P2", "title": "Kite duplicate row"},
                    ]
                )
                + "\n"
            ).encode()
        )
    )
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "P2.jpg").write_bytes(b"x")  # found as <asin>.jpg
    raw = read_amazon(rp, mp, fmt="2018", images=images)
    _check_common(raw)
    p1 = raw.items.filter(pl.col("item_id") == "P1").row(0, named=True)
    assert p1["price"] == "$12.99" and p1["categories"] == "Toys, Balls"
    assert p1["image_path"] is None  # P1-large.jpg not in the folder
    p2 = raw.items.filter(pl.col("item_id") == "P2").row(0, named=True)
    assert p2["price"] is None and p2["title"] == "Kite"
    assert p2["image_path"].endswith("P2.jpg")
    assert raw.item_counts["duplicate_item_rows"] == 1


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_generic(tmp_path, kind):
    inter = pl.DataFrame(
        {
            "uid": ["a", "a", "b", "a"],
            "iid": ["x", "y", "x", "x"],
            "ts": [3, 1, 2, 4],
            "stars": [1.0, 2.0, 3.0, 4.0],
        }
    )
    (tmp_path / "pic.png").write_bytes(b"x")
    items = pl.DataFrame(
        {
            "iid": ["x", "y"],
            "name": ["Thing X", None],
            "tags": ["t1", "t2"],
            "img": ["pic.png", "missing.png"],
        }
    )
    ip, tp = tmp_path / f"inter.{kind}", tmp_path / f"items.{kind}"
    if kind == "parquet":
        inter.write_parquet(ip)
        items.write_parquet(tp)
    else:
        inter.write_csv(ip)
        items.write_csv(tp)
    raw = read_generic(
        ip,
        tp,
        user_col="uid",
        item_col="iid",
        time_col="ts",
        rating_col="stars",
        image_col="img",
        text_template="{name}. Tags: {tags}.",
    )
    _check_common(raw)
    assert raw.interactions["timestamp"].to_list() == [3, 1, 2, 4]
    assert raw.interactions["line"].to_list() == ([1, 2, 3, 4] if kind == "parquet" else [2, 3, 4, 5])
    assert raw.items.columns == ["item_id", "name", "tags", "image_path"]
    assert raw.items["image_path"][0].endswith("pic.png") and raw.items["image_path"][1] is None
    assert raw.item_counts["missing_images"] == 1
    out = prepare(raw, tmp_path / "d", k_core_users=1, k_core_items=1)
    texts = pl.read_parquet(out / layout.ITEMS)["text"].to_list()
    assert sorted(texts) == ["Tags: t2.", "Thing X. Tags: t1."]


def test_generic_datetime_timestamps(tmp_path):
    from datetime import datetime

    inter = pl.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [datetime(2020, 1, 1)]})
    inter.write_parquet(tmp_path / "i.parquet")
    pl.DataFrame({"item_id": ["x"], "title": ["T"]}).write_parquet(tmp_path / "t.parquet")
    raw = read_generic(tmp_path / "i.parquet", tmp_path / "t.parquet")
    assert raw.interactions["timestamp"].to_list() == [1577836800]
