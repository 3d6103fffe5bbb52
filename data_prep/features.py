"""Build the per-modality item feature tables of a processed dataset (``features/<modality>.safetensors``).

See docs/features.md. Each table: tensor ``features`` float32 (N+1, F) with row 0 = padding zeros,
tensor ``mask`` bool (N+1,), string metadata (fingerprint, encoder, dim, orig_dim, n_items, n_missing,
created, ...). A table whose fingerprint matches its inputs is reused, not recomputed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from data_prep import layout
from data_prep.categorical import build_categorical_table
from data_prep.encoders import encoder_identity, get_image_encoder, get_text_encoder
from data_prep.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

TEXT = "text"
IMAGE = "image"
DIM_MULTIPLE = 4  # torchrec wants embedding dims divisible by 4


# ----------------------------------------------------------------------------- fingerprints


def _hash_strings(values: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(str(len(values)).encode())
    for v in values:
        b = v.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _hash_image_inputs(raw_paths: Sequence[str | None], resolved: Sequence[str | None]) -> str:
    """Image paths as stored plus each file's size and mtime (so a replaced image recomputes)."""
    rows = []
    for raw, res in zip(raw_paths, resolved):
        if not raw or res is None:
            rows.append("\x00none")
            continue
        try:
            st = os.stat(res)
            rows.append(f"{raw}\x00{st.st_size}\x00{st.st_mtime_ns}")
        except OSError:
            rows.append(f"{raw}\x00missing")
    return _hash_strings(rows)


