"""Training and evaluation batches from a processed dataset directory (see ``data_prep/layout.py``).

Leave-one-out split of each chronological sequence ``s``:

* train: next-item prediction over ``s[:-2]`` (input ``t[:-1]``, targets ``t[1:]``), cut into
  windows of ``max_len`` from the end so that every training target is used exactly once;
* validation: input ``s[:-2]``, target ``s[-2]``;
* test: input ``s[:-1]`` (it includes the validation item), target ``s[-1]``.

Inputs are left-padded with 0 to ``max_len``. Batching is deterministic: the order of epoch
``e`` is a permutation drawn from ``seed + e``, so a resumed run can skip the batches it has
already seen and continue with exactly the same data order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors import safe_open

from data_prep import layout


@dataclass(frozen=True)
class EvalSplit:
    """Inputs and targets of one evaluation split.

    inputs: (U, L) left-padded last ``max_len`` items; targets: (U,);
    history: (U, H) every item seen before the target (for optional history filtering), 0-padded;
    user_idx: (U,) the users, in order.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    history: torch.Tensor
    user_idx: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def batches(
        self, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yields (inputs, targets, history) slices of users [start, stop) in order."""
        stop = len(self) if stop is None else stop
        for i in range(start, stop, batch_size):
            j = min(i + batch_size, stop)
            yield self.inputs[i:j], self.targets[i:j], self.history[i:j]


def _left_pad(rows: list[np.ndarray], width: int) -> torch.Tensor:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        row = row[-width:]
        if len(row):
            out[i, width - len(row) :] = row
    return torch.from_numpy(out)


def train_windows(sequence: np.ndarray, max_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut the training part ``t`` of a sequence into (input, target) windows of at most max_len.

    Windows are taken from the end of ``t`` backwards, so that each target position appears in
    exactly one window and the most recent history always gets a full-length window.
    """
    inputs, targets = sequence[:-1], sequence[1:]
    windows = []
    end = len(targets)
    while end > 0:
        start = max(0, end - max_len)
        windows.append((inputs[start:end], targets[start:end]))
        end = start
    return windows


class SequenceDataset:
    """A processed dataset: sequences, catalog size, feature tables and the three splits."""

    def __init__(self, directory: str | Path, max_len: int) -> None:
        self.directory = Path(directory)
        if not (self.directory / layout.MANIFEST).is_file():
            raise FileNotFoundError(
                f"{self.directory} is not a processed dataset (no {layout.MANIFEST}); "
                "run `recsys-prep DATASET --out DIR` first"
            )
        if max_len <= 0:
            raise ValueError(f"data.max_len must be positive, got {max_len}")
        self.max_len = max_len
        self.manifest = json.loads((self.directory / layout.MANIFEST).read_text())
        items = pl.read_parquet(self.directory / layout.ITEMS, columns=["item_idx", "item_id"])
        self.num_items = int(items.height)
        self.item_ids: list[str] = items.sort("item_idx")["item_id"].cast(pl.Utf8).to_list()
        seqs = pl.read_parquet(self.directory / layout.SEQUENCES, columns=["user_idx", "item_idx"])
        seqs = seqs.sort("user_idx")
        self.user_idx = torch.tensor(seqs["user_idx"].to_numpy(), dtype=torch.long)
        self.sequences: list[np.ndarray] = [np.asarray(s, dtype=np.int64) for s in seqs["item_idx"].to_list()]
        short = [int(u) for u, s in zip(self.user_idx, self.sequences) if len(s) < layout.MIN_SEQUENCE_LENGTH]
        if short:
            raise ValueError(
                f"{self.directory / layout.SEQUENCES}: users {short[:5]} have fewer than "
                f"{layout.MIN_SEQUENCE_LENGTH} items; leave-one-out needs train, validation and test items"
            )
        self._train_inputs, self._train_targets = self._build_train()

    # ------------------------------------------------------------------ features
    @property
    def modalities(self) -> list[str]:
        return list(self.manifest.get("modalities", ["text"]))

    def load_features(self, modalities: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
        """{modality: (N+1, F) float32} read from the safetensors feature tables."""
        out = {}
        for modality in modalities:
            path = self.directory / layout.feature_file(modality)
            if not path.is_file():
                raise FileNotFoundError(
                    f"feature table for modality '{modality}' not found at {path}; available: "
                    f"{self.modalities}. Run `recsys-prep` without --no-features, or change model.modalities"
                )
            with safe_open(str(path), framework="pt") as f:
                table = f.get_tensor("features").float()
            if table.shape[0] != self.num_items + 1:
                raise ValueError(
                    f"{path}: {table.shape[0]} rows, expected {self.num_items + 1} (N items + padding)"
                )
            out[modality] = table
        return out

    # ------------------------------------------------------------------ train
    def _build_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = [], []
        for seq in self.sequences:
            for x, y in train_windows(seq[:-2], self.max_len):
                inputs.append(x)
                targets.append(y)
        return _left_pad(inputs, self.max_len), _left_pad(targets, self.max_len)

    @property
    def num_train_windows(self) -> int:
        return int(self._train_inputs.shape[0])

    def num_train_batches(self, batch_size: int) -> int:
        return -(-self.num_train_windows // batch_size)

    def train_batches(
        self, batch_size: int, epoch: int, seed: int, skip: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled (inputs (B, L), targets (B, L)) batches of one epoch, skipping the first ``skip``."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_train_windows, generator=generator)
        for b in range(skip, self.num_train_batches(batch_size)):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield self._train_inputs[idx], self._train_targets[idx]

    # ------------------------------------------------------------------ eval
    def split(self, name: str) -> EvalSplit:
        """The ``validation`` or ``test`` split (every user once, in user order)."""
        if name not in ("validation", "test"):
            raise ValueError(f"unknown split '{name}', expected 'validation' or 'test'")
        cut = 2 if name == "validation" else 1
        histories = [seq[:-cut] for seq in self.sequences]
        targets = torch.tensor([int(seq[-cut]) for seq in self.sequences], dtype=torch.long)
        longest = max(len(h) for h in histories)
        return EvalSplit(
            inputs=_left_pad(histories, self.max_len),
            targets=targets,
            history=_left_pad(histories, longest),
            user_idx=self.user_idx,
        )
