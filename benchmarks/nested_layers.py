"""Micro-benchmark: one training step (projector + LRU backbone + all-sizes loss), nested vs loop.

    python -m benchmarks.nested_layers            # full size: D=1024, ladder 8..1024, N=20k, B=32, L=50
    python -m benchmarks.nested_layers --quick    # smaller shapes, seconds

Two variants of the SAME model (same weights, same batch), forward + backward:

- ``nested`` (ours): every NestedLinear is one masked GEMM; all-sizes loss fused (per-chunk
  partial scores, cumulative sum, gradients computed chunk by chunk, memory budget).
- ``loop`` (the straightforward fMRLRec-style implementation): every nested linear runs one
  small linear per ladder chunk and concatenates; the loss runs one full-catalog matmul and one
  cross-entropy per size.

Each variant runs in its own subprocess. Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
during the step; on CPU the rise of the process's peak RSS (``ru_maxrss``) over its resident
size just before the first step. Time: median of the timed steps after one warm-up step.
Writes benchmarks/results/nested_layers.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn import LRUConfig
from recsys.nn.nested import NestedLinear, chunk_bounds

FULL = {"ladder": (8, 16, 32, 64, 128, 256, 512, 1024), "num_items": 20_000, "batch": 32, "length": 50}
QUICK = {"ladder": (8, 16, 32, 64, 128, 256), "num_items": 5_000, "batch": 16, "length": 20}
FEATURE_DIM = 384  # a sentence-transformers text encoder's width
RESULTS = Path(__file__).parent / "results" / "nested_layers.md"


def loop_linear_forward(self: NestedLinear, x: torch.Tensor) -> torch.Tensor:
    """One small linear per output chunk j, reading inputs [:k_in*s_j] (or all of a flat input)."""
    outs = []
    for (a, b), s in zip(chunk_bounds(self.ladder, self.k_out), self.ladder):
        cols = self.k_in * s if self.nested_input else self.weight.shape[1]
        bias = self.bias[a:b] if self.bias is not None else None
        outs.append(F.linear(x[..., :cols], self.weight[a:b, :cols], bias))
    return torch.cat(outs, dim=-1)


def loop_loss(model: MatryoshkaRecModel, seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One full-catalog matmul + cross-entropy per size, equal weights."""
    items = model.item_embeddings()
    hidden = model.encode(seq, items)
    keep = targets != 0
    hidden, targets = hidden[keep], targets[keep]
    total = 0.0
    for d in model.ladder:
        logits = hidden[:, :d] @ items[:, :d].T  # (P, N+1)
        logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
        total = total + F.cross_entropy(logits, targets) / len(model.ladder)
    return total


def build(shapes: dict, device: torch.device, variant: str):
    torch.manual_seed(0)
    config = ModelConfig(ladder=shapes["ladder"], backbone=LRUConfig(dropout=0.0))
    model = MatryoshkaRecModel(config, shapes["num_items"], {"text": FEATURE_DIM})
    model.load_item_features({"text": torch.randn(shapes["num_items"] + 1, FEATURE_DIM)})
    model = model.to(device).train()
    if variant == "loop":
        for module in model.modules():
            if isinstance(module, NestedLinear):
                module.forward = types.MethodType(loop_linear_forward, module)
    seq = torch.randint(1, shapes["num_items"] + 1, (shapes["batch"], shapes["length"]), device=device)
    seq[: shapes["batch"] // 4, : shapes["length"] // 2] = 0  # some left padding
    targets = torch.roll(seq, -1, 1)
    targets[seq == 0] = 0
    return model, seq, targets


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_variant(variant: str, quick: bool, steps: int) -> dict:
    """In this process: peak memory of the first step, then median time of ``steps`` steps."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, seq, targets = build(QUICK if quick else FULL, device, variant)

    def step():
        model.zero_grad(set_to_none=True)
        loss = loop_loss(model, seq, targets) if variant == "loop" else model.loss(seq, targets)[0]
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = current_rss_bytes()
        loss = step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "loss": loss,
        "seconds": statistics.median(times),
        "min_seconds": min(times),
        "peak_bytes": peak,
    }


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        return f"CPU {names[0]} ({os.cpu_count()} cores)"
    except (OSError, IndexError):
        return f"CPU {platform.processor()} ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: robust on a shared machine)")
    parser.add_argument("--variant", choices=["nested", "loop"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.quick, args.steps)))
        return
    results = {}
    for variant in ("loop", "nested"):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.nested_layers",
            "--variant",
            variant,
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        proc = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"variant {variant} failed:\n{proc.stderr}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    shapes = QUICK if args.quick else FULL
    loop, ours = results["loop"], results["nested"]
    mib = 1 << 20
    table = "\n".join(
        [
            f"# Nested layers micro-benchmark ({'quick' if args.quick else 'full'} size)",
            "",
            f"Device: {device_name()}; torch {torch.__version__}; {args.threads} CPU thread(s).",
            f"One training step (forward + backward): projector (F={FEATURE_DIM}) + LRU backbone "
            f"(2 blocks, FFN 4D) + all-sizes loss. D={shapes['ladder'][-1]}, ladder {shapes['ladder']}, "
            f"catalog {shapes['num_items']} items, batch {shapes['batch']}, length {shapes['length']}.",
            f"Time: median of {args.steps} steps after a warm-up. Peak memory: "
            + (
                "CUDA max allocated during the step."
                if torch.cuda.is_available()
                else "rise of peak RSS over "
                "the resident size before the first step (one subprocess per variant)."
            ),
            "",
            "| variant | step time, median (s) | min (s) | peak step memory (MiB) | loss |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| loop (one linear per chunk, one matmul per size) | {loop['seconds']:.3f} | "
            f"{loop['min_seconds']:.3f} | {loop['peak_bytes'] / mib:.0f} | {loop['loss']:.4f} |",
            f"| nested (masked GEMM, fused all-sizes loss) | {ours['seconds']:.3f} | "
            f"{ours['min_seconds']:.3f} | {ours['peak_bytes'] / mib:.0f} | {ours['loss']:.4f} |",
            f"| **ratio loop / nested** | **{loop['seconds'] / ours['seconds']:.2f}x** | "
            f"**{loop['min_seconds'] / ours['min_seconds']:.2f}x** | "
            f"**{loop['peak_bytes'] / max(ours['peak_bytes'], 1):.2f}x** | |",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
