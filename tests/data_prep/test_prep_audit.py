"""Audited input defects: short CSV rows, absurd timestamps, odd Amazon shapes, BOMs, image paths
outside the images folder, items without a title, absurd options. Strict = error naming file and
line; lenient = skipped and counted in the manifest (DESIGN.md contract 3)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from data_prep.cli import main
from data_prep.errors import DataError
from data_prep.manifest import read_manifest
from data_prep.pipeline import prepare
from data_prep.readers import read_amazon, read_generic, read_movielens_atomic

BOM = "\ufeff"
ONE = {"k_core_users": 1, "k_core_items": 1}


def _reasons(raw) -> dict[tuple[str, str], list[int]]:
    return {(Path(s["file"]).name, s["reason"]): s["first_lines"] for s in raw.skipped.to_list()}


def _jsonl(path: Path, records: list[Any], prefix: str = "") -> Path:
    text = prefix + "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _reviews(n: int = 3, **over: Any) -> list[dict]:
    return [
        {"reviewerID": "A", "asin": "B", "unixReviewTime": 100 + t, "overall": 4.0, **over} for t in range(n)
    ]


# ----------------------------------------------------------------------------- 9. short CSV rows


@pytest.mark.parametrize("quoted", [False, True])
def test_csv_short_row_strict_error_lenient_counted(tmp_path, quoted):
    ip, tp = tmp_path / "i.csv", tmp_path / "t.csv"
    first = '"a",x,1,4' if quoted else "a,x,1,4"
    ip.write_text(f"user_id,item_id,timestamp,rating\n{first}\nb,x,1\nc,x,3,5\n")
    tp.write_text("item_id,title\nx,X\n")
    with pytest.raises(DataError, match=r"i\.csv, line 3: expected 4 comma-separated fields.*found 3") as e:
        read_generic(ip, tp, rating_col="rating")
    assert e.value.line == 3
    raw = read_generic(ip, tp, rating_col="rating", lenient=True)
    assert raw.interactions["line"].to_list() == [2, 4]
    assert _reasons(raw) == {("i.csv", "wrong field count"): [3]}


def test_csv_strict_and_lenient_agree_on_good_file(tmp_path):
    ip, tp = tmp_path / "i.csv", tmp_path / "t.csv"
    ip.write_text('user_id,item_id,timestamp,rating\na,x,1,\n\n"b, jr",x,2,3\r\nc,"x",3,""\n')
    tp.write_text("item_id,title\nx,X\n")
    strict, lenient = (
        read_generic(ip, tp, rating_col="rating"),
        read_generic(ip, tp, rating_col="rating", lenient=True),
    )
    assert strict.interactions.equals(lenient.interactions)
    assert strict.interactions["user_id"].to_list() == ["a", "b, jr", "c"]
    assert strict.interactions["line"].to_list() == [2, 4, 5]
    assert strict.interactions["rating"].to_list() == [None, 3.0, None]


# ----------------------------------------------------------------------------- 10. absurd timestamps

BAD_TIMESTAMPS = [
    ("-5", "timestamp out of range"),
    ("1e30", "timestamp out of range"),
    ("Infinity", "non-finite timestamp"),
    ("-inf", "non-finite timestamp"),
    ("NaN", "non-finite timestamp"),
]


@pytest.mark.parametrize("ts,reason", BAD_TIMESTAMPS)
def test_bad_timestamp_atomic(tmp_path, ts, reason):
    inter, item = tmp_path / "x.inter", tmp_path / "x.item"
    inter.write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
        + "".join(f"u\t1\t{t}\n" for t in range(3))
        + f"u\t1\t{ts}\n"
    )
    item.write_text("item_id:token\tmovie_title:token_seq\n1\tOne\n")
    with pytest.raises(DataError, match=rf"x\.inter, line 5, column 'timestamp': {reason}") as e:
        read_movielens_atomic(inter, item)
    assert e.value.line == 5
    raw = read_movielens_atomic(inter, item, lenient=True)
    assert raw.interactions.height == 3 and _reasons(raw) == {("x.inter", reason): [5]}
    m = read_manifest(prepare(raw, tmp_path / "d", lenient=True, text_template="{title}", **ONE))
    assert m["dropped"]["malformed_lines"] == 1
    assert [(s["reason"], s["first_lines"]) for s in m["skipped"]] == [(reason, [5])]


@pytest.mark.parametrize("ts,reason", BAD_TIMESTAMPS)
def test_bad_timestamp_generic_csv(tmp_path, ts, reason):
    ip, tp = tmp_path / "i.csv", tmp_path / "t.csv"
    ip.write_text(f"user_id,item_id,timestamp\na,x,1\na,x,{ts}\n")
    tp.write_text("item_id,title\nx,X\n")
    with pytest.raises(DataError, match=rf"i\.csv, line 3, column 'timestamp': {reason}"):
        read_generic(ip, tp)
    raw = read_generic(ip, tp, lenient=True)
    assert raw.interactions.height == 1 and _reasons(raw) == {("i.csv", reason): [3]}


@pytest.mark.parametrize(
    "value,reason",
    [
        (-5, "timestamp out of range"),
        (1e30, "timestamp out of range"),
        (float("inf"), "non-finite timestamp"),
        (float("nan"), "non-finite timestamp"),
    ],
)
def test_bad_timestamp_parquet_and_amazon(tmp_path, value, reason):
    dtype = pl.Int64 if isinstance(value, int) else pl.Float64
    pl.DataFrame(
        {"user_id": ["a", "a"], "item_id": ["x", "x"], "timestamp": pl.Series([1, value], dtype=dtype)}
    ).write_parquet(tmp_path / "i.parquet")
    pl.DataFrame({"item_id": ["x"], "title": ["X"]}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=rf"i\.parquet, column 'timestamp': {reason} .*\(row 2\)"):
        read_generic(tmp_path / "i.parquet", tmp_path / "t.parquet")
    raw = read_generic(tmp_path / "i.parquet", tmp_path / "t.parquet", lenient=True)
    assert raw.interactions.height == 1 and _reasons(raw) == {("i.parquet", reason): [2]}

    rp = _jsonl(
        tmp_path / "r.json", [*_reviews(2), {"reviewerID": "A", "asin": "B", "unixReviewTime": value}]
    )
    mp = _jsonl(tmp_path / "m.json", [{"asin": "B", "title": "t"}])
    with pytest.raises(DataError, match=rf"r\.json, line 3, column 'timestamp': {reason}"):
        read_amazon(rp, mp)
    raw = read_amazon(rp, mp, lenient=True)
    assert raw.interactions.height == 2 and _reasons(raw) == {("r.json", reason): [3]}


def test_timestamps_exact_and_in_range(tmp_path):
    ns = 1_700_000_000_123_456_789  # nanosecond epochs keep every digit (no float round trip)
    ip, tp = tmp_path / "i.csv", tmp_path / "t.csv"
    ip.write_text(f"user_id,item_id,timestamp\na,x,0\na,x,{ns}\na,x,1.9\n")
    tp.write_text("item_id,title\nx,X\n")
    assert read_generic(ip, tp).interactions["timestamp"].to_list() == [0, ns, 1]


def test_non_finite_rating(tmp_path):
    inter, item = tmp_path / "x.inter", tmp_path / "x.item"
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\nu\t1\tinf\t1\n")
    item.write_text("item_id:token\n1\n")
    with pytest.raises(DataError, match=r"x\.inter, line 2, column 'rating': non-finite rating"):
        read_movielens_atomic(inter, item)


# ----------------------------------------------------------------------------- 11. Amazon shapes


def test_amazon_numeric_ids_coerced(tmp_path):
    rp = _jsonl(tmp_path / "r.json", [{"reviewerID": 11, "asin": 7, "unixReviewTime": t} for t in range(3)])
    mp = _jsonl(tmp_path / "m.json", [{"asin": 7, "title": 1984, "brand": 3.5}])
    raw = read_amazon(rp, mp)
    assert read_manifest(prepare(raw, tmp_path / "d", **ONE))["dropped"]["unknown_items"] == 0
    assert raw.interactions["user_id"].to_list() == ["11"] * 3
    assert raw.interactions["item_id"].to_list() == ["7"] * 3
    assert raw.items.row(0, named=True) | {"price": None, "categories": None} == {
        "item_id": "7",
        "title": "1984",
        "brand": "3.5",
        "price": None,
        "categories": None,
    }
    # mixed: a string user and a numeric one in the same file
    rp = _jsonl(
        tmp_path / "r.json",
        [
            {"reviewerID": "A", "asin": 7, "unixReviewTime": 1},
            {"reviewerID": 12, "asin": "7", "unixReviewTime": 2},
        ],
    )
    raw = read_amazon(rp, mp)
    assert (
        raw.interactions["user_id"].to_list() == ["A", "12"]
        and raw.interactions["item_id"].to_list() == ["7"] * 2
    )


@pytest.mark.parametrize("field,value", [("reviewerID", ["A"]), ("asin", {"id": "B"}), ("reviewerID", True)])
def test_amazon_bad_review_id(tmp_path, field, value):
    rp = _jsonl(tmp_path / "r.json", [*_reviews(2), {**_reviews(1)[0], field: value}])
    mp = _jsonl(tmp_path / "m.json", [{"asin": "B", "title": "t"}])
    with pytest.raises(
        DataError, match=rf"r\.json, line 3, column '{field}': {field} must be a string or a number"
    ):
        read_amazon(rp, mp)
    raw = read_amazon(rp, mp, lenient=True)
    assert raw.interactions.height == 2 and _reasons(raw) == {("r.json", f"bad {field}"): [3]}


@pytest.mark.parametrize(
    "field,value", [("asin", ["B"]), ("title", ["a", "b"]), ("title", {"en": "t"}), ("brand", [1])]
)
def test_amazon_bad_meta_shape(tmp_path, field, value):
    rp = _jsonl(tmp_path / "r.json", _reviews(3))
    mp = _jsonl(tmp_path / "m.json", [{"asin": "B", "title": "t"}, {"asin": "C", "title": "u", field: value}])
    with pytest.raises(
        DataError, match=rf"m\.json, line 2, column '{field}': {field} must be a string or a number"
    ):
        read_amazon(rp, mp)
    raw = read_amazon(rp, mp, lenient=True)
    assert raw.items["item_id"].to_list() == ["B"] and _reasons(raw) == {("m.json", f"bad {field}"): [2]}


@pytest.mark.parametrize("which", ["reviews", "meta"])
def test_amazon_deep_nesting(tmp_path, which):
    deep = '{"reviewerID": "A", "asin": "B", "unixReviewTime": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    deep_meta = '{"asin": "C", "title": ' + "[" * 100_000 + "]" * 100_000 + "}"
    rp = _jsonl(tmp_path / "r.json", [*_reviews(2), *([deep] if which == "reviews" else [])])
    mp = _jsonl(tmp_path / "m.json", [{"asin": "B", "title": "t"}, *([deep_meta] if which == "meta" else [])])
    name, line = ("r.json", 3) if which == "reviews" else ("m.json", 2)
    with pytest.raises(DataError, match=rf"{name}, line {line}: too deeply nested"):
        read_amazon(rp, mp)
    raw = read_amazon(rp, mp, lenient=True)
    assert raw.interactions.height == 2 and _reasons(raw) == {(name, "too deeply nested"): [line]}


def test_amazon_odd_keys_and_huge_numbers(tmp_path):
    rp = _jsonl(tmp_path / "r.json", [*_reviews(2), "{1: 2}", '{"reviewerID": ' + "9" * 5000 + "}"])
    mp = _jsonl(tmp_path / "m.json", [{"asin": "B", "title": "t"}])
    with pytest.raises(
        DataError, match=r"r\.json, line 3, column 'reviewerID': missing required field.*found fields: 1"
    ):
        read_amazon(rp, mp)
    raw = read_amazon(rp, mp, lenient=True)
    assert _reasons(raw) == {("r.json", "missing reviewerID"): [3], ("r.json", "bad JSON"): [4]}


# ----------------------------------------------------------------------------- 12. UTF-8 BOM


@pytest.mark.parametrize("lenient", [False, True])
def test_bom_atomic(tmp_path, lenient):
    inter, item = tmp_path / "x.inter", tmp_path / "x.item"
    inter.write_text(
        BOM + "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"u\t1\t{t}\n" for t in range(3))
    )
    item.write_text(BOM + "item_id:token\tmovie_title:token_seq\n1\tOne\n")
    raw = read_movielens_atomic(inter, item, lenient=lenient)
    assert raw.interactions.height == 3 and raw.items["item_id"].to_list() == ["1"] and raw.skipped.total == 0


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
@pytest.mark.parametrize("fmt", ["2014", "2018"])
def test_bom_amazon(tmp_path, suffix, fmt):
    rp = _jsonl(tmp_path / f"r{suffix}", _reviews(3), prefix=BOM)
    mp = _jsonl(tmp_path / f"m{suffix}", ["{'asin': 'B', 'title': 't'}"], prefix=BOM)
    raw = read_amazon(rp, mp, fmt=fmt, lenient=True)
    assert raw.skipped.total == 0 and raw.interactions.height == 3 and raw.items["item_id"].to_list() == ["B"]
    out = prepare(raw, tmp_path / "d", **ONE)
    assert read_manifest(out)["dropped"]["unknown_items"] == 0


@pytest.mark.parametrize("lenient", [False, True])
def test_bom_generic(tmp_path, lenient):
    ip, tp = tmp_path / "i.csv", tmp_path / "t.csv"
    ip.write_text(BOM + "uid,item_id,timestamp\na,x,1\n", encoding="utf-8")
    tp.write_text(BOM + '"item_id",title\nx,X\n', encoding="utf-8")
    raw = read_generic(ip, tp, user_col="uid", lenient=lenient)
    assert raw.interactions["user_id"].to_list() == ["a"] and raw.items["item_id"].to_list() == ["x"]
    # a parquet written from a BOM CSV by a tool that kept the BOM in the first column name
    pl.DataFrame({BOM + "uid": ["a"], "item_id": ["x"], "timestamp": [1]}).write_parquet(
        tmp_path / "i.parquet"
    )
    raw = read_generic(tmp_path / "i.parquet", tp, user_col="uid", lenient=lenient)
    assert raw.interactions["user_id"].to_list() == ["a"]


# ----------------------------------------------------------------------------- 13. image paths


def test_amazon_image_lookup_stays_inside_folder(tmp_path):
    images, secret = tmp_path / "imgs", tmp_path / "secret.jpg"
    images.mkdir()
    secret.write_bytes(b"secret")
    (tmp_path / "abs.jpg").write_bytes(b"secret")
    (images / "LINK.jpg").symlink_to(secret)
    (images / "ok.jpg").write_bytes(b"fine")
    (images / "INSIDE.jpg").symlink_to(images / "ok.jpg")
    ids = ["../secret", str(tmp_path / "abs"), "LINK", "INSIDE", "GOOD"]
    rp = _jsonl(
        tmp_path / "r.json", [{"reviewerID": "A", "asin": i, "unixReviewTime": t} for t, i in enumerate(ids)]
    )
    meta = [{"asin": i, "title": i} for i in ids[:-1]]
    meta.append({"asin": "GOOD", "title": "g", "imUrl": "http://x/../../secret.jpg"})
    mp = _jsonl(tmp_path / "m.json", meta)
    raw = read_amazon(rp, mp, images=images)
    paths = dict(zip(raw.items["item_id"], raw.items["image_path"]))
    assert paths == {
        "../secret": None,
        str(tmp_path / "abs"): None,
        "LINK": None,
        "INSIDE": str((images / "ok.jpg").resolve()),
        "GOOD": None,
    }
    assert raw.item_counts["images_outside_folder"] == 3
    assert raw.item_counts["missing_images"] == 4 and raw.item_counts["with_image"] == 1
    m = read_manifest(prepare(raw, tmp_path / "d", **ONE))
    assert m["items_table"]["images_outside_folder"] == 3


def test_generic_image_paths_stay_inside_folder(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"s")
    (images / "link.png").symlink_to(tmp_path / "secret.png")
    pl.DataFrame({"user_id": ["u"] * 5, "item_id": list("abcde"), "timestamp": range(5)}).write_csv(
        tmp_path / "i.csv"
    )
    pl.DataFrame(
        {
            "item_id": list("abcde"),
            "title": list("ABCDE"),
            "img": [
                "a.png",
                "../secret.png",
                str(tmp_path / "secret.png"),
                "link.png",
                str(images / "a.png"),
            ],
        }
    ).write_csv(tmp_path / "t.csv")
    raw = read_generic(tmp_path / "i.csv", tmp_path / "t.csv", image_col="img", image_dir=images)
    assert [p is not None for p in raw.items["image_path"]] == [True, False, False, False, True]
    assert raw.item_counts["images_outside_folder"] == 3 and raw.item_counts["missing_images"] == 3


# ----------------------------------------------------------------------------- 14. no title


def test_items_without_title_counted(tmp_path):
    rp = _jsonl(
        tmp_path / "r.json",
        [{"reviewerID": "A", "asin": a, "unixReviewTime": t} for t, a in enumerate(["B", "C", "D"])],
    )
    mp = _jsonl(
        tmp_path / "m.json",
        [{"asin": "B", "title": "Pen"}, {"asin": "C", "brand": "Acme"}, {"asin": "D", "title": "  "}],
    )
    out = prepare(read_amazon(rp, mp), tmp_path / "d", **ONE)
    texts = dict(pl.read_parquet(out / "items.parquet").select("item_id", "text").iter_rows())
    assert texts == {"B": "Pen.", "C": "Brand: Acme.", "D": None}
    it = read_manifest(out)["items_table"]
    assert it["items_without_title"] == 2 and it["items_without_text"] == 1


# ----------------------------------------------------------------------------- absurd options


@pytest.mark.parametrize(
    "args,option",
    [
        (["--rating-threshold", "inf"], "--rating-threshold"),
        (["--rating-threshold", "nan"], "--rating-threshold"),
        (["--k-core", "-1"], "--k-core"),
        (["--k-core-users", "-3"], "--k-core-users"),
        (["--k-core-items", "x"], "--k-core-items"),
    ],
)
def test_cli_rejects_absurd_options(tmp_path, capsys, args, option):
    with pytest.raises(SystemExit) as e:
        main(["generic", "--out", str(tmp_path / "o"), "--no-features", *args])
    assert e.value.code == 2 and f"argument {option}:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"rating_threshold": float("inf")}, "rating_threshold"),
        ({"rating_threshold": float("nan")}, "rating_threshold"),
        ({"k_core_users": -1}, "k_core_users"),
        ({"k_core_items": 2.5}, "k_core_items"),
    ],
)
def test_prepare_rejects_absurd_parameters(tmp_path, kw, name):
    rp = _jsonl(tmp_path / "r.json", _reviews(3))
    mp = _jsonl(tmp_path / "m.json", [{"asin": "B", "title": "t"}])
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        prepare(read_amazon(rp, mp), tmp_path / "d", **{**ONE, **kw})
    assert not os.path.exists(tmp_path / "d")
