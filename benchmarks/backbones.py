"""Backbone benchmark (not a test): LRU-nested, Mamba-nested, SASRec-MRL, independent LRU on ML-1M.

    OMP_NUM_THREADS=1 python -m benchmarks.backbones --epochs 2 --ladder 8 16 32 64

A REDUCED CPU configuration (labelled so in the results): the ``ml1m_cpu`` experiment with a
short ladder, 1 block, max_len 50 and a few epochs, no early stopping (patience 0), model selection
on validation NDCG@10 at the largest size (independent: at its own size). Same data, split and
seed for every variant. Each (variant, size) trains in its own subprocess so its peak RSS is its
own; time per epoch = training wall time / epochs (per-epoch validation included). Writes
``benchmarks/results/backbones.md`` and ``benchmarks/results/backbones.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "LRU-nested": ["backbone=lru"],
    "Mamba-nested": ["backbone=mamba"],
    "SASRec-MRL": ["backbone=sasrec"],
    "LRU-independent": ["backbone=lru"],
}


def child(args: argparse.Namespace) -> None:
    import torch
    from hydra import compose, initialize_config_dir

    from recsys.config import CONFIG_DIR
    from recsys.training.trainer import Trainer

    torch.set_num_threads(1)
    ladder = [int(s) for s in args.ladder]
    overrides = [
        "experiment=ml1m_cpu",
        f"data.path={args.data}",
        "data.max_len=50",
        "data.train_stride=0",  # non-overlapping windows, as backbones.md was measured
        f"model.ladder=[{','.join(map(str, ladder))}]",
        f"model.width={ladder[-1]}",
        "backbone.num_blocks=1",
        f"trainer.max_epochs={args.epochs}",
        "trainer.patience=0",
        "trainer.progress=false",
        f"trainer.batch_size={args.batch}",
        "trainer.device=cpu",
        f"trainer.stop_after_steps={args.steps}",
        *VARIANTS[args.variant],
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        start = time.perf_counter()
        trainer.fit()
        train_s = time.perf_counter() - start
        steps = trainer.step
        results = trainer.test_best()
        trainer.tb.close()
    out = {
        "variant": args.variant,
        "ladder": ladder,
        "steps": steps,
        "windows_per_epoch": trainer.dataset.num_train_windows,
        "batches_per_epoch": trainer.batches_per_epoch,
        "s_per_step": train_s / max(1, steps),
        "s_per_epoch": train_s / max(1, steps) * trainer.batches_per_epoch,  # extrapolated when steps < epoch
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "test": {str(d): results["test"][d] for d in ladder},
    }
    print("RESULT " + json.dumps(out), flush=True)


def run_child(variant: str, ladder: list[int], args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.backbones",
        "--child",
        "--variant",
        variant,
        "--data",
        args.data,
        "--epochs",
        str(args.epochs),
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--ladder",
        *map(str, ladder),
    ]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{variant} {ladder} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(lines[-1][len("RESULT ") :])
    print(f"{variant} {ladder}: {res['s_per_step']:.2f} s/step, {res['peak_rss_mib']:.0f} MiB", flush=True)
    return res


def table(rows: list[dict], ladder: list[int], args: argparse.Namespace) -> str:
    lines = [
        "# Backbones on ML-1M (REDUCED CPU configuration)",
        "",
        f"`OMP_NUM_THREADS=1 python -m benchmarks.backbones --epochs {args.epochs} --ladder "
        f"{' '.join(map(str, ladder))}`: ML-1M (6,040 users, 3,416 items after filtering, MiniLM text "
        f"features), leave-one-out, full ranking; ladder {ladder}, 1 block, max_len 50, "
        f"{args.epochs} epochs, batch {args.batch}, lr 1e-3, no early stopping, best validation "
        "checkpoint (with `--steps`, training stops before any validation: the final weights are tested). One torch thread per process (`OMP_NUM_THREADS=1`, the 2-core machine was shared "
        "with other jobs: timings carry +-30%). Independent = one LRU model trained per size "
        "(ladder [d]); its time and memory are per size. Far from converged: compare variants, not "
        "absolute values with the literature.",
        "",
        f"Training: {rows[0]['steps'] if rows else '?'} steps of batch {args.batch} "
        f"(epoch = {rows[0]['windows_per_epoch'] if rows else '?'} training windows)"
        + (
            " - **a fraction of one epoch** (`--steps`); s / epoch is extrapolated from s / step."
            if args.steps
            else "."
        ),
        "",
        "| variant | size d | NDCG@10 | Recall@10 | s / step | s / epoch | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        for d in r["sizes"]:
            m = r["test"][str(d)]
            lines.append(
                f"| {r['variant']} | {d} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | "
                f"{r['s_per_step'][str(d)]:.2f} | {r['s_per_epoch'][str(d)]:.0f} | {r['peak_rss_mib'][str(d)]:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--variant", default="LRU-nested", choices=list(VARIANTS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--data", default="data/ml-1m")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=0, help="> 0: stop after this many steps (not whole epochs)")
    ap.add_argument("--ladder", type=int, nargs="+", default=[8, 16, 32, 64])
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for variant in args.variants:
        if variant == "LRU-independent":
            parts = [run_child(variant, [d], args) for d in args.ladder]
            merged = {
                "variant": variant,
                "sizes": args.ladder,
                "test": {str(d): p["test"][str(d)] for d, p in zip(args.ladder, parts)},
                "s_per_epoch": {str(d): p["s_per_epoch"] for d, p in zip(args.ladder, parts)},
                "s_per_step": {str(d): p["s_per_step"] for d, p in zip(args.ladder, parts)},
                "steps": parts[0]["steps"],
                "windows_per_epoch": parts[0]["windows_per_epoch"],
                "peak_rss_mib": {str(d): p["peak_rss_mib"] for d, p in zip(args.ladder, parts)},
            }
        else:
            r = run_child(variant, args.ladder, args)
            merged = {
                "variant": variant,
                "sizes": args.ladder,
                "test": r["test"],
                "s_per_epoch": {str(d): r["s_per_epoch"] for d in args.ladder},
                "s_per_step": {str(d): r["s_per_step"] for d in args.ladder},
                "steps": r["steps"],
                "windows_per_epoch": r["windows_per_epoch"],
                "peak_rss_mib": {str(d): r["peak_rss_mib"] for d in args.ladder},
            }
        rows.append(merged)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "backbones.json").write_text(json.dumps(rows, indent=2))
        (RESULTS / "backbones.md").write_text(table(rows, args.ladder, args))
    print(table(rows, args.ladder, args))


if __name__ == "__main__":
    main()
