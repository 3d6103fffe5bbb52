"""Funnel retrieval: shortlist with a small size, re-rank the shortlist with a large size.

The small tier scores the whole catalog (cost ~ N * d_small), keeps its top-S candidates, and
the large tier scores only those (cost ~ S * d_large) from its own hidden state and catalog
rows. With S >= catalog size the result is exactly the large tier's top-K; for smaller S,
:func:`funnel_recall` measures how much of the large top-K survives the shortlist.

When the small tier has a faiss index (``Recommender(..., ann="hnsw")``), the shortlist comes from
that index instead of scoring the whole catalog, so a request no longer costs ~N * d_small: this is
what makes the funnel pay off on large catalogs (benchmarks/serving.py, docs/serving.md "Serving at
catalog scale"). :func:`rerank` is the exact re-rank step, shared with that benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from serving.recommender import Recommendation, Recommender, RequestError


class FunnelRecommender:
    """Top-K of ``large`` over the top-``shortlist`` candidates of ``small`` (same export)."""

    def __init__(self, small: Recommender, large: Recommender, shortlist: int = 200):
        if small.item_ids != large.item_ids:
            raise ValueError("funnel tiers must come from the same export (different catalogs)")
        self.small, self.large = small, large
        self.shortlist = self.check_shortlist(shortlist)

    def check_shortlist(self, shortlist) -> int:
        if isinstance(shortlist, bool) or not isinstance(shortlist, int) or shortlist < 1:
            raise RequestError(f"shortlist must be a positive integer, got {shortlist!r}")
        return min(shortlist, self.small.num_items)

    @torch.inference_mode()
    def query_batch(
        self,
        histories: Sequence[Sequence],
        k: int = 10,
        exclude_seen: bool = True,
        shortlist: int | None = None,
    ) -> list[Recommendation]:
        k = self.large.check_k(k)
        s = self.shortlist if shortlist is None else self.check_shortlist(shortlist)
        s = max(s, k)
        prepared = [self.large.prepare(h) for h in histories]
        if not prepared:
            return []
        batch = self.large.batch_tensor(prepared)
        if self.small.ann is not None:  # shortlist from the small tier's faiss index
            # faiss cannot mask: fetch enough extra candidates to drop the seen ones afterwards
            extra = max(len(set(p.seen)) for p in prepared) if exclude_seen else 0
            cand_scores, cand = self.small.ann.search(self.small.encode(batch), s + extra)  # (B, S')
            valid = ~torch.isinf(cand_scores)  # ids 0 (not found) come with -inf
            if exclude_seen:
                for row, p in enumerate(prepared):
                    valid[row] &= ~torch.isin(cand[row], torch.tensor(p.seen, dtype=torch.long))
        else:
            coarse = self.small.scores(batch)  # (B, N+1) at the small size
            if exclude_seen:
                coarse = Recommender.mask_seen(coarse, prepared)
            cand_scores, cand = torch.topk(coarse, s, dim=1)  # (B, S)
            valid = ~torch.isinf(cand_scores)  # padding / seen never return
        hidden = self.large.encode(batch)  # (B, d_large)
        values, picked = rerank(hidden, self.large.item_embeddings, cand, k, valid)  # (B, k) item_idx
        return [
            self.large.recommendation(i, v, p, k)
            for v, i, p in zip(values.tolist(), picked.tolist(), prepared)
        ]

    def query(
        self, history: Sequence, k: int = 10, exclude_seen: bool = True, shortlist: int | None = None
    ) -> Recommendation:
        return self.query_batch([history], k, exclude_seen, shortlist)[0]

    def recommend(self, history: Sequence, k: int = 10, exclude_seen: bool = True) -> list[tuple[str, float]]:
        return self.query(history, k, exclude_seen).pairs()


def rerank(
    hidden: torch.Tensor,
    catalog: torch.Tensor,
    cand: torch.Tensor,
    k: int,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` of each row's shortlist at the large size.

    hidden (B, d) large-size states; catalog (R, d) rows (any row numbering: item_idx with row 0 =
    padding in serving, faiss ids in the benchmark); cand (B, S) int64 row numbers of the shortlist;
    valid (B, S) bool or None: False marks a candidate that must never come back (padding, not
    found, already seen), which then scores -inf. Returns (scores (B, k'), rows (B, k')), best first,
    k' = min(k, S); a row with fewer than k' valid candidates ends with -inf scores.
    """
    index = cand if valid is None else cand.masked_fill(~valid, 0)  # never gather row -1
    if len(index) == 0:
        return hidden.new_empty(0, min(k, cand.shape[1])), cand.new_empty(0, min(k, cand.shape[1]))
    # one request at a time: its S rows (a few MB) stay in cache and no (B, S, d) buffer is made;
    # with S=1000 of a 1M x 1024 catalog this is ~4x faster than gathering the whole batch at once
    fine = torch.stack(
        [torch.index_select(catalog, 0, c) @ h.to(catalog.dtype) for h, c in zip(hidden, index)]
    )  # (B, S)
    if valid is not None:
        fine = fine.masked_fill(~valid, float("-inf"))
    values, pos = torch.topk(fine, min(k, cand.shape[1]), dim=1)
    return values, torch.gather(cand, 1, pos)


def funnel_recall(
    funnel: FunnelRecommender,
    histories: Sequence[Sequence],
    k: int,
    shortlists: Sequence[int],
    exclude_seen: bool = True,
) -> dict[int, float]:
    """Mean |funnel top-K ∩ large top-K| / |large top-K| over ``histories``, for each shortlist size S."""
    exact = funnel.large.query_batch(histories, k, exclude_seen)
    out = {}
    for s in shortlists:
        approx = funnel.query_batch(histories, k, exclude_seen, shortlist=s)
        hits = [len(set(a.items) & set(e.items)) / max(1, len(e.items)) for a, e in zip(approx, exact)]
        out[int(s)] = sum(hits) / max(1, len(hits))
    return out
