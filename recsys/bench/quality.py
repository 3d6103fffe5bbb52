"""``recsys-bench quality``: test metrics at every size, mean +- std over seeds, for named recipes.

Each (recipe, mode, seed) is one ``recsys-train`` run in its own process, written to
``RUNS/<dataset>/<recipe>/<mode>/seed<S>/`` (``--runs``, default ``build/quality``); a run whose
``metrics.json`` exists with the same command is reused, and a run killed midway (its folder holds a
checkpoint) resumes exactly from its last checkpoint (``resume=true``; the independent baseline keeps
its finished sizes), so a killed suite resumes where it stopped: an hour-long ML-1M suite can run
in pieces across sessions.
``mode`` is ``nested`` (one run, the whole ladder) or ``independent`` (``model.independent=true``:
one model per size, same recipe, each early-stopped on its own validation).

The report (``quality.{md,json,png}`` in ``--out``, default benchmarks/results) gives, for every
recipe and mode, NDCG@10 and Recall@10 under both protocols (all items; unseen items only) as
mean +- std over the seeds at every size, the wall time to the best checkpoint and in total
(training + validation; independent: summed over its sizes), nested / independent per size, and
the issue's targets with met / missed. The plot draws metric vs size (log2 x axis, error bars =
std over seeds) for every recipe and mode.

Recipes are Hydra overrides on top of an experiment (:data:`RECIPES`); ``--recipe NAME=OVERRIDES``
adds one on the command line (``--recipe long_ring="backbone.r_min=0.95 backbone.r_max=0.999"``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.bench import machine

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("ndcg@10", "recall@10", "unseen/ndcg@10", "unseen/recall@10")
EXPERIMENTS = {"ml-100k": "demo", "ml-1m": "ml1m_cpu"}


@dataclass(frozen=True)
class Recipe:
    """A named set of Hydra overrides on the dataset's experiment; ``doc`` says what it changes."""

    name: str
    overrides: tuple[str, ...]
    doc: str


#: the issue's text-only recipe (without its training windows)
_TEXT_ONLY = (
    "model.use_id_table=false",
    "backbone.num_blocks=2",
    "backbone.ffn_multiplier=1",
    "backbone.dropout=0.2",
    "trainer.batch_size=32",
    "trainer.max_epochs=50",
    "trainer.patience=10",
    "trainer.warmup_steps=100",
)
_FROZEN_FEATURES = ("model.trainable_features=false", "trainer.feature_lr_scale=1.0")
_TUNED_FEATURES = ("model.trainable_features=true", "trainer.feature_lr_scale=0.1")
#: the `make demo` recipe until round 12: nested ID table + frozen text, 1 LRU block, FFN x4,
#: windows every 10 targets, 20 epochs (the ablations up to round 11 were measured on it)
_ID_TABLE = (
    "model.use_id_table=true",
    *_FROZEN_FEATURES,
    "backbone.num_blocks=1",
    "backbone.ffn_multiplier=4",
    "backbone.dropout=0.2",
    "trainer.batch_size=64",
    "trainer.max_epochs=20",
    "trainer.patience=5",
    "trainer.warmup_steps=50",
    "data.train_stride=10",
)


def _on(base: tuple[str, ...], *overrides: str) -> tuple[str, ...]:
    """``base`` with ``overrides`` applied: one ``key=value`` per key, the later value winning."""
    merged: dict[str, str] = {}
    for item in (*base, *overrides):
        merged[item.split("=", 1)[0]] = item
    return tuple(merged.values())


