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
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from data_prep.errors import DataError

MOVIELENS_TEMPLATE = "{title} ({year}). Genres: {genres}."
MOVIELENS_CATEGORICAL = {"genres": " ", "year": ""}  # "Animation Children's Comedy", "1995"
AMAZON_CATEGORICAL = {"categories": ", ", "brand": ""}  # as _join_unique writes them
AMAZON_TEMPLATE = "{title}. Brand: {brand}. Price: {price}. Categories: {categories}."
PLACEHOLDERS = frozenset({"unkonwn", "unknown title"})  # ML-100K item 267's title/year placeholder
FIRST_LINES = 5  # how many line numbers of each skip reason are kept in the manifest
# Largest accepted timestamp: 2100-01-01 in nanoseconds, so epochs in s, ms, us or ns all fit in int64.
MAX_TIMESTAMP = 4_102_444_800 * 10**9

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
    # item columns that are categorical features: column -> separator of its values ("" = one value);
    # the pipeline writes them as items.parquet ``cat_<column>`` lists (data_prep/categorical.py)
    categorical: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def _open_text(path: Path) -> io.TextIOBase:
    """Open a text file (``.gz`` decompressed); ``utf-8-sig`` drops a leading UTF-8 BOM."""
    if not path.exists():
        raise DataError("file not found", file=path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig", newline="")


def _read_text(path: Path) -> str:
    """The whole decoded file (BOM dropped, line ends untouched); decoding errors name the file."""
    try:
        with _open_text(path) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"not valid UTF-8 ({e.reason} at byte {e.start})", file=path) from e
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read: {e}", file=path) from e


def _read_lines(path: Path) -> list[str]:
    lines = _read_text(path).split("\n")
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _fail_or_skip(
    msg: str,
    *,
    file: Path,
    line: int,
    reason: str,
    lenient: bool,
    skipped: Skipped,
    column: str | None = None,
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


def _reject_rows(
    df: pl.DataFrame,
    bad: pl.Expr,
    reason: str,
    *,
    file: Path,
    lenient: bool,
    skipped: Skipped,
    column: str,
    line_word: str,
    detail: str = "",
) -> pl.DataFrame:
    """Raise on the first ``bad`` row naming file/line (strict) or skip and count every one (lenient)."""
    mask = df.select(bad.fill_null(False)).to_series()
    if not mask.any():
        return df
    if not lenient:
        i = int(mask.arg_true()[0])
        line, value = int(df["line"][i]), df[column][i]
        shown = value.to_list() if isinstance(value, pl.Series) else value  # a list cell
        empty = shown is None or (isinstance(shown, str) and not shown)
        msg = reason + ("" if empty else f" {shown!r}") + detail
        if line_word == "line":
            raise DataError(msg, file=file, line=line, column=column)
        raise DataError(f"{msg} ({line_word} {line})", file=file, column=column)
    for line in df.filter(mask)["line"].to_list():
        skipped.add(file, reason, int(line))
    return df.filter(~mask)


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
    low: float | None = None,
    high: float | None = None,
) -> pl.DataFrame:
    """Cast ``col`` to a finite number (within ``[low, high]`` when given).

    Non-numeric, non-finite (NaN, inf) and out-of-range values raise naming file+line (or are
    skipped and counted). Integer text is cast exactly (no float round trip); fractions are floored.
    """
    src = df[col]
    exact: pl.Series | None = None
    present = src.is_not_null()
    if src.dtype == pl.Date or src.dtype == pl.Datetime:
        exact = src.cast(pl.Datetime("us")).dt.epoch("s")
        num = exact.cast(pl.Float64)
    elif src.dtype == pl.String:
        text = src.str.strip_chars()
        num, exact = text.cast(pl.Float64, strict=False), text.cast(pl.Int64, strict=False)
        present = text != ""
    elif src.dtype.is_numeric():
        num = src.cast(pl.Float64)
        exact = src.cast(pl.Int64, strict=False) if src.dtype.is_integer() else None
    else:  # booleans, lists, structs, durations: not numbers
        num = pl.Series([None] * len(src), dtype=pl.Float64)
    df = df.with_columns(num.alias("_num"), present.fill_null(False).alias("_present"))
    if exact is not None:
        df = df.with_columns(exact.alias("_exact"))
    kw = dict(file=file, lenient=lenient, skipped=skipped, column=col, line_word=line_word)
    missing = pl.col("_num").is_null() if required else pl.col("_num").is_null() & pl.col("_present")
    df = _reject_rows(df, missing, f"non-numeric {col}", **kw)
    df = _reject_rows(df, ~pl.col("_num").is_finite(), f"non-finite {col}", **kw)
    if low is not None and high is not None:
        out = (pl.col("_num") < low) | (pl.col("_num") > high)
        df = _reject_rows(df, out, f"{col} out of range", detail=f" (expected {low} to {high})", **kw)
    value = pl.col("_num")
    if dtype == pl.Int64:
        value = value.floor().cast(pl.Int64)
        if exact is not None:
            value = pl.coalesce(pl.col("_exact"), value)
    return df.with_columns(value.cast(dtype).alias(col)).drop("_num", "_present", "_exact", strict=False)


