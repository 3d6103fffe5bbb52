"""benchmarks/serving.py (catalog-scale serving benchmark) on a tiny catalog, and the funnel pieces it
measures (serving.funnel.rerank, the faiss-index shortlist of FunnelRecommender)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import trained_export

pytest.importorskip("faiss")

from benchmarks import serving as bench  # noqa: E402
from recsys.export.artifact import load_artifact  # noqa: E402
from serving.funnel import FunnelRecommender, rerank  # noqa: E402
from serving.recommender import Recommender  # noqa: E402

ITEMS = 5000  # tiled catalog rows


def assert_same_top_k(got: torch.Tensor, ref: torch.Tensor, queries: torch.Tensor, catalog: torch.Tensor):
    """Same top-k sets, except where two items' fp32 scores tie at the k-th place (the two paths sum
    the dot products in different orders)."""
    for g, r, q in zip(got, ref, queries):
        if set(g.tolist()) == set(r.tolist()):
            continue
        exact = catalog.double() @ q.double()
        kth = exact[r].min()
        for item in set(g.tolist()) ^ set(r.tolist()):
            assert abs(float(exact[item] - kth)) <= 1e-5 * max(1.0, abs(float(kth))), "not a tie"


@pytest.fixture(scope="module")
def loaded():
    run_dir, export_dir, _ = trained_export()
    _, dataset, model = bench.load_model(run_dir)
    return run_dir, export_dir, dataset, model


@pytest.fixture(scope="module")
def doc(loaded):
    run_dir, _, dataset, model = loaded
    opts = bench.Options(
        items=ITEMS,
        queries=24,
        repeats=1,
        threads=1,
        latency_queries=5,
        budget_s=1.0,
        small_sizes=(4, 8),
        shortlists=(20, ITEMS),
        ivf_nprobe=(16,),
        nlist=16,
        sweep=(("diag", 0.5),),
    )
    bench.set_threads(1)
    result = bench.run_benchmark(model, dataset, opts, log=lambda m: None)
    result.update(run_dir=str(run_dir), machine=bench.machine_info(1), loadavg=[0.0, 0.0, 0.0])
    return result


def test_tiled_catalog_keeps_the_real_items_and_scales_the_noise(loaded):
    real = bench.item_matrix(loaded[3])  # (60, 16)
    n = len(real)
    for noise in ("cov", "diag"):
        cat = bench.tile_catalog(real, 3000, sigma=0.5, noise=noise, seed=1)
        assert cat.shape == (3000, real.shape[1])
        assert torch.equal(cat[:n], real)  # copy 0 = the real item
        noise_part = cat[n:] - real[torch.arange(n, 3000) % n]
        ratio = noise_part.std(0) / real.std(0)  # per dim: sigma x the real per-dim std
        assert float(ratio.mean()) == pytest.approx(0.5, rel=0.1)
        assert torch.equal(bench.tile_catalog(real, 3000, 0.5, noise, seed=1), cat)  # deterministic
    few = real[:6]  # 6 items in 16 dims: their centred span has 5 dims
    cov = bench.tile_catalog(few, 600, sigma=1.0, noise="cov")[6:] - few[torch.arange(6, 600) % 6]
    centered = few - few.mean(0)
    off_span = cov - (cov @ torch.linalg.pinv(centered)) @ centered  # cov noise lies in that span
    assert float(off_span.norm() / cov.norm()) < 1e-3


def test_mips_to_l2_keeps_the_inner_product_order():
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(500, 8, generator=gen) * torch.rand(500, 1, generator=gen) * 3).numpy()
    q = torch.randn(4, 8, generator=gen).numpy()
    xa = bench.mips_to_l2(x)
    qa = np.hstack([q, np.zeros((4, 1), np.float32)])
    l2 = ((qa[:, None, :] - xa[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.argsort(l2, 1)[:, :20], np.argsort(-(q @ x.T), 1)[:, :20])


def test_rerank_masks_invalid_candidates_and_handles_small_inputs():
    catalog = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # row r = (2r, 2r+1)
    hidden = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    cand = torch.tensor([[5, 1, 3, -1], [0, 2, 4, 5]])
    valid = cand >= 0
    valid[1, 0] = False  # e.g. already seen
    values, rows = rerank(hidden, catalog, cand, 2, valid)
    assert rows.tolist() == [[5, 3], [2, 4]]
    assert values[0].tolist() == [21.0, 13.0]
    values, rows = rerank(hidden[:1], catalog, cand[:1, :1], 5)  # k > S: S results
    assert rows.tolist() == [[5]]
    assert rerank(hidden[:0], catalog, cand[:0], 3)[1].shape == (0, 3)


def test_core_functions_flat_reference_and_full_shortlist_funnel(loaded):
    model, dataset = loaded[3], loaded[2]
    real = bench.item_matrix(model)
    full = bench.tile_catalog(real, ITEMS, 1.0, "cov")
    queries = bench.user_states(model, bench.histories_of_test_split(dataset, 16))
    flat = bench.Flat(full)
    ref = bench.batched(lambda q: flat.search(q, 10), queries, 8)
    assert bench.recall(ref, ref) == 1.0
    assert_same_top_k(bench.Flat(full, "faiss").search(queries, 10), ref, queries, full)
    small = bench.Flat(full[:, :4].contiguous())
    whole = bench.funnel_run(lambda q: small.search(q, ITEMS), full, 10)  # shortlist = whole catalog
    assert_same_top_k(bench.batched(whole, queries, 8), ref, queries, full)
    short = bench.batched(bench.funnel_run(lambda q: small.search(q, 10), full, 10), queries, 8)
    own = small.search(queries, 10)  # re-ranking a shortlist of k keeps its items
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(short, own))
    ivf = bench.Ann(full[:, :4].contiguous(), "ivf", nlist=16)
    every_cell = bench.funnel_run(lambda q: ivf.search(q, ITEMS, 16), full, 10)  # nprobe = nlist: exact
    assert_same_top_k(bench.batched(every_cell, queries, 8), ref, queries, full)


def test_benchmark_document_figures(doc):
    rows = {r["name"]: r for r in doc["settings"]}
    assert rows["flat d16 (torch)"]["recall"] == 1.0  # the reference against itself
    slack = 1.0 / (doc["queries"]["count"] * doc["options"]["k"])  # one fp32 tie at most
    for d in (4, 8):
        assert rows[f"d{d} flat S={ITEMS} -> d16"]["recall"] >= 1.0 - slack
        assert rows[f"d{d} ivf nprobe=16 S={ITEMS} -> d16"]["recall"] >= 1.0 - slack
        assert rows[f"d{d} flat S=20 -> d16"]["recall"] <= rows[f"d{d} flat S={ITEMS} -> d16"]["recall"]
        assert 0.0 <= rows[f"d{d} hnsw efSearch=20 S=20 -> d16"]["recall"] <= 1.0
    for r in doc["settings"]:
        for key in ("p50", "p99", "qps"):
            assert r[key]["min"] <= r[key]["median"] <= r[key]["max"] and r[key]["min"] > 0
        assert r["bytes"] > 0
    assert rows["flat d4 (torch)"]["bytes"] == ITEMS * 4 * 4
    funnel = rows["d4 hnsw efSearch=20 S=20 -> d16"]
    assert funnel["bytes"] == funnel["param"]["small_bytes"] + ITEMS * 16 * 4 and funnel["build_s"] > 0
    assert doc["catalog"]["items"] == ITEMS and doc["catalog"]["sigma"] == 1.0
    assert doc["reference"]["fp32_vs_fp64_recall"] >= 1.0 - slack
    assert isinstance(doc["target"]["met"], bool)
    assert doc["sweep"][0]["noise"] == "diag" and set(doc["sweep"][0]["sizes"]) == {"4", "8"}


def test_results_are_written(doc, tmp_path):
    paths = bench.write_results(doc, tmp_path)
    assert {p.name for p in paths} == {"serving.json", "serving.md", "serving.png"}
    data = json.loads((tmp_path / "serving.json").read_text())
    assert {"settings", "machine", "catalog", "reference", "target", "sweep", "peak_rss_bytes"} <= set(data)
    assert {"recall", "p50", "p99", "qps", "bytes", "build_s"} <= set(data["settings"][0])
    assert data["machine"]["cpu"]["model"] and data["machine"]["git"]["commit"] is not None
    assert "faiss" in data["machine"]["versions"]
    md = (tmp_path / "serving.md").read_text()
    for text in ("## Target", "## Flat tiers", "## Funnels", "- Command: `", "- CPU: ", "sigma = 1.0"):
        assert text in md
    assert ("**Met.**" in md) != ("**Not met**" in md)
    assert f"d8 ivf nprobe=16 S={ITEMS} -> d16" in md


def test_funnel_recommender_takes_its_shortlist_from_the_small_tiers_faiss_index(loaded):
    export_dir = loaded[1]
    small = Recommender(load_artifact(export_dir / "d0004"), ann="flat")
    large = Recommender(load_artifact(export_dir / "d0016"))
    histories = [[f"i{j}" for j in range(s, s + 6)] for s in range(1, 50, 4)]
    exact = large.query_batch(histories, k=10)
    for e, f in zip(exact, FunnelRecommender(small, large, shortlist=60).query_batch(histories, k=10)):
        assert f.items == e.items  # the whole catalog shortlisted: the large tier's own top-k
        torch.testing.assert_close(torch.tensor(f.scores), torch.tensor(e.scores), rtol=1e-5, atol=1e-5)
    for h, f in zip(histories, FunnelRecommender(small, large, shortlist=12).query_batch(histories, k=10)):
        assert len(f.items) == 10 and not set(f.items) & set(h)  # seen items never come back
