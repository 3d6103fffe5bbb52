"""The recipe options of the quality work: parameter groups (which parameters decay), overlapping
training windows (data.train_stride) and centred / whitened frozen features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import tiny_cfg

from recsys.config import validate
from recsys.data import SequenceDataset, train_windows, transform_features
from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn import LRUConfig, MambaConfig, SASRecConfig
from recsys.training.param_groups import decay_groups, parameter_kinds
from recsys.training.trainer import Trainer


def model_with(backbone) -> MatryoshkaRecModel:
    config = ModelConfig(ladder=(4, 8), backbone=backbone, use_id_table=True, trainable_features=True)
    return MatryoshkaRecModel(config, 20, {"text": 12})


def test_every_parameter_has_the_kind_its_layer_gives_it():
    kinds = parameter_kinds(model_with(LRUConfig(num_blocks=1)))
    assert set(kinds) == {n for n, _ in model_with(LRUConfig(num_blocks=1)).named_parameters()}
    for name in ("nu_log", "theta_log", "gamma_log", "skip"):
        assert kinds[f"backbone.blocks.0.lru.{name}"] == "recurrence"
    assert kinds["backbone.norm.weight"] == kinds["backbone.norm.bias"] == "norm"
    assert kinds["projector.norm.weight"] == "norm"
    assert kinds["backbone.blocks.0.lru.B_re.weight"] == "weight"
    assert kinds["projector.input.bias"] == "bias"
    assert kinds["tables.ids.embedding_bags.item_id_table.weight"] == "embedding"
    assert kinds["tables.features.embedding_bags.text_table.weight"] == "embedding"
    mamba = parameter_kinds(model_with(MambaConfig(num_blocks=1)))
    assert mamba["backbone.blocks.0.mixer.A_log"] == mamba["backbone.blocks.0.mixer.D"] == "recurrence"
    assert mamba["backbone.blocks.0.mixer.dt_proj.bias"] == "bias"
    sasrec = parameter_kinds(model_with(SASRecConfig(num_blocks=1)))
    assert sasrec["backbone.norm.weight"] == "norm"


def test_exempt_parameters_do_not_shrink_and_the_others_do():
    torch.manual_seed(0)
    model = model_with(LRUConfig(num_blocks=1))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    kinds = parameter_kinds(model)
    groups = decay_groups(named, kinds, ["bias", "norm", "recurrence"], weight_decay=0.5)
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "kinds"} for g in groups], lr=0.1)
    before = {n: p.detach().clone() for n, p in named}
    for _, p in named:
        p.grad = torch.zeros_like(p)  # no gradient: only decay moves a parameter
    optimizer.step()
    for n, p in named:
        moved = not torch.equal(p, before[n])
        exempt = kinds[n] in ("bias", "norm", "recurrence")
        assert moved != exempt or not before[n].any(), n  # zero parameters stay zero either way


def test_unknown_kinds_are_refused_naming_the_key(tmp_path):
    cfg = tiny_cfg(tmp_path, "trainer.no_decay=[norms]")
    with pytest.raises(ValueError, match=r"trainer.no_decay: unknown kinds \['norms'\]"):
        validate(cfg)


def test_the_trainer_builds_the_configured_groups(processed_dataset, tmp_path):
    cfg = tiny_cfg(processed_dataset, "trainer.no_decay=[bias,norm,recurrence]")
    trainer = Trainer(cfg, tmp_path / "run")
    decayed, exempt = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == cfg.trainer.optimizer.weight_decay and exempt["weight_decay"] == 0.0
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert {trainer.parameter_kinds[names[id(p)]] for p in exempt["params"]} == {"bias", "norm", "recurrence"}
    cfg = tiny_cfg(processed_dataset, "trainer.no_decay=[]")
    assert len(Trainer(cfg, tmp_path / "run2").optimizer.param_groups) == 1


def reference_windows(sequence, max_len):
    """The non-overlapping windows as they were cut before train_stride existed."""
    inputs, targets = sequence[:-1], sequence[1:]
    out, end = [], len(targets)
    while end > 0:
        start = max(0, end - max_len)
        out.append((inputs[start:end], targets[start:end]))
        end = start
    return out


@pytest.mark.parametrize("length", [2, 5, 6, 13, 40])
def test_stride_of_max_len_is_the_old_cut(length):
    seq = np.arange(1, length + 1)
    got, want = train_windows(seq, 5), reference_windows(seq, 5)
    assert len(got) == len(want)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(got, want))


@pytest.mark.parametrize("stride", [1, 2, 3, 5])
def test_overlapping_windows_score_every_target_once_with_long_history(stride):
    seq = np.arange(1, 24)  # 22 (input, target) pairs, items distinct
    scored: list[int] = []
    for x, y in train_windows(seq, 5, stride):
        assert len(x) == len(y) <= 5 and np.array_equal(x + 1, seq[np.searchsorted(seq, x) + 1])
        for pos in np.flatnonzero(y):
            scored.append(int(y[pos]))
            history = pos + 1  # inputs up to and including this position
            assert history >= min(5 - stride + 1, int(y[pos]) - 1)  # full unless near the start
    assert sorted(scored) == list(range(2, 24))


def test_dataset_windows_follow_the_stride(processed_dataset):
    wide, narrow = (
        SequenceDataset(processed_dataset, 8),
        SequenceDataset(processed_dataset, 8, train_stride=2),
    )
    assert int((wide._train_targets != 0).sum()) == int((narrow._train_targets != 0).sum())
    assert narrow.num_train_windows > 2 * wide.num_train_windows
    with pytest.raises(ValueError, match="train_stride"):
        SequenceDataset(processed_dataset, 8, train_stride=9)


def test_centring_and_whitening_keep_padding_and_scale():
    g = torch.Generator().manual_seed(0)
    mixing = 2 * torch.eye(6) + 0.5 * torch.randn(6, 6, generator=g)  # correlated, well conditioned
    table = torch.randn(41, 6, generator=g) @ mixing + 3.0  # offset
    table[0] = 0
    table[7] = 0  # an item without this modality
    assert transform_features(table, "none") is table
    for mode in ("center", "whiten"):
        out = transform_features(table, mode)
        present = out[[i for i in range(41) if i not in (0, 7)]]
        assert torch.equal(out[0], torch.zeros(6)) and torch.equal(out[7], torch.zeros(6))
        assert present.mean(0).abs().max() < 1e-5
        ratio = present.norm(dim=1).mean() / table[1:].norm(dim=1)[torch.arange(40) != 6].mean()
        assert abs(float(ratio) - 1.0) < 1e-5
    cov = torch.cov(transform_features(table, "whiten")[[i for i in range(41) if i not in (0, 7)]].T)
    eig = torch.linalg.eigvalsh(cov)
    assert float(eig.max() / eig.min()) < 1.05  # isotropic up to the eps regulariser
    with pytest.raises(ValueError, match="feature_transform"):
        transform_features(table, "pca")


def test_trainable_feature_tables_get_their_own_learning_rate(processed_dataset, tmp_path):
    cfg = tiny_cfg(
        processed_dataset,
        "model.trainable_features=true",
        "trainer.feature_lr_scale=0.1",
        "trainer.no_decay=[bias]",
    )
    trainer = Trainer(cfg, tmp_path / "run")
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    lr = cfg.trainer.optimizer.lr
    by_lr: dict[float, set[str]] = {}
    for group in trainer.optimizer.param_groups:
        by_lr.setdefault(group["initial_lr"], set()).update(names[id(p)] for p in group["params"])
    assert len(by_lr) == 2 and sorted(by_lr) == pytest.approx([0.1 * lr, lr])
    scaled = by_lr[min(by_lr)]
    assert scaled == {"tables.features.embedding_bags.text_table.weight"}
    # every trainable parameter is in exactly one group
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert sorted(n for v in by_lr.values() for n in v) == sorted(trainable)
    with pytest.raises(ValueError, match="feature tables are frozen"):
        validate(tiny_cfg(processed_dataset, "trainer.feature_lr_scale=0.1"))


def test_monitor_mean_selects_on_the_mean_over_sizes(processed_dataset, tmp_path):
    from recsys.training.early_stopping import EarlyStopping
    from recsys.training.runner import run

    stopper = EarlyStopping("ndcg@10", "mean", patience=1)
    results = {4: {"ndcg@10": 0.1}, 8: {"ndcg@10": 0.2}, 16: {"ndcg@10": 0.6}}
    assert stopper.monitored(results) == pytest.approx(0.3) and stopper.label == "mean over sizes"
    out = run(
        tiny_cfg(processed_dataset, "trainer.max_epochs=2", "trainer.monitor_mean=true"), tmp_path / "run"
    )
    trainer = out["trainer"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["monitor"] == "ndcg@10@mean over sizes"
    best = max(trainer.val_history, key=lambda v: v["value"])
    assert metrics["best_step"] == best["step"]
    val = metrics["validation"]  # the best checkpoint's validation: its mean over sizes is the best value
    assert sum(val[str(d)]["ndcg@10"] for d in trainer.sizes) / len(trainer.sizes) == pytest.approx(
        metrics["best_validation_value"], abs=1e-9
    )
    with pytest.raises(ValueError, match="set one of them"):
        validate(tiny_cfg(processed_dataset, "trainer.monitor_mean=true", "trainer.monitor_size=8"))
