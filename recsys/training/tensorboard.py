"""TensorBoard logging of per-size training loss and per-dimension validation metrics.

Scalars are tagged ``val/<metric>@<k>/d<size>`` (size zero-padded so charts sort naturally) and a
custom-scalars layout puts all sizes of one metric into one multi-line chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from recsys.evaluation.reporting import SizeMetrics, metrics_vs_size_figure


def size_tag(prefix: str, name: str, size: int) -> str:
    return f"{prefix}/{name}/d{size:04d}"


class TensorBoardLogger:
    def __init__(self, log_dir: str | Path, sizes: Sequence[int], ks: Sequence[int]) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.sizes = tuple(sizes)
        layout: dict[str, dict[str, list[Any]]] = {"validation (all sizes per chart)": {}, "training": {}}
        for prefix in ("", "unseen/"):  # all items, then unseen items only
            for metric in ("recall", "ndcg", "mrr"):
                for k in ks:
                    name = f"{prefix}{metric}@{k}"
                    layout["validation (all sizes per chart)"][name] = ["Multiline", [rf"val/{name}/d\d+"]]
        layout["training"]["loss per size"] = ["Multiline", [r"train/loss/d\d+"]]
        self.writer.add_custom_scalars(layout)

    def log_train(
        self, step: int, loss: float, per_size: Sequence[float], lr: float, throughput: float
    ) -> None:
        self.writer.add_scalar("train/loss_total", loss, step)
        for size, value in zip(self.sizes, per_size):
            self.writer.add_scalar(size_tag("train", "loss", size), value, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/sequences_per_s", throughput, step)

    def log_eval(self, split: str, step: int, results: SizeMetrics) -> None:
        prefix = "val" if split == "validation" else split
        for size, metrics in results.items():
            for name, value in metrics.items():
                self.writer.add_scalar(size_tag(prefix, name, size), value, step)
        self.writer.add_figure(
            f"{prefix}/metrics_vs_size", metrics_vs_size_figure(results, f"{split} @ step {step}"), step
        )

    def log_hparams(self, hparams: dict[str, Any], final: dict[str, float]) -> None:
        clean = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in hparams.items()}
        self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in final.items()}, run_name="hparams")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class NullLogger:
    """Stands in for :class:`TensorBoardLogger` on ranks other than 0: every call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
