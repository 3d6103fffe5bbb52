"""Structured config schemas for the Hydra configs in ``configs/``.

The YAML files in ``configs/`` only set values; these dataclasses fix the keys and types, so a
misspelt key or a wrong type fails when Hydra composes the config. :func:`validate` checks the
values that types cannot (an increasing ladder, a width inside the ladder, positive k...), and
every message names the offending key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# The Hydra configs ship inside the package (recsys/configs links to the repository's configs/),
# so an installed recsys-train finds them from any directory.
CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")
BUILTIN_DATASETS = ("ml-100k", "ml-1m")
KNOWN_DATASETS = (*BUILTIN_DATASETS, "amazon", "generic")
SELECTIONS = ("best", "last")  # trainer.select: which weights test, export and serving get


@dataclass
class DataSchema:
    name: str = "ml-100k"  # ml-100k | ml-1m (built in) | amazon | generic (prepared by recsys-prep)
    path: str = MISSING  # processed dataset directory
    prepare_if_missing: bool = True  # built-in datasets only: run recsys-prep when path is missing
    k_core: int | None = None  # built-in preparation: k-core for users and items (None = recsys-prep's 5)
    max_len: int = 50
    train_stride: int = 0  # training windows end every train_stride targets; 0 = max_len (no overlap)
    # keep | drop: leave out of validation/test the users whose target never occurs in training (RecTools)
    cold_targets: str = "keep"
    text_encoder: str = "minilm"
    image_encoder: str | None = "mobilenet_v2"


@dataclass
class ModelSchema:
    ladder: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128, 256, 512, 1024])
    width: int = 1024  # D: the largest size trained; must be one of the ladder's sizes
    modalities: list[str] = field(default_factory=lambda: ["text"])
    use_id_table: bool = False
    trainable_features: bool = False
    projector_hidden: int = 0
    categorical_dim: int = 32  # width of each categorical field's table (modality "categorical")
    categorical_pooling: str = "mean"  # mean | sum over an item's values of one field
    feature_transform: str = "none"  # none | center | whiten the frozen features (recsys/data.py)
    independent: bool = False  # baseline: one separate model per ladder size (recsys/training/independent.py)
    # share of a larger size's gradient reaching the dims it shares with smaller sizes in the nested
    # layers (recsys/nn/nested.py set_cross_size_grad); 1 = the exact Matryoshka gradient
    cross_size_grad: float = 1.0


@dataclass
class BackboneSchema:
    """Keys of every ``backbone`` option. ``_target_`` is the option's config dataclass in recsys/nn,
    built by ``recsys.builders.backbone_config`` with the model's ladder and max_len; each option's
    schema below mirrors that dataclass's other fields (tests/recsys/test_model.py checks it)."""

    _target_: str = MISSING  # e.g. recsys.nn.lru.LRUConfig
    num_blocks: int = 2
    dropout: float = 0.1


@dataclass
class LRUSchema(BackboneSchema):
    """``backbone=lru``: recsys.nn.lru.LRUConfig."""

    _target_: str = "recsys.nn.lru.LRUConfig"
    ffn_multiplier: int = 4
    r_min: float = 0.5  # ring init radii of the eigenvalues (published code: 0.0, 0.1)
    r_max: float = 0.95


@dataclass
class MambaSchema(BackboneSchema):
    """``backbone=mamba``: recsys.nn.mamba.MambaConfig."""

    _target_: str = "recsys.nn.mamba.MambaConfig"
    ffn_multiplier: int = 4  # used only with ffn: true
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 = auto: ceil(smallest size / 16)
    ffn: bool = False


@dataclass
class SASRecSchema(BackboneSchema):
    """``backbone=sasrec``: recsys.nn.sasrec.SASRecConfig."""

    _target_: str = "recsys.nn.sasrec.SASRecConfig"
    dropout: float = 0.2
    ffn_multiplier: int = 4
    heads: int = 1  # must divide model.width


# Each backbone option names its schema first in its defaults list, so only its own keys exist.
BACKBONE_SCHEMAS = {"lru_schema": LRUSchema, "mamba_schema": MambaSchema, "sasrec_schema": SASRecSchema}


