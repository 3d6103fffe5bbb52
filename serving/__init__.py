"""Serving exported recommenders: ``recsys-serve`` (HTTP, serving/cli.py) and, in Python, :func:`load`.

    from serving import load

    recs = load("runs/tiny/2026-01-01_12-00-00/export")       # every exported size, tiers d4, d8, ...
    recs.recommend(["i1", "i2", "i3"], k=10, tier="d8")        # [(item id, score)], best first

:func:`load` is the engine ``recsys-serve`` runs (:class:`serving.tiers.TierSet` over
:class:`serving.recommender.Recommender`), without the HTTP layer; its modules are imported on
the first call, so ``import serving`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.recommender import Recommender
    from serving.tiers import TierSet

__all__ = ["LoadedExport", "load"]


class LoadedExport:
    """Every tier of one export, each a :class:`~serving.recommender.Recommender` (see :func:`load`).

    ``tiers``: {name: size}; ``default``: the tier used when ``tier`` is None (the largest size unless
    a tiers file says otherwise); ``digest``: the export digest that was verified (None without
    verification); ``tier_set``: the underlying :class:`~serving.tiers.TierSet`."""

    def __init__(self, tier_set: TierSet):
        self.tier_set = tier_set
        self.export_dir: Path = tier_set.export_dir
        self.tiers: dict[str, int] = dict(tier_set.tiers)
        self.default: str = tier_set.default
        self.digest: str | None = tier_set.digest

    def recommender(self, tier: str | int | None = None) -> Recommender:
        """The Recommender of ``tier``: a tier name ("d64", or a name of the tiers file), a size (64:
        the first tier serving that size) or None (the default tier). Unknown: RequestError (404)."""
        if isinstance(tier, int) and not isinstance(tier, bool):
            tier = next((n for n, s in self.tiers.items() if s == tier), f"d{tier}")
        return self.tier_set.get(tier)

    def recommend(
        self,
        history: Sequence[str],
        k: int = 10,
        tier: str | int | None = None,
        exclude_seen: bool = True,
    ) -> list[tuple[str, float]]:
        """Top-``k`` [(original item id, score)], best first, for one user's ``history`` (original
        item ids, oldest first; only the last max_len count, unknown ids are ignored), scored by the
        width-d model of ``tier``. ``exclude_seen``: leave the history's items out of the ranking.
        A bad request (empty or all-unknown history, k outside [1, catalog size]) raises
        :class:`serving.recommender.RequestError`, a ValueError."""
        return self.recommender(tier).recommend(history, k, exclude_seen)

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        k: int = 10,
        tier: str | int | None = None,
        exclude_seen: bool = True,
    ) -> list[list[tuple[str, float]]]:
        """:meth:`recommend` for B histories at once (one (B, max_len) forward pass)."""
        return self.recommender(tier).recommend_batch(histories, k, exclude_seen)

    def info(self) -> dict[str, Any]:
        """{tier: {size, metrics, parameters, bytes}} from index.json (what GET /tiers answers)."""
        return self.tier_set.info()

    def __repr__(self) -> str:
        return f"LoadedExport({str(self.export_dir)!r}, tiers={self.tiers}, default={self.default!r})"


def load(
    export_dir: str | Path,
    tiers: dict[str, int] | str | Path | None = None,
    default: str | None = None,
    *,
    engine: str = "python",
    verify: bool = True,
    expect_digest: str | None = None,
    ann: str | None = None,
    trust_program: bool = False,
    max_history: int | None = None,
) -> LoadedExport:
    """Load an export written by ``recsys-export`` / ``Run.export()`` for in-process recommendation,
    with the checks ``recsys-serve`` makes at start-up.

    ``tiers``: {name: size}, a YAML tiers file (serving/tiers.py), or None (every exported size as
    ``d<size>``); ``default``: the tier of requests that name none. ``verify``: check every sha256
    (root checksums, then each size's files); ``expect_digest``: refuse an export whose digest differs.
    ``engine``: "python" (the backbone rebuilt from safetensors) or "program" (program.pt2, which
    unpickles: needs ``trust_program=True``); ``ann``: None (exact), "flat" or "hnsw" (faiss).
    Raises :class:`recsys.export.artifact.ArtifactError` for a missing, altered or malformed export."""
    from serving.tiers import TierSet

    return LoadedExport(
        TierSet(
            export_dir,
            tiers,
            default,
            engine,
            verify,
            ann,
            trust_program=trust_program,
            expect_digest=expect_digest,
            max_history=max_history,
        )
    )
