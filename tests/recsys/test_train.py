"""End-to-end training on a small dataset: loss drops, early stopping, exact resume, TensorBoard."""

import json

import pytest
import torch
from support import tiny_cfg
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from recsys.data import SequenceDataset
from recsys.evaluation.evaluate import evaluate_split
from recsys.training.trainer import Trainer, run


@pytest.mark.parametrize(
    "overrides, min_recall",
    [
        pytest.param(["trainer.max_epochs=6"], 0.4, id="lru"),
        pytest.param(["backbone=sasrec", "backbone.num_blocks=1", "backbone.dropout=0.0", "trainer.max_epochs=4"],
                     0.3, id="sasrec", marks=pytest.mark.slow),
    ],
)
def test_loss_drops_and_metrics_beat_chance(processed_dataset, tmp_path, overrides, min_recall):
    cfg = tiny_cfg(processed_dataset, *overrides, "trainer.optimizer.lr=0.01")
    trainer = Trainer(cfg, tmp_path / "run")
    x, y = next(trainer.dataset.train_batches(64, epoch=0, seed=0))
    trainer.model.eval()
    with torch.no_grad():
        before = float(trainer.model.loss(x, y)[0])
    trainer.fit()
    trainer.model.eval()
    with torch.no_grad():
        after = float(trainer.model.loss(x, y)[0])
    assert after < 0.8 * before
    results = trainer.evaluate("validation")
    # 60 items: a random ranking gives Recall@10 ~ 1/6
    assert results[16]["recall@10"] > min_recall
    trainer.tb.close()


def test_run_writes_metrics_plot_checkpoints_and_tensorboard(processed_dataset, tmp_path):
    cfg = tiny_cfg(processed_dataset, "trainer.max_epochs=2")
    out = run(cfg, tmp_path / "run")
    run_dir = out["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"4", "8", "16"}
    assert set(metrics["test"]["16"]) == {f"{m}@{k}" for m in ("recall", "ndcg", "mrr") for k in (5, 10)}
    assert metrics["filter_history"] is False
    assert (run_dir / "metrics_vs_size.png").stat().st_size > 1000
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for size in (4, 8, 16):
        assert f"val/recall@10/d{size:04d}" in tags
        assert f"val/ndcg@10/d{size:04d}" in tags
        assert f"train/loss/d{size:04d}" in tags
    values = [e.value for e in events.Scalars("val/ndcg@10/d0016")]
    assert len(values) == 2 and all(0 <= v <= 1 for v in values)
    assert events.Tags()["images"], "metric-vs-size plot missing from TensorBoard"


def test_early_stopping_stops_when_the_metric_stalls(processed_dataset, tmp_path):
    cfg = tiny_cfg(processed_dataset, "trainer.max_epochs=10", "trainer.patience=2", "trainer.optimizer.lr=1e-12")
    out = run(cfg, tmp_path / "run")
    assert out["reason"] == "early_stopping"
    assert out["trainer"].epoch == 3  # first validation sets the best, two more without improvement


def test_resumed_run_equals_uninterrupted_run(processed_dataset, tmp_path):
    common = ["trainer.max_epochs=3", "backbone.dropout=0.2", "trainer.val_every_n_steps=5"]
    full = run(tiny_cfg(processed_dataset, *common), tmp_path / "full")
    # killed mid-epoch (step 7 is neither an epoch end nor a validation), then resumed
    part = run(tiny_cfg(processed_dataset, *common, "trainer.stop_after_steps=7"), tmp_path / "part")
    assert part["reason"] == "stop_after_steps" and part["trainer"].step == 7
    ckpt = tmp_path / "part" / "checkpoints" / "last.pt"
    resumed = run(tiny_cfg(processed_dataset, *common, f"resume={ckpt}"), tmp_path / "ignored")
    assert resumed["run_dir"] == tmp_path / "part"
    a, b = full["trainer"].model.state_dict(), resumed["trainer"].model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    ma = json.loads((tmp_path / "full" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert ma["test"] == mb["test"] and ma["validation"] == mb["validation"]


def test_all_sizes_evaluation_equals_evaluating_each_slice(processed_dataset, tmp_path):
    cfg = tiny_cfg(processed_dataset, "trainer.max_epochs=1")
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    split = SequenceDataset(processed_dataset, max_len=10).split("test")
    together = evaluate_split(trainer.model, split, ks=(5, 10)).compute()
    for d in (4, 8, 16):
        alone = evaluate_split(trainer.model.slice(d), split, ks=(5, 10)).compute()
        assert alone[d] == pytest.approx(together[d], abs=1e-9)
    trainer.tb.close()