@dataclass
class LossSchema:
    """Keys of every ``loss`` option; the loss is built from ``_target_`` (see ``recsys/losses/__init__.py``)."""

    _target_: str = MISSING  # e.g. recsys.losses.matryoshka.FullSoftmaxLoss
    size_weights: list[float] | None = None  # one weight per size of the ladder; None = equal


@dataclass
class FullSoftmaxSchema(LossSchema):
    """``loss=full_softmax``."""

    # size s_m's logits times (s_M / s_m) ** exponent: a per-size temperature (0 = off; 0.5 = sqrt)
    logit_scale_exponent: float = 0.0
    # share of a larger size's gradient reaching the dims it shares with smaller sizes (1 = exact MRL)
    cross_size_grad: float = 1.0
    # the same, one value per size of the ladder (chunk by chunk); None = cross_size_grad everywhere
    cross_size_grad_chunks: list[float] | None = None
    # self-distillation: sizes below the widest learn from (1 - w) onehot + w * widest size's softmax
    distill_weight: float = 0.0


@dataclass
class SampledSoftmaxSchema(LossSchema):
    """``loss=sampled_softmax``."""

    num_negatives: int = 256  # negatives drawn per step (shared by all positions)
    sampler: str = "uniform"  # uniform | popularity (training-target frequency)


# Each loss option names its schema first in its defaults list, so only its own keys exist.
LOSS_SCHEMAS = {"full_softmax_schema": FullSoftmaxSchema, "sampled_softmax_schema": SampledSoftmaxSchema}


@dataclass
class TrainerSchema:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_epochs: int = 100
    batch_size: int = 128
    optimizer: dict[str, Any] = field(default_factory=dict)  # set by the optimizer group (configs/optimizer/)
    # parameter kinds without weight decay (recsys/training/param_groups.py): bias, norm, recurrence, embedding
    no_decay: list[str] = field(default_factory=list)
    # learning rate of trainable modality feature tables (model.trainable_features=true) times this
    feature_lr_scale: float = 1.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables
    # > 0: evaluate, checkpoint and export an exponential moving average of the weights with this
    # decay per step (recsys/training/weight_average.py); 0 = the raw weights
    ema_decay: float = 0.0
    precision: str = "auto"  # auto | bf16 | fp32: GEMM dtype of training (recsys/training/precision.py)
    compile: bool = False  # torch.compile the projector and backbone (in place), CUDA only
    val_every_n_steps: int = 0  # 0 = validate at the end of every epoch
    checkpoint_every_n_steps: int = 0  # 0 = only at validations
    patience: int = 5  # validations without improvement before early stopping; 0 disables
    monitor: str = "ndcg@10"
    monitor_size: int | None = None  # None = the largest size
    # true: select and stop on the mean of `monitor` over every trained size (monitor_size unused)
    monitor_mean: bool = False
    # which weights test, export and serving get (checkpoints/best.pt): best = the best validation
    # checkpoint; last = the weights training stopped with (early stopping still decides when), as
    # Keras' EarlyStopping without restore_best_weights
    select: str = "best"
    log_every_n_steps: int = 10
    progress: bool = True
    stop_after_steps: int = 0  # > 0: save a checkpoint and exit after this many steps (simulated kill)
    # > 0: wall-time budget of training + validation in minutes (resumed parts included): training
    # stops after the step that reaches it, validates, and the best checkpoint is tested as usual
    max_minutes: float = 0.0
    deterministic: bool = True
    max_nonfinite_steps: int = 0  # steps with a NaN/inf loss or gradient norm skipped before the run stops
    sharding: str = "auto"  # distributed item tables: auto (planner) | table_wise | row_wise | column_wise | data_parallel


@dataclass
class EvalSchema:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    filter_history: bool = False  # removed (both protocols are always reported); true is refused
    batch_size: int = 256