def fingerprint(modality: str, encoder_id: str, input_hash: str, text_template: str | None = None) -> str:
    """sha256 over (pipeline version, modality, encoder identity, text template, input-column hash)."""
    payload = json.dumps(
        {
            "pipeline_version": layout.PIPELINE_VERSION,
            "modality": modality,
            "encoder": encoder_id,
            "text_template": text_template,
            "input": input_hash,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


# ----------------------------------------------------------------------------- io helpers


def _atomic_save_table(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_table_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a feature table, or None when the file is absent/unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return None


def load_feature_table(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """(features float32 (N+1, F), mask bool (N+1,), metadata)."""
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("features"), f.get_tensor("mask"), dict(f.metadata() or {})


# ----------------------------------------------------------------------------- building


def _encode_all(
    encoder: Any, inputs: Sequence[Any], batch_size: int, desc: str
) -> tuple[torch.Tensor, torch.Tensor, float]:
    n = len(inputs)
    feats = torch.zeros(n + 1, encoder.dim, dtype=torch.float32)
    mask = torch.zeros(n + 1, dtype=torch.bool)
    t0 = time.perf_counter()
    # a bar on a terminal; in a log file (CI, nohup) no carriage-return redraws, the summary line after says it
    with tqdm(total=n, desc=desc, unit="item", leave=False, disable=not sys.stderr.isatty()) as bar:
        for start in range(0, n, batch_size):
            chunk = list(inputs[start : start + batch_size])
            f, m = encoder.encode(chunk)
            feats[start + 1 : start + 1 + len(chunk)] = f
            mask[start + 1 : start + 1 + len(chunk)] = m
            bar.update(len(chunk))
    seconds = time.perf_counter() - t0
    feats[~mask] = 0.0  # row 0 and every item without this modality: exactly zeros
    return feats, mask, seconds


def _pad_dim(feats: torch.Tensor) -> torch.Tensor:
    extra = (-feats.shape[1]) % DIM_MULTIPLE
    if extra:
        feats = torch.cat([feats, feats.new_zeros(feats.shape[0], extra)], dim=1)
    return feats


def _build_modality(
    dataset_dir: Path,
    modality: str,
    fp: str,
    n_items: int,
    inputs: Sequence[Any],
    make_encoder: Callable[[], Any],
    encoder_spec: str,
    batch_size: int,
    force: bool,
    has_input: Sequence[bool],
) -> dict[str, Any]:
    rel = layout.feature_file(modality)
    path = dataset_dir / rel
    meta = None if force else read_table_metadata(path)
    if meta is not None and meta.get("fingerprint") == fp and meta.get("n_items") == str(n_items):
        log.info("%s features: fingerprint unchanged, reusing %s", modality, path)
        return {
            "file": rel,
            "dim": int(meta["dim"]),
            "orig_dim": int(meta.get("orig_dim", meta["dim"])),
            "encoder": meta.get("encoder", encoder_spec),
            "fingerprint": fp,
            "n_missing": int(meta.get("n_missing", 0)),
            "n_unreadable": int(meta.get("n_unreadable", 0)),
            "reused": True,
        }

    encoder = make_encoder()
    feats, mask, seconds = _encode_all(encoder, inputs, batch_size, f"{modality} features ({encoder.name})")
    orig_dim = feats.shape[1]
    feats = _pad_dim(feats)
    n_missing = int(n_items - mask[1:].sum().item())
    # inputs that were given (non-empty text / an image path) but produced nothing
    n_unreadable = int(sum(1 for h, m in zip(has_input, mask[1:].tolist()) if h and not m))
    rate = n_items / seconds if seconds > 0 else float("inf")
    log.info(
        "%s features: %d items in %.1fs (%.1f items/s), dim %d, %d missing",
        modality,
        n_items,
        seconds,
        rate,
        feats.shape[1],
        n_missing,
    )
    metadata = {
        "fingerprint": fp,
        "modality": modality,
        "encoder": encoder_spec,
        "encoder_name": str(encoder.name),
        "encoder_version": str(getattr(encoder, "version", "")),
        "dim": str(feats.shape[1]),
        "orig_dim": str(orig_dim),
        "n_items": str(n_items),
        "n_missing": str(n_missing),
        "n_unreadable": str(n_unreadable),
        "pipeline_version": layout.PIPELINE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_save_table(path, {"features": feats.contiguous(), "mask": mask}, metadata)
    return {
        "file": rel,
        "dim": int(feats.shape[1]),
        "orig_dim": int(orig_dim),
        "encoder": encoder_spec,
        "fingerprint": fp,
        "n_missing": n_missing,
        "n_unreadable": n_unreadable,
        "reused": False,
        "seconds": round(seconds, 3),
    }


def _resolve_image_path(dataset_dir: Path, p: str | None) -> str | None:
    if not p:
        return None
    q = Path(p)
    return str(q if q.is_absolute() else dataset_dir / q)


def build_feature_tables(
    dataset_dir: Path,
    *,
    text_encoder: str = "minilm",
    image_encoder: str | None = "mobilenet_v2",
    batch_size: int = 64,
    device: str = "cpu",
    force: bool = False,
) -> dict[str, Path]:
    """Encode the items of a processed dataset into ``features/<modality>.safetensors``.

    Text always; image only when ``image_encoder`` is set and at least one item has an
    ``image_path`` (relative paths are taken relative to ``dataset_dir``). Tables whose fingerprint
    is unchanged are reused unless ``force``. Updates ``manifest.json`` (``features``,
    ``modalities``) and returns {modality: path of its table}.
    """
    dataset_dir = Path(dataset_dir)
    items = pl.read_parquet(dataset_dir / layout.ITEMS)
    n = items.height
    idx = items["item_idx"].to_list()
    if idx != list(range(1, n + 1)):
        raise ValueError(f"{dataset_dir / layout.ITEMS}: item_idx must be 1..N sorted (N={n})")

    manifest_path = dataset_dir / layout.MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
    else:
        log.warning("%s does not exist; creating one with only the feature entries", manifest_path)
        manifest = {}
    template = manifest.get("text_template")

    entries: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}

    # ---- text (always)
    texts = (
        [t if t is not None else "" for t in items["text"].to_list()] if "text" in items.columns else [""] * n
    )
    text_fp = fingerprint(TEXT, encoder_identity(TEXT, text_encoder), _hash_strings(texts), template)
    entries[TEXT] = _build_modality(
        dataset_dir,
        TEXT,
        text_fp,
        n,
        texts,
        lambda: get_text_encoder(text_encoder, device=device),
        text_encoder,
        batch_size,
        force,
        [bool(t.strip()) for t in texts],
    )
    if entries[TEXT]["n_missing"]:
        log.warning("text features: %d of %d items have an empty text", entries[TEXT]["n_missing"], n)

    # ---- image (only when some item has an image path)
    raw_paths = items["image_path"].to_list() if "image_path" in items.columns else [None] * n
    has_path = [bool(p) for p in raw_paths]
    if image_encoder is None:
        skipped[IMAGE] = "image_encoder=None"
    elif not any(has_path):
        skipped[IMAGE] = "no item has an image_path"
    else:
        resolved = [_resolve_image_path(dataset_dir, p) for p in raw_paths]
        image_fp = fingerprint(
            IMAGE, encoder_identity(IMAGE, image_encoder), _hash_image_inputs(raw_paths, resolved)
        )
        entries[IMAGE] = _build_modality(
            dataset_dir,
            IMAGE,
            image_fp,
            n,
            resolved,
            lambda: get_image_encoder(image_encoder, device=device),
            image_encoder,
            batch_size,
            force,
            has_path,
        )
        e = entries[IMAGE]
        if e["n_missing"] == n:
            msg = (
                f"ALL {n} item images are missing or unreadable in {dataset_dir} (image_path given for "
                f"{sum(has_path)} items): the image feature table is all zeros. Check the image paths."
            )
            log.error(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        elif e["n_missing"]:
            log.warning(
                "image features: %d of %d items without an image (%d paths unreadable)",
                e["n_missing"],
                n,
                e["n_unreadable"],
            )

    # ---- categorical bags (genres, year, ...) when items.parquet has cat_* columns
    categorical = build_categorical_table(dataset_dir, items)
    if categorical is not None:
        entries[layout.CATEGORICAL] = categorical

    # a stale table of a modality that no longer applies must not be picked up by training
    for modality in skipped:
        stale = dataset_dir / layout.feature_file(modality)
        if stale.exists():
            stale.unlink()

    # ---- manifest: re-read just before writing (another writer may have added keys meanwhile)
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
    features = dict(manifest.get("features") or {})
    for modality in skipped:
        features.pop(modality, None)
    features.update(entries)
    manifest["features"] = features
    manifest["modalities"] = list(entries)
    if skipped:
        manifest["modalities_skipped"] = skipped
    else:
        manifest.pop("modalities_skipped", None)
    write_json_atomic(manifest_path, manifest)
    return {m: dataset_dir / e["file"] for m, e in entries.items()}
