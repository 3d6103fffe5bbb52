"""Funnel retrieval: shortlist with a small size, re-rank the shortlist with a large size.

The small tier scores the whole catalog (cost ~ N * d_small), keeps its top-S candidates, and
the large tier scores only those (cost ~ S * d_large) from its own hidden state and catalog
rows. With S >= catalog size the result is exactly the large tier's top-K; for smaller S,
:func:`funnel_recall` measures how much of the large top-K survives the shortlist.
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
        coarse = self.small.scores(batch)  # (B, N+1) at the small size
        if exclude_seen:
            coarse = Recommender.mask_seen(coarse, prepared)
        cand_scores, cand = torch.topk(coarse, s, dim=1)  # (B, S)
        hidden = self.large.encode(batch)  # (B, d_large)
        rows = self.large.item_embeddings[cand]  # (B, S, d_large)
        fine = torch.einsum("bd,bsd->bs", hidden, rows)
        fine = fine.masked_fill(torch.isinf(cand_scores), float("-inf"))  # padding / seen never return
        values, pos = torch.topk(fine, k, dim=1)
        picked = torch.gather(cand, 1, pos)  # (B, k) item_idx
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
