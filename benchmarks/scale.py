"""Scale benchmark (not a test): synthetic catalog with real-sized feature tables, 1 vs 2 CPU processes.

    python benchmarks/scale.py --items 1000000 --feature-dim 384 --steps 5
    torchrun --nproc_per_node=2 benchmarks/scale.py --items 1000000 --feature-dim 384 --steps 5

Reports per-rank peak RSS and throughput (sequences/s) for the full and the sampled Matryoshka
softmax, with the feature table sharded by torchrec (row_wise) when run under torchrun.
Appends one JSON line per (world_size, loss) to benchmarks/results/scale.jsonl.
"""

from __future__ import annotations

import argparse
import json
import resource
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--feature-dim", type=int, default=384)
    ap.add_argument("--ladder", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--num-negatives", type=int, default=1024)
    ap.add_argument("--losses", nargs="+", default=["sampled_softmax", "full_softmax"])
    ap.add_argument("--sharding", default="row_wise")
    args = ap.parse_args()
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
        print(json.dumps(row), flush=True)
        out = Path(__file__).parent / "results" / "scale.jsonl"
        out.parent.mkdir(exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
