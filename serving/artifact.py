"""Serving artifacts: one standalone directory per embedding size d, loaded without unpickling.

Layout of ``EXPORT_DIR/d{d:04d}/`` (written by ``recsys-export``, see docs/serving.md)::

    config.json                  format, size d, num_items, max_len, the width-d ModelConfig fields
    model.safetensors            the width-d backbone weights (the [:d] slice of the trained model)
    item_embeddings.safetensors  "item_embeddings": (N+1, d) precomputed catalog matrix, row 0 = padding
                                 (+ "input_embeddings": (N+1, D) backbone inputs, non-nested backbones only)
    items.json                   {"item_ids": [...]}: original item id of item_idx i+1 at index i
    program.pt2                  torch.export program: history (B, max_len) int64 -> scores (B, N+1)
    metrics.json                 validation/test metrics at size d, parameter count, file sizes
    checksums.json               sha256 of every other file

``load_artifact`` reads safetensors and JSON only (no pickle); the backbone is rebuilt from
``recsys.nn`` (no torchrec, no training config) and the program is loaded with
``torch.export.load`` on demand, which needs neither recsys nor this package.

Non-nested backbone (sasrec, config ``"nested": false``): model.safetensors holds the full-width
weights, ``model_config.output_size = d`` makes the rebuilt backbone return ``h[..., :d]``, and
the backbone reads the full-width ``input_embeddings`` while scoring uses the (N+1, d) catalog.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

FORMAT = "recsys-serving-artifact"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ITEM_EMB_FILE = "item_embeddings.safetensors"
ITEM_EMB_KEY = "item_embeddings"
INPUT_EMB_KEY = "input_embeddings"
ITEMS_FILE = "items.json"
PROGRAM_FILE = "program.pt2"
METRICS_FILE = "metrics.json"
CHECKSUMS_FILE = "checksums.json"
INDEX_FILE = "index.json"


class ArtifactError(RuntimeError):
    """An artifact directory is missing a file, malformed, or fails its checksums."""


def size_dir_name(d: int) -> str:
    return f"d{d:04d}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path) -> dict[str, str]:
    """Write checksums.json: sha256 of every regular file of ``directory`` (itself excluded)."""
    sums = {
        p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != CHECKSUMS_FILE
    }
    (directory / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2, sort_keys=True))
    return sums


def verify_checksums(directory: Path) -> None:
    """ArtifactError naming the file when one is missing, added or altered."""
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {CHECKSUMS_FILE}; not an exported artifact")
    expected: dict[str, str] = json.loads(path.read_text())
    for name, digest in expected.items():
        target = directory / name
        if not target.is_file():
            raise ArtifactError(f"{target}: listed in {CHECKSUMS_FILE} but missing")
        actual = sha256_file(target)
        if actual != digest:
            raise ArtifactError(
                f"checksum mismatch for {target}: expected sha256 {digest}, got {actual} (file altered or corrupt)"
            )
    extra = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name not in expected
                   and p.name != CHECKSUMS_FILE)
    if extra:
        raise ArtifactError(f"{directory}: files not covered by {CHECKSUMS_FILE}: {extra}")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"missing artifact file {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: invalid JSON ({err})") from None


def serving_model_config(fields: dict[str, Any]) -> Any:
    """A frozen-shape dataclass holding the ModelConfig fields of config.json.

    Backbones read their settings as attributes and ``Backbone.slice`` uses ``dataclasses.replace``;
    a dataclass built from the stored fields gives both without importing ``recsys.model``
    (which pulls in torchrec for the training-time item tables).
    """
    values = dict(fields)
    values["ladder"] = tuple(values["ladder"])
    if "modalities" in values:
        values["modalities"] = tuple(values["modalities"])
    cls = dataclasses.make_dataclass("ServingModelConfig", [(k, Any) for k in values])
    cls.width = property(lambda self: self.ladder[-1])
    return cls(**values)


@dataclass
class Artifact:
    """A loaded width-d serving artifact (weights, catalog matrix, id mapping, metadata)."""

    directory: Path
    size: int
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    item_embeddings: torch.Tensor  # (N+1, d), row 0 = padding
    item_ids: list[str]  # index i -> original id of item_idx i+1
    metrics: dict[str, Any]
    input_embeddings: torch.Tensor | None = None  # (N+1, D) backbone inputs; None: the catalog matrix
    _backbone: torch.nn.Module | None = field(default=None, repr=False)
    _program: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def max_len(self) -> int:
        return int(self.config["max_len"])

    @property
    def num_parameters(self) -> int:
        """Parameters of the width-d inference model (non-nested backbone: the full-width one),
        excluding the precomputed catalog and input matrices."""
        return int(sum(t.numel() for t in self.state.values()))

    def backbone(self) -> torch.nn.Module:
        """The width-d backbone rebuilt from recsys.nn and the safetensors weights (eval mode)."""
        if self._backbone is None:
            from recsys.nn import build_backbone

            cfg = serving_model_config(self.config["model_config"])
            module = build_backbone(cfg.backbone, cfg)
            try:
                module.load_state_dict(self.state, strict=True)
            except RuntimeError as err:
                raise ArtifactError(f"{self.directory / WEIGHTS_FILE}: weights do not fit the config: {err}") from None
            self._backbone = module.eval()
        return self._backbone

    def program(self) -> torch.nn.Module:
        """The serialized inference program (torch.export), history (B, max_len) -> scores (B, N+1)."""
        if self._program is None:
            path = self.directory / self.config.get("program", PROGRAM_FILE)
            if not path.is_file():
                raise ArtifactError(f"missing artifact file {path}")
            self._program = torch.export.load(str(path)).module()
        return self._program


def load_artifact(directory: str | Path, verify: bool = True) -> Artifact:
    """Load one size directory (``EXPORT_DIR/d0064``); ``verify`` checks every sha256 first."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}")
    if verify:
        verify_checksums(directory)
    config = _read_json(directory / CONFIG_FILE)
    if config.get("format") != FORMAT or int(config.get("version", -1)) > FORMAT_VERSION:
        raise ArtifactError(f"{directory / CONFIG_FILE}: not a {FORMAT} v{FORMAT_VERSION} artifact")
    for name in (WEIGHTS_FILE, ITEM_EMB_FILE):
        if not (directory / name).is_file():
            raise ArtifactError(f"missing artifact file {directory / name}")
    state = load_file(str(directory / WEIGHTS_FILE))
    emb = load_file(str(directory / ITEM_EMB_FILE))
    if ITEM_EMB_KEY not in emb:
        raise ArtifactError(f"{directory / ITEM_EMB_FILE}: no '{ITEM_EMB_KEY}' tensor")
    item_embeddings = emb[ITEM_EMB_KEY].float()
    item_ids = [str(x) for x in _read_json(directory / ITEMS_FILE)["item_ids"]]
    size, num_items = int(config["size"]), int(config["num_items"])
    if item_embeddings.shape != (num_items + 1, size) or len(item_ids) != num_items:
        raise ArtifactError(
            f"{directory}: item_embeddings {tuple(item_embeddings.shape)} / {len(item_ids)} item ids do not "
            f"match num_items={num_items}, size={size}"
        )
    inputs = emb[INPUT_EMB_KEY].float() if INPUT_EMB_KEY in emb else None
    if inputs is not None:
        width = int(config.get("model_config", {}).get("ladder", [size])[-1])
        if inputs.shape != (num_items + 1, width):
            raise ArtifactError(f"{directory}: input_embeddings {tuple(inputs.shape)} do not match "
                                f"num_items={num_items}, width={width}")
    metrics_path = directory / METRICS_FILE
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    return Artifact(directory, size, config, state, item_embeddings, item_ids, metrics, inputs)


def read_index(export_dir: str | Path) -> dict[str, Any]:
    """The export's index.json (every size with metrics, parameters and bytes)."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ArtifactError(f"export directory not found: {export_dir}")
    return _read_json(export_dir / INDEX_FILE)
