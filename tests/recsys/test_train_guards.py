"""What stops a wrong number or a broken file from passing: non-finite losses and scores, missing or
corrupt checkpoints, resuming with other settings, cut-offs beyond the catalog, fp32 near-ties."""

import math
from pathlib import Path

import pytest
import torch
from support import tiny_cfg

from recsys.data import EvalSplit
from recsys.evaluation.evaluate import evaluate_split
from recsys.evaluation.metrics import MetricAccumulator, target_ranks
from recsys.losses.matryoshka import all_size_logits
from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn.lru import LRUConfig
from recsys.training.checkpoint import CheckpointError, load_checkpoint
from recsys.training.runner import run
from recsys.training.trainer import Trainer


def _nan_after(loss_fn, good_steps: int):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        total, per_size, count = loss_fn(*args, **kwargs)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] > good_steps else total), per_size, count

    return wrapped


def test_nan_training_loss_stops_the_run_naming_the_step(processed_dataset, tmp_path):
    trainer = Trainer(tiny_cfg(processed_dataset), tmp_path / "run")
    trainer.loss = _nan_after(trainer.loss, good_steps=2)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at step 3 "):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), (
        "the NaN step must not be applied"
    )
    trainer.tb.close()


def test_nan_steps_are_skipped_up_to_the_configured_number(processed_dataset, tmp_path):
    trainer = Trainer(tiny_cfg(processed_dataset, "trainer.max_nonfinite_steps=2"), tmp_path / "run")
    trainer.loss = _nan_after(trainer.loss, good_steps=1)
    with pytest.raises(FloatingPointError, match="at step 4 .*3 non-finite step"):
        trainer.fit()
    assert trainer.nonfinite_steps == 3
    trainer.tb.close()


def test_diverged_model_never_becomes_best(processed_dataset, tmp_path):
    trainer = Trainer(tiny_cfg(processed_dataset), tmp_path / "run")
    trainer.validate()
    best = trainer.early_stopping.state_dict()
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(float("nan"))
    trainer.step += 1
    trainer.validate()
    assert trainer.val_history[-1]["value"] == 0.0  # every user a miss, not a perfect score
    assert trainer.early_stopping.best_value == best["best_value"]
    assert trainer.early_stopping.best_step == best["best_step"]
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model"]
    assert all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point())
    trainer.tb.close()


def test_test_best_without_best_checkpoint_is_an_error(processed_dataset, tmp_path):
    trainer = Trainer(tiny_cfg(processed_dataset), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="best.pt is missing"):
        trainer.test_best()
    trainer.tb.close()


def test_run_without_a_scheduled_validation_still_validates_at_the_end(processed_dataset, tmp_path):
    out = run(
        tiny_cfg(processed_dataset, "trainer.max_epochs=1", "trainer.val_every_n_steps=1000"), tmp_path / "r"
    )
    assert out["results"] is not None and (out["run_dir"] / "checkpoints" / "best.pt").is_file()


