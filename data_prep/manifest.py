"""Reading and atomically writing ``manifest.json`` of a processed dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep import layout
from data_prep.io import write_json_atomic

PRESERVED_KEYS = ("features",)  # written by other modules (data_prep.features); never overwritten here


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
