"""Independent baseline: one separately trained model per size of the ladder.

``recsys-train model.independent=true ...`` trains, for every size d of the (effective) ladder,
a model with ``ladder=[d]`` and ``width=d`` with the same recipe (data, backbone, optimiser,
epochs, early stopping), each in its own run directory ``RUN_DIR/d{d:04d}/``, then writes
``RUN_DIR/metrics.json`` with the same shape as a nested run (``validation``/``test`` -> size ->
metric) plus ``train_time_s`` (wall time of each size's training, validation included),
``epochs`` and ``run_dirs`` per size, so nested and independent runs compare size by size.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data_prep.io import write_json_atomic
from recsys.builders import build_dataset
from recsys.config import effective_ladder, validate
from recsys.data import SequenceDataset
from recsys.evaluation.reporting import format_table, jsonable_metrics, save_metrics_plot
from recsys.training.runner import run

log = logging.getLogger(__name__)


def size_config(cfg: DictConfig, d: int) -> DictConfig:
    """``cfg`` for the single-size model of width d (per-size settings of the ladder reset)."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    sub.model.ladder, sub.model.width, sub.model.independent = [d], d, False
    sub.loss.size_weights = None  # one size: one weight
    sub.trainer.monitor_size = None
    sub.name = f"{cfg.name}-independent-d{d}"
    OmegaConf.set_struct(sub, OmegaConf.is_struct(cfg))
    return sub


def run_independent(
    cfg: DictConfig, run_dir: str | Path, dataset: SequenceDataset | None = None
) -> dict[str, Any]:
    """Train one model per size into ``run_dir/dNNNN/``; write and return the combined metrics."""
    validate(cfg)  # before anything is written (each size's run validates its own config again)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    dataset = dataset if dataset is not None else build_dataset(cfg)
    sizes = effective_ladder(cfg.model)
    validation, test, seconds, epochs, dirs = {}, {}, {}, {}, {}
    for d in sizes:
        start = time.perf_counter()
        out = run(size_config(cfg, d), run_dir / f"d{d:04d}", dataset)
        seconds[d] = time.perf_counter() - start
        epochs[d] = int(out["trainer"].epoch)
        dirs[d] = str(out["run_dir"])
        if out["results"] is not None:
            validation[d], test[d] = out["results"]["validation"][d], out["results"]["test"][d]
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
