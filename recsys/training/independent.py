"""Independent baseline: one separately trained model per size of the ladder.

``recsys-train model.independent=true ...`` trains, for every size d of the (effective) ladder,
a model with ``ladder=[d]`` and ``width=d`` with the same recipe (data, backbone, optimiser,
epochs, early stopping), each in its own run directory ``RUN_DIR/d{d:04d}/``, then writes
``RUN_DIR/metrics.json`` with the same shape as a nested run (``validation``/``test`` -> size ->
metric) plus ``train_time_s`` (wall time of each size's training, validation included),
``epochs`` and ``run_dirs`` per size, so nested and independent runs compare size by size.

``resume=true`` continues a killed baseline: a size whose run finished (``dNNNN/independent.json``
written after its test, same configuration) is reused as it is, a size with a
``checkpoints/last.pt`` resumes exactly from it, and the sizes never started train from scratch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data_prep.io import write_json_atomic
from recsys.builders import build_dataset
from recsys.config import check_resume_changes, effective_ladder, validate
from recsys.data import SequenceDataset
from recsys.evaluation.reporting import format_table, jsonable_metrics, save_metrics_plot
from recsys.training.runner import resume_kind, run

log = logging.getLogger(__name__)


def size_config(cfg: DictConfig, d: int) -> DictConfig:
    """``cfg`` for the single-size model of width d (per-size settings of the ladder reset)."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    sub.model.ladder, sub.model.width, sub.model.independent = [d], d, False
    sub.loss.size_weights = None  # one size: one weight
    sub.trainer.monitor_size = None
    sub.trainer.monitor_mean = False  # one size: its own metric
    sub.name = f"{cfg.name}-independent-d{d}"
    OmegaConf.set_struct(sub, OmegaConf.is_struct(cfg))
    return sub


# reasons a size's run ended after which it is complete (max_minutes: complete for that budget only)
_FINISHED = ("max_epochs", "early_stopping", "retest")  # retest: a finished run tested again
DONE_FILE = "independent.json"  # dNNNN/ marker: the size's run ended and was tested


def _resume_mode(resume: Any) -> bool:
    """True for ``resume=true``; False when not resuming; a checkpoint path is refused (which size?)."""
    kind = resume_kind(resume)
    if kind != "path":
        return kind == "last"
    raise ValueError(
        f"resume={resume}: the independent baseline (model.independent=true) resumes with resume=true, "
        "which continues every size's run in the run directory; a single checkpoint names one size only"
    )


def _finished_size(sub: DictConfig, size_dir: Path) -> dict[str, Any] | None:
    """The saved record of a size whose run already ended under ``sub``'s settings, else None.

    Raises when the finished run was trained with other settings (as resuming it would)."""
    done, metrics_path = size_dir / DONE_FILE, size_dir / "metrics.json"
    if not (done.is_file() and metrics_path.is_file() and (size_dir / "config.yaml").is_file()):
        return None
    record = json.loads(done.read_text())
    old = OmegaConf.to_container(OmegaConf.load(size_dir / "config.yaml"), resolve=True)
    check_resume_changes(old, OmegaConf.to_container(sub, resolve=True), [], str(size_dir / "config.yaml"))
    budget = float(sub.trainer.get("max_minutes", 0) or 0)
    if record["reason"] not in _FINISHED and not (
        record["reason"] == "max_minutes" and 0 < budget <= float(record.get("max_minutes", 0))
    ):
        return None  # stopped early (a larger time budget, or killed between test and marker)
    record["metrics"] = json.loads(metrics_path.read_text())
    return record


def run_independent(
    cfg: DictConfig, run_dir: str | Path, dataset: SequenceDataset | None = None
) -> dict[str, Any]:
    """Train one model per size into ``run_dir/dNNNN/``; write and return the combined metrics."""
    validate(cfg)  # before anything is written (each size's run validates its own config again)
    resume = _resume_mode(cfg.get("resume"))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    dataset = dataset if dataset is not None else build_dataset(cfg)
    sizes = effective_ladder(cfg.model)
    validation, test, seconds, epochs, dirs = {}, {}, {}, {}, {}
    for d in sizes:
        sub, size_dir = size_config(cfg, d), run_dir / f"d{d:04d}"
        record = _finished_size(sub, size_dir) if resume else None
        if record is not None:
            seconds[d], epochs[d], dirs[d] = record["seconds"], record["epochs"], str(size_dir)
            if record["metrics"].get("test"):
                validation[d] = {m: float(v) for m, v in record["metrics"]["validation"][str(d)].items()}
                test[d] = {m: float(v) for m, v in record["metrics"]["test"][str(d)].items()}
            log.info("independent size %d: reused the finished run in %s", d, size_dir)
            continue
        sub.resume = "true" if resume and (size_dir / "checkpoints" / "last.pt").is_file() else None
        out = run(sub, size_dir, dataset)
        epochs[d], dirs[d] = int(out["trainer"].epoch), str(out["run_dir"])
        seconds[d] = out["trainer"].train_seconds()  # training + validation, every resumed part included
        if out["results"] is not None:
            validation[d], test[d] = out["results"]["validation"][d], out["results"]["test"][d]
            write_json_atomic(
                size_dir / DONE_FILE,
                {
                    "reason": out["reason"],
                    "seconds": round(seconds[d], 3),
                    "epochs": epochs[d],
                    "max_minutes": float(sub.trainer.get("max_minutes", 0) or 0),
                },
            )
        log.info("independent size %d: %.1f s, %d epochs", d, seconds[d], epochs[d])
    metrics = {
        "independent": True,
        "sizes": list(sizes),
        "ks": [int(k) for k in cfg.eval.ks],
        "protocols": {"all": "every catalog item", "unseen": "items not in the user's history"},
        "monitor": str(cfg.trainer.monitor),
        "validation": jsonable_metrics(validation),
        "test": jsonable_metrics(test),
        "train_time_s": {str(d): round(s, 3) for d, s in seconds.items()},
        "epochs": {str(d): e for d, e in epochs.items()},
        "run_dirs": {str(d): p for d, p in dirs.items()},
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    if test:
        save_metrics_plot(
            test, run_dir / "metrics_vs_size.png", f"test metrics vs size ({cfg.name}, independent)"
        )
        print(format_table(test, title="test metrics per size (independent models)"))
    return {"metrics": metrics, "validation": validation, "test": test, "run_dir": run_dir}
