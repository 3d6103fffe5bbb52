"""Suite definitions and the interleaved runner: every measurement is one fresh worker process
(``worker.py``) with ``PYTHONPATH`` pointing at the tree under test."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")

# Shaped like ML-100K with 384-d text features; the model of the default config at D = dims[-1].
BASE = {
    "num_items": 1682,
    "feature_dim": 384,
    "batch": 32,
    "max_len": 50,
    "num_blocks": 1,
    "ffn_multiplier": 4,
    "dropout": 0.1,
    "seed": 0,
    "users": 943,
    "eval_batch": 256,
}
FULL = {"speed": {"dims": [256, 1024], "steps": 20, "warmup": 2}, "eval": {"dims": [256, 1024], "passes": 3}}
QUICK = {"speed": {"dims": [1024], "steps": 4, "warmup": 1}, "eval": {"dims": [1024], "passes": 2}}
MEASURED = ("speed", "eval")


def ladder_to(d: int) -> list[int]:
    """8, 16, ..., d (d itself always last)."""
    out, s = [], 8
    while s < d:
        out.append(s)
        s *= 2
    return [*out, d]


@dataclass(frozen=True)
class Config:
    name: str  # e.g. "D1024/ladder", "D1024/single", "D1024/published"
    dim: int
    nested: bool  # full ladder 8..D, else the single width D
    params: dict = field(hash=False, compare=False)
    this_tree_only: bool = False  # the same code whatever the tree (the published block): run once


def configs(suite: str, quick: bool, threads: int, overrides: dict) -> list[Config]:
    spec = {**(QUICK if quick else FULL)[suite], **{k: v for k, v in overrides.items() if v is not None}}
    out = []
    for d in spec["dims"]:
        for nested in (True, False):
            params = {
                **BASE,
                "suite": suite,
                "threads": threads,
                "ladder": ladder_to(d) if nested else [d],
                "steps": spec.get("steps", 0),
                "warmup": spec.get("warmup", 1),
                "passes": spec.get("passes", 0),
                "bf16": overrides.get("bf16"),  # None: each tree's own default (worker.tree_defaults)
            }
            out.append(Config(f"D{d}/{'ladder' if nested else 'single'}", d, nested, params))
        if suite == "speed" and not overrides.get("no_published"):
            # the published fMRLRec block, re-implemented (published.py): fp32, plain AdamW, as published
            params = {**out[-2].params, "model": "published", "bf16": False}
            out.append(Config(f"D{d}/published", d, True, params, this_tree_only=True))
    return out


def ablation_configs(quick: bool, threads: int, overrides: dict) -> list[Config]:
    """``--ablate``: the default training step at the largest D with every lever, then without each."""
    from recsys.bench.worker import LEVERS

    base = [c for c in configs("speed", quick, threads, overrides) if c.name.endswith("/ladder")][-1]
    d = base.dim
    out = [Config(f"D{d}/all levers", d, True, {**base.params, "without": None})]
    out += [Config(f"D{d}/without {lever}", d, True, {**base.params, "without": lever}) for lever in LEVERS]
    return out


def ablation_ratios(runs: list[dict], cfgs: list[Config], tree: str = "this tree") -> dict:
    """Per lever: seconds without it / seconds with every lever, pair by pair (> 1: the lever helps)."""
    seconds: dict = {}
    for x in runs:
        if x["tree"] == tree:
            seconds.setdefault(x["repeat"], {})[x["config"]] = per_run_value("speed", x["result"])["seconds"]
    full = cfgs[0].name
    out = {}
    for cfg in cfgs[1:]:
        ratios = [r[cfg.name] / r[full] for r in seconds.values() if cfg.name in r and full in r]
        out[cfg.name.split("without ", 1)[1]] = {"ratios": ratios, **stats(ratios)}
    return out


def run_worker(tree: Path, params: dict, timeout: float = 1800) -> dict:
    """One measurement in a fresh process against ``tree``'s recsys."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", str(params["threads"]))
    proc = subprocess.run(
        [sys.executable, str(WORKER), json.dumps({**params, "tree": str(tree)})],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed against {tree} ({params['ladder']}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(result["recsys_path"]).resolve() != (tree / "recsys").resolve():
        raise RuntimeError(f"worker imported recsys from {result['recsys_path']}, not from {tree}")
    if result.get("foreign_modules"):
        raise RuntimeError(f"worker imported modules from outside {tree}: {result['foreign_modules']}")
    return result


def per_run_value(suite: str, result: dict) -> dict:
    """The figures of one worker run: median time, throughput, GFLOP/s, memory."""
    if suite == "speed":
        sec = statistics.median(result["step_seconds"])
        return {
            "seconds": sec,
            # mean targets per step / median step time: one step slowed by another process moves the
            # median, not the rate (a sum over steps would carry the outlier in full)
            "tokens_per_s": statistics.mean(result["tokens"]) / sec,
            "gflops": result["flops_per_step"] / sec / 1e9,
            "flops": result["flops_per_step"],
            "peak_rss_mib": result["peak_rss_mib"],
        }
    sec = statistics.median(result["pass_seconds"])
    return {
        "seconds": sec,
        "users_per_s": result["users"] / sec,
        "gflops": result["flops_per_pass"] / sec / 1e9,
        "flops": result["flops_per_pass"],
        "peak_rss_mib": result["peak_rss_mib"],
    }


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run_suite(
    suite: str, trees: dict[str, Path], cfgs: list[Config], repeats: int, log=print
) -> tuple[list[dict], dict]:
    """Runs every (repeat, config, tree) INTERLEAVED: for each repeat and config, tree A then tree B.
    Returns (raw runs, summary {tree: {config: {metric: stats}}})."""
    runs = []
    for r in range(repeats):
        for cfg in cfgs:
            for label, tree in trees.items():
                if cfg.this_tree_only and label != "this tree":
                    continue
                log(f"[{suite}] repeat {r + 1}/{repeats} {cfg.name} @ {label}")
                result = run_worker(tree, cfg.params)
                runs.append({"repeat": r, "config": cfg.name, "tree": label, "result": result})
    summary: dict = {}
    for label in trees:
        summary[label] = {}
        for cfg in cfgs:
            if cfg.this_tree_only and label != "this tree":
                continue
            values = [
                per_run_value(suite, x["result"])
                for x in runs
                if x["tree"] == label and x["config"] == cfg.name
            ]
            summary[label][cfg.name] = {key: stats([v[key] for v in values]) for key in values[0]}
    return runs, summary


def pair_ratios(runs: list[dict], suite: str, cfgs: list[Config], base: str, new: str) -> dict:
    """Per config: seconds(base) / seconds(new) of each interleaved pair (> 1: ``new`` is faster)."""
    out = {}
    for cfg in cfgs:
        if cfg.this_tree_only:
            continue
        pairs = {}
        for x in runs:
            if x["config"] == cfg.name:
                pairs.setdefault(x["repeat"], {})[x["tree"]] = per_run_value(suite, x["result"])["seconds"]
        ratios = [p[base] / p[new] for p in pairs.values() if base in p and new in p]
        out[cfg.name] = {"ratios": ratios, **stats(ratios)}
    return out


def published_ratios(runs: list[dict], cfgs: list[Config], tree: str = "this tree") -> dict:
    """Per D: tokens/s of this tree's default step / tokens/s of the published block, pair by pair."""
    rate: dict = {}
    for x in runs:
        if x["tree"] == tree:
            rate.setdefault(x["repeat"], {})[x["config"]] = per_run_value("speed", x["result"])[
                "tokens_per_s"
            ]
    out = {}
    for d in sorted({c.dim for c in cfgs if c.name.endswith("/published")}):
        mine, theirs = f"D{d}/ladder", f"D{d}/published"
        ratios = [r[mine] / r[theirs] for r in rate.values() if mine in r and theirs in r]
        if ratios:
            out[f"D{d}"] = {"ratios": ratios, **stats(ratios)}
    return out


def nesting_ratios(summary: dict, cfgs: list[Config]) -> dict:
    """Per tree and D: median seconds of the full ladder / the single width D."""
    out = {}
    for label, by_cfg in summary.items():
        out[label] = {}
        for d in sorted({c.dim for c in cfgs}):
            ladder, single = by_cfg.get(f"D{d}/ladder"), by_cfg.get(f"D{d}/single")
            if ladder and single:
                out[label][f"D{d}"] = ladder["seconds"]["median"] / single["seconds"]["median"]
    return out
