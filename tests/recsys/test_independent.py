"""Independent baseline: one sub-run per size, combined metrics.json shaped like a nested run's."""

import json
import logging
import subprocess
import sys

import pytest
from support import tiny_cfg

from recsys.training.independent import run_independent, size_config


def test_size_config_is_a_single_size_model(processed_dataset):
    cfg = tiny_cfg(
        processed_dataset, "model.independent=true", "loss.size_weights=[1,2,3]", "trainer.monitor_size=8"
    )
    sub = size_config(cfg, 8)
    assert list(sub.model.ladder) == [8] and sub.model.width == 8 and sub.model.independent is False
    assert sub.loss.size_weights is None and sub.trainer.monitor_size is None
    assert cfg.model.width == 16  # the original is untouched


@pytest.mark.slow
def test_tiny_independent_run_writes_per_size_runs_and_combined_metrics(processed_dataset, tmp_path):
    cfg = tiny_cfg(
        processed_dataset,
        "model.independent=true",
        "trainer.max_epochs=1",
        "model.ladder=[4,8]",
        "model.width=8",
    )
    out = run_independent(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(out["metrics"]))
    assert metrics["independent"] is True and metrics["sizes"] == [4, 8]
    for split in ("validation", "test"):
        assert set(metrics[split]) == {"4", "8"}
        assert set(metrics[split]["8"]) == {
            f"{p}{m}@{k}" for p in ("", "unseen/") for m in ("recall", "ndcg", "mrr") for k in (5, 10)
        }
    for d in (4, 8):
        sub = tmp_path / "run" / f"d{d:04d}"
        sub_metrics = json.loads((sub / "metrics.json").read_text())
        assert sub_metrics["sizes"] == [d]
        assert sub_metrics["test"][str(d)] == metrics["test"][str(d)]
        assert (sub / "checkpoints" / "best.pt").is_file()
        assert metrics["train_time_s"][str(d)] > 0 and metrics["epochs"][str(d)] == 1


@pytest.mark.slow
def test_recsys_train_cli_dispatches_independent(processed_dataset, tmp_path):
    args = [
        "experiment=tiny",
        "data.name=generic",
        f"data.path={processed_dataset}",
        "model.independent=true",
        "trainer.max_epochs=1",
        "model.ladder=[4,8]",
        "model.width=8",
        f"run_dir={tmp_path / 'cli'}",
    ]
    subprocess.run(
        [sys.executable, "-m", "recsys.training.cli", *args], check=True, capture_output=True, timeout=300
    )
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"4", "8"} and (tmp_path / "cli" / "d0004" / "metrics.json").is_file()


@pytest.mark.slow
def test_resume_true_continues_killed_sizes_and_reuses_finished_ones(processed_dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="recsys")
    common = ["model.independent=true", "trainer.max_epochs=1", "model.ladder=[4,8]", "model.width=8"]
    whole = run_independent(tiny_cfg(processed_dataset, *common), tmp_path / "whole")["metrics"]
    # killed: every size stopped after 3 steps (a checkpoint, no test)
    run_independent(tiny_cfg(processed_dataset, *common, "trainer.stop_after_steps=3"), tmp_path / "run")
    assert not (tmp_path / "run" / "d0004" / "independent.json").is_file()
    caplog.clear()
    resumed = run_independent(tiny_cfg(processed_dataset, *common, "resume=true"), tmp_path / "run")
    resumed = resumed["metrics"]
    assert caplog.text.count("Resumed from") == 2 and caplog.text.count("at epoch 0, batch 3, step 3") == 2
    assert resumed["test"] == whole["test"] and resumed["validation"] == whole["validation"]
    assert resumed["epochs"] == whole["epochs"]
    # finished sizes are reused, not retrained: their checkpoints are left as they are
    best = tmp_path / "run" / "d0008" / "checkpoints" / "best.pt"
    stamp = best.stat().st_mtime_ns
    caplog.clear()
    again = run_independent(tiny_cfg(processed_dataset, *common, "resume=true"), tmp_path / "run")["metrics"]
    assert again["test"] == whole["test"] and again["train_time_s"] == resumed["train_time_s"]
    assert best.stat().st_mtime_ns == stamp and caplog.text.count("reused the finished run") == 2
    # a finished size trained with other settings is not silently reused
    with pytest.raises(ValueError, match="backbone.dropout"):
        run_independent(
            tiny_cfg(processed_dataset, *common, "resume=true", "backbone.dropout=0.3"), tmp_path / "run"
        )
    with pytest.raises(ValueError, match="resume=true"):
        run_independent(tiny_cfg(processed_dataset, *common, f"resume={best}"), tmp_path / "other")
