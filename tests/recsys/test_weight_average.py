"""trainer.ema_decay: the averaged weights are what validation, checkpoints and test see; raw weights
keep training; a resumed run equals an uninterrupted one; the average keeps the slicing invariant."""

import json

import pytest
import torch
from support import tiny_cfg

from recsys.builders import build_model
from recsys.config import validate
from recsys.training.checkpoint import load_checkpoint
from recsys.training.runner import run
from recsys.training.weight_average import WeightAverage


def test_update_follows_the_warm_up_formula_and_applied_restores_the_raw_weights():
    w = torch.nn.Parameter(torch.zeros(3))
    avg = WeightAverage([w], decay=0.9)
    expected = torch.zeros(3)
    for t, value in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        with torch.no_grad():
            w.fill_(value)
        b = min(0.9, (1 + t) / (10 + t))
        assert avg.current_decay() == pytest.approx(b)
        avg.update()
        expected = b * expected + (1 - b) * value
        torch.testing.assert_close(avg.shadow[0], expected)
    with avg.applied():
        torch.testing.assert_close(w.detach(), expected)
    torch.testing.assert_close(w.detach(), torch.full((3,), 8.0))  # raw weights back
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage([w], decay=1.0)


def test_checkpoints_hold_the_averaged_weights_as_model_and_the_raw_ones_to_resume(
    processed_dataset, tmp_path
):
    cfg = tiny_cfg(processed_dataset, "trainer.max_epochs=1", "trainer.ema_decay=0.9")
    out = run(cfg, tmp_path / "run")
    trainer = out["trainer"]
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["ema_updates"] == trainer.step > 0 and last["ema_decay"] == 0.9
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    shadow = dict(zip(names, trainer.ema.shadow, strict=True))
    differs = 0
    for name in names:
        torch.testing.assert_close(last["model"][name], shadow[name], rtol=0, atol=0, msg=name)
        differs += not torch.equal(last["model"][name], last["train_model"][name])
    assert differs > 0, "the averaged weights equal the raw ones: nothing was averaged"
    # metrics.json's test figures are the averaged model's (test_best loads "model")
    model = build_model(cfg, trainer.dataset)
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model"])
    trainer.model.load_state_dict(model.state_dict())
    again = trainer.evaluate("test")
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    for d in trainer.sizes:
        assert again[d]["ndcg@10"] == pytest.approx(written[str(d)]["ndcg@10"], abs=1e-12)


def test_resumed_averaged_run_equals_uninterrupted_run(processed_dataset, tmp_path):
    common = [
        "trainer.max_epochs=2",
        "backbone.dropout=0.2",
        "trainer.val_every_n_steps=5",
        "trainer.ema_decay=0.95",
    ]
    full = run(tiny_cfg(processed_dataset, *common), tmp_path / "full")
    run(tiny_cfg(processed_dataset, *common, "trainer.stop_after_steps=7"), tmp_path / "part")
    ckpt = tmp_path / "part" / "checkpoints" / "last.pt"
    resumed = run(tiny_cfg(processed_dataset, *common, f"resume={ckpt}"), tmp_path / "ignored")
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert resumed["trainer"].step == full["trainer"].step
    for key in ("model", "train_model"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0, msg=f"{key}.{name}")
    ma = json.loads((tmp_path / "full" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert ma["test"] == mb["test"]
    # a checkpoint with averaged weights is refused by a run without averaging (and named)
    allow = "resume_allow_changes=[trainer.ema_decay]"
    with pytest.raises(ValueError, match="was trained with trainer.ema_decay=0.95"):
        run(tiny_cfg(processed_dataset, *common[:-1], f"resume={ckpt}", allow), tmp_path / "x")


def test_the_averaged_model_keeps_the_slicing_invariant(processed_dataset, tmp_path):
    cfg = tiny_cfg(processed_dataset, "trainer.max_epochs=1", "trainer.ema_decay=0.9")
    trainer = run(cfg, tmp_path / "run")["trainer"]
    model = build_model(cfg, trainer.dataset)
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model"])
    model.eval()
    x, _ = next(trainer.dataset.train_batches(8, epoch=0, seed=0))
    with torch.no_grad():
        full = model.encode_last(x)  # (B, D)
        for d in trainer.sizes:
            torch.testing.assert_close(model.slice(d).encode_last(x), full[:, :d], rtol=1e-5, atol=1e-5)


def test_ema_decay_outside_zero_one_is_refused(processed_dataset):
    for bad in ("1.0", "-0.1"):
        with pytest.raises(ValueError, match="trainer.ema_decay"):
            validate(tiny_cfg(processed_dataset, f"trainer.ema_decay={bad}"))
