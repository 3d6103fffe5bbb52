"""Reading and atomically writing ``manifest.json`` of a processed dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from data_prep import layout
from data_prep.atomic import write_json_atomic

PRESERVED_KEYS = ("features",)  # written by other modules (data_prep.features); never overwritten here


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    """Load ``manifest.json`` of a processed dataset directory."""
    return json.loads((Path(dataset_dir) / layout.MANIFEST).read_text())


def write_manifest(dataset_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest atomically, keeping keys owned by other modules (e.g. ``features``)."""
    path = Path(dataset_dir) / layout.MANIFEST
    data = dict(manifest)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        for key in PRESERVED_KEYS:
            if key in old and key not in data:
                data[key] = old[key]
    write_json_atomic(path, data)
    return path
