"""bf16 mixed precision (``trainer.precision``): where it is chosen, and that bf16 training and
evaluation agree with fp32 within stated tolerances."""

import pytest
import torch
from support import tiny_cfg

from recsys.evaluation.evaluate import evaluate_split
from recsys.training import precision
from recsys.training.trainer import Trainer

# Stated tolerances of bf16 against fp32 (bf16 keeps 8 mantissa bits, ~3 significant digits):
LOSS_RTOL = 0.02  # training loss at every one of the first 30 steps, same data, same seed
METRIC_ATOL = 0.03  # validation NDCG@10 / Recall@10 at every size after those steps (tiny data)


def test_precision_setting_resolves_by_device_and_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    assert precision.autocast_dtype("fp32", cpu) is None
    assert precision.autocast_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.autocast_dtype("auto", cpu) is None  # bf16 would be emulated: slower than fp32
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.autocast_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16", "amx_tile"}))
    assert precision.autocast_dtype("auto", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="trainer.precision"):
        precision.autocast_dtype("fp16", cpu)


def test_config_rejects_an_unknown_precision(processed_dataset, tmp_path):
    with pytest.raises(ValueError, match="trainer.precision"):
        Trainer(tiny_cfg(processed_dataset, "trainer.precision=half"), tmp_path / "run")


def _train(dataset, run_dir, name: str, steps: int = 30):
    trainer = Trainer(tiny_cfg(dataset, f"trainer.precision={name}", "backbone.dropout=0.0"), run_dir)
    losses = []
    batches = trainer.dataset.train_batches(trainer.cfg.trainer.batch_size, 0, trainer.cfg.seed)
    epoch = 0
    while len(losses) < steps:
        for inputs, targets in batches:
            losses.append(trainer.train_step(inputs, targets)[0])
            if len(losses) == steps:
                break
        epoch += 1
        batches = trainer.dataset.train_batches(trainer.cfg.trainer.batch_size, epoch, trainer.cfg.seed)
    return trainer, torch.tensor(losses)


def test_bf16_training_and_evaluation_agree_with_fp32(processed_dataset, tmp_path):
    fp32, fp32_losses = _train(processed_dataset, tmp_path / "fp32", "fp32")
    bf16, bf16_losses = _train(processed_dataset, tmp_path / "bf16", "bf16")
    assert fp32.autocast_dtype is None and bf16.autocast_dtype is torch.bfloat16
    assert fp32_losses[-1] < fp32_losses[0] * 0.9  # it learns, so the comparison means something
    rel = ((bf16_losses - fp32_losses).abs() / fp32_losses).max()
    assert rel <= LOSS_RTOL, f"bf16 loss differs from fp32 by {rel:.4f} (relative) > {LOSS_RTOL}"
    assert not torch.equal(bf16_losses, fp32_losses)  # bf16 really ran
    a, b = fp32.evaluate("validation"), bf16.evaluate("validation")
    for d in fp32.sizes:
        for metric in ("ndcg@10", "recall@10"):
            assert abs(a[d][metric] - b[d][metric]) <= METRIC_ATOL, (d, metric, a[d][metric], b[d][metric])


def test_evaluation_runs_in_fp32_whatever_the_training_precision(processed_dataset, tmp_path):
    # the trainer autocasts only the training step: evaluation scores equal a plain fp32 scoring
    trainer, _ = _train(processed_dataset, tmp_path / "bf16", "bf16", steps=3)
    trainer.model.eval()
    seq = trainer.dataset.split("validation").inputs[:16]
    with torch.no_grad():
        plain = trainer.model.score(seq, dtype=torch.float64)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = trainer.model.score(seq, dtype=torch.float64)
    assert not torch.equal(plain, cast)  # autocast would change the scores ...
    data = trainer.dataset.split("validation")  # ... and the trainer's evaluation is the fp32 one
    ks, cfg = trainer.ks, trainer.cfg.eval
    reference = evaluate_split(trainer.model, data, ks, cfg.batch_size).compute()
    assert trainer.evaluate("validation") == reference