def _finish_interactions(
    df: pl.DataFrame, *, file: Path, lenient: bool, skipped: Skipped, line_word: str = "line"
) -> pl.DataFrame:
    """Type the common interaction columns and check ids are non-empty."""
    df = df.with_columns(
        pl.col("user_id").cast(pl.String).str.strip_chars(),
        pl.col("item_id").cast(pl.String).str.strip_chars(),
    )
    kw = dict(file=file, lenient=lenient, skipped=skipped, line_word=line_word)
    for col in ("user_id", "item_id"):
        df = _reject_rows(df, pl.col(col).is_null() | (pl.col(col) == ""), f"empty {col}", column=col, **kw)
    df = _to_number(df, "timestamp", pl.Int64, required=True, low=0, high=MAX_TIMESTAMP, **kw)
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


def _image_inside(root: Path, name: str) -> tuple[str | None, bool]:
    """Look up ``root / name`` with symlinks resolved: ``(path if a file inside root, refused)``.

    ``root`` must be resolved. ``refused`` is True when the path leaves ``root`` (``..``, an
    absolute path, a symlink pointing out) or cannot be a path at all (a NUL byte, a symlink loop).
    """
    try:
        p = (root / name).resolve()
    except (OSError, ValueError, RuntimeError):
        return None, True
    if not p.is_relative_to(root):
        return None, True
    return (str(p) if p.is_file() else None), False


def _image_folder(image_dir: Path) -> Path:
    if not image_dir.is_dir():
        raise DataError("image folder not found", file=image_dir)
    return image_dir.resolve()


def _count_images(paths: list[str | None], refused: list[bool], counts: dict[str, int]) -> None:
    counts["missing_images"] = sum(p is None for p in paths)
    counts["with_image"] = len(paths) - counts["missing_images"]
    counts["images_outside_folder"] = sum(r and p is None for p, r in zip(paths, refused))


def _resolve_images(
    items: pl.DataFrame, image_dir: Path | None, urls: list[str | None] | None, counts: dict[str, int]
) -> pl.DataFrame:
    """Set ``image_path`` to ``<image_dir>/<item_id>.jpg`` or ``<image_dir>/<basename(url)>``.

    Only files inside ``image_dir`` are used; a lookup that leaves it is refused and counted.
    """
    if image_dir is None:
        return items
    root = _image_folder(image_dir)
    paths: list[str | None] = []
    refused: list[bool] = []
    ids = items["item_id"].to_list()
    urls = urls if urls is not None else [None] * len(ids)
    for item_id, url in zip(ids, urls):
        names = [f"{item_id}.jpg"] + ([os.path.basename(url.split("?")[0])] if url else [])
        found, out = None, False
        for n in names:
            found, bad = _image_inside(root, n)
            out |= bad
            if found:
                break
        paths.append(found)
        refused.append(out)
    _count_images(paths, refused, counts)
    return items.with_columns(pl.Series("image_path", paths, dtype=pl.String))


