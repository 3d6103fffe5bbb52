"""recsys-bench: the speed and eval workers on a tiny configuration, the report, and --compare."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from recsys.bench import cli, machine, report, suites

ROOT = Path(__file__).resolve().parents[2]


def load_worker():
    spec = importlib.util.spec_from_file_location("recsys_bench_worker", suites.WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(suite: str, nested: bool = True) -> dict:
    overrides = {"dims": [16], "steps": 3, "passes": 1}
    cfgs = suites.configs(suite, True, 1, overrides)
    params = next(c.params for c in cfgs if c.nested == nested)
    return {**params, "warmup": 1, "num_items": 40, "users": 20, "feature_dim": 8}


def test_speed_worker_measures_distinct_batches_flops_and_memory():
    worker = load_worker()
    threads = torch.get_num_threads()
    try:
        result = worker.run_speed(tiny("speed"))
    finally:
        torch.set_num_threads(threads)
    assert len(result["step_seconds"]) == 3 and all(t > 0 for t in result["step_seconds"])
    assert all(n > 0 for n in result["tokens"]) and result["flops_per_step"] > 0
    assert result["peak_rss_mib"] > 0 and result["api"] == "backbone_config"
    value = suites.per_run_value("speed", result)
    assert value["seconds"] > 0 and value["tokens_per_s"] > 0 and value["gflops"] > 0
    # distinct batches: not one batch repeated
    batches = worker.make_batches(tiny("speed"), 3)
    assert not torch.equal(batches[0][0], batches[1][0])
    inputs, targets = batches[0]
    assert bool((targets[inputs == 0] == 0).all()) and bool((inputs[:, -1] != 0).all())


def test_eval_worker_times_full_ranking_passes():
    result = load_worker().run_eval(tiny("eval"))
    assert len(result["pass_seconds"]) == 1 and result["pass_seconds"][0] > 0
    assert result["flops_per_pass"] > 0 and result["users"] == 20 and result["peak_rss_mib"] > 0


def test_machine_section_and_report_have_the_fields(tmp_path):
    info = machine.describe(ROOT, 1, peaks=False)
    assert (
        info["cpu"]["model"] and "avx512_bf16" in info["cpu"]["flags"] and "amx_bf16" in info["cpu"]["flags"]
    )
    assert info["versions"]["torch"] and info["torch_threads"] == 1 and "command" in info
    peak = machine.matmul_peak(torch.float32, repeats=3, shape=(64, 64, 64))
    assert peak["gflops"] > 0 and len(peak["seconds"]) == 3
    info["matmul_peak"] = {"fp32": peak, "bf16": {**peak, "dtype": "bfloat16"}}
    run = {
        "step_seconds": [0.2, 0.1, 0.3],
        "tokens": [10, 10, 10],
        "flops_per_step": 10**9,
        "peak_rss_mib": 9.0,
    }
    cfgs = suites.configs("speed", True, 1, {"dims": [16]})
    runs = [
        {"repeat": r, "config": c.name, "tree": t, "result": run}
        for r in range(3)
        for c in cfgs
        for t in ("a", "b")
    ]
    summary = {t: {c.name: {"seconds": suites.stats([0.2] * 3)} for c in cfgs} for t in ("a", "b")}
    for t in summary:
        for c in cfgs:
            values = [suites.per_run_value("speed", run)] * 3
            summary[t][c.name] = {k: suites.stats([v[k] for v in values]) for k in values[0]}
    doc = {
        "suite": "speed",
        "quick": True,
        "repeats": 3,
        "steps": 3,
        "passes": 0,
        "params": cfgs[0].params,
        "machine": info,
        "summary": summary,
        "nesting_ratio": suites.nesting_ratios(summary, cfgs),
        "compare": {
            "ref": "b",
            "ref_commit": "0" * 40,
            "ratios": suites.pair_ratios(runs, "speed", cfgs, "b", "a"),
        },
    }
    paths = report.write("speed", doc, tmp_path)
    text = (tmp_path / "speed.md").read_text()
    assert "Measured matmul peak fp32" in text and "| D16/ladder | **1.00x**" in text
    assert json.loads(paths[0].read_text())["machine"]["cpu"]["model"]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("git") is None
    or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0,
    reason="needs git and a git checkout",
)
def test_compare_head_runs_both_trees_interleaved_and_gives_positive_ratios(tmp_path):
    def bench_worktrees() -> set[str]:  # worktrees of recsys-bench runs (a killed earlier run may leave one)
        listing = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True)
        return {line.split()[0] for line in listing.stdout.splitlines() if "recsys-bench-" in line}

    before = bench_worktrees()
    cli.main(
        ["speed", "--dims", "16", "--steps", "1", "--repeats", "1", "--only", "ladder", "--no-peak"]
        + ["--threads", "1", "--compare", "HEAD", "--out", str(tmp_path)]
    )
    doc = json.loads((tmp_path / "speed.json").read_text())
    assert [r["tree"] for r in doc["runs"]] == ["this tree", "HEAD"]
    assert doc["runs"][1]["result"]["recsys_path"] != doc["runs"][0]["result"]["recsys_path"]
    ratio = doc["compare"]["ratios"]["D16/ladder"]
    assert ratio["n"] == 1 and ratio["median"] > 0
    assert doc["machine"]["git"]["commit"] and (tmp_path / "speed.md").is_file()
    assert bench_worktrees() <= before, "the compare worktree was not removed"
