"""Build the dataset and the model from a composed run config (shared by train, eval, export)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from data_prep import layout
from data_prep.layout import CATEGORICAL
from recsys.config import BUILTIN_DATASETS, effective_ladder
from recsys.data import SequenceDataset, transform_features
from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn import BackboneConfig, registered_backbones
from recsys.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def prepare_dataset_if_missing(cfg: DictConfig) -> Path:
    """Return the processed dataset directory, running ``recsys-prep`` for a missing built-in one."""
    path = Path(cfg.data.path)
    builtin = cfg.data.name in BUILTIN_DATASETS and cfg.data.prepare_if_missing
    k_core = cfg.data.get("k_core", None)
    if (path / layout.MANIFEST).is_file() and (layout.is_current(path) or not builtin):
        _check_k_core(path, k_core)
        return path
    if cfg.data.name not in BUILTIN_DATASETS or not cfg.data.prepare_if_missing:
        raise FileNotFoundError(
            f"data.path={path} holds no processed dataset. Prepare it first, e.g. "
            f"`recsys-prep {cfg.data.name} --out {path}` (see README, 'Data formats')"
        )
    from data_prep import prepare_builtin

    log.info(
        "Preparing %s into %s%s",
        cfg.data.name,
        path,
        " (written by an older recsys-prep)" if path.exists() else "",
    )
    return prepare_builtin(cfg.data.name, path, cfg.data.text_encoder, cfg.data.image_encoder, k_core=k_core)


def _check_k_core(path: Path, k_core: int | None) -> None:
    """A ``data.k_core`` that the dataset at ``path`` was not prepared with is an error, not a silent mismatch."""
    if k_core is None:
        return
    params = json.loads((path / layout.MANIFEST).read_text()).get("parameters", {})
    found = (params.get("k_core_users"), params.get("k_core_items"))
    if found != (k_core, k_core):
        raise ValueError(
            f"data.k_core={k_core} but {path} was prepared with k-core users/items {found[0]}/{found[1]} "
            "(None: not recorded in its manifest); "
            f"point data.path elsewhere, or re-prepare: recsys-prep NAME --out {path} --k-core {k_core} --force"
        )


def build_dataset(cfg: DictConfig) -> SequenceDataset:
    """The processed dataset of the data group, windows of ``data.max_len`` every ``data.train_stride``."""
    return SequenceDataset(
        prepare_dataset_if_missing(cfg),
        max_len=cfg.data.max_len,
        train_stride=cfg.data.get("train_stride", 0),
        cold_targets=cfg.data.get("cold_targets", "keep"),
    )


def backbone_config(backbone: DictConfig, ladder: Sequence[int], max_len: int) -> BackboneConfig:
    """The backbone group's config object (its ``_target_``, e.g. ``recsys.nn.lru.LRUConfig``) at the
    model's ladder and max_len. ``_target_`` must be a registered backbone config: a run's
    config.yaml is read back by recsys-export and recsys-eval, and must not name arbitrary code."""
    target = backbone.get("_target_")
    if target not in registered_backbones():
        raise ValueError(
            f"backbone._target_={target!r} is not a registered backbone config "
            f"(recsys.nn.register_backbone); registered: {registered_backbones()}"
        )
    return instantiate(backbone, ladder=list(ladder), max_len=max_len, _convert_="all", _recursive_=False)


def model_config(cfg: DictConfig) -> ModelConfig:
    """ModelConfig from the model, data and backbone groups."""
    ladder, max_len = effective_ladder(cfg.model), int(cfg.data.max_len)
    return ModelConfig(
        ladder=ladder,
        max_len=max_len,
        backbone=backbone_config(cfg.backbone, ladder, max_len),
        modalities=tuple(cfg.model.modalities),
        use_id_table=bool(cfg.model.use_id_table),
        trainable_features=bool(cfg.model.trainable_features),
        projector_hidden=int(cfg.model.projector_hidden),
        categorical_dim=int(cfg.model.get("categorical_dim", 32)),
        categorical_pooling=str(cfg.model.get("categorical_pooling", "mean")),
        cross_size_grad=float(cfg.model.get("cross_size_grad", 1.0)),
    )


def build_model(cfg: DictConfig, dataset: SequenceDataset) -> MatryoshkaRecModel:
    """A model sized for ``dataset`` with its feature tables loaded."""
    modalities = list(cfg.model.modalities)
    missing = [m for m in modalities if m not in dataset.modalities]
    if missing:
        raise ValueError(
            f"model.modalities asks for {missing}, but dataset {dataset.directory} has only {dataset.modalities}"
        )
    transform = str(cfg.model.get("feature_transform", "none"))
    dense = [m for m in modalities if m != CATEGORICAL]
    features = {m: transform_features(t, transform) for m, t in dataset.load_features(dense).items()}
    bags = dataset.load_categorical() if CATEGORICAL in modalities else None
    model = MatryoshkaRecModel(
        model_config(cfg),
        num_items=dataset.num_items,
        feature_dims={m: int(t.shape[1]) for m, t in features.items()},
        categorical={
            f: {"vocab_size": len(b.vocab), "nnz": int(b.ids.numel())} for f, b in (bags or {}).items()
        },
    )
    model.load_item_features(features, bags)
    return model


def resolve_run(target: str | Path, checkpoint: str = "best") -> tuple[Path, Path]:
    """(run_dir, checkpoint path) from a run directory or a checkpoint file."""
    target = Path(target)
    if target.is_file():
        return target.parent.parent, target
    if not (target / "config.yaml").is_file():
        raise FileNotFoundError(f"{target} is neither a run directory (no config.yaml) nor a checkpoint file")
    if checkpoint in ("best", "last"):
        ckpt = target / "checkpoints" / f"{checkpoint}.pt"
    else:
        ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    return target, ckpt


def load_run(run_dir: Path, ckpt: Path) -> tuple[DictConfig, SequenceDataset, MatryoshkaRecModel]:
    """A trained run: (its config, its dataset, the model in eval mode with ``ckpt``'s weights).

    Shared by ``recsys-eval``, ``recsys-export`` and the benchmarks; see :func:`resolve_run` for ``ckpt``."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml; is this a run directory?")
    cfg = OmegaConf.load(cfg_path)
    dataset = build_dataset(cfg)
    model = build_model(cfg, dataset)
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    return cfg, dataset, model.eval()
