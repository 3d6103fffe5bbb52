"""Readers: raw files of each supported format -> one common :class:`RawData`.

Every reader returns

* ``interactions``: ``user_id:str, item_id:str, timestamp:int64, [rating:float64], line:int64``
  (``line`` = 1-based source line, or parquet row, used for error messages and as the stable
  tie-break of equal timestamps),
* ``items``: ``item_id:str`` + text fields (all ``str``, null when missing) + optional
  ``image_path:str|null``,

plus the source files and everything skipped or counted while reading. Malformed input raises
:class:`~data_prep.errors.DataError` naming file/line/column, or with ``lenient=True`` is skipped and
counted in :class:`Skipped`.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from data_prep.errors import DataError

MOVIELENS_TEMPLATE = "{title} ({year}). Genres: {genres}."
AMAZON_TEMPLATE = "{title}. Brand: {brand}. Price: {price}. Categories: {categories}."
PLACEHOLDERS = frozenset({"unkonwn", "unknown title"})  # ML-100K item 267's title/year placeholder
FIRST_LINES = 5  # how many line numbers of each skip reason are kept in the manifest

# RecBole atomic column names -> canonical text field names
ATOMIC_RENAME = {
    "movie_title": "title",
    "release_year": "year",
    "class": "genres",
    "genre": "genres",
}


@dataclass
class Skipped:
    """Lines skipped in lenient mode, grouped by (file, reason)."""

    entries: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, file: str | Path, reason: str, line: int) -> None:
        """Count one skipped line."""
        e = self.entries.setdefault((str(file), reason), {"count": 0, "first_lines": []})
        e["count"] += 1
        if len(e["first_lines"]) < FIRST_LINES:
            e["first_lines"].append(int(line))

    @property
    def total(self) -> int:
        """Number of skipped lines over all files and reasons."""
        return sum(e["count"] for e in self.entries.values())

    def to_list(self) -> list[dict[str, Any]]:
        """Manifest form: one dict per (file, reason)."""
        return [{"file": f, "reason": r, **e} for (f, r), e in self.entries.items()]


@dataclass
class RawData:
    """What a reader hands to :func:`data_prep.pipeline.prepare`."""

    name: str
    interactions: pl.DataFrame
    items: pl.DataFrame
    sources: dict[str, Path]  # role -> file
    text_template: str
    skipped: Skipped = field(default_factory=Skipped)
    item_counts: dict[str, int] = field(default_factory=dict)  # duplicate rows, placeholders, images
    source_info: dict[str, Any] = field(default_factory=dict)  # e.g. the wheel a built-in came from


# ----------------------------------------------------------------------------- helpers


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise DataError("file not found", file=path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8", newline="")


def _read_lines(path: Path) -> list[str]:
    try:
        with _open_text(path) as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"not valid UTF-8 ({e.reason} at byte {e.start})", file=path) from e
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read: {e}", file=path) from e
    lines = text.split("\n")
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _fail_or_skip(
    msg: str, *, file: Path, line: int, reason: str, lenient: bool, skipped: Skipped, column: str | None = None
) -> None:
    if not lenient:
        raise DataError(msg, file=file, line=line, column=column)
    skipped.add(file, reason, line)


def _require_columns(found: list[str], required: list[str], file: Path) -> None:
    for col in required:
        if col not in found:
            raise DataError(
                f"missing required column {col!r}; found columns: {', '.join(found) or '(none)'}",
                file=file,
                column=col,
            )


def _to_number(
    df: pl.DataFrame,
    col: str,
    dtype: type[pl.DataType],
    *,
    file: Path,
    lenient: bool,
    skipped: Skipped,
    required: bool,
    line_word: str = "line",
) -> pl.DataFrame:
    """Cast column ``col`` to a number; bad values raise naming file+line (or are skipped)."""
    src = df[col]
    if src.dtype.is_temporal():
        num = src.cast(pl.Datetime("us")).dt.epoch("s")
    elif src.dtype == pl.String:
        num = src.str.strip_chars().cast(pl.Float64, strict=False)
    else:
        num = src.cast(pl.Float64, strict=False)
    bad = num.is_null() | num.is_nan() if num.dtype.is_float() else num.is_null()
    if not required:
        bad = bad & src.is_not_null() & (src.cast(pl.String).str.strip_chars() != "")
    if bad.any():
        idx = bad.arg_true()
        if not lenient:
            i = int(idx[0])
            raise DataError(
                f"non-numeric {col} {src[i]!r} ({line_word} {int(df['line'][i])})"
                if line_word != "line"
                else f"non-numeric {col} {src[i]!r}",
                file=file,
                line=int(df["line"][i]) if line_word == "line" else None,
                column=col,
            )
        for i in idx.to_list():
            skipped.add(file, f"non-numeric {col}", int(df["line"][i]))
        df, num = df.filter(~bad), num.filter(~bad)
    if dtype == pl.Int64 and num.dtype.is_float():
        num = num.floor()
    return df.with_columns(num.cast(dtype).alias(col))


def _finish_interactions(
    df: pl.DataFrame, *, file: Path, lenient: bool, skipped: Skipped, line_word: str = "line"
) -> pl.DataFrame:
    """Type the common interaction columns and check ids are non-empty."""
    df = df.with_columns(
        pl.col("user_id").cast(pl.String).str.strip_chars(), pl.col("item_id").cast(pl.String).str.strip_chars()
    )
    for col in ("user_id", "item_id"):
        bad = df[col].is_null() | (df[col] == "")
        if bad.any():
            if not lenient:
                i = int(bad.arg_true()[0])
                raise DataError(
                    f"empty {col}" + (f" ({line_word} {int(df['line'][i])})" if line_word != "line" else ""),
                    file=file,
                    line=int(df["line"][i]) if line_word == "line" else None,
                    column=col,
                )
            for i in bad.arg_true().to_list():
                skipped.add(file, f"empty {col}", int(df["line"][i]))
            df = df.filter(~bad)
    kw = dict(file=file, lenient=lenient, skipped=skipped, line_word=line_word)
    df = _to_number(df, "timestamp", pl.Int64, required=True, **kw)
    cols = ["user_id", "item_id", "timestamp"]
    if "rating" in df.columns:
        df = _to_number(df, "rating", pl.Float64, required=False, **kw)
        cols.append("rating")
    return df.select(*cols, pl.col("line").cast(pl.Int64))


def _clean_text_columns(items: pl.DataFrame, counts: dict[str, int]) -> pl.DataFrame:
    """Strip text fields; empty strings and known placeholders (ML-100K "unkonwn") become null."""
    exprs = []
    for col in items.columns:
        if col in ("item_id", "image_path"):
            continue
        c = pl.col(col).cast(pl.String).str.strip_chars()
        is_placeholder = c.str.to_lowercase().is_in(list(PLACEHOLDERS))
        if col == "title":
            counts["placeholder_titles"] = int(items.select(is_placeholder.sum()).item() or 0)
        exprs.append(pl.when((c == "") | is_placeholder).then(None).otherwise(c).alias(col))
    items = items.with_columns(exprs) if exprs else items
    return items.with_columns(pl.col("item_id").cast(pl.String).str.strip_chars())


def _dedupe_items(items: pl.DataFrame, counts: dict[str, int]) -> pl.DataFrame:
    """Keep the first row of each item_id; count the rest."""
    before = items.height
    items = items.unique(subset=["item_id"], keep="first", maintain_order=True)
    counts["duplicate_item_rows"] = before - items.height
    counts["item_rows"] = before
    return items


def _resolve_images(
    items: pl.DataFrame, image_dir: Path | None, urls: list[str | None] | None, counts: dict[str, int]
) -> pl.DataFrame:
    """Set ``image_path`` to ``<image_dir>/<item_id>.jpg`` or ``<image_dir>/<basename(url)>``."""
    if image_dir is None:
        return items
    if not image_dir.is_dir():
        raise DataError("image folder not found", file=image_dir)
    paths: list[str | None] = []
    ids = items["item_id"].to_list()
    urls = urls if urls is not None else [None] * len(ids)
    for item_id, url in zip(ids, urls):
        candidates = [image_dir / f"{item_id}.jpg"]
        if url:
            candidates.append(image_dir / os.path.basename(url.split("?")[0]))
        found = next((str(p.resolve()) for p in candidates if p.is_file()), None)
        paths.append(found)
    items = items.with_columns(pl.Series("image_path", paths, dtype=pl.String))
    counts["missing_images"] = sum(p is None for p in paths)
    counts["with_image"] = len(paths) - counts["missing_images"]
    return items


# ----------------------------------------------------------------------------- (a) RecBole atomic


def _read_atomic_table(path: Path, *, lenient: bool, skipped: Skipped) -> pl.DataFrame:
    """Tab-separated file with a typed header (``name:type``) -> all-string frame + ``line``."""
    lines = _read_lines(path)
    if not lines or not lines[0].strip():
        raise DataError("empty file (no header line)", file=path, line=1)
    names = [h.split(":", 1)[0].strip() for h in lines[0].split("\t")]
    s = pl.Series("raw", lines[1:], dtype=pl.String)
    df = pl.DataFrame([s]).with_row_index("line", offset=2).filter(pl.col("raw").str.strip_chars() != "")
    n_fields = df["raw"].str.count_matches("\t", literal=True) + 1
    bad = n_fields != len(names)
    if bad.any():
        for i in bad.arg_true().to_list():
            _fail_or_skip(
                f"expected {len(names)} tab-separated fields ({', '.join(names)}), found {int(n_fields[i])}",
                file=path,
                line=int(df["line"][i]),
                reason="wrong field count",
                lenient=lenient,
                skipped=skipped,
            )
        df = df.filter(~bad)
    parts = df["raw"].str.split_exact("\t", len(names) - 1).struct.rename_fields(names)
    return pl.DataFrame([df["line"].cast(pl.Int64), *parts.struct.unnest().iter_columns()])


def read_movielens_atomic(
    inter: str | Path, item: str | Path, *, name: str = "movielens", lenient: bool = False
) -> RawData:
    """Read RecBole/MovieLens atomic files (``.inter`` + ``.item``).

    Interaction columns ``user_id, item_id, timestamp`` are required, ``rating`` optional. Item
    columns ``movie_title / release_year / class|genre`` are renamed ``title / year / genres``; any
    other item columns are kept as extra text fields.
    """
    inter, item = Path(inter), Path(item)
    skipped = Skipped()
    df = _read_atomic_table(inter, lenient=lenient, skipped=skipped)
    _require_columns([c for c in df.columns if c != "line"], ["user_id", "item_id", "timestamp"], inter)
    interactions = _finish_interactions(df, file=inter, lenient=lenient, skipped=skipped)
    it = _read_atomic_table(item, lenient=lenient, skipped=skipped)
    _require_columns([c for c in it.columns if c != "line"], ["item_id"], item)
    it = it.drop("line").rename({k: v for k, v in ATOMIC_RENAME.items() if k in it.columns})
    if "year" in it.columns:  # "1995.0" -> "1995"
        it = it.with_columns(pl.col("year").str.replace(r"\.0+$", ""))
    counts: dict[str, int] = {}
    items = _dedupe_items(_clean_text_columns(it, counts), counts)
    return RawData(
        name=name,
        interactions=interactions,
        items=items,
        sources={"interactions": inter, "items": item},
        text_template=MOVIELENS_TEMPLATE,
        skipped=skipped,
        item_counts=counts,
    )


# ----------------------------------------------------------------------------- (b, c) Amazon


def _iter_records(path: Path, *, literal_ok: bool, lenient: bool, skipped: Skipped) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, record)`` of a JSON-lines file; python-dict literals accepted if ``literal_ok``."""
    for no, raw in enumerate(_read_lines(path), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            rec = None
            if literal_ok:
                try:
                    rec = ast.literal_eval(raw)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    rec = None
            if rec is None:
                _fail_or_skip(
                    f"bad JSON{' / python literal' if literal_ok else ''}: {e.msg} at column {e.colno}",
                    file=path, line=no, reason="bad JSON", lenient=lenient, skipped=skipped,
                )  # fmt: skip
                continue
        if not isinstance(rec, dict):
            _fail_or_skip(
                f"expected a JSON object, found {type(rec).__name__}",
                file=path, line=no, reason="not an object", lenient=lenient, skipped=skipped,
            )  # fmt: skip
            continue
        yield no, rec


def _read_amazon_reviews(path: Path, *, lenient: bool, skipped: Skipped) -> pl.DataFrame:
    users: list[Any] = []
    items: list[Any] = []
    times: list[Any] = []
    ratings: list[Any] = []
    lines: list[int] = []
    for no, rec in _iter_records(path, literal_ok=True, lenient=lenient, skipped=skipped):
        missing = [k for k in ("reviewerID", "asin", "unixReviewTime") if k not in rec]
        if missing:
            _fail_or_skip(
                f"missing required field {missing[0]!r}; found fields: {', '.join(rec)}",
                file=path, line=no, column=missing[0], reason=f"missing {missing[0]}",
                lenient=lenient, skipped=skipped,
            )  # fmt: skip
            continue
        users.append(rec["reviewerID"])
        items.append(rec["asin"])
        times.append(str(rec["unixReviewTime"]))
        r = rec.get("overall")
        ratings.append(None if r is None else str(r))
        lines.append(no)
    df = pl.DataFrame(
        {
            "user_id": pl.Series(users, dtype=pl.String),
            "item_id": pl.Series(items, dtype=pl.String),
            "timestamp": pl.Series(times, dtype=pl.String),
            "rating": pl.Series(ratings, dtype=pl.String),
            "line": pl.Series(lines, dtype=pl.Int64),
        }
    )
    return _finish_interactions(df, file=path, lenient=lenient, skipped=skipped)


def _join_unique(values: list[Any]) -> str | None:
    out: list[str] = []
    for v in values:
        s = str(v).strip()
        if s and s not in out:
            out.append(s)
    return ", ".join(out) or None


def _price(value: Any) -> str | None:
    """2014: float -> "$12.99"; 2018: "$12.99" kept; anything else (HTML junk, ranges of junk) -> None."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return f"${value:.2f}"
    s = str(value).strip()
    if not s or len(s) > 30 or "<" in s or "{" in s:
        return None
    try:
        return f"${float(s.lstrip('$').replace(',', '')):.2f}"
    except ValueError:
        return s if s.startswith("$") else None


def _read_amazon_meta(path: Path, fmt: str, *, lenient: bool, skipped: Skipped) -> tuple[pl.DataFrame, list]:
    rows: dict[str, list[Any]] = {"item_id": [], "title": [], "brand": [], "price": [], "categories": []}
    urls: list[str | None] = []
    for no, rec in _iter_records(path, literal_ok=True, lenient=lenient, skipped=skipped):
        if "asin" not in rec:
            _fail_or_skip(
                f"missing required field 'asin'; found fields: {', '.join(rec)}",
                file=path, line=no, column="asin", reason="missing asin", lenient=lenient, skipped=skipped,
            )  # fmt: skip
            continue
        if fmt == "2014":
            cats = rec.get("categories") or []
            flat = [c for group in cats for c in (group if isinstance(group, list) else [group])]
            url = rec.get("imUrl")
        else:
            flat = rec.get("category") or []
            flat = flat if isinstance(flat, list) else [flat]
            imgs = rec.get("imageURLHighRes") or rec.get("imageURL") or []
            url = imgs[0] if isinstance(imgs, list) and imgs else (imgs or None)
        rows["item_id"].append(str(rec["asin"]))
        rows["title"].append(rec.get("title"))
        rows["brand"].append(rec.get("brand"))
        rows["price"].append(_price(rec.get("price")))
        rows["categories"].append(_join_unique(flat))
        urls.append(url if isinstance(url, str) else None)
    df = pl.DataFrame({k: pl.Series(v, dtype=pl.String) for k, v in rows.items()})
    return df, urls


def read_amazon(
    reviews: str | Path,
    meta: str | Path,
    *,
    fmt: str = "2014",
    images: str | Path | None = None,
    name: str = "amazon",
    lenient: bool = False,
) -> RawData:
    """Read Amazon review data, 2014 (``fmt="2014"``) or 2018 (``fmt="2018"``) format, plain or ``.gz``.

    Reviews: ``reviewerID, asin, unixReviewTime`` required, ``overall`` -> rating. Meta: ``asin``
    required; ``title, brand, price, categories`` (2014, list of lists) or ``category`` (2018, list).
    Meta lines may be strict JSON or python-dict literals. With ``images`` a folder, ``image_path``
    is ``<images>/<asin>.jpg`` or ``<images>/<basename of imUrl/imageURL>``, whichever exists, else
    null (counted as ``missing_images``).
    """
    if fmt not in ("2014", "2018"):
        raise ValueError(f"fmt must be '2014' or '2018', got {fmt!r}")
    reviews, meta = Path(reviews), Path(meta)
    skipped = Skipped()
    interactions = _read_amazon_reviews(reviews, lenient=lenient, skipped=skipped)
    items, urls = _read_amazon_meta(meta, fmt, lenient=lenient, skipped=skipped)
    counts: dict[str, int] = {}
    items = _clean_text_columns(items, counts)
    items = items.with_columns(pl.Series("_url", urls, dtype=pl.String))
    items = _dedupe_items(items, counts)
    image_dir = Path(images) if images is not None else None
    items = _resolve_images(items.drop("_url"), image_dir, items["_url"].to_list(), counts)
    return RawData(
        name=name,
        interactions=interactions,
        items=items,
        sources={"reviews": reviews, "meta": meta},
        text_template=AMAZON_TEMPLATE,
        skipped=skipped,
        item_counts=counts,
    )


# ----------------------------------------------------------------------------- (d) generic


def _read_csv_strings(path: Path, *, lenient: bool, skipped: Skipped) -> pl.DataFrame:
    """CSV -> all-string frame + ``line``. Fast path in polars; the csv module locates bad lines."""
    try:
        if not lenient:
            df = pl.read_csv(path, infer_schema=False, quote_char='"')
            return df.with_row_index("line", offset=2).with_columns(pl.col("line").cast(pl.Int64))
    except pl.exceptions.PolarsError:
        pass  # find the offending line below
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError("empty file (no header line)", file=path, line=1) from None
        rows: list[list[str]] = []
        lines: list[int] = []
        for row in reader:
            no = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                _fail_or_skip(
                    f"expected {len(header)} comma-separated fields ({', '.join(header)}), found {len(row)}",
                    file=path, line=no, reason="wrong field count", lenient=lenient, skipped=skipped,
                )  # fmt: skip
                continue
            rows.append(row)
            lines.append(no)
    cols = {h: pl.Series(h, [r[i] for r in rows], dtype=pl.String) for i, h in enumerate(header)}
    return pl.DataFrame({**cols, "line": pl.Series(lines, dtype=pl.Int64)}).select("line", *header)


def _read_table(path: Path, *, lenient: bool, skipped: Skipped) -> tuple[pl.DataFrame, str]:
    """Parquet or CSV (by suffix) -> frame with a ``line`` column, and the word for positions."""
    if not path.exists():
        raise DataError("file not found", file=path)
    if path.suffix == ".parquet":
        try:
            df = pl.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - any parquet failure is a data error here
            raise DataError(f"cannot read parquet: {e}", file=path) from e
        return df.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64)), "row"
    return _read_csv_strings(path, lenient=lenient, skipped=skipped), "line"


def read_generic(
    interactions: str | Path,
    items: str | Path,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    rating_col: str | None = None,
    items_id_col: str | None = None,
    text_cols: list[str] | None = None,
    image_col: str | None = None,
    image_dir: str | Path | None = None,
    text_template: str | None = None,
    name: str = "generic",
    lenient: bool = False,
) -> RawData:
    """Read an interactions table and an items table (parquet or CSV, chosen by suffix).

    ``text_cols`` defaults to every items column except the id and image columns. Relative image
    paths are resolved against ``image_dir`` (default: the items file's folder); missing files give
    a null ``image_path`` and are counted. ``text_template`` defaults to ``"{col1}. {col2}. ..."``.
    """
    inter_p, items_p = Path(interactions), Path(items)
    skipped = Skipped()
    df, word = _read_table(inter_p, lenient=lenient, skipped=skipped)
    found = [c for c in df.columns if c != "line"]
    required = [user_col, item_col, time_col] + ([rating_col] if rating_col else [])
    _require_columns(found, required, inter_p)
    sel = [pl.col(user_col).alias("user_id"), pl.col(item_col).alias("item_id"), pl.col(time_col).alias("timestamp")]
    if rating_col:
        sel.append(pl.col(rating_col).alias("rating"))
    df = df.select(*sel, "line")
    inter_df = _finish_interactions(df, file=inter_p, lenient=lenient, skipped=skipped, line_word=word)

    it, _ = _read_table(items_p, lenient=lenient, skipped=skipped)
    it = it.drop("line")
    id_col = items_id_col or item_col
    _require_columns(it.columns, [id_col] + ([image_col] if image_col else []) + list(text_cols or []), items_p)
    if text_cols is None:
        text_cols = [c for c in it.columns if c not in (id_col, image_col)]
    out = it.select(
        pl.col(id_col).cast(pl.String).alias("item_id"),
        *[
            (pl.col(c).list.eval(pl.element().cast(pl.String)).list.join(", ") if it[c].dtype == pl.List else pl.col(c))
            .cast(pl.String)
            .alias(c)
            for c in text_cols
        ],
    )
    counts: dict[str, int] = {}
    out = _clean_text_columns(out, counts)
    if image_col:
        base = Path(image_dir) if image_dir is not None else items_p.parent
        raw_paths = it[image_col].cast(pl.String).to_list()
        resolved: list[str | None] = []
        for p in raw_paths:
            if p is None or not str(p).strip():
                resolved.append(None)
                continue
            q = Path(str(p).strip())
            q = q if q.is_absolute() else base / q
            resolved.append(str(q.resolve()) if q.is_file() else None)
        out = out.with_columns(pl.Series("image_path", resolved, dtype=pl.String))
        out = _dedupe_items(out, counts)
        counts["missing_images"] = int(out["image_path"].null_count())
        counts["with_image"] = out.height - counts["missing_images"]
    else:
        out = _dedupe_items(out, counts)
    template = text_template or ". ".join("{" + c + "}" for c in text_cols) + "."
    return RawData(
        name=name,
        interactions=inter_df,
        items=out,
        sources={"interactions": inter_p, "items": items_p},
        text_template=template,
        skipped=skipped,
        item_counts=counts,
    )
