"""Human-facing results: the per-size metrics table, ``metrics.json`` and the metric-vs-size plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the plot is written to a file and to TensorBoard
import matplotlib.pyplot as plt  # noqa: E402

SizeMetrics = dict[int, dict[str, float]]


def default_columns(names: list[str]) -> list[str]:
    """Recall, NDCG and MRR at k=10 (else the smallest k) under both protocols, all items first."""
    ks = sorted({int(n.rpartition("@")[2]) for n in names})
    k = 10 if 10 in ks else ks[0]
    return sorted((n for n in names if n.endswith(f"@{k}")), key=_metric_order)


def format_table(results: SizeMetrics, columns: list[str] | None = None, title: str = "") -> str:
    """A fixed-width text table: one row per size, one column per metric (default: k=10, both
    protocols; ``unseen/`` = already-seen items left out of the ranking, as serving does)."""
    sizes = sorted(results)
    columns = columns or default_columns(list(results[sizes[0]]))
    width = max(10, *(len(c) for c in columns))
    header = f"{'size':>6} " + " ".join(f"{c:>{width}}" for c in columns)
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for d in sizes:
        lines.append(f"{d:>6} " + " ".join(f"{results[d][c]:>{width}.4f}" for c in columns))
    return "\n".join(lines)


def _metric_order(name: str) -> tuple[int, int, int]:
    """(protocol, metric, k): all-items metrics first, then ``unseen/`` ones."""
    unseen = name.startswith("unseen/")
    metric, _, k = name.removeprefix("unseen/").partition("@")
    return (int(unseen), {"recall": 0, "ndcg": 1, "mrr": 2}.get(metric, 3), int(k) if k.isdigit() else 0)


def jsonable_metrics(results: SizeMetrics) -> dict[str, dict[str, float]]:
    """JSON keys must be strings: {"64": {"ndcg@10": ...}}."""
    return {
        str(d): dict(sorted(m.items(), key=lambda kv: _metric_order(kv[0])))
        for d, m in sorted(results.items())
    }


def size_axis(ax, sizes: list[int], title: str, legend_size: int = 8) -> None:
    """The x-axis of every metric-vs-size chart: embedding size on a log2 scale, one tick per size."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(d) for d in sizes])
    ax.set_xlabel("embedding size d")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def metrics_vs_size_figure(results: SizeMetrics, title: str = "") -> plt.Figure:
    """One panel per metric family (Recall, NDCG, MRR), one line per k and protocol (unseen
    items dashed), size on a log2 axis."""
    sizes = sorted(results)
    names = sorted(results[sizes[0]], key=_metric_order)
    families = sorted(
        {n.removeprefix("unseen/").partition("@")[0] for n in names}, key=lambda f: _metric_order(f + "@0")
    )
    fig, axes = plt.subplots(1, len(families), figsize=(4.5 * len(families), 3.6), squeeze=False)
    for ax, family in zip(axes[0], families):
        for name in [n for n in names if n.removeprefix("unseen/").startswith(family + "@")]:
            style = "--" if name.startswith("unseen/") else "-"
            ax.plot(sizes, [results[d][name] for d in sizes], style, marker="o", label=name)
        size_axis(ax, sizes, family.upper() if family != "ndcg" else "NDCG", legend_size=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_metrics_plot(results: SizeMetrics, path: str | Path, title: str = "") -> Path:
    fig = metrics_vs_size_figure(results, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