@dataclass
class RunSchema:
    data: DataSchema = field(default_factory=DataSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    backbone: BackboneSchema = field(default_factory=BackboneSchema)
    loss: LossSchema = field(default_factory=LossSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)
    name: str = "default"
    seed: int = 42
    run_dir: str | None = None  # where the run writes; default: Hydra's output dir (runs/NAME/TIME)
    resume: str | None = None  # "true": continue run_dir's last checkpoint; or a checkpoint path
    # keys (e.g. trainer.max_epochs) that may differ from the checkpointed run's config on resume
    resume_allow_changes: list[str] = field(default_factory=list)
    test_at_end: bool = True
    # true: train nothing; test a finished run (run_dir) again, e.g. under another trainer.select,
    # from its last checkpoint's state (the training config must equal the run's)
    retest: bool = False


def register_schemas() -> None:
    """Register the schema as ``run_schema`` (first in ``configs/config.yaml``), the loss and backbone
    options' schemas in their groups, and the ``recsys.first`` resolver of ``hydra.run.dir``."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunSchema)
    for name, schema in LOSS_SCHEMAS.items():
        store.store(group="loss", name=name, node=schema)
    for name, schema in BACKBONE_SCHEMAS.items():
        store.store(group="backbone", name=name, node=schema)
    OmegaConf.register_new_resolver("recsys.first", _first_not_none, replace=True)


def _first_not_none(*values: Any) -> Any:
    return next((v for v in values if v is not None and v != "None"), None)


def effective_ladder(model: ModelSchema | DictConfig) -> tuple[int, ...]:
    """The sizes trained: the ladder up to and including ``model.width``."""
    return tuple(int(s) for s in model.ladder if int(s) <= int(model.width))


def validate(cfg: DictConfig) -> None:
    """Check values that the schema's types cannot; raise ``ValueError`` naming the key."""
    if cfg.data.name not in KNOWN_DATASETS:
        raise ValueError(f"data.name: unknown dataset '{cfg.data.name}'; known: {', '.join(KNOWN_DATASETS)}")
    if cfg.data.max_len <= 0:
        raise ValueError(f"data.max_len must be positive, got {cfg.data.max_len}")
    if not 0 <= cfg.data.get("train_stride", 0) <= cfg.data.max_len:
        raise ValueError(
            f"data.train_stride must be in [0, data.max_len={cfg.data.max_len}] (0 = max_len), got {cfg.data.train_stride}"
        )
    if cfg.data.get("cold_targets", "keep") not in ("keep", "drop"):
        raise ValueError(f"data.cold_targets must be 'keep' or 'drop', got {cfg.data.cold_targets!r}")
    ladder = [int(s) for s in cfg.model.ladder]
    if not ladder or any(s <= 0 for s in ladder):
        raise ValueError(f"model.ladder must be non-empty positive sizes, got {ladder}")
    if any(b <= a for a, b in zip(ladder, ladder[1:])):
        raise ValueError(f"model.ladder must be strictly increasing, got {ladder}")
    if cfg.model.width not in ladder:
        raise ValueError(f"model.width={cfg.model.width} is not a size of model.ladder {ladder}")
    from recsys.data import FEATURE_TRANSFORMS

    if cfg.model.get("feature_transform", "none") not in FEATURE_TRANSFORMS:
        raise ValueError(
            f"model.feature_transform must be one of {', '.join(FEATURE_TRANSFORMS)}, got {cfg.model.feature_transform!r}"
        )
    sizes = effective_ladder(cfg.model)
    for key in ("loss._target_", "trainer.optimizer._target_"):
        _check_target(cfg, key)
    if cfg.loss.get("num_negatives", 1) <= 0:
        raise ValueError(f"loss.num_negatives must be positive, got {cfg.loss.num_negatives}")
    from recsys.evaluation.metrics import METRIC_NAMES, validate_ks
    from recsys.losses.sampled import KNOWN_SAMPLERS
    from recsys.training.distributed import SHARDING_TYPES

    if cfg.loss.get("sampler", KNOWN_SAMPLERS[0]) not in KNOWN_SAMPLERS:
        raise ValueError(f"loss.sampler must be one of {', '.join(KNOWN_SAMPLERS)}, got '{cfg.loss.sampler}'")
    if cfg.trainer.sharding not in SHARDING_TYPES:
        raise ValueError(
            f"trainer.sharding='{cfg.trainer.sharding}' must be one of {', '.join(SHARDING_TYPES)}"
        )
    if not 0.0 <= float(cfg.loss.get("logit_scale_exponent", 0.0)) <= 2.0:
        raise ValueError(f"loss.logit_scale_exponent must be in [0, 2], got {cfg.loss.logit_scale_exponent}")
    if not 0.0 <= float(cfg.model.get("cross_size_grad", 1.0)) <= 1.0:
        raise ValueError(f"model.cross_size_grad must be in [0, 1], got {cfg.model.cross_size_grad}")
    if not 0.0 <= float(cfg.loss.get("cross_size_grad", 1.0)) <= 1.0:
        raise ValueError(f"loss.cross_size_grad must be in [0, 1], got {cfg.loss.cross_size_grad}")
    chunks = cfg.loss.get("cross_size_grad_chunks")
    if chunks is not None:
        if len(chunks) != len(sizes) or not all(0.0 <= float(g) <= 1.0 for g in chunks):
            raise ValueError(
                f"loss.cross_size_grad_chunks needs {len(sizes)} values in [0, 1] (one per size "
                f"{list(sizes)}), got {list(chunks)}"
            )
        if float(cfg.loss.get("cross_size_grad", 1.0)) != 1.0:
            raise ValueError("set loss.cross_size_grad or loss.cross_size_grad_chunks, not both")
    if cfg.loss.size_weights is not None:
        if len(cfg.loss.size_weights) != len(sizes):
            raise ValueError(
                f"loss.size_weights has {len(cfg.loss.size_weights)} weights for {len(sizes)} sizes {list(sizes)}"
            )
        if any(w < 0 for w in cfg.loss.size_weights) or sum(cfg.loss.size_weights) <= 0:
            raise ValueError(
                f"loss.size_weights must be non-negative with a positive sum, got {cfg.loss.size_weights}"
            )
    _check_target(cfg, "backbone._target_")
    if not 0.0 <= cfg.backbone.dropout < 1.0:
        raise ValueError(f"backbone.dropout must be in [0, 1), got {cfg.backbone.dropout}")
    for key in ("num_blocks", "ffn_multiplier", "d_state", "d_conv", "expand", "heads"):
        if cfg.backbone.get(key, 1) <= 0:
            raise ValueError(f"backbone.{key} must be positive, got {cfg.backbone[key]}")
    if cfg.backbone.get("dt_rank", 0) < 0:
        raise ValueError(f"backbone.dt_rank must be >= 0 (0 = auto), got {cfg.backbone.dt_rank}")
    if "r_max" in cfg.backbone and not 0.0 <= cfg.backbone.r_min < cfg.backbone.r_max < 1.0:
        raise ValueError(
            f"backbone.r_min={cfg.backbone.r_min}, backbone.r_max={cfg.backbone.r_max}: "
            "need 0 <= r_min < r_max < 1"
        )
    if cfg.model.width % cfg.backbone.get("heads", 1):
        raise ValueError(f"backbone.heads={cfg.backbone.heads} must divide model.width={cfg.model.width}")
    try:
        validate_ks(cfg.eval.ks)
    except ValueError as err:
        raise ValueError(f"eval.ks: {err}") from None
    metric, _, k = cfg.trainer.monitor.removeprefix("unseen/").partition("@")
    if metric not in METRIC_NAMES or not k.isdigit() or int(k) not in cfg.eval.ks:
        raise ValueError(
            f"trainer.monitor='{cfg.trainer.monitor}' must be recall@k, ndcg@k or mrr@k (all-items protocol) or "
            f"unseen/recall@k, unseen/ndcg@k, unseen/mrr@k (unseen items only) with k in eval.ks {list(cfg.eval.ks)}"
        )
    if cfg.eval.get("filter_history"):
        raise ValueError(
            "eval.filter_history is gone: every evaluation reports both protocols (all items: ndcg@10, ...; "
            "unseen items only: unseen/ndcg@10, ...). Select on the unseen one with trainer.monitor=unseen/ndcg@10"
        )
    if cfg.trainer.get("monitor_mean", False) and cfg.trainer.monitor_size is not None:
        raise ValueError(
            f"trainer.monitor_mean=true selects on the mean over all sizes; trainer.monitor_size="
            f"{cfg.trainer.monitor_size} would be ignored: set one of them"
        )
    if cfg.trainer.get("select", "best") not in SELECTIONS:
        raise ValueError(f"trainer.select must be one of {list(SELECTIONS)}, got {cfg.trainer.select!r}")
    if cfg.trainer.monitor_size is not None and cfg.trainer.monitor_size not in sizes:
        raise ValueError(
            f"trainer.monitor_size={cfg.trainer.monitor_size} is not a trained size {list(sizes)}"
        )
    for key in ("max_epochs", "batch_size", "log_every_n_steps"):
        if cfg.trainer[key] <= 0:
            raise ValueError(f"trainer.{key} must be positive, got {cfg.trainer[key]}")
    for key in (
        "warmup_steps",
        "patience",
        "val_every_n_steps",
        "checkpoint_every_n_steps",
        "stop_after_steps",
        "max_nonfinite_steps",
    ):
        if cfg.trainer.get(key, 0) < 0:
            raise ValueError(f"trainer.{key} must be >= 0, got {cfg.trainer[key]}")
    max_minutes = cfg.trainer.get("max_minutes", 0.0)
    if not math.isfinite(max_minutes) or max_minutes < 0:
        raise ValueError(f"trainer.max_minutes must be >= 0 (0 = no time limit), got {max_minutes}")
    if not (math.isfinite(cfg.trainer.grad_clip)):
        raise ValueError(
            f"trainer.grad_clip must be finite (<= 0 disables clipping), got {cfg.trainer.grad_clip}"
        )
    if cfg.trainer.get("precision", "auto") not in ("auto", "bf16", "fp32"):
        raise ValueError(f"trainer.precision must be auto, bf16 or fp32, got {cfg.trainer.precision!r}")
    feature_lr_scale = float(cfg.trainer.get("feature_lr_scale", 1.0))
    if not (math.isfinite(feature_lr_scale) and feature_lr_scale > 0):
        raise ValueError(f"trainer.feature_lr_scale must be a positive number, got {feature_lr_scale}")
    if feature_lr_scale != 1.0 and not cfg.model.trainable_features:
        raise ValueError(
            f"trainer.feature_lr_scale={feature_lr_scale} has no effect: the feature tables are frozen; "
            "train them with model.trainable_features=true"
        )
    if not 0.0 <= float(cfg.trainer.get("ema_decay", 0.0)) < 1.0:
        raise ValueError(
            f"trainer.ema_decay must be in [0, 1) (0: no weight averaging; 0.99: ~100-step average), "
            f"got {cfg.trainer.ema_decay}"
        )
    if not 0.0 <= cfg.trainer.min_lr_ratio <= 1.0:
        raise ValueError(f"trainer.min_lr_ratio must be in [0, 1], got {cfg.trainer.min_lr_ratio}")
    opt = cfg.trainer.optimizer
    lr = opt.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"trainer.optimizer.lr must be a positive finite number, got {lr!r}")
    wd = opt.get("weight_decay", 0.0)
    if not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
        raise ValueError(f"trainer.optimizer.weight_decay must be a finite number >= 0, got {wd!r}")
    from recsys.training.param_groups import NO_DECAY_KINDS

    unknown_kinds = sorted(set(cfg.trainer.get("no_decay", [])) - set(NO_DECAY_KINDS))
    if unknown_kinds:
        raise ValueError(
            f"trainer.no_decay: unknown kinds {unknown_kinds}; choose from {list(NO_DECAY_KINDS)}"
        )
    if cfg.eval.batch_size <= 0:
        raise ValueError(f"eval.batch_size must be positive, got {cfg.eval.batch_size}")
    absent = object()
    unknown = [
        k for k in cfg.get("resume_allow_changes", []) if OmegaConf.select(cfg, k, default=absent) is absent
    ]
    if unknown:
        raise ValueError(f"resume_allow_changes names unknown keys {unknown}")


