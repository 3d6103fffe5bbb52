"""Scale benchmark (not a test): a synthetic catalog with a real-sized feature table, trained in one
process and in two (torchrec row-wise sharding, gloo), each measurement a fresh process.

    python -m benchmarks.scale [--items 1000000] [--repeats 3] [--steps 5] [--out DIR]
    recsys-bench scale [--quick]              # the same, through the benchmark command

Reports seconds per step, global sequences/s and peak RSS per rank for the sampled Matryoshka
softmax (and the full softmax with ``--losses full_softmax sampled_softmax``: over 1M items it
scores the whole catalog every step, ~100 s/step on 2 cores), medians [min, max] over the
repeats, with the machine, versions, commit and command. Writes scale.{md,json,png} into
``--out`` (default benchmarks/results). ``--worker`` is one measurement (run by the driver,
under ``torch.distributed.run`` for 2 processes); it prints one JSON line per loss and rank.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from recsys.losses.matryoshka import FullSoftmaxLoss
from recsys.losses.sampled import SampledSoftmaxLoss
from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn.lru import LRUConfig
from recsys.training.distributed import init_distributed, local_shard, shard_model


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help="one measurement in this process (internal)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process runs per configuration")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--feature-dim", type=int, default=384)
    ap.add_argument("--ladder", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--num-negatives", type=int, default=1024)
    ap.add_argument("--losses", nargs="+", default=["sampled_softmax"])
    ap.add_argument("--sharding", default="row_wise")
    return ap.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    env = init_distributed("cpu")
    torch.manual_seed(0)
    cfg = ModelConfig(
        ladder=tuple(args.ladder), max_len=args.max_len, backbone=LRUConfig(num_blocks=1, dropout=0.0)
    )
    model = MatryoshkaRecModel(cfg, args.items, {"text": args.feature_dim})
    with torch.no_grad():
        model.tables.feature_table("text").normal_()
    rss_model = rss_mib()
    objectives = {
        "full_softmax": FullSoftmaxLoss(),
        "sampled_softmax": SampledSoftmaxLoss(num_negatives=args.num_negatives),
    }
    objectives["sampled_softmax"].prepare(torch.randint(1, args.items + 1, (10_000,)), args.items)
    for loss in args.losses:
        loss_fn = objectives[loss]

        def forward(s, t, f=loss_fn):
            return f(model, s, t, 0)  # the same negatives every step (step seed 0)

        if env.enabled and not hasattr(model, "_sharded"):
            model._sharded = shard_model(model, loss_fn, env, args.sharding).dmp
        if env.enabled:
            model._sharded._dmp_wrapped_module.module.loss_fn = loss_fn

            def forward(s, t):
                return model._sharded(s, t, 0)

        opt = torch.optim.AdamW(
            [p for n, p in model.named_parameters() if not n.startswith("tables")], lr=1e-3
        )
        gen = torch.Generator().manual_seed(1)
        times = []
        for _ in range(args.steps + 1):
            seq = torch.randint(1, args.items + 1, (args.batch, args.max_len), generator=gen)
            tgt = torch.randint(1, args.items + 1, (args.batch, args.max_len), generator=gen)
            t0 = time.perf_counter()
            total, _, _ = forward(local_shard(seq, env), local_shard(tgt, env))
            opt.zero_grad()
            (total / tgt.numel()).backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        step = sum(times[1:]) / args.steps
        row = {
            "world_size": env.world_size,
            "rank": env.rank,
            "loss": loss,
            "items": args.items,
            "feature_dim": args.feature_dim,
            "ladder": args.ladder,
            "global_batch": args.batch,
            "max_len": args.max_len,
            "num_negatives": args.num_negatives if loss == "sampled_softmax" else None,
            "sharding": args.sharding if env.enabled else None,
            "sec_per_step": round(step, 3),
            "sequences_per_s": round(args.batch / step, 1),
            "peak_rss_mib_after_model": round(rss_model),
            "peak_rss_mib": round(rss_mib()),
        }
        print("SCALE_ROW " + json.dumps(row), flush=True)


WORKER_ARGS = (
    "items",
    "feature_dim",
    "ladder",
    "batch",
    "max_len",
    "steps",
    "num_negatives",
    "losses",
    "sharding",
)


def measure(args: argparse.Namespace, processes: int) -> list[dict]:
    """One fresh measurement: 1 process with 2 threads, or 2 processes with 1 thread each."""
    forwarded = []
    for name in WORKER_ARGS:
        value = getattr(args, name)
        forwarded += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    env = dict(os.environ, OMP_NUM_THREADS=str(2 // processes))
    if processes == 1:
        cmd = [sys.executable, "-m", "benchmarks.scale", "--worker", *forwarded]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "--standalone",  # a free port for the rendezvous
        ]
        cmd += ["-m", "benchmarks.scale", "--worker", *forwarded]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"scale worker failed ({processes} processes):\n{proc.stderr[-3000:]}")
    # two ranks share one stdout, so their lines can run together: decode every object after a marker
    decoder = json.JSONDecoder()
    rows = [decoder.raw_decode(part)[0] for part in proc.stdout.split("SCALE_ROW ")[1:]]
    if len(rows) != processes * len(args.losses):
        raise RuntimeError(f"expected {processes * len(args.losses)} result rows, got {len(rows)}")
    return rows


def summarise(runs: list[dict]) -> list[dict]:
    """Per (processes, loss): medians [min, max] of s/step and sequences/s, the largest peak RSS of a rank."""
    out = []
    for key in sorted({(r["world_size"], r["loss"]) for r in runs}):
        mine = [r for r in runs if (r["world_size"], r["loss"]) == key]
        by_repeat: dict = {}
        for r in mine:  # a step takes as long as its slowest rank
            by_repeat[r["repeat"]] = max(by_repeat.get(r["repeat"], 0.0), r["sec_per_step"])
        secs = list(by_repeat.values())
        out.append(
            {
                "processes": key[0],
                "loss": key[1],
                "sec_per_step": {
                    "median": statistics.median(secs),
                    "min": min(secs),
                    "max": max(secs),
                    "n": len(secs),
                },
                "sequences_per_s": mine[0]["global_batch"] / statistics.median(secs),
                "peak_rss_mib_per_rank": max(r["peak_rss_mib"] for r in mine),
                "rss_mib_after_model": max(r["peak_rss_mib_after_model"] for r in mine),
                "num_negatives": mine[0]["num_negatives"],
            }
        )
    return out


def write(args: argparse.Namespace, info: dict, runs: list[dict], summary: list[dict]) -> list[Path]:
    from recsys.bench.report import machine_lines

    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"suite": "scale", "params": {k: getattr(args, k) for k in WORKER_ARGS}, "repeats": args.repeats}
    doc.update({"machine": info, "summary": summary, "runs": runs})
    paths = [args.out / "scale.json", args.out / "scale.md", args.out / "scale.png"]
    paths[0].write_text(json.dumps(doc, indent=1, default=str))
    table_gib = (args.items + 1) * args.feature_dim * 4 / 2**30
    lines = [
        "# Scale: a large catalog in one process and in two (torchrec row-wise sharding)",
        "",
        *machine_lines(info),
        "",
        f"Synthetic catalog of {args.items:,} items with a {args.feature_dim}-d feature table "
        f"({table_gib:.2f} GiB fp32), ladder {args.ladder}, one LRU block, global batch {args.batch} x "
        f"{args.max_len} positions, AdamW on the dense part, {args.steps} timed steps after one warm-up. "
        "1 process runs 2 threads; 2 processes (gloo, `trainer.sharding=row_wise` tables) 1 thread each. "
        f"Each figure: median [min, max] over {args.repeats} fresh-process runs; a step of 2 processes takes "
        "as long as its slower rank.",
        "",
        "| processes | loss | negatives | s/step | sequences/s (global) | peak RSS per rank (MiB) | RSS after building the model (MiB) |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in summary:
        s = row["sec_per_step"]
        negatives = row["num_negatives"] if row["loss"] == "sampled_softmax" else "all"
        lines.append(
            f"| {row['processes']} | {row['loss']} | {negatives} | {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}] | "
            f"{row['sequences_per_s']:.1f} | {row['peak_rss_mib_per_rank']:.0f} | {row['rss_mib_after_model']:.0f} |"
        )
    lines += [
        "",
        "Every rank builds the whole model before DMP moves its shard of the rows (the copy made while "
        "sharding is why a rank's peak RSS is above the single process's); building the tables on the "
        "meta device and materialising only the local shard would remove that peak (not done yet).",
    ]
    paths[1].write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths[:2]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['processes']} proc\n{r['loss']}" for r in summary]
    ax.bar(range(len(summary)), [r["sequences_per_s"] for r in summary], color="tab:green")
    ax.set_xticks(range(len(summary)), labels, fontsize=8)
    ax.set_ylabel("sequences/s (global, median)")
    ax.set_title(f"{args.items:,} items, {args.feature_dim}-d features", fontsize=9)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.worker:
        worker(args)
        return
    from recsys.bench import machine

    info = machine.describe(ROOT, 2, peaks=False)
    runs = []
    for repeat in range(args.repeats):
        for processes in (1, 2):  # interleaved: 1, 2, 1, 2, ...
            print(f"[scale] repeat {repeat + 1}/{args.repeats}, {processes} process(es)", flush=True)
            runs += [{**row, "repeat": repeat} for row in measure(args, processes)]
    summary = summarise(runs)
    paths = write(args, info, runs, summary)
    print(paths[1].read_text())
    print("wrote", ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
