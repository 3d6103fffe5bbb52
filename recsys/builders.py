"""Build the dataset and the model from a composed run config (shared by train, eval, export)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from omegaconf import DictConfig

from recsys.config import BUILTIN_DATASETS, effective_ladder
from recsys.data import SequenceDataset
from recsys.model import MatryoshkaRecModel, ModelConfig

log = logging.getLogger(__name__)


def prepare_dataset_if_missing(cfg: DictConfig) -> Path:
    """Return the processed dataset directory, running ``recsys-prep`` for a missing built-in one."""
    path = Path(cfg.data.path)
    if (path / "manifest.json").is_file():
        return path
    if cfg.data.name not in BUILTIN_DATASETS or not cfg.data.prepare_if_missing:
        raise FileNotFoundError(
            f"data.path={path} holds no processed dataset. Prepare it first, e.g. "
            f"`recsys-prep {cfg.data.name} --out {path}` (see README, 'Data formats')"
        )
    from data_prep.cli import main as prep_main

    log.info("Preparing %s into %s", cfg.data.name, path)
    argv = [cfg.data.name, "--out", str(path), "--text-encoder", cfg.data.text_encoder]
    if cfg.data.image_encoder:
        argv += ["--image-encoder", cfg.data.image_encoder]
    prep_main(argv)
    return path


def build_dataset(cfg: DictConfig) -> SequenceDataset:
    return SequenceDataset(prepare_dataset_if_missing(cfg), max_len=cfg.data.max_len)


def model_config(cfg: DictConfig) -> ModelConfig:
    """ModelConfig from the model and backbone groups (backbone keys the model knows are passed on)."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    backbone = {k: v for k, v in cfg.backbone.items() if k != "name" and k in known}
    return ModelConfig(
        ladder=effective_ladder(cfg.model),
        max_len=int(cfg.data.max_len),
        backbone=cfg.backbone.name,
        modalities=tuple(cfg.model.modalities),
        use_id_table=bool(cfg.model.use_id_table),
        trainable_features=bool(cfg.model.trainable_features),
        projector_hidden=int(cfg.model.projector_hidden),
        **backbone,
    )


def build_model(cfg: DictConfig, dataset: SequenceDataset) -> MatryoshkaRecModel:
    """A model sized for ``dataset`` with its feature tables loaded."""
    modalities = list(cfg.model.modalities)
    missing = [m for m in modalities if m not in dataset.modalities]
    if missing:
        raise ValueError(
            f"model.modalities asks for {missing}, but dataset {dataset.directory} has only {dataset.modalities}"
        )
    features = dataset.load_features(modalities)
    model = MatryoshkaRecModel(
        model_config(cfg), num_items=dataset.num_items, feature_dims={m: int(t.shape[1]) for m, t in features.items()}
    )
    model.load_item_features(features)
    return model
