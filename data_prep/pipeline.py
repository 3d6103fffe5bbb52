"""The preparation pipeline: :class:`~data_prep.readers.RawData` -> processed dataset (see layout.py).

Steps, each counted in the manifest (rows/users/items before and after, and what was dropped):

1. ``rating_threshold``: keep ``rating >= t`` (rows with a null rating are dropped too).
2. ``duplicates``: exact duplicate events (same user, item and timestamp) keep the first, or error.
3. ``unknown_items``: interactions whose item is missing from the items table are dropped
   (counted, with a warning) or an error (``unknown_items="error"`` or ``strict=True``).
4. ``k_core``: iterative k-core for users and items, looped until stable.
5. ``min_sequence_length``: users with fewer than ``layout.MIN_SEQUENCE_LENGTH`` events are dropped.

Then events are ordered chronologically with a stable tie-break (timestamp, then source line),
ids are remapped to ``1..U`` / ``1..N`` (0 = padding) by order of first appearance in that global
chronological order (or by sorted original id with ``id_order="sorted"``), and the item text is
rendered from a template.
"""

from __future__ import annotations

import math
import numbers
import re
import string
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import polars as pl

from data_prep import layout
from data_prep.categorical import category_lists
from data_prep.errors import DataError
from data_prep.io import sha256_file
from data_prep.manifest import write_manifest
from data_prep.readers import RawData

Step = dict[str, Any]


# ----------------------------------------------------------------------------- small pure helpers


def counts(df: pl.DataFrame) -> dict[str, int]:
    """Rows, distinct users and distinct items of an interactions frame."""
    return {"rows": df.height, "users": df["user_id"].n_unique(), "items": df["item_id"].n_unique()}


def k_core(df: pl.DataFrame, k_users: int, k_items: int) -> tuple[pl.DataFrame, int]:
    """Iterative k-core: keep users with >= ``k_users`` and items with >= ``k_items`` events, until stable.

    Returns the filtered frame (original row order kept) and the number of passes made.
    """
    passes = 0
    while True:
        passes += 1
        kept = df.filter((pl.len().over("user_id") >= k_users) & (pl.len().over("item_id") >= k_items))
        if kept.height == df.height:
            return kept, passes
        df = kept


def chronological(df: pl.DataFrame) -> pl.DataFrame:
    """Sort by timestamp with a stable tie-break: the source line (file order)."""
    return df.sort(["timestamp", "line"], maintain_order=True)