def _check_target(cfg: DictConfig, key: str) -> None:
    """``key`` must name an importable class or function (what ``hydra.utils.instantiate`` builds)."""
    import importlib

    target = OmegaConf.select(cfg, key)
    module, _, name = str(target).rpartition(".")
    try:
        found = callable(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, ValueError):
        found = False
    if not isinstance(target, str) or not found:
        raise ValueError(f"{key}={target!r} does not name an importable class or function")


def validate_for_dataset(cfg: DictConfig, num_items: int) -> None:
    """Checks that need the catalog: every cut-off k of ``eval.ks`` must be below the catalog size."""
    from recsys.evaluation.metrics import validate_ks

    try:
        validate_ks(cfg.eval.ks, num_items)
    except ValueError as err:
        raise ValueError(f"eval.ks: {err}") from None


# Keys that never change what a resumed run computes (where and how verbosely it runs, or the
# simulated kill of tests); every other difference from the checkpointed config is refused.
RESUME_FREE_KEYS = (
    "resume",
    "resume_allow_changes",
    "run_dir",
    "test_at_end",
    "retest",
    "data.path",
    "data.prepare_if_missing",
    "trainer.progress",
    "trainer.log_every_n_steps",
    "trainer.stop_after_steps",
    "trainer.max_minutes",
    "trainer.select",  # which checkpoint is tested and exported, not what is trained
    "eval.batch_size",
)


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain (resolved) config dicts, sorted."""
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        path = f"{prefix}{key}"
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{path}.")
        elif a != b:
            out.append(path)
    return out


# keys added after runs existed, with the value that reproduces how those runs behaved
ADDED_KEY_DEFAULTS = {
    ("loss", "logit_scale_exponent"): 0.0,
    ("loss", "cross_size_grad"): 1.0,
    ("loss", "cross_size_grad_chunks"): None,
    ("loss", "distill_weight"): 0.0,
    ("model", "cross_size_grad"): 1.0,
    ("data", "cold_targets"): "keep",
    ("data", "k_core"): None,
    ("trainer", "ema_decay"): 0.0,
    ("trainer", "feature_lr_scale"): 1.0,
    ("trainer", "monitor_mean"): False,
    ("trainer", "select"): "best",
}


def with_added_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of a checkpointed config with :data:`ADDED_KEY_DEFAULTS` filled in where absent."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items()}
    for (group, key), value in ADDED_KEY_DEFAULTS.items():
        if isinstance(out.get(group), dict) and key not in out[group]:
            if group != "loss" or "sampled" not in str(out[group].get("_target_", "")):
                out[group][key] = value
    return out


def check_resume_changes(old: dict[str, Any], new: dict[str, Any], allowed: list[str], source: str) -> None:
    """Raise ``ValueError`` listing the keys (with old -> new values) that differ from the run being
    resumed, except :data:`RESUME_FREE_KEYS` and ``allowed`` (``resume_allow_changes``)."""
    free = set(RESUME_FREE_KEYS) | set(allowed)
    old = with_added_defaults(old)
    changed = [
        k
        for k in config_differences(old, new)
        if k not in free and not any(k.startswith(f + ".") for f in free)
    ]
    if changed:

        def value(cfg: dict[str, Any], key: str) -> Any:
            for part in key.split("."):
                cfg = cfg.get(part, "<absent>") if isinstance(cfg, dict) else "<absent>"
            return cfg

        detail = "; ".join(f"{k}: {value(old, k)!r} -> {value(new, k)!r}" for k in changed)
        raise ValueError(
            f"resume: the config differs from the run in {source} in {detail}. Resuming with other settings "
            f"would not continue the same run; start a new run, or allow the change explicitly with "
            f"resume_allow_changes=[{','.join(changed)}]"
        )


register_schemas()  # every user of the configs (train, eval, tests) composes with the schemas
