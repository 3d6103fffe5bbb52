"""The Python API: the commands ``recsys-train``, ``recsys-eval`` and ``recsys-export`` as functions.

    import recsys

    run = recsys.train(["experiment=tiny", "data=generic"])    # recsys-train experiment=tiny data=generic
    run = recsys.load_run("runs/tiny/2026-01-01_12-00-00")     # a finished run, best checkpoint
    run.evaluate("test")                                       # recsys-eval run_dir=... split=test
    run.export()                                               # recsys-export RUN_DIR

Serving lives one layer up (data_prep <- recsys <- serving, tests/test_architecture.py), so the
serving entry point is ``serving.load(export_dir)`` (``from serving import load``), not part of
this module. See docs/api.md for a worked example.

Each function is a thin wrapper over what the command runs (:func:`recsys.training.runner.run`,
:func:`recsys.builders.resolve_run` / :func:`recsys.builders.load_run`,
:func:`recsys.evaluation.evaluate.evaluate_split`, :func:`recsys.export.exporter.export_run`),
imported when called, so ``import recsys`` stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from recsys.data import SequenceDataset
    from recsys.model import MatryoshkaRecModel

__all__ = ["Run", "compose_config", "load_run", "train"]

Overrides = Sequence[str] | Mapping[str, Any] | None


def _override_value(value: Any) -> str:
    """A Python value as Hydra override text: True -> true, None -> null, [4, 8] -> [4,8]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def _override_list(overrides: Overrides) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise TypeError(
            f"overrides must be a list of 'key=value' strings or a dict, got the string {overrides!r}"
        )
    if isinstance(overrides, Mapping):
        return [f"{key}={_override_value(value)}" for key, value in overrides.items()]
    return [str(o) for o in overrides]


def compose_config(overrides: Overrides = None) -> DictConfig:
    """The run config ``recsys-train`` would compose from the same overrides.

    ``overrides``: Hydra override strings (``["experiment=tiny", "trainer.max_epochs=1"]``) or a dict
    (``{"experiment": "tiny", "trainer.max_epochs": 1}``; lists become ``[4,8]``, None ``null``).
    Composed from ``recsys.config.CONFIG_DIR`` with the schemas, so a misspelt key raises here.
    Not callable from inside a running ``@hydra.main`` application (Hydra is already initialized)."""
    from hydra import compose, initialize_config_dir

    from recsys.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=_override_list(overrides))


@dataclass
class Run:
    """A trained run loaded from its directory: config, the model (eval mode, CPU) and its dataset.

    ``model`` is the whole nested model; ``model.ladder`` its sizes (e.g. ``(8, 16, ..., 256)``) and
    ``model.slice(d)`` the standalone width-d model (the ``[:d]`` slice of every weight, scoring
    against (N+1, d) item embeddings). ``checkpoint`` is the file the weights came from."""

    run_dir: Path  # absolute
    checkpoint: Path  # absolute
    config: DictConfig
    model: MatryoshkaRecModel
    dataset: SequenceDataset = field(repr=False)

    @property
    def ladder(self) -> tuple[int, ...]:
        """The sizes d of the nested model, increasing (the last is the full width D)."""
        return tuple(self.model.ladder)

    @property
    def metrics(self) -> dict[str, Any]:
        """``RUN_DIR/metrics.json`` as written at the end of training ({} if absent): ``"validation"`` and
        ``"test"`` map each size (a string key, e.g. ``"64"``) to {metric: value}, metric names as in
        :meth:`evaluate`; also ``sizes``, ``ks``, ``monitor``, ``best_step``."""
        path = self.run_dir / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def evaluate(
        self,
        split: str = "test",
        ks: Sequence[int] | None = None,
        batch_size: int | None = None,
        device: str = "cpu",
    ) -> dict[int, dict[str, float]]:
        """Full-ranking metrics of ``split`` ("test" or "validation") at every size, what ``recsys-eval``
        prints: {d: {metric: value}} with integer sizes d and, for every k of ``ks`` (default: the run's
        ``eval.ks``), ``recall@k``, ``ndcg@k``, ``mrr@k`` (every catalog item ranked) and
        ``unseen/recall@k`` ... (items of the user's history left out, as serving does).
        Writes nothing (``recsys-eval`` also writes ``eval_{split}_{checkpoint}.json``)."""
        from recsys.evaluation.evaluate import evaluate_split

        ks = list(self.config.eval.ks) if ks is None else list(ks)
        batch_size = int(self.config.eval.batch_size) if batch_size is None else batch_size
        acc = evaluate_split(
            self.model, self.dataset.split(split), ks, batch_size, device=device, split_name=split
        )
        return {int(d): dict(m) for d, m in acc.compute().items()}

    def export(
        self,
        out: str | Path | None = None,
        sizes: Sequence[int] | str | None = None,
        parity_users: int = 256,
    ) -> Path:
        """``recsys-export``: one serving artifact per size (default: the whole ladder) under ``out``
        (default ``RUN_DIR/export``), each checked for parity with this run's checkpoint, plus
        index.json and the root checksums. Returns the export directory (give it to
        ``serving.load``); ``recsys.export.artifact.export_digest(path)`` is the digest to pin."""
        from recsys.export.exporter import export_run

        out = Path(out) if out is not None else self.run_dir / "export"
        export_run(self.checkpoint, sizes=sizes, out=out, parity_users=parity_users)
        return out


def load_run(run_dir: str | Path, checkpoint: str | Path = "best") -> Run:
    """The trained run in ``run_dir`` (a directory with config.yaml and checkpoints/), or the run a
    checkpoint file belongs to. ``checkpoint``: "best", "last" or a path (as ``recsys-eval
    checkpoint=...``). Rebuilds the dataset and the model from the run's config.yaml on CPU; the
    returned paths are absolute."""
    from recsys.builders import load_run as build_run
    from recsys.builders import resolve_run

    directory, ckpt = resolve_run(run_dir, str(checkpoint))
    cfg, dataset, model = build_run(directory, ckpt)
    return Run(directory.resolve(), ckpt.resolve(), cfg, model, dataset)


def default_run_dir(cfg: DictConfig) -> Path:
    """Where ``recsys-train`` would write: ``run_dir`` if set, else ``runs/NAME/YYYY-MM-DD_HH-MM-SS``
    (relative to the working directory)."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    return Path("runs") / str(cfg.name) / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def train(overrides: Overrides = None, run_dir: str | Path | None = None) -> Run:
    """``recsys-train [overrides]``: compose the config (:func:`compose_config`), train and test it,
    and return the finished run loaded at its best checkpoint (:func:`load_run`).

    ``run_dir``: where the run writes config.yaml, checkpoints/, metrics.json, tb/ (default: the
    config's ``run_dir``, else ``runs/NAME/TIMESTAMP`` under the working directory, as the command).
    ``resume=true`` continues ``run_dir``'s last checkpoint. One process: for several GPUs use
    ``torchrun ... recsys-train``; for the independent baseline (``model.independent=true``) and
    sweeps (``-m``) use the command too."""
    cfg = compose_config(overrides)
    if cfg.model.get("independent", False):
        raise ValueError(
            "model.independent=true trains one run per size; use `recsys-train model.independent=true ...`"
        )
    from recsys.training.runner import run

    out = run(cfg, Path(run_dir) if run_dir is not None else default_run_dir(cfg))
    return load_run(out["run_dir"], "best")
