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
