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


def test_ablation_turns_each_lever_off_in_its_own_process_and_reports_the_ratio(monkeypatch):
    cfgs = suites.ablation_configs(True, 1, {"dims": [16], "steps": 2})
    assert [c.params["without"] for c in cfgs] == [None, *load_worker().LEVERS]
    params = {**cfgs[0].params, "warmup": 1, "num_items": 40, "feature_dim": 8, "tree": str(ROOT)}
    results = {}
    for lever in (None, "packing", "triangular"):  # the ones that patch classes: own processes
        results[lever] = suites.run_worker(ROOT, {**params, "without": lever})
        assert results[lever]["without"] == lever
    # the levers change what runs: fewer FLOPs with packing and with the triangular pieces ...
    assert results["packing"]["flops_per_step"] > results[None]["flops_per_step"]
    assert results["triangular"]["flops_per_step"] > results[None]["flops_per_step"]
    # ... and not what is computed: same model, same batches, the same losses (up to bf16 rounding)
    for lever in ("packing", "triangular"):
        assert results[lever]["losses"] == pytest.approx(results[None]["losses"], rel=2e-2)
    p = {"bf16": True, "adamw": {"fused": True}}
    load_worker().turn_off("bf16", p)
    load_worker().turn_off("fused_adamw", p)
    assert p == {"bf16": False, "adamw": {}}
    from recsys.losses import matryoshka

    monkeypatch.setattr(matryoshka, "cpu_budget_bytes", matryoshka.cpu_budget_bytes)  # restored after
    load_worker().turn_off("loss_chunks", p)
    assert matryoshka.loss_budget_bytes(torch.device("cpu"), None) == 1 << 28
    from torch import nn

    from recsys.nn.dropout import Dropout

    monkeypatch.setattr(Dropout, "forward", Dropout.forward)  # restored after
    load_worker().turn_off("fast_dropout", p)
    assert Dropout.forward is nn.Dropout.forward
    with pytest.raises(ValueError, match="unknown lever"):
        load_worker().turn_off("magic", p)
    runs = [
        {"repeat": 0, "config": c.name, "tree": "this tree", "result": {**results[None], "step_seconds": [s]}}
        for c, s in zip(cfgs, [1.0, 2.0, 1.5, 1.0, 1.2, 1.1, 1.3, 1.1])
    ]
    ratios = suites.ablation_ratios(runs, cfgs)
    assert ratios["bf16"]["median"] == 2.0 and set(ratios) == set(load_worker().LEVERS)


def load_published():
    spec = importlib.util.spec_from_file_location(
        "recsys_bench_published", suites.WORKER.with_name("published.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_published_block_reimplementation_computes_its_recurrence():
    # the published scan: h_t = lambda * h_{t-1} * real_{t-1} + gamma * B x_t (state reset after padding)
    published = load_published()
    torch.manual_seed(0)
    lru = published.ComplexLRU((4, 8, 16), dropout=0.0, r_min=0.0, r_max=0.9)
    x = torch.randn(3, 8, 16)
    real = torch.ones(3, 8, dtype=torch.bool)
    real[0, :3] = False  # left padding (the published scan is exact for left padding only)
    nu, theta, gamma = torch.exp(lru.params_log)
    lam = torch.exp(torch.complex(-nu, theta))
    drive = lru.in_map(x.to(torch.cfloat)) * gamma
    h, states = torch.zeros(3, 16, dtype=torch.cfloat), []
    for t in range(8):
        h = (lam * h * real[:, t - 1 : t] if t > 0 else 0) + drive[:, t]
        states.append(h)
    with torch.no_grad():
        torch.testing.assert_close(lru(x, real), lru.out_map(torch.stack(states, 1)).real)
    # chunk j of a chunk linear reads only inputs [:s_j]: the slicing invariant holds there too
    lin = published.ChunkLinear((4, 8, 16))
    y = torch.randn(2, 16)
    z = y.clone()
    z[:, 8:] = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(lin(y)[:, :8], lin(z)[:, :8])
    model = published.PublishedStyleModel((4, 8, 16), num_items=30, feature_dim=6)
    seq = torch.randint(1, 31, (4, 10))
    seq[0, :4] = 0
    targets = torch.roll(seq, -1, 1)
    targets[seq == 0] = 0
    assert model.scores(seq).shape == (3 * 4, 10, 31)
    loss = model.loss(seq, targets)
    assert torch.isfinite(loss) and loss.requires_grad


def test_scale_suite_summarises_repeats_by_the_slower_rank_and_writes_its_files(tmp_path):
    from benchmarks import scale

    args = scale.parse(["--items", "1000", "--repeats", "2", "--out", str(tmp_path)])
    base = {
        "loss": "sampled_softmax",
        "global_batch": 64,
        "num_negatives": 1024,
        "peak_rss_mib_after_model": 100,
    }
    runs = [
        {**base, "world_size": 1, "rank": 0, "repeat": 0, "sec_per_step": 1.0, "peak_rss_mib": 300},
        {**base, "world_size": 1, "rank": 0, "repeat": 1, "sec_per_step": 3.0, "peak_rss_mib": 310},
        {**base, "world_size": 2, "rank": 0, "repeat": 0, "sec_per_step": 0.4, "peak_rss_mib": 200},
        {**base, "world_size": 2, "rank": 1, "repeat": 0, "sec_per_step": 0.6, "peak_rss_mib": 250},
        {**base, "world_size": 2, "rank": 0, "repeat": 1, "sec_per_step": 0.5, "peak_rss_mib": 210},
        {**base, "world_size": 2, "rank": 1, "repeat": 1, "sec_per_step": 0.5, "peak_rss_mib": 220},
    ]
    summary = scale.summarise(runs)
    one, two = summary
    assert one["sec_per_step"]["median"] == 2.0 and one["peak_rss_mib_per_rank"] == 310
    assert two["sec_per_step"]["max"] == 0.6 and two["sec_per_step"]["median"] == pytest.approx(0.55)
    assert two["sequences_per_s"] == pytest.approx(64 / 0.55)
    paths = scale.write(args, machine.describe(ROOT, 1, peaks=False), runs, summary)
    text = (tmp_path / "scale.md").read_text()
    assert "| 2 | sampled_softmax | 1024 | 0.550 [0.500, 0.600]" in text and "Commit:" in text
    assert json.loads((tmp_path / "scale.json").read_text())["summary"] == summary
    assert (tmp_path / "scale.png") in paths