# The default recipe is whatever the experiment (configs/experiment/demo.yaml, ml1m_cpu.yaml) sets;
# the others each change one thing of it (the ablations of docs/model.md), or reproduce a reference
# configuration. Ablations measured on the former ID-table default say so (`_on(_ID_TABLE, ...)`).
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("default", (), "the experiment as shipped (`make demo` on ML-100K)"),
        Recipe(
            "text_only",
            _on(_TEXT_ONLY, "data.train_stride=50", *_FROZEN_FEATURES),
            "the issue's text-only recipe: no ID table, 2 LRU blocks, FFN x1, batch 32, patience 10, non-overlapping windows, frozen text features",
        ),
        Recipe(
            "text_only_tuned_features",
            _on(_TEXT_ONLY, "data.train_stride=50", *_TUNED_FEATURES),
            "the text-only recipe with the text features fine-tuned at a tenth of the learning rate (`make demo` since round 12)",
        ),
        Recipe(
            "text_only_tuned_features_lr1",
            _on(
                _TEXT_ONLY,
                "data.train_stride=50",
                "model.trainable_features=true",
                "trainer.feature_lr_scale=1.0",
            ),
            "the text-only recipe with the text features fine-tuned at the full learning rate",
        ),
        Recipe(
            "text_only_stride_10",
            _on(_TEXT_ONLY, "data.train_stride=10", *_FROZEN_FEATURES),
            "the text-only recipe with windows every 10 targets",
        ),
        Recipe(
            "id_table",
            _ID_TABLE,
            "the former default: nested ID table + frozen text, 1 LRU block, FFN x4, batch 64, windows every 10 targets, 20 epochs",
        ),
        Recipe(
            "tuned_features",
            _on(_ID_TABLE, *_TUNED_FEATURES),
            "the ID-table recipe with the text features fine-tuned at a tenth of the learning rate",
        ),
        Recipe(
            "published_init",
            _on(
                _ID_TABLE,
                "backbone.r_min=0.0",
                "backbone.r_max=0.1",
                "model.feature_transform=none",
                "trainer.max_epochs=10",
                "trainer.patience=3",
                "data.train_stride=50",
            ),
            "the ID-table recipe before the ablations: LRU ring [0, 0.1] as published, raw text features, 10 epochs, patience 3, non-overlapping windows",
        ),
        Recipe(
            "no_decay_norm_bias_rec",
            _on(_ID_TABLE, "trainer.no_decay=[bias,norm,recurrence]"),
            "no weight decay on norms, biases and LRU nu/theta/gamma/skip",
        ),
        Recipe(
            "no_decay_all_but_weights",
            _on(_ID_TABLE, "trainer.no_decay=[bias,norm,recurrence,embedding]"),
            "weight decay on linear weights only (also not on the item-ID table)",
        ),
        Recipe(
            "ring_0_0.5",
            _on(_ID_TABLE, "backbone.r_min=0.0", "backbone.r_max=0.5"),
            "LRU ring |lambda| in [0, 0.5]",
        ),
        Recipe(
            "ring_0.8_0.99",
            _on(_ID_TABLE, "backbone.r_min=0.8", "backbone.r_max=0.99"),
            "LRU ring |lambda| in [0.8, 0.99]",
        ),
        Recipe(
            "ring_0.9_0.999",
            _on(_ID_TABLE, "backbone.r_min=0.9", "backbone.r_max=0.999"),
            "LRU ring of the LRU paper",
        ),
        Recipe("stride_50", _on(_ID_TABLE, "data.train_stride=50"), "non-overlapping 50-item windows"),
        Recipe(
            "stride_25_5ep",
            _on(_ID_TABLE, "data.train_stride=25", "trainer.max_epochs=5"),
            "windows every 25 targets (>= 25 items of history each, 2x the windows) for half the epochs: equal wall time",
        ),
        Recipe(
            "stride_25",
            _on(_ID_TABLE, "data.train_stride=25"),
            "windows every 25 targets: each target sees >= 25 items of history (2x the windows), all epochs",
        ),
        Recipe(
            "stride_5",
            _on(_ID_TABLE, "data.train_stride=5"),
            "windows every 5 targets: each target sees >= 45 items of history (10x the windows)",
        ),
        Recipe(
            "stride_10",
            _on(_ID_TABLE, "data.train_stride=10"),
            "windows every 10 targets: each target sees >= 40 items of history (5x the windows)",
        ),
        Recipe(
            "ema_0.99",
            _on(_ID_TABLE, "trainer.ema_decay=0.99"),
            "evaluate an exponential moving average of the weights (decay 0.99 a step: ~100 steps)",
        ),
        Recipe(
            "monitor_mean",
            _on(_ID_TABLE, "trainer.monitor_mean=true"),
            "select the checkpoint and stop on validation NDCG@10 averaged over the sizes (not the widest size's)",
        ),
        Recipe(
            "distill_0.3",
            _on(_ID_TABLE, "loss.distill_weight=0.3"),
            "self-distillation: sizes below the widest learn from 0.7 onehot + 0.3 x the widest size's softmax",
        ),
        Recipe(
            "distill_0.6",
            _on(_ID_TABLE, "loss.distill_weight=0.6"),
            "self-distillation: sizes below the widest learn from 0.4 onehot + 0.6 x the widest size's softmax",
        ),
        Recipe(
            "features_whiten",
            _on(_ID_TABLE, "model.feature_transform=whiten"),
            "text features ZCA-whitened over the catalog",
        ),
        Recipe(
            "features_center",
            _on(_ID_TABLE, "model.feature_transform=center"),
            "text features centred over the catalog",
        ),
        Recipe(
            "categorical",
            _on(_ID_TABLE, "model.modalities=[text,categorical]"),
            "+ genres and year through a torchrec EBC",
        ),
        Recipe(
            "no_categorical",
            _on(_ID_TABLE, "model.modalities=[text]"),
            "text features only (no genre/year tables)",
        ),
        Recipe(
            "epochs_10",
            _on(_ID_TABLE, "trainer.max_epochs=10", "trainer.patience=3"),
            "10 epochs, patience 3",
        ),
        Recipe("ffn_2", _on(_ID_TABLE, "backbone.ffn_multiplier=2"), "FFN width 2x"),
        Recipe("blocks_2", _on(_ID_TABLE, "backbone.num_blocks=2"), "2 LRU blocks"),
        Recipe("dropout_0.3", _on(_ID_TABLE, "backbone.dropout=0.3"), "dropout 0.3"),
        Recipe("dropout_0.1", _on(_ID_TABLE, "backbone.dropout=0.1"), "dropout 0.1"),
        Recipe(
            "len_100",
            _on(_ID_TABLE, "data.max_len=100"),
            "max length 100 (training windows and evaluation history)",
        ),
        Recipe(
            "len_200",
            _on(_ID_TABLE, "data.max_len=200"),
            "max length 200 (training windows and evaluation history)",
        ),
        Recipe("lr_2e-3", _on(_ID_TABLE, "trainer.optimizer.lr=0.002"), "learning rate 2e-3"),
        Recipe(
            "small_sizes_weighted",
            _on(_ID_TABLE, "loss.size_weights=[2,1.5,1,1,1,1]"),
            "loss weights 2, 1.5 on d=8, 16 (ladder 8..256), 1 elsewhere",
        ),
        Recipe(
            "logit_scale_sqrt",
            _on(_ID_TABLE, "loss.logit_scale_exponent=0.5"),
            "per-size temperature: size d's logits times sqrt(D/d)",
        ),
        Recipe(
            "cross_grad_scores_0",
            _on(_ID_TABLE, "loss.cross_size_grad=0"),
            "at the scores only: chunk c of the user and item vectors trained by size s_c's loss alone",
        ),
        Recipe(
            "cross_grad_scores_0.5",
            _on(_ID_TABLE, "loss.cross_size_grad=0.5"),
            "at the scores only: larger sizes' gradient into the smaller sizes' dims of the user and item vectors times 0.5",
        ),
        Recipe(
            "cross_grad_scores_first",
            _on(_ID_TABLE, "loss.cross_size_grad_chunks=[0,1,1,1,1,1]"),
            "at the scores, first chunk only: dims [:8] of the user and item vectors trained by the d=8 loss alone",
        ),
        Recipe(
            "default_cross_grad_scores_first",
            ("loss.cross_size_grad_chunks=[0,1,1,1,1,1]",),
            "the default with the rule at the scores on the first chunk: dims [:8] trained by the d=8 loss alone",
        ),
        Recipe(
            "default_stride_10",
            ("data.train_stride=10", "trainer.max_epochs=20", "trainer.patience=4"),
            "the default with windows every 10 targets (5x the optimiser steps per epoch, so 20 epochs, patience 4)",
        ),
        Recipe(
            "default_stride_25",
            ("data.train_stride=25", "trainer.max_epochs=30", "trainer.patience=6"),
            "the default with windows every 25 targets (2x the optimiser steps per epoch, so 30 epochs, patience 6)",
        ),
        Recipe("default_dropout_0.3", ("backbone.dropout=0.3",), "the default with dropout 0.3 (0.2)"),
        Recipe(
            "default_feature_lr_0.05",
            ("trainer.feature_lr_scale=0.05",),
            "the default with the title rows fine-tuned at 1/20 of the learning rate (1/10)",
        ),
        Recipe(
            "default_epochs_30_full",
            ("trainer.max_epochs=30", "trainer.patience=0"),
            "the default on a 30-epoch cosine schedule run to its end (no early stopping)",
        ),
        Recipe(
            "default_epochs_50_full",
            ("trainer.patience=0",),
            "the default's 50-epoch cosine schedule run to its end (no early stopping)",
        ),
        Recipe(
            "default_select_last",
            ("trainer.select=last",),
            "the default, testing the weights training stopped with (patience 10 after the best validation) instead of the best validation checkpoint",
        ),
        Recipe(
            "cross_grad_0",
            _on(_ID_TABLE, "loss.cross_size_grad=0", "model.cross_size_grad=0"),
            "scores and nested layers: the dims a size adds trained by its loss alone (larger sizes stack on top)",
        ),
        Recipe(
            "cross_grad_0.3",
            _on(_ID_TABLE, "loss.cross_size_grad=0.3", "model.cross_size_grad=0.3"),
            "scores and nested layers: larger sizes' gradient into the smaller sizes' dims times 0.3",
        ),
        Recipe(
            "cross_grad_0.1",
            _on(_ID_TABLE, "loss.cross_size_grad=0.1", "model.cross_size_grad=0.1"),
            "scores and nested layers: larger sizes' gradient into the smaller sizes' dims times 0.1",
        ),
    )
}
QUICK_OVERRIDES = ("trainer.max_epochs=2", "model.ladder=[8,16,32,64]", "model.width=64")

