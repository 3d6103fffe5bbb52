"""build_feature_tables: layout, fingerprint cache, manifest updates, missing images, dim padding."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

import data_prep.encoders as enc
from data_prep import layout
from data_prep.features import build_feature_tables, fingerprint, load_feature_table

SKIMAGE_DATA = Path(pytest.importorskip("skimage").__file__).parent / "data"
SKLEARN_IMAGES = Path(pytest.importorskip("sklearn").__file__).parent / "datasets" / "images"

TEXTS = [
    "Toy Story (1995) | Animation, Children, Comedy",
    "Heat (1995) | Action, Crime, Thriller",
    "",
    "Sabrina (1995) | Comedy, Romance",
    "GoldenEye (1995) | Action, Adventure, Thriller",
]


def make_dataset(root: Path, texts=TEXTS, image_paths=None, template="{title} | {genres}") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    cols = {
        "item_idx": pl.Series(list(range(1, n + 1)), dtype=pl.Int32),
        "item_id": [f"m{i}" for i in range(1, n + 1)],
        "text": list(texts),
        "image_path": pl.Series(image_paths if image_paths is not None else [None] * n, dtype=pl.Utf8),
    }
    pl.DataFrame(cols).write_parquet(root / layout.ITEMS)
    manifest = {"dataset": "fixture", "counts": {"items": n}, "params": {"min_count": 5}}
    if template is not None:
        manifest["text_template"] = template
    (root / layout.MANIFEST).write_text(json.dumps(manifest))
    return root


def manifest(root: Path) -> dict:
    return json.loads((root / layout.MANIFEST).read_text())


@enc.register_image_encoder("test-const")
class ConstImageEncoder(enc.ImageEncoder):
    """Fast stand-in: 8-d vector from the file size; missing/unreadable -> mask False."""

    dim = 8
    calls = 0

    def __init__(self, device: str = "cpu"):
        self.name = "test-const"

    def encode(self, paths):
        ConstImageEncoder.calls += 1
        out = torch.zeros(len(paths), self.dim)
        mask = torch.zeros(len(paths), dtype=torch.bool)
        for i, p in enumerate(paths):
            im = enc.open_rgb(p)
            if im is not None:
                out[i] = float(os.path.getsize(p) % 97 + 1)
                mask[i] = True
        return out, mask


@enc.register_text_encoder("test-dim6")
class Dim6TextEncoder(enc.TextEncoder):
    dim = 6

    def __init__(self, device: str = "cpu"):
        self.name = "test-dim6"

    def embed(self, texts):
        return torch.stack([torch.full((6,), float(len(t))) for t in texts])


def test_text_only_dataset_layout_and_manifest(tmp_path):
    root = make_dataset(tmp_path / "ml")
    out = build_feature_tables(root, text_encoder="wordllama")
    assert set(out) == {"text"}
    assert out["text"] == root / "features" / "text.safetensors"
    assert not (root / "features" / "image.safetensors").exists()
    feats, mask, meta = load_feature_table(out["text"])
    n = len(TEXTS)
    assert feats.shape == (n + 1, 256) and feats.dtype == torch.float32
    assert mask.shape == (n + 1,) and mask.dtype == torch.bool
    assert torch.all(feats[0] == 0) and not mask[0]
    # the empty text: zeros, mask False, counted
    assert torch.all(feats[3] == 0) and not mask[3]
    assert mask.tolist() == [False, True, True, False, True, True]
    assert torch.allclose(feats[mask].norm(dim=1), torch.ones(int(mask.sum())), atol=1e-4)
    assert meta["n_missing"] == "1" and meta["n_items"] == str(n) and meta["dim"] == "256"
    assert meta["encoder"] == "wordllama" and len(meta["fingerprint"]) == 64 and meta["created"]
    m = manifest(root)
    assert m["modalities"] == ["text"]
    assert "image" not in m["features"]
    assert m["modalities_skipped"] == {"image": "no item has an image_path"}
    t = m["features"]["text"]
    assert t["file"] == "features/text.safetensors" and t["dim"] == 256 and t["encoder"] == "wordllama"
    assert t["n_missing"] == 1 and t["reused"] is False and t["fingerprint"] == meta["fingerprint"]
    # other keys preserved
    assert m["dataset"] == "fixture" and m["params"] == {"min_count": 5} and m["text_template"]


def test_fingerprint_cache_reuse_and_invalidation(tmp_path):
    root = make_dataset(tmp_path / "ds")
    path = build_feature_tables(root, text_encoder="wordllama")["text"]
    fp1, mtime1 = manifest(root)["features"]["text"]["fingerprint"], path.stat().st_mtime_ns

    build_feature_tables(root, text_encoder="wordllama")
    assert manifest(root)["features"]["text"]["reused"] is True
    assert path.stat().st_mtime_ns == mtime1

    # changing the text template (manifest) recomputes
    m = manifest(root)
    m["text_template"] = "{title}"
    (root / layout.MANIFEST).write_text(json.dumps(m))
    build_feature_tables(root, text_encoder="wordllama")
    e = manifest(root)["features"]["text"]
    assert e["reused"] is False and e["fingerprint"] != fp1
    fp2 = e["fingerprint"]

    # changing one text recomputes (manifest keys written by others survive)
    texts = list(TEXTS)
    texts[0] = "Toy Story 2 (1999) | Animation"
    items = pl.read_parquet(root / layout.ITEMS).with_columns(pl.Series("text", texts))
    items.write_parquet(root / layout.ITEMS)
    build_feature_tables(root, text_encoder="wordllama")
    e = manifest(root)["features"]["text"]
    assert e["reused"] is False and e["fingerprint"] not in (fp1, fp2)
    build_feature_tables(root, text_encoder="wordllama")
    assert manifest(root)["features"]["text"]["reused"] is True

    # force always recomputes
    build_feature_tables(root, text_encoder="wordllama", force=True)
    assert manifest(root)["features"]["text"]["reused"] is False

    # another encoder recomputes
    build_feature_tables(root, text_encoder="test-dim6")
    e = manifest(root)["features"]["text"]
    assert e["reused"] is False and e["encoder"] == "test-dim6"


def test_fingerprint_function_covers_all_inputs():
    base = fingerprint("text", "enc-a", "h1", "{title}")
    assert base == fingerprint("text", "enc-a", "h1", "{title}")
    assert base != fingerprint("text", "enc-b", "h1", "{title}")
    assert base != fingerprint("text", "enc-a", "h2", "{title}")
    assert base != fingerprint("text", "enc-a", "h1", "{title} {genres}")
    assert base != fingerprint("text", "enc-a", "h1", None)
    assert enc.encoder_identity("text", "minilm") != enc.encoder_identity("text", "wordllama")


def test_dim_zero_padded_to_multiple_of_4(tmp_path):
    root = make_dataset(tmp_path / "ds")
    path = build_feature_tables(root, text_encoder="test-dim6")["text"]
    feats, mask, meta = load_feature_table(path)
    assert feats.shape == (len(TEXTS) + 1, 8)
    assert meta["dim"] == "8" and meta["orig_dim"] == "6"
    assert torch.all(feats[:, 6:] == 0) and torch.all(feats[1, :6] == len(TEXTS[0]))
    e = manifest(root)["features"]["text"]
    assert e["dim"] == 8 and e["orig_dim"] == 6


def _photo_dataset(tmp_path: Path) -> tuple[Path, list]:
    root = tmp_path / "amz"
    imgs = root / "images"
    imgs.mkdir(parents=True)
    for name in ["chelsea.png", "coffee.png", "rocket.jpg"]:
        shutil.copy(SKIMAGE_DATA / name, imgs / name)
    (imgs / "broken.jpg").write_bytes(b"this is not a jpeg")
    paths = [
        "images/chelsea.png",  # relative to the dataset dir
        str(SKLEARN_IMAGES / "china.jpg"),  # absolute
        None,  # no image
        "images/coffee.png",
        "images/does_not_exist.jpg",  # missing
        "images/broken.jpg",  # unreadable
        "images/rocket.jpg",
    ]
    texts = [f"item {i}" for i in range(1, len(paths) + 1)]
    make_dataset(root, texts=texts, image_paths=paths)
    return root, paths


def test_image_modality_missing_images_and_cache(tmp_path):
    root, paths = _photo_dataset(tmp_path)
    ConstImageEncoder.calls = 0
    out = build_feature_tables(root, text_encoder="wordllama", image_encoder="test-const", batch_size=3)
    assert set(out) == {"text", "image"}
    feats, mask, meta = load_feature_table(out["image"])
    n = len(paths)
    assert feats.shape == (n + 1, 8)
    assert mask.tolist() == [False, True, True, False, True, False, False, True]
    assert torch.all(feats[~mask] == 0) and torch.all(feats[mask] != 0)
    m = manifest(root)
    assert m["modalities"] == ["text", "image"] and "modalities_skipped" not in m
    e = m["features"]["image"]
    assert e["n_missing"] == 3 and e["n_unreadable"] == 2 and e["dim"] == 8 and e["reused"] is False
    assert e["file"] == "features/image.safetensors"
    assert ConstImageEncoder.calls == 3  # batches of 3 over 7 items

    # unchanged -> both reused, nothing encoded
    build_feature_tables(root, text_encoder="wordllama", image_encoder="test-const", batch_size=3)
    m = manifest(root)
    assert m["features"]["image"]["reused"] and m["features"]["text"]["reused"]
    assert ConstImageEncoder.calls == 3

    # a replaced image file (new size/mtime) recomputes the image table only
    shutil.copy(SKIMAGE_DATA / "astronaut.png", root / "images" / "coffee.png")
    build_feature_tables(root, text_encoder="wordllama", image_encoder="test-const", batch_size=3)
    m = manifest(root)
    assert m["features"]["image"]["reused"] is False and m["features"]["text"]["reused"] is True

    # image_encoder=None drops the image modality and its stale table
    build_feature_tables(root, text_encoder="wordllama", image_encoder=None)
    m = manifest(root)
    assert m["modalities"] == ["text"] and "image" not in m["features"]
    assert not (root / "features" / "image.safetensors").exists()


def test_all_images_missing_warns(tmp_path):
    root = make_dataset(tmp_path / "ds", texts=["a", "b"], image_paths=["nope1.jpg", "nope2.jpg"])
    with pytest.warns(RuntimeWarning, match="ALL 2 item images"):
        out = build_feature_tables(root, text_encoder="wordllama", image_encoder="test-const")
    _, mask, meta = load_feature_table(out["image"])
    assert not mask.any() and meta["n_missing"] == "2"


def test_mobilenet_end_to_end(tmp_path):
    root, paths = _photo_dataset(tmp_path)
    out = build_feature_tables(root, text_encoder="wordllama", image_encoder="mobilenet_v2", batch_size=4)
    feats, mask, meta = load_feature_table(out["image"])
    assert feats.shape == (len(paths) + 1, 1280) and meta["encoder"] == "mobilenet_v2"
    assert torch.isfinite(feats).all()
    assert mask.tolist() == [False, True, True, False, True, False, False, True]
    assert torch.all(feats[~mask] == 0) and (feats[mask].abs().sum(dim=1) > 0).all()
    assert manifest(root)["features"]["image"]["n_missing"] == 3


def test_bad_item_idx_rejected(tmp_path):
    root = make_dataset(tmp_path / "ds")
    items = pl.read_parquet(root / layout.ITEMS).with_columns(pl.col("item_idx") + 1)
    items.write_parquet(root / layout.ITEMS)
    with pytest.raises(ValueError, match="item_idx"):
        build_feature_tables(root, text_encoder="wordllama")
