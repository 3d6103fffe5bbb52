"""TensorBoard logging with one run per size, so TensorBoard colours and labels the sizes.

TensorBoard colours, labels and toggles *runs* (folders of event files), not tags. The logger
therefore writes, under the run's ``tb/`` directory:

* ``d0008/``, ``d0016/``, ... (one run per size, zero-padded so they sort by size), all with the
  same tags: ``train/loss`` (that size's training loss), ``val/<metric>`` at every validation
  (``val/ndcg@10``, ``val/unseen/ndcg@10``, ...) and ``test/<metric>`` once at the end (best
  checkpoint). One chart per tag then overlays every size, one colour and legend entry per size.
* ``train/``: what does not depend on the size (``train/loss_total``, ``train/lr``,
  ``train/sequences_per_s``), the Custom Scalars layout, and at every validation two images:
  ``val/metrics_vs_size`` (every metric against size, log2 axis) and
  ``val/metrics_vs_size_over_training`` (k=10 metrics against size, one line per validation so far,
  coloured by step); ``test/metrics_vs_size`` at the end.
* ``hparams/``: the run's hyperparameters with the final test metrics of every size
  (``hparam/test_ndcg@10_d0008``, ...) for the HParams tab.

docs/tensorboard.md describes the layout and ``scripts/tensorboard_screenshot.sh``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from recsys.evaluation.reporting import SizeMetrics, default_columns, metrics_vs_size_figure, size_axis

TRAIN_RUN = "train"
HPARAMS_RUN = "hparams"
METRICS = ("recall", "ndcg", "mrr")
PROTOCOLS = (("", "all items"), ("unseen/", "unseen items only"))


def size_run(size: int) -> str:
    """The run (sub-folder of ``tb/``) of one size: ``d0008``."""
    return f"d{size:04d}"


def split_prefix(split: str) -> str:
    return "val" if split == "validation" else split


def custom_scalars_layout(ks: Sequence[int]) -> dict[str, dict[str, list[Any]]]:
    """One Multiline chart per metric (k=10 first); a chart's regex is over tags and draws that tag
    of every run, so ``^val/ndcg@10$`` is one line per size run."""
    layout: dict[str, dict[str, list[Any]]] = {}
    for split, title in (("val", "validation"), ("test", "test, best checkpoint")):
        for prefix, label in PROTOCOLS:
            category = layout.setdefault(f"{title}: {label} (one line per size)", {})
            for k in sorted(ks, key=lambda k: (k != 10, k)):
                for metric in METRICS:
                    name = f"{prefix}{metric}@{k}"
                    category[f"{split}/{name}"] = ["Multiline", [rf"^{re.escape(f'{split}/{name}')}$"]]
    layout["training"] = {
        "loss per size": ["Multiline", [r"^train/loss$"]],
        "total loss": ["Multiline", [r"^train/loss_total$"]],
        "learning rate": ["Multiline", [r"^train/lr$"]],
        "sequences per second": ["Multiline", [r"^train/sequences_per_s$"]],
    }
    return layout


def _history_k(names: Sequence[str]) -> int:
    ks = sorted({int(n.rpartition("@")[2]) for n in names})
    return 10 if 10 in ks else ks[0]


def metrics_over_training_figure(history: Sequence[tuple[int, SizeMetrics]], title: str = "") -> plt.Figure:
    """Recall/NDCG/MRR@10 (all items on top, unseen items below) against size on a log2 axis, one
    line per validation so far, coloured from early (light) to the latest (dark, thick)."""
    sizes = sorted(history[-1][1])
    names = list(history[-1][1][sizes[0]])
    k = _history_k(names)
    rows = [p for p, _ in PROTOCOLS if any(n == f"{p}ndcg@{k}" for n in names)]
    families = [m for m in METRICS if f"{m}@{k}" in names]
    fig, axes = plt.subplots(
        len(rows), len(families), figsize=(4.2 * len(families), 3.0 * len(rows)), squeeze=False
    )
    cmap = plt.get_cmap("viridis_r")
    steps = [step for step, _ in history]
    lo, hi = min(steps), max(steps)
    for r, prefix in enumerate(rows):
        for c, family in enumerate(families):
            ax, name = axes[r][c], f"{prefix}{family}@{k}"
            for i, (step, results) in enumerate(history):
                last = i == len(history) - 1
                shade = 0.15 + 0.85 * ((step - lo) / (hi - lo) if hi > lo else 1.0)
                ax.plot(
                    sizes,
                    [results[d][name] for d in sizes],
                    marker="o" if last else None,
                    markersize=3,
                    linewidth=2.2 if last else 1.0,
                    color=cmap(shade),
                    label=f"step {step}" if (last or i == 0) else None,
                )
            size_axis(ax, sizes, name, legend_size=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class TensorBoardLogger:
    """Writes ``log_dir/<size run>``, ``log_dir/train`` and ``log_dir/hparams`` (see the module doc)."""

    def __init__(self, log_dir: str | Path, sizes: Sequence[int], ks: Sequence[int]) -> None:
        self.log_dir = Path(log_dir)
        self.sizes = tuple(sizes)
        self.ks = tuple(ks)
        # size runs first: TensorBoard orders runs (and hands out its colours) by their first event
        self.per_size = {d: SummaryWriter(log_dir=str(self.log_dir / size_run(d))) for d in self.sizes}
        self.train = SummaryWriter(log_dir=str(self.log_dir / TRAIN_RUN))
        self.history: dict[str, list[tuple[int, SizeMetrics]]] = {}
        self.last_results: dict[str, SizeMetrics] = {}
        self.train.add_custom_scalars(custom_scalars_layout(self.ks))

    def writers(self) -> list[SummaryWriter]:
        return [self.train, *self.per_size.values()]

    def log_train(
        self, step: int, loss: float, per_size: Sequence[float], lr: float, throughput: float
    ) -> None:
        self.train.add_scalar("train/loss_total", loss, step)
        self.train.add_scalar("train/lr", lr, step)
        self.train.add_scalar("train/sequences_per_s", throughput, step)
        for size, value in zip(self.sizes, per_size):
            self.per_size[size].add_scalar("train/loss", value, step)

    def log_eval(self, split: str, step: int, results: SizeMetrics) -> None:
        prefix = split_prefix(split)
        for size, metrics in results.items():
            if size not in self.per_size:  # a size outside the ladder given at start: its own run too
                self.per_size[size] = SummaryWriter(log_dir=str(self.log_dir / size_run(size)))
            writer = self.per_size[size]
            for name, value in metrics.items():
                writer.add_scalar(f"{prefix}/{name}", value, step)
        self.last_results[split] = results
        history = self.history.setdefault(split, [])
        history.append((step, results))
        figures = {f"{prefix}/metrics_vs_size": metrics_vs_size_figure(results, f"{split} @ step {step}")}
        if len(history) > 1:
            figures[f"{prefix}/metrics_vs_size_over_training"] = metrics_over_training_figure(
                history, f"{split}: metric vs size at every {split} so far (dark = latest, step {step})"
            )
        for tag, figure in figures.items():
            self.train.add_figure(tag, figure, step)  # add_figure closes the figure
        for writer in self.writers():  # a live TensorBoard sees each validation at once
            writer.flush()

    def log_hparams(self, hparams: dict[str, Any], final: dict[str, float]) -> None:
        """The HParams tab: ``hparams`` with the test metrics at k=10, both protocols, of every size
        (from the last ``log_eval("test", ...)``) as ``hparam/test_<metric>_d<size>``, plus the
        entries of ``final`` (``test_ndcg@10_d16`` is renamed ``test_ndcg@10_d0016`` to match)."""
        clean = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in hparams.items()}
        metrics: dict[str, float] = {}
        for split, results in self.last_results.items():
            if split == "validation":
                continue
            columns = default_columns(list(next(iter(results.values()))))
            for name in columns:
                for size, values in sorted(results.items()):
                    metrics[f"hparam/{split}_{name}_{size_run(size)}"] = float(values[name])
        for key, value in final.items():
            match = re.fullmatch(r"(.*)_d(\d+)", key)
            key = f"{match[1]}_{size_run(int(match[2]))}" if match else key
            metrics.setdefault(f"hparam/{key}", float(value))
        exp, ssi, sei = hparams_summary(clean, metrics)
        with SummaryWriter(log_dir=str(self.log_dir / HPARAMS_RUN)) as writer:
            for summary in (exp, ssi, sei):
                writer.file_writer.add_summary(summary)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value)

    def close(self) -> None:
        for writer in self.writers():
            writer.flush()
            writer.close()


class NullLogger:
    """Stands in for :class:`TensorBoardLogger` on ranks other than 0: every call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