# Reference figures of the issue (ML-100K, same split): the text-only recipe's target row (mean of 3
# seeds of the published code's protocol) and a stock RecBole 1.2.1 SASRec at 64 dimensions.
TEXT_ONLY_RECIPES = ("text_only", "text_only_tuned_features")  # judged against TEXT_ONLY_TARGET
TEXT_ONLY_TARGET = {8: 0.0305, 16: 0.0383, 32: 0.0450, 64: 0.0480, 128: 0.0607, 256: 0.0666}
SASREC = {"ndcg@10": (0.0643, 0.0595), "unseen/ndcg@10": (0.1109, 0.1009)}  # seeds 42, 43
SASREC_MINUTES = (21, 33)


@dataclass
class RunSpec:
    experiment: str
    recipe: Recipe
    mode: str  # nested | independent
    seed: int
    extra: tuple[str, ...] = ()
    directory: Path = field(default=Path())

    def command(self) -> list[str]:
        args = [
            f"experiment={self.experiment}",
            *self.recipe.overrides,
            *self.extra,
            f"seed={self.seed}",
            f"run_dir={self.directory}",
            "trainer.progress=false",
        ]
        if self.mode == "independent":
            args.append("model.independent=true")
        return [sys.executable, "-m", "recsys.training.cli", *args]


