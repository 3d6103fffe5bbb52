"""Training and evaluation batches from a processed dataset directory (see ``data_prep/layout.py``).

Leave-one-out split of each chronological sequence ``s``:

* train: next-item prediction over ``s[:-2]`` (input ``t[:-1]``, targets ``t[1:]``), cut into
  windows of ``max_len`` from the end so that every training target is used exactly once; with a
  ``train_stride`` below ``max_len`` the windows overlap and each one scores only its last
  ``train_stride`` targets, so a target sees at least ``max_len - train_stride`` items of history
  (stride 1: every target with its full history, as evaluation sees it);
* validation: input ``s[:-2]``, target ``s[-2]``;
* test: input ``s[:-1]`` (it includes the validation item), target ``s[-1]``.

``cold_targets="drop"`` leaves out of a split the users whose target item never occurs in that
split's training interactions (validation: every user's ``s[:-2]``; test: every user's ``s[:-1]``),
as RecTools' leave-one-out does; the number left out is kept on the split (``EvalSplit.dropped``).

Inputs are left-padded with 0 to ``max_len``. Batching is deterministic: the order of epoch
``e`` is a permutation drawn from ``seed + e``, so a resumed run can skip the batches it has
already seen and continue with exactly the same data order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors import safe_open

from data_prep import layout

log = logging.getLogger("recsys.data")
COLD_TARGETS = ("keep", "drop")


@dataclass(frozen=True)
class EvalSplit:
    """Inputs and targets of one evaluation split.

    inputs: (U, L) left-padded last ``max_len`` items; targets: (U,);
    history: (U, H) every item seen before the target (for optional history filtering), 0-padded;
    user_idx: (U,) the users, in order; dropped: users left out (``cold_targets="drop"``).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    history: torch.Tensor
    user_idx: torch.Tensor
    dropped: int = 0

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


def train_windows(
    sequence: np.ndarray, max_len: int, stride: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut the training part ``t`` of a sequence into (input, target) windows of at most max_len.

    Windows end every ``stride`` targets (default ``max_len``: no overlap), from the end of ``t``
    backwards, so the most recent history always gets a full-length window. Each window keeps as
    targets only its last ``stride`` positions (the others are 0 = not scored), so every target
    position is scored in exactly one window, with at least ``max_len - stride`` items before it.
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"train stride must be in [1, max_len={max_len}], got {stride}")
    inputs, targets = sequence[:-1], sequence[1:]
    windows = []
    end = len(targets)
    while end > 0:
        start = max(0, end - max_len)
        y = targets[start:end].copy()
        y[: max(0, end - stride - start)] = 0  # scored by the next window back
        windows.append((inputs[start:end], y))
        end -= stride
    return windows


@dataclass(frozen=True)
class CategoryBags:
    """One categorical field: the bag of item i is ``ids[offsets[i]:offsets[i+1]]`` (vocabulary indices).

    ids: (nnz,) int64 in [0, len(vocab)); offsets: (N+2,) int64 non-decreasing from 0 (item 0 = padding)."""

    ids: torch.Tensor
    offsets: torch.Tensor
    vocab: list[str]

    def check(self, num_items: int, where: str) -> None:
        """ValueError naming ``where`` unless the bags fit a catalog of ``num_items`` items."""
        ids, offsets = self.ids, self.offsets
        problems = []
        if ids.dtype != torch.int64 or offsets.dtype != torch.int64 or ids.dim() != 1 or offsets.dim() != 1:
            problems.append("ids and offsets must be 1-D int64")
        elif offsets.numel() != num_items + 2:
            problems.append(f"{offsets.numel()} offsets, expected N+2 = {num_items + 2}")
        elif int(offsets[0]) != 0 or int(offsets[1]) != 0 or int(offsets[-1]) != ids.numel():
            problems.append("offsets must start 0, 0 (padding item) and end at len(ids)")
        elif bool((offsets[1:] < offsets[:-1]).any()):
            problems.append("offsets decrease")
        elif ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.vocab)):
            problems.append(f"ids outside the vocabulary of {len(self.vocab)}")
        if problems:
            raise ValueError(f"{where}: {problems[0]}")


FEATURE_TRANSFORMS = ("none", "center", "whiten")