# ----------------------------------------------------------------------------- (a) RecBole atomic


def _check_header(names: list[str], path: Path) -> list[str]:
    """Header names (line 1) must be present and distinct."""
    if not names or not any(n.strip() for n in names):
        raise DataError("empty file (no header line)", file=path, line=1)
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise DataError(f"duplicate column {dup!r} in the header", file=path, line=1, column=dup)
    return names


def _split_fields(
    lines: list[str], names: list[str], sep: str, *, path: Path, lenient: bool, skipped: Skipped
) -> pl.DataFrame:
    """Data lines (line 2 on) of a delimited file without quoting -> all-string frame + ``line``.

    Blank lines are ignored; every other line must have exactly one field per header name.
    """
    kind = {"\t": "tab", ",": "comma"}[sep]
    s = pl.Series("raw", lines, dtype=pl.String)
    df = pl.DataFrame([s]).with_row_index("line", offset=2).filter(pl.col("raw").str.strip_chars() != "")
    n_fields = df["raw"].str.count_matches(sep, literal=True) + 1
    bad = n_fields != len(names)
    if bad.any():
        for i in bad.arg_true().to_list():
            _fail_or_skip(
                f"expected {len(names)} {kind}-separated fields ({', '.join(names)}), "
                f"found {int(n_fields[i])}",
                file=path,
                line=int(df["line"][i]),
                reason="wrong field count",
                lenient=lenient,
                skipped=skipped,
            )
        df = df.filter(~bad)
    parts = df["raw"].str.split_exact(sep, len(names) - 1).struct.rename_fields(names)
    return pl.DataFrame([df["line"].cast(pl.Int64), *parts.struct.unnest().iter_columns()])


def _read_atomic_table(path: Path, *, lenient: bool, skipped: Skipped) -> pl.DataFrame:
    """Tab-separated file with a typed header (``name:type``) -> all-string frame + ``line``."""
    lines = _read_lines(path)
    names = _check_header([h.split(":", 1)[0].strip() for h in lines[0].split("\t")], path)
    return _split_fields(lines[1:], names, "\t", path=path, lenient=lenient, skipped=skipped)


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
        categorical={k: v for k, v in MOVIELENS_CATEGORICAL.items() if k in items.columns},
    )


# ----------------------------------------------------------------------------- (b, c) Amazon


