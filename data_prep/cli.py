"""``recsys-prep``: raw files or a built-in dataset -> processed dataset (+ feature tables)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from data_prep import layout
from data_prep.builtin import BUILTINS, load_builtin
from data_prep.errors import DataError
from data_prep.manifest import read_manifest
from data_prep.pipeline import prepare
from data_prep.readers import RawData, read_amazon, read_generic, read_movielens_atomic

DATASETS = [*BUILTINS, "amazon", "generic", "movielens-atomic"]


def summarize(dataset_dir: str | Path) -> str:
    """Human-readable summary of a processed dataset, from its manifest."""
    d = Path(dataset_dir)
    m = read_manifest(d)
    lines = [
        f"dataset {m['dataset']} -> {d.resolve()}  (pipeline v{m['pipeline_version']}, {m['created_at']})"
    ]
    for s in m["steps"]:
        a = s["after"]
        drop = f"  dropped {s['dropped_rows']:>9,}" if "dropped_rows" in s else " " * 19
        lines.append(
            f"  {s['step']:<20}{drop}  -> {a['rows']:>10,} rows {a['users']:>8,} users {a['items']:>8,} items"
        )
    for sk in m.get("skipped", []):
        lines.append(
            f"  skipped {sk['count']} lines of {sk['file']} ({sk['reason']}; first lines {sk['first_lines']})"
        )
    f = m["final"]
    lines.append(f"final: {f['users']:,} users, {f['items']:,} items, {f['interactions']:,} interactions")
    sl = m["sequence_length"]
    lines.append(
        f"sequence length: min {sl['min']} median {sl['median']:g} mean {sl['mean']:g} p90 {sl['p90']:g} max {sl['max']}"
    )
    it = m["items_table"]
    notes = ", ".join(f"{k} {v}" for k, v in it.items() if v)
    lines.append(f"items table: {notes}")
    lines.append(f"modalities: {', '.join(m['modalities'])}; text template: {m['text_template']!r}")
    feats = m.get("features")
    if feats:
        lines.append(f"features: {', '.join(feats) if isinstance(feats, dict) else feats}")
    lines.append(f"files: {', '.join(str(d / p) for p in m['files'].values())}")
    return "\n".join(lines)


def _finite(text: str) -> float:
    """argparse type: a finite number (argparse names the option in its error)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys-prep", description=__doc__)
    p.add_argument("dataset", choices=DATASETS, help="built-in name or input format")
    p.add_argument("--out", type=Path, help="output folder (default data/<dataset>)")
    p.add_argument("--cache", type=Path, help="download cache (default $RECSYS_CACHE or ~/.cache/recsys-mrl)")
    p.add_argument("--k-core", type=_count, default=5, help="k-core for users and items (default 5)")
    p.add_argument("--k-core-users", type=_count, help="override --k-core for users")
    p.add_argument("--k-core-items", type=_count, help="override --k-core for items")
    p.add_argument("--rating-threshold", type=_finite, help="keep rating >= X (a finite number)")
    p.add_argument("--lenient", action="store_true", help="skip malformed lines (counted) instead of failing")
    p.add_argument(
        "--strict", action="store_true", help="duplicates, unknown items, items without text are errors"
    )
    p.add_argument("--duplicates", choices=["keep-first", "error"], default="keep-first")
    p.add_argument("--unknown-items", choices=["drop", "error"], default="drop")
    p.add_argument("--id-order", choices=["first-appearance", "sorted"], default="first-appearance")
    p.add_argument("--template", help="item text template (python format string over item columns)")
    p.add_argument("--no-features", action="store_true", help="skip the feature tables")
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--image-encoder", default="mobilenet_v2", help="image encoder, or 'none'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="rebuild even if the output exists")
    g = p.add_argument_group("amazon")
    g.add_argument("--reviews", type=Path)
    g.add_argument("--meta", type=Path)
    g.add_argument("--images", type=Path, help="folder of product images")
    g.add_argument("--format", dest="fmt", choices=["2014", "2018"], default="2014")
    g = p.add_argument_group("generic")
    g.add_argument("--interactions", type=Path)
    g.add_argument("--items", type=Path)
    g.add_argument("--user-col", default="user_id")
    g.add_argument("--item-col", default="item_id")
    g.add_argument("--time-col", default="timestamp")
    g.add_argument("--rating-col")
    g.add_argument("--items-id-col", help="item id column of the items table (default --item-col)")
    g.add_argument("--text-cols", help="comma-separated text columns of the items table (default: all)")
    g.add_argument("--image-col")
    g.add_argument("--image-dir", type=Path)
    g = p.add_argument_group("movielens-atomic")
    g.add_argument("--inter", type=Path)
    g.add_argument("--item", type=Path)
    return p


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise SystemExit(f"recsys-prep {args.dataset}: missing {', '.join(missing)}")


def _load(args: argparse.Namespace) -> RawData:
    if args.dataset in BUILTINS:
        return load_builtin(args.dataset, cache=args.cache, lenient=args.lenient)
    if args.dataset == "amazon":
        _need(args, "reviews", "meta")
        return read_amazon(args.reviews, args.meta, fmt=args.fmt, images=args.images, lenient=args.lenient)
    if args.dataset == "movielens-atomic":
        _need(args, "inter", "item")
        return read_movielens_atomic(args.inter, args.item, lenient=args.lenient)
    _need(args, "interactions", "items")
    return read_generic(
        args.interactions,
        args.items,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        rating_col=args.rating_col,
        items_id_col=args.items_id_col,
        text_cols=args.text_cols.split(",") if args.text_cols else None,
        image_col=args.image_col,
        image_dir=args.image_dir,
        lenient=args.lenient,
    )


def _features(args: argparse.Namespace, out: Path) -> None:
    try:
        from data_prep.features import build_feature_tables  # lazy: optional, heavy
    except ImportError as e:
        print(f"warning: feature tables not built (data_prep.features unavailable: {e})", file=sys.stderr)
        return
    image = None if str(args.image_encoder).lower() == "none" else args.image_encoder
    tables = build_feature_tables(
        out, text_encoder=args.text_encoder, image_encoder=image, device=args.device, force=args.force
    )
    for modality, path in tables.items():
        print(f"features {modality}: {path}")


def prepare_from_args(argv: list[str]) -> Path:
    """Do what ``recsys-prep ARGV`` does and return the output directory; raises ``DataError``
    (bad input, naming file and line) or ``SystemExit`` (bad options) instead of returning a status."""
    args = _parser().parse_args(argv)
    out = args.out or Path("data") / args.dataset
    t0 = time.perf_counter()
    if layout.is_current(out) and not args.force:
        print(f"{out} already prepared (use --force to rebuild)")
    else:
        raw = _load(args)
        ku = args.k_core_users if args.k_core_users is not None else args.k_core
        ki = args.k_core_items if args.k_core_items is not None else args.k_core
        prepare(
            raw,
            out,
            k_core_users=ku,
            k_core_items=ki,
            rating_threshold=args.rating_threshold,
            duplicates=args.duplicates,
            unknown_items=args.unknown_items,
            strict=args.strict,
            text_template=args.template,
            id_order=args.id_order,
            lenient=args.lenient,
        )
        print(f"prepared in {time.perf_counter() - t0:.1f}s")
    if not args.no_features:
        _features(args, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``recsys-prep``; returns the exit status (2 on bad data)."""
    try:
        out = prepare_from_args(sys.argv[1:] if argv is None else argv)
    except DataError as e:
        print(f"recsys-prep: bad input: {e}", file=sys.stderr)
        return 2
    print(summarize(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
