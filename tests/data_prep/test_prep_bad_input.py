"""Bad input: every error names file/line/column; lenient mode skips and counts; nothing silent."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from data_prep.errors import DataError
from data_prep.manifest import read_manifest
from data_prep.pipeline import prepare
from data_prep.readers import read_amazon, read_generic, read_movielens_atomic

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEMS = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
    f"{i}\tMovie {i}\t1990\tDrama\n" for i in range(1, 6)
)


def atomic(tmp: Path, body: str, items: str = ITEMS) -> tuple[Path, Path]:
    inter, item = tmp / "x.inter", tmp / "x.item"
    inter.write_text(HEADER + body)
    item.write_text(items)
    return inter, item


GOOD = "".join(f"u{u}\t{i}\t4\t{100 * u + i}\n" for u in range(1, 4) for i in range(1, 5))


def test_wrong_field_count_names_file_and_line(tmp_path):
    inter, item = atomic(tmp_path, GOOD + "u9\t1\t4\n")
    with pytest.raises(DataError, match=r"x\.inter, line 14: expected 4 tab-separated fields.*found 3") as e:
        read_movielens_atomic(inter, item)
    assert e.value.line == 14 and e.value.file == str(inter)


def test_missing_required_column_lists_found(tmp_path):
    inter, item = tmp_path / "x.inter", tmp_path / "x.item"
    inter.write_text("user_id:token\titem_id:token\trating:float\n1\t1\t3\n")
    item.write_text(ITEMS)
    with pytest.raises(
        DataError,
        match=r"x\.inter, column 'timestamp': missing required column.*found "
        r"columns: user_id, item_id, rating",
    ):
        read_movielens_atomic(inter, item)


@pytest.mark.parametrize(
    "col,body,line",
    [
        ("timestamp", "u1\t1\t4\tyesterday\n", 2),
        ("rating", "u1\t1\t4\t1\nu1\t2\tfive\t2\n", 3),
    ],
)
def test_non_numeric_names_file_line_column(tmp_path, col, body, line):
    inter, item = atomic(tmp_path, body)
    with pytest.raises(DataError, match=rf"x\.inter, line {line}, column '{col}': non-numeric {col}"):
        read_movielens_atomic(inter, item)


def test_bad_json_names_file_and_line(tmp_path):
    rp, mp = tmp_path / "r.json", tmp_path / "m.json"
    rp.write_text(json.dumps({"reviewerID": "a", "asin": "b", "unixReviewTime": 1}) + "\n{not json\n")
    mp.write_text(json.dumps({"asin": "b", "title": "t"}) + "\n")
    with pytest.raises(DataError, match=r"r\.json, line 2: bad JSON"):
        read_amazon(rp, mp)


def test_amazon_missing_field_named(tmp_path):
    rp, mp = tmp_path / "r.json", tmp_path / "m.json"
    rp.write_text(json.dumps({"reviewerID": "a", "asin": "b"}) + "\n")
    mp.write_text(json.dumps({"asin": "b"}) + "\n")
    with pytest.raises(DataError, match=r"r\.json, line 1, column 'unixReviewTime': missing required field"):
        read_amazon(rp, mp)


def test_generic_csv_ragged_line_and_missing_column(tmp_path):
    ip, tp = tmp_path / "i.csv", tmp_path / "t.csv"
    ip.write_text("user_id,item_id,timestamp\na,x,1\nb,x,2,extra\n")
    tp.write_text("item_id,title\nx,X\n")
    with pytest.raises(DataError, match=r"i\.csv, line 3: expected 3 comma-separated fields"):
        read_generic(ip, tp)
    ip.write_text("user,item_id,timestamp\na,x,1\n")
    with pytest.raises(
        DataError, match=r"i\.csv, column 'user_id': missing required column.*found columns: user"
    ):
        read_generic(ip, tp)


def test_generic_parquet_bad_timestamp_names_row(tmp_path):
    pl.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "x"], "timestamp": ["1", "noon"]}).write_parquet(
        tmp_path / "i.parquet"
    )
    pl.DataFrame({"item_id": ["x"], "title": ["X"]}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(
        DataError, match=r"i\.parquet, column 'timestamp': non-numeric timestamp 'noon' \(row 2\)"
    ):
        read_generic(tmp_path / "i.parquet", tmp_path / "t.parquet")


def test_duplicates_error_and_counted(tmp_path):
    inter, item = atomic(tmp_path, GOOD + "u1\t1\t4\t101\n")
    raw = read_movielens_atomic(inter, item)
    with pytest.raises(DataError, match=r"x\.inter, line 14: duplicate event \(user 'u1', item '1'"):
        prepare(raw, tmp_path / "d", duplicates="error", k_core_users=1, k_core_items=1)
    out = prepare(raw, tmp_path / "d", k_core_users=1, k_core_items=1)
    assert read_manifest(out)["dropped"]["duplicates"] == 1


def test_unknown_items_counted_or_error(tmp_path):
    inter, item = atomic(tmp_path, GOOD + "u1\t999\t4\t5000\n")
    raw = read_movielens_atomic(inter, item)
    with pytest.warns(UserWarning, match="1 interactions refer to 1 items missing"):
        out = prepare(raw, tmp_path / "d", k_core_users=1, k_core_items=1)
    assert read_manifest(out)["dropped"]["unknown_items"] == 1
    with pytest.raises(DataError, match=r"x\.inter, line 14, column 'item_id': .*first: item '999'"):
        prepare(raw, tmp_path / "d", strict=True, k_core_users=1, k_core_items=1)


def test_items_without_text_counted_or_error(tmp_path):
    items = ITEMS.replace("2\tMovie 2\t1990\tDrama", "2\t\t\t")
    inter, item = atomic(tmp_path, GOOD, items)
    raw = read_movielens_atomic(inter, item)
    out = prepare(raw, tmp_path / "d", k_core_users=1, k_core_items=1)
    m = read_manifest(out)
    assert m["items_table"]["items_without_text"] == 1
    texts = pl.read_parquet(out / "items.parquet").filter(pl.col("item_id") == "2")["text"]
    assert texts.item() is None
    with pytest.raises(DataError, match=r"x\.item, column 'text': 1 items have no text.*item '2'"):
        prepare(raw, tmp_path / "d2", strict=True, k_core_users=1, k_core_items=1)


def test_missing_images_never_crash(tmp_path):
    rp, mp = tmp_path / "r.json", tmp_path / "m.json"
    rp.write_text(
        "".join(json.dumps({"reviewerID": "a", "asin": "b", "unixReviewTime": t}) + "\n" for t in range(3))
    )
    mp.write_text(json.dumps({"asin": "b", "title": "t", "imUrl": "http://nowhere/q.jpg"}) + "\n")
    (tmp_path / "imgs").mkdir()
    raw = read_amazon(rp, mp, images=tmp_path / "imgs")
    out = prepare(raw, tmp_path / "d", k_core_users=1, k_core_items=1)
    m = read_manifest(out)
    assert m["items_table"]["missing_images"] == 1 and m["modalities"] == ["text"]


@pytest.mark.parametrize(
    "kw,step",
    [
        ({"rating_threshold": 5.0}, "rating_threshold"),
        ({"k_core_users": 50}, "k_core"),
    ],
)
def test_empty_result_names_filter(tmp_path, kw, step):
    inter, item = atomic(tmp_path, GOOD)
    with pytest.raises(DataError, match=f"no interactions left after filter '{step}'"):
        prepare(read_movielens_atomic(inter, item), tmp_path / "d", **kw)


def test_lenient_skips_and_counts(tmp_path):
    body = GOOD + "u9\t1\n" + "u9\t1\tbad\t5\n" + "u9\t1\t4\tnow\n" + "u8\t2\t3\n"
    inter, item = atomic(tmp_path, body)
    raw = read_movielens_atomic(inter, item, lenient=True)
    assert raw.interactions.height == 12
    assert raw.skipped.total == 4
    out = prepare(raw, tmp_path / "d", k_core_users=1, k_core_items=1, lenient=True)
    m = read_manifest(out)
    assert m["dropped"]["malformed_lines"] == 4
    by_reason = {s["reason"]: s for s in m["skipped"]}
    assert by_reason["wrong field count"]["count"] == 2
    assert by_reason["wrong field count"]["first_lines"] == [14, 17]
    assert by_reason["non-numeric rating"]["first_lines"] == [15]
    assert by_reason["non-numeric timestamp"]["first_lines"] == [16]
    assert m["parameters"]["lenient"] is True


def test_lenient_json_and_csv(tmp_path):
    rp, mp = tmp_path / "r.json", tmp_path / "m.json"
    good = [json.dumps({"reviewerID": "a", "asin": "b", "unixReviewTime": t}) for t in range(3)]
    rp.write_text("\n".join([good[0], "{oops", good[1], "[1, 2]", good[2]]) + "\n")
    mp.write_text(json.dumps({"asin": "b", "title": "t"}) + "\nnot a dict at all\n")
    raw = read_amazon(rp, mp, lenient=True)
    assert raw.interactions.height == 3 and raw.skipped.total == 3
    reasons = {(Path(s["file"]).name, s["reason"]): s["first_lines"] for s in raw.skipped.to_list()}
    assert reasons == {
        ("r.json", "bad JSON"): [2],
        ("r.json", "not an object"): [4],
        ("m.json", "bad JSON"): [2],
    }

    ip, tp = tmp_path / "i.csv", tmp_path / "t.csv"
    ip.write_text("user_id,item_id,timestamp\na,x,1\nb,x,2,extra\nc,x,3\n")
    tp.write_text("item_id,title\nx,X\n")
    raw = read_generic(ip, tp, lenient=True)
    assert raw.interactions["line"].to_list() == [2, 4]
    assert raw.skipped.to_list()[0]["first_lines"] == [3]


def test_missing_file_named(tmp_path):
    with pytest.raises(DataError, match="nope.inter: file not found"):
        read_movielens_atomic(tmp_path / "nope.inter", tmp_path / "nope.item")
