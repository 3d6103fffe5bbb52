"""Top-K recommendation over original item ids from one serving artifact.

Request rules (the HTTP app applies the same ones, see docs/serving.md):

- item ids are the dataset's original ids (strings; ints are accepted and compared as strings);
- unknown ids are ignored and reported back (``unknown_items``); if no known id remains the
  request is rejected (:class:`RequestError`, 422); an empty history is rejected (422);
- a history longer than ``max_len`` keeps its most recent ``max_len`` items (``truncated``);
- a history of more than ``max_history`` ids (default ``max(1000, max_len)``) is rejected (422)
  before any id is looked up, so one request's cost is bounded;
- ``1 <= k <= catalog size`` (else 422); with ``exclude_seen`` every known history item is
  removed from the ranking, so fewer than k items come back when fewer remain.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch

from recsys.export.artifact import Artifact

DEFAULT_MAX_HISTORY = 1000  # ids per request; raised to max_len for models with longer inputs


def resolve_max_history(max_history: int | None, max_len: int) -> int:
    """``max_history`` checked (a positive integer), or the default ``max(1000, max_len)`` for None."""
    if max_history is None:
        return max(DEFAULT_MAX_HISTORY, max_len)
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise ValueError(f"max_history must be a positive integer, got {max_history!r}")
    return max_history


class RequestError(ValueError):
    """A bad request; ``status_code`` is the HTTP status the app answers with."""

    def __init__(self, message: str, status_code: int = 422, **extra):
        super().__init__(message)
        self.message, self.status_code, self.extra = message, status_code, extra


@dataclass
class Recommendation:
    items: list[str]
    scores: list[float]
    unknown_items: list = field(default_factory=list)
    truncated: bool = False

    def pairs(self) -> list[tuple[str, float]]:
        return list(zip(self.items, self.scores))


@dataclass
class PreparedHistory:
    indices: list[int]  # known item_idx, chronological, truncated to max_len
    seen: list[int]  # every known item_idx of the whole history
    unknown: list
    truncated: bool


class Recommender:
    """Recommends from one artifact. ``engine``: "python" (the inference model rebuilt from the
    safetensors weights, recsys.export.artifact) or "program" (the torch.export program).
    ``ann``: None (exact full scoring), "flat" or "hnsw": top-K through a faiss index
    (serving/ann.py; needs faiss-cpu) over the python backbone's hidden state. The program engine
    needs an artifact loaded with ``trust_program=True`` (it unpickles program.pt2).
    ``max_history``: the longest history accepted (None: ``max(1000, max_len)``)."""

    def __init__(
        self,
        artifact: Artifact,
        engine: str = "python",
        ann: str | None = None,
        max_history: int | None = None,
    ):
        if engine not in ("python", "program"):
            raise ValueError(f"engine must be 'python' or 'program', got {engine!r}")
        self.artifact, self.engine = artifact, engine
        self.size, self.max_len, self.num_items = artifact.size, artifact.max_len, artifact.num_items
        self.max_history = resolve_max_history(max_history, self.max_len)
        self.item_ids = artifact.item_ids
        self.index = {item_id: i + 1 for i, item_id in enumerate(artifact.item_ids)}
        self.item_embeddings = artifact.item_embeddings  # (N+1, d) catalog
        if engine == "program":  # load at start-up: a broken artifact fails here, not per request
            artifact.program()
        if engine == "python" or ann is not None:
            artifact.module()
        self.ann = None
        if ann is not None:
            from serving.ann import AnnIndex

            self.ann = AnnIndex(self.item_embeddings, ann)

    # ------------------------------------------------------------------ requests
    def prepare(self, history: Sequence) -> PreparedHistory:
        if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
            raise RequestError("history must be a list of item ids")
        if len(history) == 0:
            raise RequestError("history is empty; give at least one known item id")
        if len(history) > self.max_history:
            raise RequestError(
                f"history has {len(history)} item ids, more than max_history={self.max_history}; "
                f"only the most recent {self.max_len} are used, send at most those"
            )
        known, unknown = [], []
        for item in history:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise RequestError(f"item ids must be strings or integers, got {item!r}")
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise RequestError(f"item id {item!r} is not valid Unicode (lone surrogate)") from None
            idx = self.index.get(str(item))
            if idx is None:
                unknown.append(item)
            else:
                known.append(idx)
        if not known:
            raise RequestError(
                f"none of the {len(history)} history item ids is in the catalog", unknown_items=unknown[:100]
            )
        truncated = len(known) > self.max_len
        return PreparedHistory(known[-self.max_len :], known, unknown, truncated)

    def check_k(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_items:
            raise RequestError(f"k must be an integer in [1, {self.num_items}] (the catalog size), got {k!r}")
        return k

    def batch_tensor(self, prepared: Sequence[PreparedHistory]) -> torch.Tensor:
        """(B, max_len) int64, left-padded with 0 (the layout the model was trained on)."""
        out = torch.zeros(len(prepared), self.max_len, dtype=torch.long)
        for row, p in enumerate(prepared):
            out[row, self.max_len - len(p.indices) :] = torch.tensor(p.indices, dtype=torch.long)
        return out

    # ------------------------------------------------------------------ model
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, max_len) item_idx -> (B, d) hidden state of the last position (python engine)."""
        return self.artifact.encode(batch)

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, max_len) item_idx -> (B, N+1) scores; column 0 (padding) = -inf.

        A NaN or +inf score (a broken model) becomes -inf: it is never returned, never ranked first.
        """
        scores = self.artifact.scores(batch, self.engine)
        return scores.masked_fill(scores.isnan() | (scores == float("inf")), float("-inf"))

    @staticmethod
    def mask_seen(scores: torch.Tensor, prepared: Sequence[PreparedHistory]) -> torch.Tensor:
        """(B, N+1) scores -> a copy with every known history item of each row at -inf."""
        scores = scores.clone()
        for row, p in enumerate(prepared):
            scores[row, torch.tensor(p.seen, dtype=torch.long)] = float("-inf")
        return scores

    def recommendation(
        self,
        ids: Sequence[int],
        scores: Sequence[float],
        prepared: PreparedHistory,
        k: int,
        exclude: Collection[int] = (),
    ) -> Recommendation:
        """Ranked candidates (item_idx, score), best first -> the Recommendation of their original ids:
        the first k that are not padding (0), finite (-inf: masked or not found; NaN: a broken model)
        and not in ``exclude``."""
        keep = [(i, v) for i, v in zip(ids, scores) if i > 0 and math.isfinite(v) and i not in exclude][:k]
        return Recommendation(
            [self.item_ids[i - 1] for i, _ in keep],
            [float(v) for _, v in keep],
            prepared.unknown,
            prepared.truncated,
        )

    # ------------------------------------------------------------------ API
    def query_batch(
        self, histories: Sequence[Sequence], k: int = 10, exclude_seen: bool = True
    ) -> list[Recommendation]:
        k = self.check_k(k)
        prepared = [self.prepare(h) for h in histories]
        if not prepared:
            return []
        batch = self.batch_tensor(prepared)
        if self.ann is not None:
            # faiss cannot mask: fetch enough extra candidates to drop the seen ones afterwards
            extra = max(len(set(p.seen)) for p in prepared) if exclude_seen else 0
            scores, ids = self.ann.search(self.encode(batch), k + extra)
            return [
                self.recommendation(i, v, p, k, set(p.seen) if exclude_seen else ())
                for v, i, p in zip(scores.tolist(), ids.tolist(), prepared)
            ]
        scores = self.scores(batch)
        if exclude_seen:
            scores = self.mask_seen(scores, prepared)
        values, ids = torch.topk(scores, k, dim=1)
        return [self.recommendation(i, v, p, k) for v, i, p in zip(values.tolist(), ids.tolist(), prepared)]

    def query(self, history: Sequence, k: int = 10, exclude_seen: bool = True) -> Recommendation:
        return self.query_batch([history], k, exclude_seen)[0]

    def recommend(self, history: Sequence, k: int = 10, exclude_seen: bool = True) -> list[tuple[str, float]]:
        """[(original item id, score)] best first."""
        return self.query(history, k, exclude_seen).pairs()

    def recommend_batch(
        self, histories: Sequence[Sequence], k: int = 10, exclude_seen: bool = True
    ) -> list[list[tuple[str, float]]]:
        return [r.pairs() for r in self.query_batch(histories, k, exclude_seen)]