def transform_features(table: torch.Tensor, mode: str, eps: float = 1e-3) -> torch.Tensor:
    """(N+1, F) frozen feature table -> the same shape, re-expressed over the catalog's items.

    Sentence-encoder features share one dominant direction (their mean), which the projector then
    carries into every item embedding. ``center`` subtracts the mean over the items that have the
    modality (non-zero rows); ``whiten`` also decorrelates them (ZCA: ``(x - mu) V diag(1/sqrt(l +
    eps * mean l)) V^T`` from the eigendecomposition of their covariance). Both then rescale so the
    mean row norm is the original one (the projector's initialisation sees inputs of the same scale).
    Row 0 (padding) and items without the modality stay exactly zero. ``none`` returns ``table``.
    """
    if mode not in FEATURE_TRANSFORMS:
        raise ValueError(f"model.feature_transform must be one of {FEATURE_TRANSFORMS}, got {mode!r}")
    if mode == "none":
        return table
    present = table.abs().sum(dim=1) > 0  # (N+1,)
    if int(present.sum()) < 2:
        return table
    x = table[present].double()  # (n, F)
    norm = x.norm(dim=1).mean()
    x = x - x.mean(dim=0)
    if mode == "whiten":
        cov = x.T @ x / (x.shape[0] - 1)  # (F, F)
        eigenvalues, vectors = torch.linalg.eigh(cov)
        eigenvalues = eigenvalues.clamp_min(0.0)
        scale = (eigenvalues + eps * eigenvalues.mean()).rsqrt()
        x = x @ (vectors * scale) @ vectors.T
    x = x * (norm / x.norm(dim=1).mean().clamp_min(1e-12))
    out = torch.zeros_like(table)
    out[present] = x.to(table.dtype)
    return out


class SequenceDataset:
    """A processed dataset: sequences, catalog size, feature tables and the three splits."""

    def __init__(
        self, directory: str | Path, max_len: int, train_stride: int | None = None, cold_targets: str = "keep"
    ) -> None:
        if cold_targets not in COLD_TARGETS:
            raise ValueError(f"data.cold_targets must be one of {list(COLD_TARGETS)}, got {cold_targets!r}")
        self.cold_targets = cold_targets
        self._splits: dict[str, EvalSplit] = {}
        self.directory = Path(directory)
        if not (self.directory / layout.MANIFEST).is_file():
            raise FileNotFoundError(
                f"{self.directory} is not a processed dataset (no {layout.MANIFEST}); "
                "run `recsys-prep DATASET --out DIR` first"
            )
        if max_len <= 0:
            raise ValueError(f"data.max_len must be positive, got {max_len}")
        self.max_len = max_len
        self.train_stride = max_len if not train_stride else train_stride
        if not 1 <= self.train_stride <= max_len:
            raise ValueError(
                f"data.train_stride must be in [1, data.max_len={max_len}] (0 = max_len), got {train_stride}"
            )
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

    def load_categorical(self) -> dict[str, CategoryBags]:
        """{field: bags} from ``features/categorical.safetensors`` (data_prep/categorical.py), checked."""
        path = self.directory / layout.feature_file(layout.CATEGORICAL)
        if not path.is_file():
            raise FileNotFoundError(
                f"no categorical features at {path}: the dataset's items have no categorical columns "
                f"(cat_* in {layout.ITEMS}), or it was prepared before they existed; re-run `recsys-prep`, "
                "or leave 'categorical' out of model.modalities"
            )
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            fields = json.loads(meta.get("fields", "[]"))
            out = {}
            for field in fields:
                vocab = json.loads(meta[f"vocab.{field}"])
                bags = CategoryBags(f.get_tensor(f"{field}.ids"), f.get_tensor(f"{field}.offsets"), vocab)
                bags.check(self.num_items, f"{path} field '{field}'")
                out[field] = bags
        if not out:
            raise ValueError(f"{path}: no categorical fields")
        return out

    # ------------------------------------------------------------------ train
    def _build_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = [], []
        for seq in self.sequences:
            for x, y in train_windows(seq[:-2], self.max_len, self.train_stride):
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
        """The ``validation`` or ``test`` split (every user once, in user order; with
        ``cold_targets="drop"``, without the users whose target never occurs in the split's training
        interactions). Built once and kept."""
        if name not in ("validation", "test"):
            raise ValueError(f"unknown split '{name}', expected 'validation' or 'test'")
        if name not in self._splits:
            self._splits[name] = self._build_split(name)
        return self._splits[name]

    def _build_split(self, name: str) -> EvalSplit:
        cut = 2 if name == "validation" else 1
        histories = [seq[:-cut] for seq in self.sequences]
        targets = torch.tensor([int(seq[-cut]) for seq in self.sequences], dtype=torch.long)
        keep = torch.ones(len(histories), dtype=torch.bool)
        if self.cold_targets == "drop":
            trained = torch.zeros(self.num_items + 1, dtype=torch.bool)
            trained[torch.from_numpy(np.concatenate(histories))] = True
            keep = trained[targets]
            if not bool(keep.any()):
                raise ValueError(f"{self.directory}: every {name} target is cold; nothing left to evaluate")
            log.info(
                "%s: %d of %d users left out (cold_targets=drop: their target never occurs in training)",
                name,
                int((~keep).sum()),
                len(histories),
            )
            histories = [h for h, k in zip(histories, keep.tolist()) if k]
        longest = max(len(h) for h in histories)
        return EvalSplit(
            inputs=_left_pad(histories, self.max_len),
            targets=targets[keep],
            history=_left_pad(histories, longest),
            user_idx=self.user_idx[keep],
            dropped=int((~keep).sum()),
        )