def _iter_records(
    path: Path, *, literal_ok: bool, lenient: bool, skipped: Skipped
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, record)`` of a JSON-lines file; python-dict literals accepted if ``literal_ok``."""
    for no, raw in enumerate(_read_lines(path), start=1):
        if not raw.strip():
            continue
        nested = False
        try:
            rec = json.loads(raw)
        except RecursionError:
            rec, nested = None, True
        except ValueError as e:  # JSONDecodeError, or an integer past Python's digit limit
            rec, msg = None, f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            if literal_ok:
                try:
                    rec = ast.literal_eval(raw)
                except RecursionError:
                    nested = True
                except (ValueError, TypeError, SyntaxError, MemoryError):
                    rec = None
            if rec is None and not nested:
                _fail_or_skip(
                    f"bad JSON{' / python literal' if literal_ok else ''}: {msg}",
                    file=path,
                    line=no,
                    reason="bad JSON",
                    lenient=lenient,
                    skipped=skipped,
                )
                continue
        if nested:
            _fail_or_skip(
                "too deeply nested (beyond Python's recursion limit)",
                file=path,
                line=no,
                reason="too deeply nested",
                lenient=lenient,
                skipped=skipped,
            )
            continue
        if not isinstance(rec, dict):
            _fail_or_skip(
                f"expected a JSON object, found {type(rec).__name__}",
                file=path,
                line=no,
                reason="not an object",
                lenient=lenient,
                skipped=skipped,
            )
            continue
        yield no, rec


class _BadField(ValueError):
    """A record field of the wrong shape (see :func:`_field_text`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _field_text(rec: dict, key: str) -> str | None:
    """``rec[key]`` as text: strings kept, integers and finite floats written out (``7``, ``7.5``),
    missing/None -> None. Anything else (bool, list, dict, NaN) raises :class:`_BadField`."""
    v = rec.get(key)
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and math.isfinite(v):
        return str(int(v)) if v.is_integer() else repr(v)
    found = repr(v) if isinstance(v, bool | float) else type(v).__name__
    raise _BadField(key, f"{key} must be a string or a number, found {found}")


def _fields_or_skip(
    rec: dict, keys: tuple[str, ...], *, file: Path, line: int, lenient: bool, skipped: Skipped
) -> list[str | None] | None:
    """:func:`_field_text` of each key, or None when one is malformed (raised, or skipped and counted)."""
    try:
        return [_field_text(rec, k) for k in keys]
    except _BadField as e:
        _fail_or_skip(
            str(e),
            file=file,
            line=line,
            column=e.key,
            reason=f"bad {e.key}",
            lenient=lenient,
            skipped=skipped,
        )
        return None


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
                f"missing required field {missing[0]!r}; found fields: {', '.join(map(str, rec))}",
                file=path,
                line=no,
                column=missing[0],
                reason=f"missing {missing[0]}",
                lenient=lenient,
                skipped=skipped,
            )
            continue
        ids = _fields_or_skip(
            rec, ("reviewerID", "asin"), file=path, line=no, lenient=lenient, skipped=skipped
        )
        if ids is None:
            continue
        users.append(ids[0])
        items.append(ids[1])
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
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return f"${value:.2f}" if math.isfinite(value) else None
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
                f"missing required field 'asin'; found fields: {', '.join(map(str, rec))}",
                file=path,
                line=no,
                column="asin",
                reason="missing asin",
                lenient=lenient,
                skipped=skipped,
            )
            continue
        texts = _fields_or_skip(
            rec, ("asin", "title", "brand"), file=path, line=no, lenient=lenient, skipped=skipped
        )
        if texts is None:
            continue
        if fmt == "2014":
            cats = rec.get("categories") or []
            cats = cats if isinstance(cats, list) else [cats]
            flat = [c for group in cats for c in (group if isinstance(group, list) else [group])]
            url = rec.get("imUrl")
        else:
            flat = rec.get("category") or []
            flat = flat if isinstance(flat, list) else [flat]
            imgs = rec.get("imageURLHighRes") or rec.get("imageURL") or []
            url = imgs[0] if isinstance(imgs, list) and imgs else (imgs or None)
        rows["item_id"].append(texts[0])
        rows["title"].append(texts[1])
        rows["brand"].append(texts[2])
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
    null (counted as ``missing_images``); a lookup leaving ``images`` (``../x``, an absolute id, a
    symlink out) is refused (counted as ``images_outside_folder``). Ids, titles and brands may be
    strings or numbers; other shapes are malformed lines.
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
        categorical={k: v for k, v in AMAZON_CATEGORICAL.items() if k in items.columns},
    )


# ----------------------------------------------------------------------------- (d) generic