def test_cut_off_not_below_the_catalog_is_rejected(processed_dataset, tmp_path):
    cfg = tiny_cfg(processed_dataset, "eval.ks=[5,60]", "trainer.monitor=ndcg@5")  # 60 items
    with pytest.raises(ValueError, match=r"eval.ks: .*catalog size 60"):
        Trainer(cfg, tmp_path / "run")


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", "truncated"])
def test_unreadable_checkpoint_is_refused_before_anything_is_written(processed_dataset, tmp_path, content):
    part = run(tiny_cfg(processed_dataset, "trainer.stop_after_steps=3"), tmp_path / "part")
    ckpt = tmp_path / "part" / "checkpoints" / "last.pt"
    if content == "truncated":
        content = ckpt.read_bytes()[: ckpt.stat().st_size // 2]
    ckpt.write_bytes(content)
    config_before = (part["run_dir"] / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=str(ckpt)) as err:
        run(tiny_cfg(processed_dataset, f"resume={ckpt}", "trainer.optimizer.lr=0.5"), tmp_path / "x")
    assert "weights_only=False" not in str(err.value)
    assert (part["run_dir"] / "config.yaml").read_text() == config_before


def test_resume_with_changed_settings_is_refused_unless_allowed(processed_dataset, tmp_path):
    run(tiny_cfg(processed_dataset, "trainer.stop_after_steps=3"), tmp_path / "part")
    ckpt = tmp_path / "part" / "checkpoints" / "last.pt"
    config_before = (tmp_path / "part" / "config.yaml").read_text()
    changed = ["trainer.optimizer.lr=0.5", "backbone.dropout=0.3", "data.max_len=12", "trainer.batch_size=16"]
    with pytest.raises(ValueError, match="resume") as err:
        run(tiny_cfg(processed_dataset, f"resume={ckpt}", *changed), tmp_path / "x")
    for key in ("trainer.optimizer.lr", "backbone.dropout", "data.max_len", "trainer.batch_size"):
        assert key in str(err.value)
    assert (tmp_path / "part" / "config.yaml").read_text() == config_before
    out = run(
        tiny_cfg(
            processed_dataset,
            f"resume={ckpt}",
            "trainer.max_epochs=4",
            "resume_allow_changes=[trainer.max_epochs]",
        ),
        tmp_path / "x",
    )
    assert out["trainer"].epoch == 4 and "max_epochs: 4" in (tmp_path / "part" / "config.yaml").read_text()


def test_checkpoint_of_a_config_with_loss_name_still_resumes(processed_dataset, tmp_path):
    """Configs stored before losses were built from ``loss._target_`` named them ``loss.name``."""
    part = run(tiny_cfg(processed_dataset, "trainer.stop_after_steps=3"), tmp_path / "part")
    ckpt = tmp_path / "part" / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["config"]["loss"] = {
        "name": "full_softmax",
        "size_weights": None,
        "num_negatives": 256,
        "sampler": "uniform",
    }
    torch.save(state, ckpt)
    out = run(tiny_cfg(processed_dataset, f"resume={ckpt}", "test_at_end=false"), tmp_path / "x")
    assert out["run_dir"] == part["run_dir"] and out["trainer"].step > 3


def test_resume_true_in_a_chosen_directory_never_picks_a_sibling_run(processed_dataset, tmp_path):
    run(tiny_cfg(processed_dataset, "trainer.stop_after_steps=3"), tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.pt"):
        run(tiny_cfg(processed_dataset, "resume=true"), tmp_path / "mine")


def _offset_model(offset: float) -> MatryoshkaRecModel:
    """A model whose item embeddings share a large mean direction (|mean|^2/d = offset^2)."""
    torch.manual_seed(0)
    config = ModelConfig(
        ladder=(8, 64, 256), backbone=LRUConfig(num_blocks=1, dropout=0.0, r_min=0.0, r_max=0.1)
    )
    model = MatryoshkaRecModel(config, 400, {"text": 16})
    base = model.item_embeddings

    def shifted():
        emb = base()
        return (emb + offset) * (model.item_ids != 0)[:, None]

    model.item_embeddings = shifted
    return model.eval()


def test_evaluation_ranks_equal_the_float64_ranks_despite_a_large_common_offset():
    model = _offset_model(3.0)
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randint(1, 401, (300, 10), generator=gen)
    targets = torch.randint(1, 401, (300,), generator=gen)
    with torch.no_grad():
        emb = model.item_embeddings()
        hidden = model.encode_last(inputs, emb)  # (U, D) float32, the states scoring reads
        exact = model.score(inputs, emb, dtype=torch.float64)  # float64 dot products
        fp32 = model.score(inputs, emb)
    # the float32 path reorders near-ties at this offset on AMD EPYC's fp32 GEMM (the defect); Intel's
    # AMX-era kernels here round these sums identically, so the premise is machine-dependent: the float64
    # path is checked against the exact reference below on every machine
    reordered = not torch.equal(target_ranks(fp32, targets), target_ranks(exact, targets))
    print(f"float32 reorders near-ties on this CPU: {reordered}")
    reference = all_size_logits(hidden.double(), emb.double(), model.ladder)
    reference[:, :, 0] = -math.inf
    assert torch.equal(target_ranks(exact, targets), target_ranks(reference, targets))
    split = EvalSplit(inputs, targets, inputs, torch.arange(300))
    acc = evaluate_split(model, split, ks=(5, 10, 50), batch_size=300)  # one batch: the same hidden states
    ref_acc = MetricAccumulator(sizes=model.ladder, ks=(5, 10, 50))
    ref_acc.update(reference, targets, history=inputs)  # both protocols, as evaluation reports
    assert acc.compute() == ref_acc.compute()


def test_load_checkpoint_names_missing_keys(tmp_path: Path):
    torch.save({"model": {}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"lacks \['optimizer'\]"):
        load_checkpoint(tmp_path / "c.pt", required=("model", "optimizer"))
