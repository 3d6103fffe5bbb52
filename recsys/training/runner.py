"""One training run: resume or start, train, test the best checkpoint (``recsys-train``'s work).

:func:`run` is the programmatic entry point (tests, benchmarks, the independent baseline); the
command line (``recsys/training/cli.py``) adds only Hydra's run directory and sweeps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recsys.config import check_resume_changes
from recsys.data import SequenceDataset
from recsys.evaluation.reporting import format_table
from recsys.training.checkpoint import RESUME_KEYS, load_checkpoint
from recsys.training.distributed import broadcast_object, init_distributed
from recsys.training.trainer import Trainer

log = logging.getLogger("recsys.training.runner")

# loss.name of configs written before losses were built from loss._target_
LEGACY_LOSS_TARGETS = {
    "full_softmax": "recsys.losses.matryoshka.FullSoftmaxLoss",
    "sampled_softmax": "recsys.losses.sampled.SampledSoftmaxLoss",
}


def resume_kind(value: Any) -> str | None:
    """What a ``resume`` setting asks for: None (start fresh), ``"last"`` (``true``/``last``: the run
    directory's last checkpoint) or ``"path"`` (a checkpoint file)."""
    if value is None or str(value).lower() in ("false", "none", ""):
        return None
    return "last" if str(value).lower() in ("true", "last") else "path"


def resolve_resume(cfg: DictConfig, run_dir: Path, search_siblings: bool = False) -> tuple[Path, Path | None]:
    """(run directory to write into, checkpoint to resume from or None) for ``cfg.resume``.

    ``resume=true`` continues ``run_dir``'s last checkpoint. Only when ``run_dir`` is Hydra's default
    fresh timestamped folder (``runs/NAME/TIME``, ``search_siblings``) does it fall back to the newest
    sibling run of the same name; a run directory the user chose is never swapped for another.
    """
    kind = resume_kind(cfg.resume)
    if kind is None:
        return run_dir, None
    if kind == "last":
        ckpt = run_dir / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            candidates = []
            if search_siblings:
                candidates = sorted(
                    (p for p in run_dir.parent.glob("*/checkpoints/last.pt") if p.parent.parent != run_dir),
                    key=lambda p: p.stat().st_mtime,
                )
            if not candidates:
                where = f"{run_dir} or its sibling runs" if search_siblings else str(run_dir)
                raise FileNotFoundError(f"resume=true: no checkpoints/last.pt in {where}")
            ckpt = candidates[-1]
        return ckpt.parent.parent, ckpt
    ckpt = Path(cfg.resume)
    if not ckpt.is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint file")
    return ckpt.parent.parent, ckpt


def upgrade_legacy_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored run config in today's keys: ``loss.name`` (and the sampled-softmax keys every loss
    carried) -> ``loss._target_`` and that loss's own keys. Other configs are returned as they are."""
    loss = config.get("loss")
    if not isinstance(loss, dict) or "_target_" in loss or loss.get("name") not in LEGACY_LOSS_TARGETS:
        return config
    upgraded = {"_target_": LEGACY_LOSS_TARGETS[loss["name"]], "size_weights": loss.get("size_weights")}
    if loss["name"] == "sampled_softmax":
        upgraded.update(num_negatives=loss.get("num_negatives"), sampler=loss.get("sampler"))
    return {**config, "loss": upgraded}


def check_resumable(cfg: DictConfig, run_dir: Path, ckpt_path: Path) -> None:
    """Before anything is written: ``ckpt_path`` must load as a full training checkpoint, and ``cfg``
    may differ from the checkpointed run's config only in harmless keys or ``resume_allow_changes``."""
    ckpt = load_checkpoint(ckpt_path, required=RESUME_KEYS)
    old, source = ckpt.get("config"), str(ckpt_path)
    if old is None and (run_dir / "config.yaml").is_file():  # checkpoints written before configs were stored
        old = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
        source = str(run_dir / "config.yaml")
    if old is not None:
        new = OmegaConf.to_container(cfg, resolve=True)
        check_resume_changes(
            upgrade_legacy_config(old), new, list(cfg.get("resume_allow_changes", [])), source
        )


def run(
    cfg: DictConfig,
    run_dir: str | Path,
    dataset: SequenceDataset | None = None,
    search_siblings: bool = False,
) -> dict[str, Any]:
    """Train (or resume) and test one configuration; returns reason, trainer, results, run_dir.

    ``search_siblings``: see :func:`resolve_resume` (True only for Hydra's default run directory).
    """
    env = init_distributed(cfg.trainer.device)
    if cfg.get("retest", False):
        return retest(cfg, Path(run_dir), dataset)
    run_dir, resume_ckpt = broadcast_object(resolve_resume(cfg, Path(run_dir), search_siblings), env)
    if resume_ckpt is not None:
        check_resumable(cfg, run_dir, resume_ckpt)  # raises before config.yaml or anything else is touched
    run_dir.mkdir(parents=True, exist_ok=True)
    if env.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = Trainer(cfg, run_dir, dataset)
    if resume_ckpt is not None:
        trainer.resume_from(resume_ckpt)
    try:
        reason = trainer.fit()
        log.info("training stopped: %s after %d steps", reason, trainer.step)
        results = None
        if reason != "stop_after_steps":
            trainer.keep_selected()
        if reason != "stop_after_steps" and cfg.test_at_end:
            results = trainer.test_best()
            if env.is_main:
                stopper = trainer.early_stopping
                protocol = "unseen items only" if stopper.monitor.startswith("unseen/") else "all items"
                rule = (
                    f"the last step {trainer.step} (trainer.select=last; best validation at step {stopper.best_step}"
                    if cfg.trainer.get("select", "best") == "last"
                    else f"the best step {stopper.best_step} (selected"
                )
                title = (
                    f"test metrics per size at {rule} on validation "
                    f"{stopper.monitor} at {stopper.label}, {protocol}); unseen/ = items the user has already "
                    "seen left out of the ranking, as serving does; every metric in metrics.json"
                )
                print(format_table(results["test"], title=title))
    finally:
        trainer.tb.close()
    return {"reason": reason, "trainer": trainer, "results": results, "run_dir": run_dir}


def retest(cfg: DictConfig, run_dir: Path, dataset: SequenceDataset | None = None) -> dict[str, Any]:
    """Test a finished run again without training (``retest=true``): its state at ``last.pt`` is
    restored, ``trainer.select`` picks the checkpoint (:meth:`Trainer.keep_selected`) and metrics.json
    is rewritten. ``cfg`` may differ from the run's config only where a resume may
    (``RESUME_FREE_KEYS``, ``trainer.select`` among them). ``select=best`` after ``select=last`` needs
    the validation-best checkpoint that ``keep_selected`` set aside (``best_validation.pt``)."""
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.is_file() or not (run_dir / "metrics.json").is_file():
        raise FileNotFoundError(
            f"retest=true: {run_dir} holds no finished run (checkpoints/last.pt and metrics.json); train it first"
        )
    check_resumable(cfg, run_dir, ckpt)
    trainer = Trainer(cfg, run_dir, dataset)
    trainer.resume_from(ckpt)
    try:
        trainer.keep_selected()
        results = trainer.test_best() if cfg.test_at_end else None
        if trainer.env.is_main:
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    finally:
        trainer.tb.close()
    return {"reason": "retest", "trainer": trainer, "results": results, "run_dir": run_dir}