def _read_csv_strings(path: Path, *, lenient: bool, skipped: Skipped) -> pl.DataFrame:
    """CSV -> all-string frame + ``line`` (header = line 1); every row needs the header's field count.

    A file without quote characters is split in polars, one record per line; otherwise the stdlib
    csv module parses it (quoted commas and newlines). Polars' own reader is not used: it pads short
    rows with nulls and numbers rows, not lines.
    """
    text = _read_text(path)
    if '"' not in text:
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
        names = _check_header(lines[0].split(","), path)
        return _split_fields(lines[1:], names, ",", path=path, lenient=lenient, skipped=skipped)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[list[str]] = []
    lines_no: list[int] = []
    try:
        header = _check_header(next(reader, []), path)
        for row in reader:
            no = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                _fail_or_skip(
                    f"expected {len(header)} comma-separated fields ({', '.join(header)}), found {len(row)}",
                    file=path,
                    line=no,
                    reason="wrong field count",
                    lenient=lenient,
                    skipped=skipped,
                )
                continue
            rows.append(row)
            lines_no.append(no)
    except csv.Error as e:  # unparseable quoting: the rest of the file cannot be trusted
        raise DataError(f"cannot parse CSV: {e}", file=path, line=reader.line_num) from e
    cols = {h: pl.Series(h, [r[i] for r in rows], dtype=pl.String) for i, h in enumerate(header)}
    return pl.DataFrame({**cols, "line": pl.Series(lines_no, dtype=pl.Int64)}).select("line", *header)


def _read_table(path: Path, *, lenient: bool, skipped: Skipped) -> tuple[pl.DataFrame, str]:
    """Parquet or CSV (by suffix) -> frame with a ``line`` column, and the word for positions."""
    if not path.exists():
        raise DataError("file not found", file=path)
    if path.suffix == ".parquet":
        try:
            df = pl.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - any parquet failure is a data error here
            raise DataError(f"cannot read parquet: {e}", file=path) from e
        if df.columns and df.columns[0].startswith("\ufeff"):  # a BOM CSV's first name, kept by a converter
            df = df.rename({df.columns[0]: df.columns[0].removeprefix("\ufeff")})
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
    paths are resolved against ``image_dir`` (default: the items file's folder) and must stay inside
    it (else refused, counted as ``images_outside_folder``); missing files give a null ``image_path``
    and are counted. ``text_template`` defaults to ``"{col1}. {col2}. ..."``.
    """
    inter_p, items_p = Path(interactions), Path(items)
    skipped = Skipped()
    df, word = _read_table(inter_p, lenient=lenient, skipped=skipped)
    found = [c for c in df.columns if c != "line"]
    required = [user_col, item_col, time_col] + ([rating_col] if rating_col else [])
    _require_columns(found, required, inter_p)
    sel = [
        pl.col(user_col).alias("user_id"),
        pl.col(item_col).alias("item_id"),
        pl.col(time_col).alias("timestamp"),
    ]
    if rating_col:
        sel.append(pl.col(rating_col).alias("rating"))
    df = df.select(*sel, "line")
    inter_df = _finish_interactions(df, file=inter_p, lenient=lenient, skipped=skipped, line_word=word)

    it, _ = _read_table(items_p, lenient=lenient, skipped=skipped)
    it = it.drop("line")
    id_col = items_id_col or item_col
    _require_columns(
        it.columns, [id_col] + ([image_col] if image_col else []) + list(text_cols or []), items_p
    )
    if text_cols is None:
        text_cols = [c for c in it.columns if c not in (id_col, image_col)]
    out = it.select(
        pl.col(id_col).cast(pl.String).alias("item_id"),
        *[
            (
                pl.col(c).list.eval(pl.element().cast(pl.String)).list.join(", ")
                if it[c].dtype == pl.List
                else pl.col(c)
            )
            .cast(pl.String)
            .alias(c)
            for c in text_cols
        ],
    )
    counts: dict[str, int] = {}
    out = _clean_text_columns(out, counts)
    if image_col:
        root = _image_folder(Path(image_dir) if image_dir is not None else items_p.parent)
        looked = [
            _image_inside(root, p.strip()) if p is not None and p.strip() else (None, False)
            for p in it[image_col].cast(pl.String).to_list()
        ]
        out = out.with_columns(
            pl.Series("image_path", [p for p, _ in looked], dtype=pl.String),
            pl.Series("_refused", [r for _, r in looked], dtype=pl.Boolean),
        )
        out = _dedupe_items(out, counts)
        _count_images(out["image_path"].to_list(), out["_refused"].to_list(), counts)
        out = out.drop("_refused")
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
