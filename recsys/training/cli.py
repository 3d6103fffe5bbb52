"""``recsys-train [hydra overrides]`` (also ``python -m recsys.training.cli``, under ``torchrun`` too).

``recsys-train experiment=demo trainer.max_epochs=3``; ``-m`` for sweeps. A run directory receives
``config.yaml``, ``checkpoints/{last,best}.pt``, ``tb/``, ``metrics.json`` and
``metrics_vs_size.png``. ``model.independent=true`` trains the independent baseline instead
(one model per size, ``recsys/training/independent.py``).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from recsys.config import CONFIG_DIR, effective_ladder
from recsys.training.independent import run_independent
from recsys.training.runner import run


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Returns the monitored validation value (for Hydra sweepers), None without test results."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.model.get("independent", False):
        res = run_independent(cfg, run_dir)["validation"]
        size = effective_ladder(cfg.model)[-1]
        return res[size][cfg.trainer.monitor] if size in res else None
    # resume=true may look at sibling runs only when the directory is Hydra's fresh default one
    chosen = cfg.run_dir is not None or any(
        o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra
    )
    out = run(cfg, run_dir, search_siblings=not chosen)
    print(f"\nrun directory: {out['run_dir']}\nTensorBoard:   tensorboard --logdir {out['run_dir'] / 'tb'}")
    if out["results"] is None:
        return None
    return out["trainer"].early_stopping.monitored(out["results"]["validation"])


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
