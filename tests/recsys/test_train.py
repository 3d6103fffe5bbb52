"""End-to-end training on a small dataset: loss drops, early stopping, exact resume, TensorBoard, and
the one step path equal to the old single-process step."""

import itertools
import json

import pytest
import torch
from hydra.utils import instantiate
from support import tiny_cfg
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from recsys.builders import build_dataset, build_model
from recsys.data import SequenceDataset
from recsys.evaluation.cli import main as eval_main
from recsys.evaluation.evaluate import evaluate_split
from recsys.losses.matryoshka import full_softmax_sum
from recsys.losses.sampled import item_popularity, sample_negatives, sampled_softmax_sum
from recsys.training.early_stopping import EarlyStopping
from recsys.training.runner import run
from recsys.training.trainer import Trainer, seed_everything, warmup_cosine


@pytest.mark.parametrize(
    "overrides, min_recall",
    [
        pytest.param(["trainer.max_epochs=6"], 0.4, id="lru"),
        pytest.param(
            ["backbone=sasrec", "backbone.num_blocks=1", "backbone.dropout=0.0", "trainer.max_epochs=4"],
            0.3,
            id="sasrec",
            marks=pytest.mark.slow,
        ),
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
    assert set(metrics["protocols"]) == {"all", "unseen"}
    for size in ("4", "16"):  # both protocols, every metric and k
        assert set(metrics["test"][size]) == {
            f"{p}{m}@{k}" for p in ("", "unseen/") for m in ("recall", "ndcg", "mrr") for k in (5, 10)
        }
        for name, value in metrics["test"][size].items():  # leaving seen items out never hurts the target
            if name.startswith("unseen/"):
                assert value >= metrics["test"][size][name.removeprefix("unseen/")] - 1e-12
    assert (run_dir / "metrics_vs_size.png").stat().st_size > 1000
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    for size in (4, 8, 16):  # one TensorBoard run per size (tb/d0004, ...), the same tags in each
        events = EventAccumulator(str(run_dir / "tb" / f"d{size:04d}"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"val/recall@10", "val/ndcg@10", "val/unseen/ndcg@10", "train/loss"} <= tags
    values = [e.value for e in events.Scalars("val/ndcg@10")]
    assert len(values) == 2 and all(0 <= v <= 1 for v in values)
    events = EventAccumulator(str(run_dir / "tb" / "train"))
    events.Reload()
    assert events.Tags()["images"], "metric-vs-size plot missing from TensorBoard"


def test_recsys_eval_of_the_best_checkpoint_reproduces_the_test_metrics(processed_dataset, tmp_path, capsys):
    out = run(tiny_cfg(processed_dataset, "trainer.max_epochs=1"), tmp_path / "run")
    eval_main([f"run_dir={out['run_dir']}", "split=test", "checkpoint=best"])
    assert "test metrics of" in capsys.readouterr().out
    written = json.loads((out["run_dir"] / "eval_test_best.json").read_text())
    assert written["metrics"] == json.loads((out["run_dir"] / "metrics.json").read_text())["test"]


def test_select_last_tests_exports_and_evaluates_the_weights_training_stopped_with(
    processed_dataset, tmp_path, capsys
):
    common = ["trainer.max_epochs=3", "trainer.val_every_n_steps=2", "trainer.patience=0"]
    out = run(tiny_cfg(processed_dataset, *common, "trainer.select=last"), tmp_path / "last")
    ckpts = out["run_dir"] / "checkpoints"
    metrics = json.loads((out["run_dir"] / "metrics.json").read_text())
    trainer = out["trainer"]
    assert metrics["selection"] == "last" and metrics["best_step"] == trainer.step
    assert metrics["best_validation_step"] == trainer.early_stopping.best_step
    assert metrics["best_seconds"] is not None
    best = torch.load(ckpts / "best.pt", weights_only=True)
    last = torch.load(ckpts / "last.pt", weights_only=True)
    assert best["step"] == last["step"] == trainer.step
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    # what recsys-eval (and recsys-export) read by default is what was tested
    eval_main([f"run_dir={out['run_dir']}", "split=test", "checkpoint=last"])
    assert "test metrics of" in capsys.readouterr().out
    assert json.loads((out["run_dir"] / "eval_test_last.json").read_text())["metrics"] == metrics["test"]
    # the default keeps the best validation checkpoint, which is an earlier one here or the same
    out_best = run(tiny_cfg(processed_dataset, *common), tmp_path / "best")
    metrics_best = json.loads((out_best["run_dir"] / "metrics.json").read_text())
    assert metrics_best["selection"] == "best"
    assert (
        metrics_best["best_step"] == metrics_best["best_validation_step"] == metrics["best_validation_step"]
    )
    assert (
        torch.load(out_best["run_dir"] / "checkpoints" / "best.pt", weights_only=True)["step"]
        == (metrics_best["best_step"])
    )


def test_select_must_be_best_or_last(processed_dataset, tmp_path):
    with pytest.raises(ValueError, match="trainer.select must be one of"):
        run(tiny_cfg(processed_dataset, "trainer.select=worst"), tmp_path / "run")


def test_early_stopping_stops_when_the_metric_stalls(processed_dataset, tmp_path):
    cfg = tiny_cfg(
        processed_dataset, "trainer.max_epochs=10", "trainer.patience=2", "trainer.optimizer.lr=1e-12"
    )
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


def test_max_minutes_stops_validates_tests_and_resumes_with_a_larger_budget(processed_dataset, tmp_path):
    common = ["trainer.max_epochs=3", "trainer.val_every_n_steps=0"]
    # a budget of ~6 ms: the first step already reaches it (mid-epoch, no validation yet)
    out = run(tiny_cfg(processed_dataset, *common, "trainer.max_minutes=0.0001"), tmp_path / "run")
    trainer = out["trainer"]
    assert out["reason"] == "max_minutes" and trainer.step == 1
    assert [v["step"] for v in trainer.val_history] == [1]  # the last step is validated
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_step"] == 1 and set(metrics["test"]) == {str(d) for d in trainer.sizes}
    # the budget may differ on resume: the run goes on to max_epochs
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    resumed = run(tiny_cfg(processed_dataset, *common, f"resume={ckpt}"), tmp_path / "ignored")
    assert resumed["reason"] == "max_epochs" and resumed["trainer"].step > 1
    with pytest.raises(ValueError, match="trainer.max_minutes"):
        Trainer(tiny_cfg(processed_dataset, "trainer.max_minutes=-1"), tmp_path / "bad")


def test_early_stopping_counts_non_finite_values_as_bad_and_round_trips_its_state():
    stopper = EarlyStopping("ndcg@10", size=16, patience=2)
    improved = [stopper.update(v, step) for step, v in enumerate([0.2, float("nan"), 0.3, 0.1])]
    assert improved == [True, False, True, False]
    assert stopper.state_dict() == {"best_value": 0.3, "best_step": 2, "bad_validations": 1}
    assert not stopper.should_stop
    assert not stopper.update(float("inf"), 4) and stopper.should_stop
    restored = EarlyStopping("ndcg@10", size=16, patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert restored.state_dict() == stopper.state_dict() and restored.should_stop


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


# ---------------------------------------------------------------- one step path == the old single-process one
STEPS = 8  # one epoch of the tiny dataset at batch size 32
# dropout on (the step consumes the global RNG), trainable id table, clipping active on most steps
EQUIVALENCE = [
    "backbone.dropout=0.2",
    "model.use_id_table=true",
    "trainer.grad_clip=5.0",
    "trainer.optimizer.lr=0.01",
]
LOSSES = {  # name: (sampled, overrides)
    "full_softmax": (False, []),
    "sampled_uniform": (True, ["loss=sampled_softmax", "loss.num_negatives=16"]),
    "sampled_popularity": (
        True,
        ["loss=sampled_softmax", "loss.num_negatives=16", "loss.sampler=popularity"],
    ),
}


def _reference_steps(cfg, steps: int, sampled: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The single-process step as it was before the step paths were merged, from public pieces only.

    Full softmax: the mean Matryoshka CE of ``model.loss`` backpropagated as is. Sampled softmax:
    the summed loss divided by the batch's target count, negatives from a generator seeded by
    (seed, step). Both: ``clip_grad_norm_`` over ``model.parameters()``, AdamW, warmup + cosine.
    """
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    dataset = build_dataset(cfg)
    model = build_model(cfg, dataset)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.trainer.optimizer)(params)
    total_steps = cfg.trainer.max_epochs * dataset.num_train_batches(cfg.trainer.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.trainer.warmup_steps, total_steps, cfg.trainer.min_lr_ratio)
    )
    popularity = item_popularity(dataset._train_targets, dataset.num_items) if sampled else None
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = []
    model.train()
    batches = dataset.train_batches(cfg.trainer.batch_size, epoch=0, seed=cfg.seed)
    for step, (inputs, targets) in zip(range(steps), batches):
        if sampled:
            gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 1009)
            q = popularity if cfg.loss.sampler == "popularity" else None
            negatives = sample_negatives(int(cfg.loss.num_negatives), model.num_items, gen, q)
            total, _, count = sampled_softmax_sum(model, inputs, targets, None, negatives, popularity, q)
            loss = total / count
        else:
            loss, _ = model.loss(inputs, targets, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert max(float((final[k] - initial[k]).abs().max()) for k in final) > 1e-3  # it did train
    return losses, final


@pytest.mark.parametrize("loss", list(LOSSES))
def test_one_step_path_equals_the_old_single_process_step(processed_dataset, tmp_path, loss):
    sampled, overrides = LOSSES[loss]
    cfg = tiny_cfg(processed_dataset, *EQUIVALENCE, *overrides)
    ref_losses, ref_state = _reference_steps(cfg, STEPS, sampled)
    trainer = Trainer(cfg, tmp_path / "run")
    losses = []
    batches = trainer.dataset.train_batches(cfg.trainer.batch_size, epoch=0, seed=cfg.seed)
    for inputs, targets in itertools.islice(batches, STEPS):
        losses.append(trainer.train_step(inputs, targets)[0])
        trainer.step += 1
    trainer.tb.close()
    state = trainer.model.state_dict()
    loss_diff = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
    weight_diff = max(float((state[k] - ref_state[k]).abs().max()) for k in ref_state)
    print(f"{loss}: max relative loss difference {loss_diff:.2e}, max weight difference {weight_diff:.2e}")
    assert len(losses) == STEPS
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    assert state.keys() == ref_state.keys()
    for key in ref_state:
        torch.testing.assert_close(state[key], ref_state[key], rtol=1e-5, atol=1e-6, msg=key)


def test_sampled_softmax_training_lowers_the_full_softmax_loss(processed_dataset, tmp_path):
    cfg = tiny_cfg(processed_dataset, "loss=sampled_softmax", "loss.num_negatives=16", "trainer.max_epochs=4")
    trainer = Trainer(cfg, tmp_path / "run")
    x, y = next(trainer.dataset.train_batches(64, epoch=0, seed=0))

    def full_loss():
        with torch.no_grad():
            total, _, count = full_softmax_sum(trainer.model, x, y, None)
        return float(total) / count

    before = full_loss()
    trainer.fit()
    assert full_loss() < 0.8 * before
    trainer.tb.close()


def test_a_run_logs_a_summary_line_and_plain_progress_lines_when_not_on_a_terminal(
    processed_dataset, tmp_path, caplog, capsys
):
    import logging

    caplog.set_level(logging.INFO, logger="recsys.training.trainer")
    trainer = Trainer(
        tiny_cfg(processed_dataset, "trainer.progress=true", "trainer.max_epochs=1"), tmp_path / "r"
    )
    trainer.fit()
    lines = [r.getMessage() for r in caplog.records]
    summary = lines[0]
    for part in ("120 users", "60 items", "ladder [4, 8, 16]", "d16 5,312", "device cpu", "fp32"):
        assert part in summary, (part, summary)
    progress = [line for line in lines if line.startswith("step ") and "/" in line.split()[1]]
    assert progress and progress[-1].startswith(f"step {trainer.total_steps}/{trainer.total_steps}")
    assert "\r" not in capsys.readouterr().err  # no progress-bar redraws into a log
