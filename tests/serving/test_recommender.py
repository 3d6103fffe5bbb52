"""Recommender (python API), tiers and funnel retrieval on a tiny exported run."""

from __future__ import annotations

import math

import pytest
import torch
from support import trained_export

from recsys.export.artifact import ArtifactError, load_artifact
from serving.funnel import FunnelRecommender, funnel_recall
from serving.recommender import Recommender, RequestError
from serving.tiers import TierSet, load_tiers_file


@pytest.fixture(scope="module")
def export_dir():
    return trained_export()[1]


@pytest.fixture(scope="module")
def tiers(export_dir):
    return TierSet(export_dir)


def test_recommend_maps_original_ids_sorted_and_excludes_seen(tiers):
    rec = tiers.get("d16")
    history = ["i3", "i4", "i5"]
    out = rec.recommend(history, k=10)
    assert len(out) == 10
    items, scores = zip(*out)
    assert all(i.startswith("i") for i in items) and not set(items) & set(history)
    assert list(scores) == sorted(scores, reverse=True)
    with_seen = [i for i, _ in rec.recommend(history, k=60, exclude_seen=False)]
    assert len(with_seen) == 60 and set(history) <= set(with_seen)
    assert len(rec.recommend(history, k=60)) == 57  # only 57 unseen items remain


def test_program_engine_matches_python_engine(export_dir):
    art = load_artifact(export_dir / "d0008", trust_program=True)  # our own export: trusted
    a = Recommender(art, "python").recommend(["i1", "i2"], k=20)
    b = Recommender(art, "program").recommend(["i1", "i2"], k=20)
    assert [i for i, _ in a] == [i for i, _ in b]
    torch.testing.assert_close(torch.tensor([s for _, s in a]), torch.tensor([s for _, s in b]))


def test_unknown_empty_truncated_and_k(tiers):
    rec = tiers.get("d8")
    result = rec.query(["i3", "nope", 4711, "i4"], k=5)
    assert result.unknown_items == ["nope", 4711] and not result.truncated
    assert result.items == rec.query(["i3", "i4"], k=5).items
    assert rec.query([3, "i4"], k=5).unknown_items == [3]  # ints compared as strings: "3" is not an id
    with pytest.raises(RequestError, match="empty"):
        rec.query([], k=5)
    with pytest.raises(RequestError, match="none of"):
        rec.query(["x", "y"], k=5)
    long = [f"i{i}" for i in range(1, 41)]
    res = rec.query(long, k=5, exclude_seen=False)
    assert res.truncated and rec.max_len == 10
    assert res.items == rec.query(long[-10:], k=5, exclude_seen=False).items  # keeps the most recent
    for bad in (0, -1, 61, 2.5, True):
        with pytest.raises(RequestError, match="k must be"):
            rec.query(["i1"], k=bad)
    with pytest.raises(RequestError):
        rec.query(["i1", 1.5], k=3)


def test_recommend_batch_equals_single_requests(tiers):
    rec = tiers.get("d16")
    histories = [["i1"], ["i5", "i6", "i7"], [f"i{i}" for i in range(10, 30)]]
    batch = rec.recommend_batch(histories, k=7)
    for h, got in zip(histories, batch):
        single = rec.recommend(h, k=7)
        assert [i for i, _ in got] == [i for i, _ in single]
        torch.testing.assert_close(torch.tensor([s for _, s in got]), torch.tensor([s for _, s in single]))


def test_tiers_file(export_dir, tmp_path):
    path = tmp_path / "tiers.yaml"
    path.write_text("tiers:\n  small: 4\n  large: 16\n")
    ts = TierSet(export_dir, path)
    assert ts.tiers == {"small": 4, "large": 16} and ts.default == "large"
    assert ts.get("small").size == 4 and ts.get(None).size == 16
    with pytest.raises(RequestError, match="known tiers") as err:
        ts.get("d8")
    assert err.value.status_code == 404
    path.write_text("tiers:\n  huge: 32\n")
    with pytest.raises(ArtifactError, match="not exported"):
        TierSet(export_dir, path)
    path.write_text("tiers: [4, 8]\n")
    with pytest.raises(ValueError, match="tiers"):
        load_tiers_file(path)
    assert TierSet(export_dir).tiers == {"d4": 4, "d8": 8, "d16": 16}


def test_funnel_with_full_shortlist_equals_large_top_k(tiers):
    small, large = tiers.get("d4"), tiers.get("d16")
    histories = [[f"i{j}" for j in range(s, s + 6)] for s in range(1, 50, 4)]
    exact = large.query_batch(histories, k=10)
    funnel = FunnelRecommender(small, large, shortlist=60)
    for e, f in zip(exact, funnel.query_batch(histories, k=10)):
        assert f.items == e.items
        torch.testing.assert_close(torch.tensor(f.scores), torch.tensor(e.scores), rtol=1e-5, atol=1e-5)
    assert FunnelRecommender(small, large, shortlist=10_000).shortlist == 60


def test_funnel_recall_is_measured_and_grows_with_the_shortlist(tiers):
    small, large = tiers.get("d4"), tiers.get("d16")
    histories = [[f"i{j}" for j in range(s, s + 5)] for s in range(1, 55, 2)]
    recall = funnel_recall(FunnelRecommender(small, large), histories, k=10, shortlists=[10, 20, 40, 60])
    assert set(recall) == {10, 20, 40, 60}
    assert all(0.0 <= r <= 1.0 for r in recall.values())
    assert recall[60] == pytest.approx(1.0)
    assert recall[10] <= recall[20] + 1e-9 <= recall[40] + 2e-9 <= recall[60] + 3e-9
    with pytest.raises(RequestError, match="shortlist"):
        FunnelRecommender(small, large, shortlist=0)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_optional_faiss_ann_matches_exact_top_k(export_dir, kind):
    pytest.importorskip("faiss")
    art = load_artifact(export_dir / "d0016")
    exact, ann = Recommender(art), Recommender(art, ann=kind)
    histories = [[f"i{j}" for j in range(s, s + 4)] for s in range(1, 55, 3)]
    for exclude_seen in (True, False):
        want = exact.query_batch(histories, k=10, exclude_seen=exclude_seen)
        got = ann.query_batch(histories, k=10, exclude_seen=exclude_seen)
        overlap = [len(set(a.items) & set(b.items)) / 10 for a, b in zip(got, want)]
        if kind == "flat":
            assert all(o == 1.0 for o in overlap)
            for a, b in zip(got, want):
                torch.testing.assert_close(
                    torch.tensor(a.scores), torch.tensor(b.scores), rtol=1e-4, atol=1e-4
                )
        else:
            assert sum(overlap) / len(overlap) > 0.9
        if exclude_seen:
            assert all(not set(g.items) & set(h) for g, h in zip(got, histories))


def test_nan_scores_are_never_returned(export_dir, monkeypatch):
    rec = TierSet(export_dir).get("d16")

    def broken(batch, engine):  # a model whose scores for items 1..10 are NaN
        scores = original(batch, engine).clone()
        scores[:, 1:11] = float("nan")
        return scores

    original = rec.artifact.scores
    monkeypatch.setattr(rec.artifact, "scores", broken)
    out = rec.query(["i3", "i4"], k=5)
    assert len(out.items) == 5 and not set(out.items) & {f"i{i}" for i in range(1, 11)}
    assert all(math.isfinite(v) for v in out.scores)
