"""Training windows, evaluation splits and deterministic batch order."""

import numpy as np
import torch

from recsys.data import SequenceDataset, train_windows


def test_train_windows_use_every_target_once_and_keep_the_latest_full():
    seq = np.arange(1, 13)  # 12 items -> 11 (input, target) pairs
    windows = train_windows(seq, max_len=5)
    targets = np.concatenate([t for _, t in windows])
    assert sorted(targets.tolist()) == list(range(2, 13))
    x, y = windows[0]
    assert y.tolist() == [8, 9, 10, 11, 12] and x.tolist() == [7, 8, 9, 10, 11]


def test_splits_are_leave_one_out_without_leakage(processed_dataset):
    ds = SequenceDataset(processed_dataset, max_len=8)
    val, test = ds.split("validation"), ds.split("test")
    for u, seq in enumerate(ds.sequences):
        assert int(test.targets[u]) == seq[-1]
        assert int(val.targets[u]) == seq[-2]
        test_input = [i for i in test.inputs[u].tolist() if i]
        assert test_input == seq[:-1][-8:].tolist()  # test input includes the validation item
        val_input = [i for i in val.inputs[u].tolist() if i]
        assert val_input == seq[:-2][-8:].tolist()
    # no training target is a validation or test position of its user
    n_train_targets = int((ds._train_targets != 0).sum())
    assert n_train_targets == sum(len(s) - 3 for s in ds.sequences)


def test_inputs_are_left_padded(processed_dataset):
    ds = SequenceDataset(processed_dataset, max_len=64)
    x = ds.split("test").inputs
    first_real = (x != 0).float().argmax(dim=1)
    for row, start in zip(x, first_real):
        assert (row[start:] != 0).all() and (row[:start] == 0).all()


def test_batch_order_is_deterministic_and_skippable(processed_dataset):
    ds = SequenceDataset(processed_dataset, max_len=8)
    full = list(ds.train_batches(16, epoch=3, seed=7))
    again = list(ds.train_batches(16, epoch=3, seed=7))
    skipped = list(ds.train_batches(16, epoch=3, seed=7, skip=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[2:], skipped))
    other_epoch = next(ds.train_batches(16, epoch=4, seed=7))
    assert not torch.equal(full[0][0], other_epoch[0])


def _make_target_cold(directory, user: int) -> int:
    """Rewrite the dataset so that ``user``'s test item occurs nowhere else; return that item."""
    import polars as pl

    path = directory / "sequences.parquet"
    seqs = pl.read_parquet(path).sort("user_idx")
    items = seqs["item_idx"].to_list()
    cold = int(items[user][-1])
    stamps = seqs["timestamp"].to_list() if "timestamp" in seqs.columns else None
    for u, seq in enumerate(items):
        keep = [j for j, i in enumerate(seq) if i != cold or (u == user and j == len(seq) - 1)]
        items[u] = [seq[j] for j in keep]
        if stamps is not None:
            stamps[u] = [stamps[u][j] for j in keep]
    out = seqs.with_columns(pl.Series("item_idx", items, dtype=seqs["item_idx"].dtype))
    if stamps is not None:
        out = out.with_columns(pl.Series("timestamp", stamps, dtype=seqs["timestamp"].dtype))
    out.write_parquet(path)
    return cold


def test_cold_targets_drop_leaves_out_users_whose_target_never_occurs_in_training(processed_dataset):
    cold = _make_target_cold(processed_dataset, user=0)
    kept = SequenceDataset(processed_dataset, max_len=8).split("test")
    dropped = SequenceDataset(processed_dataset, max_len=8, cold_targets="drop").split("test")
    assert int(kept.targets[0]) == cold and kept.dropped == 0
    assert dropped.dropped == 1 and len(dropped) == len(kept) - 1
    assert cold not in dropped.targets.tolist() and int(kept.user_idx[0]) not in dropped.user_idx.tolist()
    # the remaining users are unchanged, row for row
    assert torch.equal(dropped.inputs, kept.inputs[1:]) and torch.equal(dropped.targets, kept.targets[1:])


def test_cold_targets_rejects_unknown_values(processed_dataset):
    import pytest

    with pytest.raises(ValueError, match="cold_targets"):
        SequenceDataset(processed_dataset, max_len=8, cold_targets="filter")


def test_a_k_core_the_dataset_was_not_prepared_with_is_an_error(processed_dataset):
    import json

    import pytest
    from omegaconf import OmegaConf

    from recsys.builders import prepare_dataset_if_missing

    manifest = json.loads((processed_dataset / "manifest.json").read_text())
    manifest["parameters"] = {"k_core_users": 5, "k_core_items": 5}  # as recsys-prep records it
    (processed_dataset / "manifest.json").write_text(json.dumps(manifest))
    k = 5
    cfg = OmegaConf.create(
        {"data": {"name": "generic", "path": str(processed_dataset), "prepare_if_missing": True}}
    )
    cfg.data.k_core = k
    assert prepare_dataset_if_missing(cfg) == processed_dataset
    cfg.data.k_core = k + 1
    with pytest.raises(ValueError, match=f"data.k_core={k + 1}"):
        prepare_dataset_if_missing(cfg)
