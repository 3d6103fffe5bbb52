"""Optional approximate nearest-neighbour search per tier with faiss (``pip install faiss-cpu``).

``AnnIndex(item_embeddings, kind)`` indexes catalog rows 1..N (padding excluded) for
maximum-inner-product search: ``kind="flat"`` (IndexFlatIP, exact, BLAS) or ``"hnsw"``
(IndexHNSWFlat with inner product, approximate). Nothing else in serving needs faiss.
"""

from __future__ import annotations

import numpy as np
import torch

ANN_KINDS = ("flat", "hnsw")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class AnnIndex:
    def __init__(
        self, item_embeddings: torch.Tensor, kind: str = "flat", hnsw_m: int = 32, ef_search: int = 128
    ):
        if kind not in ANN_KINDS:
            raise ValueError(f"ann kind must be one of {ANN_KINDS}, got {kind!r}")
        try:
            import faiss
        except ImportError:
            raise ImportError("ANN search needs faiss: pip install faiss-cpu") from None
        rows = np.ascontiguousarray(item_embeddings[1:].detach().cpu().numpy(), dtype=np.float32)
        d = rows.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        else:
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        index.add(rows)
        self.index, self.kind, self.num_items = index, kind, rows.shape[0]

    def search(self, hidden: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, d) -> (scores (B, n), item_idx (B, n)); item_idx 0 where fewer than n were found."""
        n = min(n, self.num_items)
        query = np.ascontiguousarray(hidden.detach().cpu().numpy(), dtype=np.float32)
        scores, ids = self.index.search(query, n)
        ids = torch.from_numpy(ids).long() + 1  # faiss row r = item_idx r+1; -1 (not found) -> 0
        scores = torch.from_numpy(scores).float().masked_fill(ids == 0, float("-inf"))
        return scores, ids