def remap_ids(
    df: pl.DataFrame, order: Literal["first-appearance", "sorted"] = "first-appearance"
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Add ``user_idx`` (1..U) and ``item_idx`` (1..N); return (frame, users map, items map).

    ``first-appearance``: index by first appearance in global chronological order (timestamp,
    then source line). ``sorted``: index by the original id string, sorted. Both are deterministic.
    """
    maps = []
    ordered = chronological(df)
    for col, idx in (("user_id", "user_idx"), ("item_id", "item_idx")):
        if order == "sorted":
            ids = ordered.select(pl.col(col).unique().sort())
        elif order == "first-appearance":
            ids = ordered.select(pl.col(col).unique(maintain_order=True))
        else:
            raise ValueError(f"id_order must be 'first-appearance' or 'sorted', got {order!r}")
        m = ids.with_row_index(idx, offset=1).with_columns(pl.col(idx).cast(pl.Int32)).select(idx, col)
        maps.append(m)
    out = df.join(maps[0], on="user_id", how="left").join(maps[1], on="item_id", how="left")
    return out, maps[0], maps[1]


def build_sequences(df: pl.DataFrame) -> pl.DataFrame:
    """One row per user: chronological ``item_idx`` and ``timestamp`` lists (stable tie-break)."""
    return (
        df.sort(["user_idx", "timestamp", "line"], maintain_order=True)
        .group_by("user_idx", maintain_order=True)
        .agg(pl.col("item_idx").cast(pl.Int32), pl.col("timestamp").cast(pl.Int64))
        .with_columns(pl.col("user_idx").cast(pl.Int32))
        .sort("user_idx")
    )


_FMT = string.Formatter()


def template_fields(template: str) -> list[str]:
    """Names of the fields a format-string template refers to."""
    return [f for _, f, _, _ in _FMT.parse(template) if f]


def _clean(text: str) -> str:
    """Collapse what missing fields leave behind: empty brackets, 'Label: .', doubled punctuation."""
    text = re.sub(r"\(\s*\)|\[\s*\]", "", text)
    text = re.sub(r"(?:(?<=^)|(?<=[.;,]\s)|(?<=[.;,]))\s*[A-Za-z][\w ]*:\s*(?=[.;,]|$)", "", text)
    text = re.sub(r"\s+([.,;:])", r"\1", text)
    text = re.sub(r"([.,;])(?:\s*[.,;])+", r"\1", text)
    text = re.sub(r"\s+", " ", text)
    return text.strip().lstrip(".,;: ").strip()


def render_texts(items: pl.DataFrame, template: str, *, file: str = "items table") -> list[str | None]:
    """Render ``template`` per item row; missing fields render empty; no field at all -> None."""
    names = template_fields(template)
    for n in names:
        if n not in items.columns:
            raise DataError(
                f"text template refers to unknown column {n!r}; item columns: {', '.join(items.columns)}",
                file=file,
                column=n,
            )
    out: list[str | None] = []
    for row in items.select(names).iter_rows(named=True):
        vals = {k: ("" if v is None else str(v)) for k, v in row.items()}
        if not any(vals.values()):
            out.append(None)
            continue
        out.append(_clean(template.format_map(vals)) or None)
    return out


# ----------------------------------------------------------------------------- the pipeline


def _step(name: str, before: pl.DataFrame, after: pl.DataFrame, **extra: Any) -> Step:
    b, a = counts(before), counts(after)
    return {"step": name, "before": b, "after": a, "dropped_rows": b["rows"] - a["rows"], **extra}


def _source(raw: RawData, *roles: str) -> str:
    """Path of the first source file with one of ``roles`` (for error messages)."""
    for r in roles:
        if r in raw.sources:
            return str(raw.sources[r])
    return f"{raw.name} {roles[0]}"


def _guard_empty(df: pl.DataFrame, step: str, detail: str) -> None:
    if df.height == 0:
        raise DataError(f"no interactions left after filter {step!r} ({detail})")


def _apply_filters(
    df: pl.DataFrame,
    raw: RawData,
    *,
    rating_threshold: float | None,
    duplicates: str,
    unknown_items: str,
    k_users: int,
    k_items: int,
) -> tuple[pl.DataFrame, list[Step]]:
    steps: list[Step] = [{"step": "read", "after": counts(df)}]
    if df.height == 0:
        raise DataError("no interactions read", file=_source(raw, "interactions", "reviews"))
    src = _source(raw, "interactions", "reviews")

    if rating_threshold is not None:
        if "rating" not in df.columns:
            raise DataError(
                "rating threshold given but the interactions have no rating column", file=src, column="rating"
            )
        kept = df.filter(pl.col("rating") >= rating_threshold)
        steps.append(
            _step(
                "rating_threshold",
                df,
                kept,
                threshold=rating_threshold,
                null_ratings=int(df["rating"].null_count()),
            )
        )
        _guard_empty(kept, "rating_threshold", f"rating >= {rating_threshold}")
        df = kept

    dup = (
        df.select(pl.struct("user_id", "item_id", "timestamp").is_duplicated()).to_series()
        if df.height
        else None
    )
    first_dup = df.filter(pl.struct("user_id", "item_id", "timestamp").is_first_distinct().not_())
    if first_dup.height and duplicates == "error":
        r = first_dup.row(0, named=True)
        raise DataError(
            f"duplicate event (user {r['user_id']!r}, item {r['item_id']!r}, timestamp {r['timestamp']}); "
            f"{first_dup.height} duplicate rows in all",
            file=src,
            line=int(r["line"]),
        )
    kept = df.unique(subset=["user_id", "item_id", "timestamp"], keep="first", maintain_order=True)
    steps.append(
        _step(
            "duplicates",
            df,
            kept,
            policy=duplicates,
            events_with_duplicates=int(dup.sum()) if dup is not None else 0,
        )
    )
    df = kept

    known = raw.items.select("item_id")
    unknown = df.join(known, on="item_id", how="anti")
    if unknown.height:
        first = unknown.row(0, named=True)
        msg = (
            f"{unknown.height} interactions refer to {unknown['item_id'].n_unique()} items missing from the "
            f"items table (first: item {first['item_id']!r})"
        )
        if unknown_items == "error":
            raise DataError(msg, file=src, line=int(first["line"]), column="item_id")
        warnings.warn(msg + "; dropped", stacklevel=3)
    kept = df.join(known, on="item_id", how="semi")
    steps.append(
        _step(
            "unknown_items",
            df,
            kept,
            policy=unknown_items,
            unknown_item_ids=unknown["item_id"].n_unique() if unknown.height else 0,
        )
    )
    _guard_empty(kept, "unknown_items", "no interaction refers to an item of the items table")
    df = kept

    kept, passes = k_core(df, k_users, k_items)
    steps.append(_step("k_core", df, kept, k_users=k_users, k_items=k_items, passes=passes))
    _guard_empty(kept, "k_core", f"{k_users}-core users / {k_items}-core items")
    df = kept

    m = layout.MIN_SEQUENCE_LENGTH
    kept = df.filter(pl.len().over("user_id") >= m)
    steps.append(_step("min_sequence_length", df, kept, min_length=m))
    _guard_empty(kept, "min_sequence_length", f"users need >= {m} events")
    return kept, steps


def _items_table(
    raw: RawData, item_map: pl.DataFrame, template: str, strict: bool
) -> tuple[pl.DataFrame, dict[str, int]]:
    items = item_map.join(raw.items, on="item_id", how="left").sort("item_idx")
    texts = render_texts(items, template, file=_source(raw, "items", "meta"))
    no_text = [iid for iid, t in zip(items["item_id"].to_list(), texts) if t is None]
    if no_text and strict:
        raise DataError(
            f"{len(no_text)} items have no text (no field of template {template!r}); first: item {no_text[0]!r}",
            file=_source(raw, "items", "meta"),
            column="text",
        )
    image = (
        items["image_path"]
        if "image_path" in items.columns
        else pl.Series([None] * items.height, dtype=pl.String)
    )
    table = pl.DataFrame(
        {
            "item_idx": items["item_idx"].cast(pl.Int32),
            "item_id": items["item_id"].cast(pl.String),
            "text": pl.Series(texts, dtype=pl.String),
            "image_path": image.cast(pl.String),
            **category_lists(items, raw.categorical),
        }
    )
    stats = {
        "items_without_text": len(no_text),
        "items_with_image": int(table["image_path"].is_not_null().sum()),
        "items_missing_image": int(table["image_path"].is_null().sum())
        if "image_path" in raw.items.columns
        else 0,
    }
    if "title" in items.columns:  # text (if any) then comes from the template's other fields
        stats["items_without_title"] = int(items["title"].is_null().sum())
    return table, stats


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.write_parquet(tmp)
    tmp.replace(path)


def _seq_stats(lengths: pl.Series) -> dict[str, float]:
    return {
        "min": int(lengths.min()),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 3),
        "median": float(lengths.median()),
        "p90": float(lengths.quantile(0.9, "nearest")),
        "total": int(lengths.sum()),
    }


def check_parameters(*, k_core_users: Any, k_core_items: Any, rating_threshold: Any) -> None:
    """Reject absurd settings (negative or non-integer k-cores, a non-finite threshold), naming them."""
    for name, k in (("k_core_users", k_core_users), ("k_core_items", k_core_items)):
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {k!r}")
    t = rating_threshold
    if t is not None and (isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t)):
        raise ValueError(f"rating_threshold must be a finite number or None, got {rating_threshold!r}")


def prepare(
    raw: RawData,
    out_dir: str | Path,
    *,
    k_core_users: int = 5,
    k_core_items: int = 5,
    rating_threshold: float | None = None,
    duplicates: Literal["keep-first", "error"] = "keep-first",
    unknown_items: Literal["drop", "error"] = "drop",
    strict: bool = False,
    text_template: str | None = None,
    id_order: Literal["first-appearance", "sorted"] = "first-appearance",
    lenient: bool = False,
    extra_parameters: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Filter, order, remap and write ``raw`` as a processed dataset in ``out_dir``; return ``out_dir``.

    ``strict=True`` turns every counted anomaly (duplicates, unknown items, items without text)
    into a :class:`DataError`. ``lenient`` is only recorded here (the reader applied it).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    check_parameters(k_core_users=k_core_users, k_core_items=k_core_items, rating_threshold=rating_threshold)
    if strict:
        duplicates, unknown_items = "error", "error"
    if duplicates not in ("keep-first", "error"):
        raise ValueError(f"duplicates must be 'keep-first' or 'error', got {duplicates!r}")
    if unknown_items not in ("drop", "error"):
        raise ValueError(f"unknown_items must be 'drop' or 'error', got {unknown_items!r}")
    template = text_template or raw.text_template
    say = log or (lambda _m: None)

    df, steps = _apply_filters(
        raw.interactions,
        raw,
        rating_threshold=rating_threshold,
        duplicates=duplicates,
        unknown_items=unknown_items,
        k_users=k_core_users,
        k_items=k_core_items,
    )
    say(f"filters done: {df.height} interactions")
    df, user_map, item_map = remap_ids(df, id_order)
    sequences = build_sequences(df)
    items, item_stats = _items_table(raw, item_map, template, strict)
    users = user_map.select(pl.col("user_idx").cast(pl.Int32), pl.col("user_id").cast(pl.String))

    out.mkdir(parents=True, exist_ok=True)
    _write_parquet(items, out / layout.ITEMS)
    _write_parquet(users, out / layout.USERS)
    _write_parquet(sequences, out / layout.SEQUENCES)

    dropped = {s["step"]: s["dropped_rows"] for s in steps if "dropped_rows" in s}
    dropped["malformed_lines"] = raw.skipped.total
    mins = steps[-1]
    has_images = "image_path" in raw.items.columns and item_stats["items_with_image"] > 0
    manifest: dict[str, Any] = {
        "dataset": raw.name,
        "pipeline_version": layout.PIPELINE_VERSION,
        "dataset_version": layout.DATASET_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {
            **raw.source_info,
            "files": {
                role: {"path": str(p.resolve()), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                for role, p in raw.sources.items()
            },
        },
        "parameters": {
            "k_core_users": k_core_users,
            "k_core_items": k_core_items,
            "rating_threshold": rating_threshold,
            "duplicates": duplicates,
            "unknown_items": unknown_items,
            "strict": strict,
            "lenient": lenient,
            "id_order": id_order,
            "tie_break": "timestamp, then source line",
            "min_sequence_length": layout.MIN_SEQUENCE_LENGTH,
            **(extra_parameters or {}),
        },
        "text_template": template,
        "steps": steps,
        "dropped": {
            **dropped,
            "short_sequence_users": mins["before"]["users"] - mins["after"]["users"],
        },
        "skipped": raw.skipped.to_list(),
        "items_table": {
            **raw.item_counts,
            "distinct_items": raw.items.height,
            "not_in_final_interactions": raw.items.height - items.height,
            **item_stats,
        },
        "final": {"users": users.height, "items": items.height, "interactions": df.height},
        "sequence_length": _seq_stats(sequences["item_idx"].list.len()),
        "modalities": ["text", "image"] if has_images else ["text"],
        "files": {"items": layout.ITEMS, "users": layout.USERS, "sequences": layout.SEQUENCES},
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    write_manifest(out, manifest)
    say(f"wrote {out}")
    return out