def resolved_config(spec: RunSpec) -> dict[str, Any]:
    """The resolved configuration ``recsys-train`` composes for ``spec`` (what its config.yaml holds).

    Composes through Hydra's global state: call from one thread only."""
    from omegaconf import OmegaConf

    from recsys.api import compose_config

    return OmegaConf.to_container(compose_config(spec.command()[3:]), resolve=True)


# Keys that say where a run lives or how it was started, not what it trains: a run folder moved or
# named by another path (relative vs absolute), or a run resumed after a kill, is still the same run.
_LOCATION_KEYS = frozenset({"run_dir", "resume", "retest"})


def _has_checkpoint(directory: Path) -> bool:
    """Whether a killed run left a checkpoint to resume from (a nested run's, or any size's)."""
    return (directory / "checkpoints" / "last.pt").is_file() or any(directory.glob("d*/checkpoints/last.pt"))


def _stale_keys(expected: dict[str, Any], saved: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configurations (location keys aside)."""
    if not isinstance(saved, dict):
        return [prefix or "<root>"]
    out = []
    for key in sorted(set(expected) | set(saved)):
        name = f"{prefix}.{key}" if prefix else str(key)
        if name in _LOCATION_KEYS:
            continue
        a, b = expected.get(key), saved.get(key)
        out += _stale_keys(a, b, name) if isinstance(a, dict) else ([name] if a != b else [])
    return out


def _run_env(threads: int) -> dict[str, str]:
    """Environment of a run's process: ``threads`` BLAS/OpenMP threads, this tree first on the path."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run_one(spec: RunSpec, threads: int, log, expected: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) one run; return its metrics.json.

    A finished run is reused when its saved config.yaml equals ``expected`` (the configuration its
    command resolves to today: a default changed in configs/ makes it stale, a recipe spelt
    differently that resolves to the same configuration does not). A run killed before it finished
    (the suite stopped, the session ended) resumes exactly from its last checkpoint
    (``resume=true``). A stale run's folder is moved to ``<folder>.stale`` and trained anew."""
    from omegaconf import OmegaConf

    cmd = spec.command()
    stamp = spec.directory / "bench_command.json"
    metrics_path = spec.directory / "metrics.json"
    finished = metrics_path.is_file() and stamp.is_file()
    resumable = not finished and _has_checkpoint(spec.directory)
    if finished or resumable:
        saved_path = spec.directory / "config.yaml"
        saved = (
            OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True) if saved_path.is_file() else None
        )
        if isinstance(saved, dict):  # keys added since the run was trained: the value it behaved with
            from recsys.config import with_added_defaults

            saved = with_added_defaults(saved)
        stale = _stale_keys(expected, saved)
        if resumable:  # what a resume may change (how long, how verbosely) does not make it stale
            from recsys.config import RESUME_FREE_KEYS

            stale = [k for k in stale if k not in RESUME_FREE_KEYS]
        if not stale and finished:
            log(f"  reuse {spec.directory}")
            return json.loads(metrics_path.read_text())
        if stale == ["trainer.select"] and finished:  # the same training, another checkpoint tested
            return _retest(spec, cmd, threads, log)
        if stale:
            moved = spec.directory.with_name(spec.directory.name + ".stale")
            if moved.exists():
                shutil.rmtree(moved)
            spec.directory.rename(moved)
            log(f"  stale {spec.directory} (config differs at {', '.join(stale[:5])}): moved to {moved.name}")
            resumable = False
    if resumable:
        cmd.append("resume=true")
    spec.directory.mkdir(parents=True, exist_ok=True)
    env = _run_env(threads)
    log(f"  {'resume' if resumable else 'run  '} {spec.recipe.name}/{spec.mode}/seed{spec.seed}")
    start = time.perf_counter()
    with open(spec.directory / "bench_stdout.log", "a" if resumable else "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not metrics_path.is_file():
        tail = (spec.directory / "bench_stdout.log").read_text()[-3000:]
        raise RuntimeError(f"run failed ({proc.returncode}): {shlex.join(cmd)}\n{tail}")
    stamp.write_text(
        json.dumps(
            {"args": cmd[1:], "process_seconds": round(time.perf_counter() - start, 3), "resumed": resumable}
        )
    )
    return json.loads(metrics_path.read_text())


def _retest(spec: RunSpec, cmd: list[str], threads: int, log) -> dict[str, Any]:
    """Test a finished run again under the recipe's ``trainer.select`` (``retest=true``): no training."""
    env = _run_env(threads)
    log(f"  retest {spec.recipe.name}/{spec.mode}/seed{spec.seed} (only trainer.select differs)")
    with open(spec.directory / "bench_stdout.log", "a") as out:
        proc = subprocess.run([*cmd, "retest=true"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = (spec.directory / "bench_stdout.log").read_text()[-3000:]
        raise RuntimeError(f"retest failed ({proc.returncode}): {shlex.join(cmd)} retest=true\n{tail}")
    return json.loads((spec.directory / "metrics.json").read_text())


def run_times(metrics: dict[str, Any], directory: Path) -> tuple[float, float]:
    """(seconds to the best checkpoint, seconds in all) of a run; independent: summed over sizes."""
    if metrics.get("independent"):
        best = total = 0.0
        for d in metrics["sizes"]:
            sub = json.loads((directory / f"d{int(d):04d}" / "metrics.json").read_text())
            best += sub.get("best_seconds") or 0.0
            total += sub.get("train_seconds") or 0.0
        return best, total
    return float(metrics.get("best_seconds") or 0.0), float(metrics.get("train_seconds") or 0.0)


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": values,
    }


def aggregate(runs: list[tuple[RunSpec, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """{"recipe/mode": {"sizes", "metrics": {metric: {size: stats}}, "best_seconds", "train_seconds"}}."""
    groups: dict[str, list[tuple[RunSpec, dict[str, Any]]]] = {}
    for spec, metrics in runs:
        groups.setdefault(f"{spec.recipe.name}/{spec.mode}", []).append((spec, metrics))
    out = {}
    for key, members in groups.items():
        sizes = [int(d) for d in members[0][1]["sizes"]]
        table = {
            m: {d: _stats([float(r["test"][str(d)][m]) for _, r in members]) for d in sizes} for m in METRICS
        }
        times = [run_times(r, s.directory) for s, r in members]
        out[key] = {
            "recipe": members[0][0].recipe.name,
            "mode": members[0][0].mode,
            "doc": members[0][0].recipe.doc,
            "overrides": list(members[0][0].recipe.overrides),
            "seeds": [s.seed for s, _ in members],
            "sizes": sizes,
            "metrics": table,
            "best_seconds": _stats([t[0] for t in times]),
            "train_seconds": _stats([t[1] for t in times]),
            "best_steps": [r.get("best_step") for _, r in members],
        }
    return out


def targets(summary: dict[str, dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    """The issue's quality targets that this summary can judge: one row each, with met / missed."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, target: float, detail: str) -> None:
        rows.append(
            {"target": name, "value": value, "goal": target, "met": value >= target, "detail": detail}
        )

    for recipe in TEXT_ONLY_RECIPES:  # the recipe, and with its text features fine-tuned
        if dataset == "ml-100k" and f"{recipe}/nested" in summary:
            s = summary[f"{recipe}/nested"]["metrics"]["ndcg@10"]
            for d, goal in TEXT_ONLY_TARGET.items():
                if d in s:
                    add(
                        f"{recipe} NDCG@10 d={d}",
                        s[d]["mean"],
                        goal,
                        "text-only target row; mean over seeds, all items",
                    )
    default = summary.get("default/nested")
    if dataset == "ml-100k" and default:  # the issue: the default at least the text-only target row too
        s = default["metrics"]["ndcg@10"]
        for d, goal in TEXT_ONLY_TARGET.items():
            if d in s:
                add(
                    f"default NDCG@10 d={d}",
                    s[d]["mean"],
                    goal,
                    "text-only target row; mean over seeds, all items",
                )
        for metric, (a, b) in SASREC.items():
            ref = (a + b) / 2
            for d in default["sizes"]:
                if d >= 64:
                    add(
                        f"default {metric} d={d} vs stock SASRec",
                        default["metrics"][metric][d]["mean"],
                        ref,
                        f"SASRec d=64, mean of seeds 42/43 ({a:.4f}, {b:.4f})",
                    )
            if 32 in default["sizes"]:
                add(
                    f"default {metric} d=32 >= 0.95 x SASRec",
                    default["metrics"][metric][32]["mean"],
                    0.95 * ref,
                    "0.95 x the stock SASRec",
                )
    independent = summary.get("default/independent")
    if default and independent:
        for metric in ("ndcg@10", "unseen/ndcg@10"):
            for d in default["sizes"]:
                if d in independent["sizes"]:
                    n, i = default["metrics"][metric][d]["mean"], independent["metrics"][metric][d]["mean"]
                    add(
                        f"nested / independent {metric} d={d}",
                        n / i if i else 0.0,
                        0.98,
                        f"{n:.4f} / {i:.4f}",
                    )
        add(
            "independent time / nested time",
            independent["train_seconds"]["mean"] / max(default["train_seconds"]["mean"], 1e-9),
            2.0,
            "sum of independent runs' wall time over the nested run's (goal >= 2)",
        )
    if dataset == "ml-1m" and default:
        s = default["metrics"]["ndcg@10"]
        for d, goal in ((256, 0.13), (8, 0.05)):
            if d in s:
                add(f"ML-1M reduced NDCG@10 d={d}", s[d]["mean"], goal, "within 60 minutes")
    return rows


def _cell(st: dict[str, float]) -> str:
    return f"{st['mean']:.4f} ± {st['std']:.4f}"


def markdown(doc: dict[str, Any]) -> str:
    summary, info = doc["summary"], doc["machine"]
    lines = [
        f"# Quality at every size ({doc['dataset']}{', quick' if doc['quick'] else ''})",
        "",
        f"Test metrics of the best-validation checkpoint, mean ± std over seeds {doc['seeds']} "
        "(full ranking; `all` = every catalog item, `unseen` = items the user has not interacted with "
        "left in the ranking, as serving does). Wall time: training + validation, to the best checkpoint "
        f"and in all (independent: summed over its sizes); {doc['jobs']} run(s) at a time, "
        f"{doc['threads']} thread(s) each.",
        "",
        f"- Command: `{doc['command']}`",
        f"- Commit: `{info['git']['commit']}`" + (" (dirty working tree)" if info["git"]["dirty"] else ""),
        f"- CPU: {info['cpu']['model']}, {info['cpu']['usable_cpus']} usable CPUs; GPU: "
        f"{', '.join(info['gpu']) or 'none'}",
        "",
        "## Recipes",
        "",
        "| recipe | what it changes | overrides |",
        "| --- | --- | --- |",
    ]
    seen: set[str] = set()
    for row in summary.values():
        if row["recipe"] not in seen:
            seen.add(row["recipe"])
            lines.append(f"| {row['recipe']} | {row['doc']} | `{' '.join(row['overrides']) or '-'}` |")
    for metric in METRICS:
        sizes = sorted({d for row in summary.values() for d in row["sizes"]})
        lines += [
            "",
            f"## Test {metric}",
            "",
            "| recipe / mode | " + " | ".join(f"d={d}" for d in sizes) + " | to best (s) | total (s) |",
            "| --- |" + " ---: |" * (len(sizes) + 2),
        ]
        for key, row in summary.items():
            cells = [_cell(row["metrics"][metric][d]) if d in row["sizes"] else "-" for d in sizes]
            lines.append(
                f"| {key} | "
                + " | ".join(cells)
                + f" | {row['best_seconds']['mean']:.0f} | {row['train_seconds']['mean']:.0f} |"
            )
    if doc["targets"]:
        lines += [
            "",
            "## Targets",
            "",
            "| target | measured | goal | met | detail |",
            "| --- | ---: | ---: | --- | --- |",
        ]
        for t in doc["targets"]:
            lines.append(
                f"| {t['target']} | {t['value']:.4f} | {t['goal']:.4f} | {'yes' if t['met'] else '**no**'} | {t['detail']} |"
            )
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recsys.evaluation.reporting import size_axis

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = sorted({d for row in doc["summary"].values() for d in row["sizes"]})
    for ax, metric in zip(axes, ("ndcg@10", "unseen/ndcg@10")):
        for key, row in doc["summary"].items():
            st = row["metrics"][metric]
            ax.errorbar(
                row["sizes"],
                [st[d]["mean"] for d in row["sizes"]],
                yerr=[st[d]["std"] for d in row["sizes"]],
                marker="o",
                capsize=3,
                label=key,
                linestyle="--" if row["mode"] == "independent" else "-",
            )
        if metric == "ndcg@10" and doc["dataset"] == "ml-100k" and "text_only/nested" in doc["summary"]:
            ax.plot(list(TEXT_ONLY_TARGET), list(TEXT_ONLY_TARGET.values()), "k:", label="text-only target")
        if doc["dataset"] == "ml-100k" and metric in SASREC:
            ax.axhline(sum(SASREC[metric]) / 2, color="grey", linewidth=1, label="stock SASRec d=64")
        size_axis(ax, sizes, f"test {metric} (mean ± std over seeds)", legend_size=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recsys-bench quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=list(EXPERIMENTS), default="ml-100k")
    parser.add_argument("--experiment", help="the experiment the recipes start from (default: the dataset's)")
    parser.add_argument(
        "--recipes", nargs="+", help=f"recipe names (default: default); known: {', '.join(RECIPES)}"
    )
    parser.add_argument(
        "--recipe", action="append", default=[], metavar="NAME=OVERRIDES", help="an extra recipe"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["nested", "independent"],
        default=None,
        help="modes of every recipe (default: nested for all, and independent too for those of --independent)",
    )
    parser.add_argument(
        "--independent",
        nargs="+",
        default=["default"],
        metavar="RECIPE",
        help="recipes also trained as independent models per size when --modes is not given (default: default)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--quick", action="store_true", help="2 epochs, ladder 8..64: minutes, not hours")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (wall times then share the CPU)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per run (default CPUs / jobs)"
    )
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "build" / "quality", help="run directories (resumable)"
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument(
        "--name",
        default=None,
        help="result file stem (default quality; quality_quick with --quick, so a quick check never "
        "overwrites the full suite's results)",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="OVERRIDE", help="overrides for every run")
    args = parser.parse_args(argv)
    if len(args.seeds) < 1 or args.jobs < 1:
        parser.error("--seeds needs at least one seed and --jobs must be >= 1")
    return args


def result_stem(args: argparse.Namespace) -> str:
    """File stem of the results: ``--name``, else quality (quality_quick for ``--quick``)."""
    return args.name or ("quality_quick" if args.quick else "quality")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    recipes = dict(RECIPES)
    for item in args.recipe:
        name, _, overrides = item.partition("=")
        if not name or not overrides:
            raise SystemExit(f"--recipe {item!r}: expected NAME=OVERRIDES")
        recipes[name] = Recipe(name, tuple(shlex.split(overrides)), f"command line: {overrides}")
    extras = [i.partition("=")[0] for i in args.recipe]
    names = list(dict.fromkeys([*(args.recipes or ([] if extras else ["default"])), *extras]))
    unknown = [n for n in names if n not in recipes]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; known: {', '.join(recipes)}")

    def modes(name: str) -> list[str]:
        return args.modes or (["nested", "independent"] if name in args.independent else ["nested"])

    threads = args.threads or max(1, machine.cpu_info()["usable_cpus"] // args.jobs)
    extra = (*(QUICK_OVERRIDES if args.quick else ()), *args.set)
    experiment = args.experiment or EXPERIMENTS[args.dataset]
    root = args.runs / ((args.experiment or args.dataset) + ("-quick" if args.quick else ""))
    specs = [
        RunSpec(experiment, recipes[n], mode, seed, extra, root / n / mode / f"seed{seed}")
        for n in names
        for mode in modes(n)
        for seed in args.seeds
    ]
    print(
        f"[quality] {len(specs)} runs ({args.jobs} at a time, {threads} thread(s) each) under {root}",
        flush=True,
    )
    say = lambda m: print(m, flush=True)  # noqa: E731
    with ThreadPoolExecutor(args.jobs) as pool:
        expected = [resolved_config(s) for s in specs]  # Hydra composes in this thread only
        results = list(pool.map(lambda s, e: _run_one(s, threads, say, e), specs, expected))
    runs = list(zip(specs, results))
    summary = aggregate(runs)
    doc = {
        "suite": "quality",
        "dataset": args.dataset,
        "experiment": experiment,
        "quick": args.quick,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "threads": threads,
        "extra_overrides": list(extra),
        "command": "recsys-bench quality " + shlex.join(argv),
        "machine": machine.describe(ROOT, threads, peaks=False),
        "summary": {
            k: {**v, "metrics": {m: {str(d): s for d, s in t.items()} for m, t in v["metrics"].items()}}
            for k, v in summary.items()
        },
        "targets": targets(summary, args.dataset),
        "runs": [
            {"recipe": s.recipe.name, "mode": s.mode, "seed": s.seed, "dir": str(s.directory)} for s in specs
        ],
    }
    out = args.out or (ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(args)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    md_doc = {**doc, "summary": summary}
    (out / f"{stem}.md").write_text(markdown(md_doc))
    plot(md_doc, out / f"{stem}.png")
    print((out / f"{stem}.md").read_text())
    print(f"wrote {out / stem}.{{md,json,png}}")
