"""Serving benchmark at catalog scale: flat exact d=1024 vs faiss shortlists at small sizes re-ranked at d=1024.

    python -m benchmarks.serving [--items 1000000] [--queries 256] [--repeats 3] [--threads N]
                                 [--run-dir RUN_DIR] [--sigma 1.0] [--noise cov|diag] [--out DIR] [--quick]
    python -m benchmarks.serving --small-catalog --run-dir RUN_DIR     # per-tier table of an export

Catalog-scale mode (the default; docs/serving.md, "Serving at catalog scale"):

- model: a trained width-1024 run (``--run-dir``), or by default one trained here through
  ``recsys.training.runner.run`` (ML-100K, ladder 8..1024, config in TRAIN_OVERRIDES) and cached
  under build/serving-bench/ so reruns reuse it;
- catalog: the model's N real item embeddings (``MatryoshkaRecModel.item_embeddings()``, (N, 1024);
  size d = the ``[:, :d]`` prefix) tiled to ``--items`` rows: copy j >= 1 of item i is
  ``e_i + sigma * noise``, the noise drawn with the real embeddings' per-dim std (``--noise diag``:
  independent dims) or with their full covariance (``--noise cov``, default: the noise lies in the
  span of the real items, as a new item's embedding does); copy 0 is the real item itself;
- queries: the model's final hidden state at d=1024 (``encode_last``) for test-split histories
  of the run's dataset; size d uses its ``[:d]`` prefix (the width-d model's state, nesting);
- tiers: flat exact scan at d=1024 (the reference; torch matmul + topk and faiss ``knn``), flat
  exact at each small size, and funnels: a shortlist of S items at a small size (exact flat scan,
  faiss HNSW or IVF) re-ranked exactly at d=1024 (``serving.funnel.rerank``).

For every setting: recall of the flat d=1024 top-k (mean over queries), single-query latency
p50/p99 (ms), batched throughput (queries/s in batches of ``--batch``), memory (bytes of the index
or catalog it reads) and build time, each timing as median [min, max] over ``--repeats`` rounds
(settings interleaved within a round). Retrieval only: the user state is computed once per query
(its cost, the same for every setting, is reported apart). Writes OUT/serving.{json,md,png}.

``--small-catalog``: the previous benchmark (every exported tier through serving.Recommender on the
run's own catalog, e.g. 1.3k items), written to OUT/serving_small_catalog.md. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from serving.funnel import rerank

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "build" / "serving-bench"
LARGE = 1024
# The run trained when no --run-dir is given (cached under CACHE, keyed by this list)
TRAIN_OVERRIDES = [
    "experiment=demo",
    # the ID-table model the serving figures were measured with (make demo's recipe until round 12 of
    # the quality suite; the serving path does not depend on which recipe trained the model)
    "model.use_id_table=true",
    "model.trainable_features=false",
    "trainer.feature_lr_scale=1.0",
    "backbone.num_blocks=1",
    "backbone.ffn_multiplier=4",
    "trainer.batch_size=64",
    "trainer.warmup_steps=50",
    "data.train_stride=50",
    "model.ladder=[8,16,32,64,128,256,512,1024]",
    "model.width=1024",
    "trainer.max_epochs=8",
    "trainer.patience=0",
    "trainer.progress=false",
    "name=serving-bench",
]
# --quick (make bench) trains its own, shorter run, so a fresh clone's `make bench` stays within
# minutes; its recall figures are not the ones the README quotes
QUICK_TRAIN_OVERRIDES = [
    o if o != "trainer.max_epochs=8" else "trainer.max_epochs=2" for o in TRAIN_OVERRIDES
]
TARGET = {"recall": 0.99, "p50_speedup": 5.0, "qps_speedup": 5.0}
QUICK = {
    "items": 100_000,
    "queries": 128,
    "latency_queries": 32,
    "shortlists": "100,500",
    "sweep": "",
    "ivf_nprobe": "32",
}


# ============================================================================ model, queries
def default_run_dir(overrides: Sequence[str] = TRAIN_OVERRIDES) -> Path:
    key = hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:10]
    return CACHE / f"run-ml100k-d{LARGE}-{key}"


def train_default_run(run_dir: Path, overrides: Sequence[str] = TRAIN_OVERRIDES, log=print) -> Path:
    """Train the default width-1024 run into ``run_dir`` unless a finished one is there (DONE file)."""
    done = run_dir / "DONE"
    if done.is_file() and (run_dir / "checkpoints" / "best.pt").is_file():
        return run_dir
    from hydra import compose, initialize_config_dir

    from recsys.config import CONFIG_DIR
    from recsys.training.runner import run

    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished run (interrupted): start over
    data = ROOT / "data" / "ml-100k"  # the default data.path, anchored at the checkout
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"data.path={data}", *overrides])
    log(f"training the benchmark model into {run_dir} ({' '.join(overrides)}); cached for later runs")
    start = time.perf_counter()
    with torch.enable_grad():  # callers may run under no_grad
        run(cfg, run_dir)
    done.write_text(json.dumps({"overrides": list(overrides), "seconds": time.perf_counter() - start}))
    return run_dir


def load_model(run_dir: Path):
    """(config, dataset, model in eval mode) of a run directory or checkpoint file."""
    from recsys.builders import load_run, resolve_run

    run_dir, ckpt = resolve_run(run_dir)
    return load_run(run_dir, ckpt)


@torch.inference_mode()
def item_matrix(model) -> torch.Tensor:
    """(N, D) float32 item embeddings of items 1..N (padding row dropped); size d = ``[:, :d]``."""
    return model.item_embeddings().float()[1:].contiguous()


def histories_of_test_split(dataset, n: int) -> torch.Tensor:
    """(n, max_len) left-padded test-split inputs of the first n users (cycled when n > users)."""
    inputs = dataset.split("test").inputs
    return inputs[torch.arange(n) % inputs.shape[0]]


@torch.inference_mode()
def user_states(model, histories: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(n, D) float32 final hidden states at the model's width; size d uses ``[:, :d]``."""
    emb, cache = model.item_embeddings(), {}
    parts = [model.encode_last(histories[i : i + batch], emb, cache) for i in range(0, len(histories), batch)]
    return torch.cat(parts).float().contiguous()


@torch.inference_mode()
def encoder_cost(model, histories: torch.Tensor, calls: int, batch: int) -> dict:
    """Time of the width-D user-state encoder (the same for every setting): p50 of one history and
    histories/s in batches of ``batch``."""
    emb, cache = model.item_embeddings(), {}
    model.encode_last(histories[:batch], emb, cache)
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        model.encode_last(histories[i % len(histories)][None], emb, cache)
        times.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    model.encode_last(histories[:batch], emb, cache)
    return {
        "p50_ms": statistics.median(times),
        "batched_per_s": min(batch, len(histories)) / (time.perf_counter() - t0),
    }


# ============================================================================ catalog
def noise_basis(real: torch.Tensor, noise: str) -> torch.Tensor:
    """What one unit of noise is multiplied with: "diag": the per-dim std (D,); "cov": (N, D) rows
    such that ``z @ basis`` (z ~ N(0, I_N)) has the real embeddings' covariance (per-dim std included)."""
    if noise == "diag":
        return real.std(0)
    if noise == "cov":
        return (real - real.mean(0)) / math.sqrt(max(1, real.shape[0] - 1))
    raise ValueError(f"noise must be 'cov' or 'diag', got {noise!r}")


@torch.inference_mode()
def tile_catalog(
    real: torch.Tensor,
    total: int,
    sigma: float,
    noise: str = "cov",
    seed: int = 0,
    out: torch.Tensor | None = None,
    chunk: int = 32768,
) -> torch.Tensor:
    """(total, D) float32 catalog: row r copies real item ``r % N``; rows < N are the real items,
    the others ``e + sigma * noise`` (see :func:`noise_basis`). ``out``: a buffer to fill in place."""
    n, dim = real.shape
    out = torch.empty(total, dim) if out is None else out
    basis = noise_basis(real, noise)
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        src = torch.arange(start, stop) % n
        block = out[start:stop]
        if noise == "diag":
            torch.randn(stop - start, dim, generator=gen, out=block)
            block.mul_(basis * sigma)
        else:
            torch.mm(torch.randn(stop - start, n, generator=gen), basis, out=block)
            block.mul_(sigma)
        block.add_(real[src])
        if start < n:  # copy 0 of each item is the real item
            block[: min(stop, n) - start] = real[start : min(stop, n)]
    return out


def source_of(rows: torch.Tensor, n: int) -> torch.Tensor:
    return rows % n


# ============================================================================ searchers
def faiss_module():
    import faiss

    return faiss


class Flat:
    """Exact top-n by inner product over a (M, d) catalog: ``engine`` "torch" (matmul + topk) or
    "faiss" (``faiss.knn``, the search of IndexFlatIP without copying the catalog)."""

    def __init__(self, catalog: torch.Tensor, engine: str = "torch"):
        if engine not in ("torch", "faiss"):
            raise ValueError(f"engine must be 'torch' or 'faiss', got {engine!r}")
        self.catalog, self.engine, self.d = catalog, engine, catalog.shape[1]
        self.array = catalog.numpy() if engine == "faiss" else None

    def search(self, q: torch.Tensor, n: int) -> torch.Tensor:
        q = q[:, : self.d]
        if self.engine == "torch":
            return torch.topk(q @ self.catalog.T, n, dim=1).indices
        faiss = faiss_module()
        _, ids = faiss.knn(np.ascontiguousarray(q.numpy()), self.array, n, faiss.METRIC_INNER_PRODUCT)
        return torch.from_numpy(ids)

    @property
    def nbytes(self) -> int:
        return self.catalog.numel() * self.catalog.element_size()


def mips_to_l2(x: np.ndarray) -> np.ndarray:
    """(M, d) rows -> (M, d+1) rows ``[x, sqrt(R^2 - |x|^2)]``, R = the largest row norm: for a query
    ``[q, 0]`` the L2 distance^2 is ``|q|^2 + R^2 - 2 q.x``, so the L2 order is the inner-product order
    (the standard reduction of maximum inner product search to nearest neighbours)."""
    norms2 = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    extra = np.sqrt(np.maximum(norms2.max() - norms2, 0.0)).astype(np.float32)
    return np.hstack([x, extra[:, None]])


class Ann:
    """A faiss index for top-n inner product over a (M, d) catalog prefix, built on the rows mapped by
    :func:`mips_to_l2` with the L2 metric: "hnsw" (IndexHNSWFlat, ``hnsw_m`` links, efConstruction) or
    "ivf" (IndexIVFFlat, ``nlist`` k-means cells trained on 40 rows per cell). (Built directly with
    METRIC_INNER_PRODUCT, both lost most of the shortlist on these embeddings: HNSW graphs and k-means
    cells are built for a metric, and inner product is none.) ``search`` takes the per-call parameter
    (efSearch / nprobe) through faiss SearchParameters; ids -1 = not found."""

    def __init__(
        self, catalog: torch.Tensor, kind: str, hnsw_m: int = 32, ef_construction: int = 40, nlist=None
    ):
        faiss = faiss_module()
        self.kind, self.d = kind, catalog.shape[1]
        start = time.perf_counter()
        x = mips_to_l2(catalog.numpy())
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.d + 1, hnsw_m, faiss.METRIC_L2)
            index.hnsw.efConstruction = ef_construction
            index.add(x)
            self.options = {"M": hnsw_m, "efConstruction": ef_construction}
        elif kind == "ivf":
            nlist = nlist or default_nlist(len(x))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(self.d + 1), self.d + 1, nlist, faiss.METRIC_L2)
            rows = min(len(x), 40 * nlist)
            sample = np.sort(np.random.default_rng(0).choice(len(x), rows, replace=False))
            index.train(x[sample])
            index.add(x)
            self.options = {"nlist": nlist, "train_rows": rows}
        else:
            raise ValueError(f"ann kind must be 'hnsw' or 'ivf', got {kind!r}")
        del x
        self.build_s = time.perf_counter() - start
        self.index = index
        self.nbytes = int(faiss.serialize_index(index).nbytes)

    def params(self, value: int):
        faiss = faiss_module()
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=int(value))
        return faiss.SearchParametersIVF(nprobe=int(value))

    def search(self, q: torch.Tensor, n: int, value: int) -> torch.Tensor:
        x = np.zeros((len(q), self.d + 1), dtype=np.float32)
        x[:, : self.d] = q[:, : self.d].numpy()
        _, ids = self.index.search(x, n, params=self.params(value))
        return torch.from_numpy(ids)


def default_nlist(rows: int) -> int:
    """IVF cells ~ 4 sqrt(M), a power of two (1M rows -> 4096)."""
    return max(16, 2 ** round(math.log2(4 * math.sqrt(rows))))


@dataclass
class Setting:
    """One measured way to get the top-k: ``run(q (B, D)) -> (B, k)`` catalog rows."""

    name: str
    kind: str  # flat | funnel
    d: int  # the size that scans the catalog (the shortlist size for a funnel)
    index: str  # torch | faiss | flat | hnsw | ivf
    run: Callable[[torch.Tensor], torch.Tensor]
    nbytes: int
    build_s: float = 0.0
    shortlist: int | None = None
    param: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)


def flat_setting(catalog_d: torch.Tensor, engine: str, k: int) -> Setting:
    flat = Flat(catalog_d, engine)
    return Setting(
        f"flat d{flat.d} ({engine})", "flat", flat.d, engine, lambda q: flat.search(q, k), flat.nbytes
    )


def funnel_run(shortlist: Callable[[torch.Tensor], torch.Tensor], full: torch.Tensor, k: int):
    """Shortlist rows of the catalog (ids -1 = none), then the exact top-k at the full size."""

    def run(q: torch.Tensor) -> torch.Tensor:
        cand = shortlist(q)
        valid = cand >= 0
        return rerank(q, full, cand, k, None if bool(valid.all()) else valid)[1]

    return run


def funnel_setting(
    source, full: torch.Tensor, k: int, s: int, value: int | None = None, build_s: float = 0.0
) -> Setting:
    """A funnel whose shortlist of ``s`` rows comes from ``source``: a :class:`Flat` (exact scan at
    the small size) or an :class:`Ann` (``value`` = its efSearch / nprobe)."""
    full_bytes = full.numel() * full.element_size()
    if isinstance(source, Flat):
        name, index, param, small = f"d{source.d} flat S={s}", "flat", {}, source.nbytes
        shortlist = lambda q: source.search(q, s)  # noqa: E731
    else:
        key = "efSearch" if source.kind == "hnsw" else "nprobe"
        name, index, param = f"d{source.d} {source.kind} {key}={value} S={s}", source.kind, {key: value}
        small, build_s = source.nbytes, source.build_s
        shortlist = lambda q: source.search(q, s, value)  # noqa: E731
    return Setting(
        name + f" -> d{full.shape[1]}",
        "funnel",
        source.d,
        index,
        funnel_run(shortlist, full, k),
        small + full_bytes,
        build_s,
        s,
        {**param, "small_bytes": small, "rerank_bytes": full_bytes},
    )


# ============================================================================ measurement
def recall(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over rows of |got_i ∩ ref_i| / |ref_i| (ids < 0 in ``got`` never match)."""
    hits = [len(set(g.tolist()) & set(r.tolist())) / len(r) for g, r in zip(got, ref)]
    return sum(hits) / max(1, len(hits))


def batched(run, queries: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([run(queries[i : i + batch]) for i in range(0, len(queries), batch)])


def single_latency(
    run, queries, calls: int, budget_s: float, min_calls: int = 10, one=lambda qs, i: qs[i][None]
) -> list[float]:
    """ms of ``run`` on one query at a time (``one(queries, i)``), queries in order (cycled); stops
    after ``calls`` calls or once ``budget_s`` seconds are spent (at least ``min_calls``)."""
    times: list[float] = []
    spent = time.perf_counter()
    for i in range(calls):
        q = one(queries, i % len(queries))
        t0 = time.perf_counter()
        run(q)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= min_calls and time.perf_counter() - spent > budget_s:
            break
    return times


def throughput(run, queries: torch.Tensor, batch: int, budget_s: float = float("inf")) -> float:
    """Queries per second over ``queries`` in batches of ``batch``, in order; stops after the batch
    that crosses ``budget_s`` seconds (at least one batch)."""
    done, t0 = 0, time.perf_counter()
    for i in range(0, len(queries), batch):
        done += len(run(queries[i : i + batch]))
        if time.perf_counter() - t0 > budget_s:
            break
    return done / (time.perf_counter() - t0)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def summary(values: Sequence[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def measure(
    settings: Sequence[Setting],
    queries: torch.Tensor,
    reference: torch.Tensor,
    repeats: int,
    batch: int,
    calls: int,
    budget_s: float,
    log=print,
) -> None:
    """Fill each setting's ``result``: recall vs ``reference`` (one batched pass, also the warm-up),
    then ``repeats`` rounds over all settings (interleaved) of single-query latency and throughput."""
    for s in settings:
        got = batched(s.run, queries, batch)
        s.result = {"recall": recall(got, reference), "p50": [], "p99": [], "qps": [], "latency_calls": []}
        log(f"  recall {s.result['recall']:.4f}  {s.name}")
    for r in range(repeats):
        for s in settings:
            times = single_latency(s.run, queries, calls, budget_s)
            s.result["p50"].append(statistics.median(times))
            s.result["p99"].append(percentile(times, 0.99))
            s.result["latency_calls"].append(len(times))
            s.result["qps"].append(throughput(s.run, queries, batch, budget_s))
        log(f"  round {r + 1}/{repeats} done")
    for s in settings:
        for key in ("p50", "p99", "qps"):
            s.result[key] = summary(s.result[key])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ============================================================================ the benchmark
@dataclass
class Options:
    items: int = 1_000_000
    queries: int = 256
    repeats: int = 3
    threads: int = 1
    k: int = 10
    batch: int = 64
    latency_queries: int = 100
    budget_s: float = 5.0
    sigma: float = 1.0
    noise: str = "cov"
    sweep: tuple[tuple[str, float], ...] = (("cov", 0.5), ("cov", 2.0), ("diag", 0.5))
    small_sizes: tuple[int, ...] = (32, 64)
    shortlists: tuple[int, ...] = (100, 200, 500, 1000)
    hnsw_m: int = 32
    ef_construction: int = 40
    ivf_nprobe: tuple[int, ...] = (32, 128)
    nlist: int | None = None
    ann: tuple[str, ...] = ("hnsw", "ivf")
    seed: int = 0


def reference_check(
    full: torch.Tensor, queries: torch.Tensor, ref: torch.Tensor, k: int, batch: int
) -> float:
    """Recall of the fp32 flat top-k against the float64 exact top-k (re-scoring the fp32 top-(k+40)
    in float64): the floor below which fp32 rounding alone moves items at the k-th place."""
    cand = batched(lambda q: torch.topk(q @ full.T, k + 40, dim=1).indices, queries, batch)
    exact = torch.einsum("bd,bsd->bs", queries.double(), full[cand].double())
    return recall(torch.gather(cand, 1, torch.topk(exact, k, dim=1).indices), ref)


def sweep_recall(
    full: torch.Tensor, queries: torch.Tensor, opts: Options, real: torch.Tensor, noise: str, sigma: float
) -> dict:
    """Recall at another noise model / sigma (catalog ``full`` rewritten in place): each small size's
    own flat top-k and its exact flat shortlist re-ranked at full size, for every S (no ANN: no index
    to rebuild; an ANN shortlist can only lose recall against the exact one)."""
    tile_catalog(real, len(full), sigma, noise, opts.seed, out=full)
    flat = Flat(full)
    ref = batched(lambda q: flat.search(q, opts.k), queries, opts.batch)
    out = {"noise": noise, "sigma": sigma, "reference_sources": distinct_sources(ref, len(real)), "sizes": {}}
    for d in opts.small_sizes:
        small = Flat(full[:, :d].contiguous())
        own = batched(lambda q, f=small: f.search(q, opts.k), queries, opts.batch)
        row = {"own_top_k": recall(own, ref), "funnel": {}}
        for s in opts.shortlists:
            got = batched(
                funnel_run(lambda q, f=small, s=s: f.search(q, s), full, opts.k), queries, opts.batch
            )
            row["funnel"][str(s)] = recall(got, ref)
        out["sizes"][str(d)] = row
        del small
    return out


def distinct_sources(ids: torch.Tensor, n: int) -> float:
    """Mean number of distinct real items the top-k rows of a query are copies of."""
    return statistics.mean(len(set(source_of(r, n).tolist())) for r in ids)


@torch.no_grad()  # local: the caller's grad mode is restored on return (tests run in one process)
def run_benchmark(model, dataset, opts: Options, log=print) -> dict:
    """The catalog-scale measurement on a loaded model; returns the result document (no machine)."""
    torch.manual_seed(opts.seed)
    doc: dict = {"options": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(opts).items()}}
    t_start = time.perf_counter()
    real = item_matrix(model)
    n_real, dim = real.shape
    if max(opts.small_sizes) >= dim:
        raise ValueError(f"small sizes {opts.small_sizes} must be below the model width {dim}")
    histories = histories_of_test_split(dataset, opts.queries)
    queries = user_states(model, histories)  # (Q, D)
    doc["model"] = {
        "width": dim,
        "real_items": n_real,
        "ladder": list(model.ladder),
        "max_len": model.config.max_len,
    }
    doc["queries"] = {
        "count": len(queries),
        "distinct_users": min(len(queries), dataset.split("test").inputs.shape[0]),
        "source": "final hidden state (encode_last) of test-split histories, first users in order",
    }
    doc["encoder"] = encoder_cost(model, histories, calls=min(50, len(histories)), batch=opts.batch)
    log(f"model width {dim}, {n_real} real items, {len(queries)} queries; encoder {doc['encoder']}")
    phases = doc["phase_seconds"] = {"queries_and_encoder": time.perf_counter() - t_start}

    t0 = time.perf_counter()
    full = tile_catalog(real, max(opts.items, n_real), opts.sigma, opts.noise, opts.seed)
    m = len(full)
    std = real.std(0)
    doc["catalog"] = {
        "items": m,
        "copies_per_real_item": m / n_real,
        "sigma": opts.sigma,
        "noise": opts.noise,
        "real_std_per_dim": {"mean": float(std.mean()), "min": float(std.min()), "max": float(std.max())},
        "real_norm_mean": float(real.norm(dim=1).mean()),
        "tiled_norm_mean": float(full[n_real : n_real + 100_000].norm(dim=1).mean()) if m > n_real else None,
        "bytes_d1024": full.numel() * 4,
        "build_s": time.perf_counter() - t0,
    }
    log(f"catalog {m} x {dim} ({opts.noise} noise, sigma {opts.sigma}) in {doc['catalog']['build_s']:.1f} s")

    k = opts.k
    flat_full = Flat(full)
    reference = batched(lambda q: flat_full.search(q, k), queries, opts.batch)
    doc["reference"] = {
        "setting": f"flat d{dim} (torch)",
        "fp32_vs_fp64_recall": reference_check(full, queries, reference, k, opts.batch),
        "distinct_sources_in_top_k": distinct_sources(reference, n_real),
        "real_items_in_top_k": float((reference < n_real).float().sum(1).mean()),
    }
    log(f"reference {doc['reference']}")
    phases["catalog_and_reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()

    settings = [flat_setting(full, "torch", k), flat_setting(full, "faiss", k)]
    small_flats, anns = {}, []
    for d in opts.small_sizes:
        cat_d = full[:, :d].contiguous()
        small_flats[d] = Flat(cat_d)
        settings += [flat_setting(cat_d, "torch", k), flat_setting(cat_d, "faiss", k)]
        for s in opts.shortlists:
            settings.append(funnel_setting(small_flats[d], full, k, s))
        for kind in opts.ann:
            ann = Ann(cat_d, kind, opts.hnsw_m, opts.ef_construction, opts.nlist)
            anns.append(ann)
            log(f"built d{d} {kind} {ann.options} in {ann.build_s:.1f} s, {ann.nbytes / 2**20:.0f} MiB")
            for s in opts.shortlists:
                values = [s] if kind == "hnsw" else list(opts.ivf_nprobe)
                for v in values:
                    settings.append(funnel_setting(ann, full, k, s, v))
    doc["indexes"] = [
        {"d": a.d, "kind": a.kind, **a.options, "build_s": a.build_s, "bytes": a.nbytes} for a in anns
    ]
    doc["rss_after_build_bytes"] = rss_bytes()
    phases["indexes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    log(f"{len(settings)} settings; measuring ({opts.repeats} rounds)")
    measure(
        settings,
        queries,
        reference,
        opts.repeats,
        opts.batch,
        opts.latency_queries,
        opts.budget_s,
        log,
    )
    doc["settings"] = [
        {
            "name": s.name,
            "kind": s.kind,
            "d": s.d,
            "index": s.index,
            "shortlist": s.shortlist,
            "param": s.param,
            "bytes": s.nbytes,
            "build_s": s.build_s,
            **s.result,
        }
        for s in settings
    ]
    phases["measure"] = time.perf_counter() - t0
    doc["target"] = target_verdict(doc["settings"], dim)
    by_name = {r["name"]: r["recall"] for r in doc["settings"]}
    doc["sweep_main"] = {
        "noise": opts.noise,
        "sigma": opts.sigma,
        "reference_sources": doc["reference"]["distinct_sources_in_top_k"],
        "sizes": {
            str(d): {
                "own_top_k": by_name[f"flat d{d} (torch)"],
                "funnel": {str(s): by_name[f"d{d} flat S={s} -> d{dim}"] for s in opts.shortlists},
            }
            for d in opts.small_sizes
        },
    }
    del settings, small_flats, anns
    gc.collect()

    doc["sweep"], t0 = [], time.perf_counter()
    for noise, sigma in opts.sweep:
        t1 = time.perf_counter()
        doc["sweep"].append(sweep_recall(full, queries, opts, real, noise, sigma))
        log(f"sweep {noise} sigma {sigma}: {doc['sweep'][-1]['sizes']} ({time.perf_counter() - t1:.0f} s)")
    phases["sweep"] = time.perf_counter() - t0
    doc["seconds"] = time.perf_counter() - t_start
    doc["peak_rss_bytes"] = peak_rss_bytes()
    return doc


def target_verdict(rows: list[dict], dim: int) -> dict:
    """Is some funnel at >= TARGET recall, >= TARGET x lower p50 and >= TARGET x higher throughput
    than the faster flat d=dim engine (by each measure)? Picks the met setting with the best p50."""
    flats = [r for r in rows if r["kind"] == "flat" and r["d"] == dim]
    base_p50 = min(r["p50"]["median"] for r in flats)
    base_qps = max(r["qps"]["median"] for r in flats)
    best_p50 = min(r["p50"]["min"] for r in flats)  # the flat scan's best round, for the worst-case ratios
    best_qps = max(r["qps"]["max"] for r in flats)
    candidates = []
    for r in rows:
        if r["kind"] != "funnel":
            continue
        p50_x, qps_x = base_p50 / r["p50"]["median"], r["qps"]["median"] / base_qps
        r["p50_speedup"], r["qps_speedup"] = p50_x, qps_x
        r["p50_speedup_worst"] = best_p50 / r["p50"]["max"]  # funnel's slowest round vs flat's fastest
        r["qps_speedup_worst"] = r["qps"]["min"] / best_qps
        ok = (
            r["recall"] >= TARGET["recall"]
            and p50_x >= TARGET["p50_speedup"]
            and qps_x >= TARGET["qps_speedup"]
        )
        r["meets_target"] = ok
        candidates.append(r)
    met = [r for r in candidates if r["meets_target"]]
    best = max(met, key=lambda r: r["p50_speedup"]) if met else None
    closest = max(
        candidates,
        key=lambda r: (r["recall"] >= TARGET["recall"], r["recall"], r["p50_speedup"]),
        default=None,
    )
    return {
        **TARGET,
        "baseline_p50_ms": base_p50,
        "baseline_p50_engine": min(flats, key=lambda r: r["p50"]["median"])["index"],
        "baseline_qps": base_qps,
        "baseline_qps_engine": max(flats, key=lambda r: r["qps"]["median"])["index"],
        "met": bool(met),
        "settings_meeting": [r["name"] for r in met],
        "best": best["name"] if best else None,
        "closest": None if best or closest is None else closest["name"],
    }


# ============================================================================ report
def fmt_s(s: dict, digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def mib(b: int) -> str:
    return f"{b / 2**20:,.0f}"


def markdown(doc: dict) -> str:
    from recsys.bench.report import machine_lines

    o, cat, ref, tgt = doc["options"], doc["catalog"], doc["reference"], doc["target"]
    rows, dim = doc["settings"], doc["model"]["width"]
    best = next((r for r in rows if r["name"] == tgt["best"]), None)
    lines = [
        f"# Serving at catalog scale ({cat['items']:,} items){' (quick)' if o.get('quick') else ''}",
        "",
        *machine_lines(doc["machine"]),
        f"- faiss {doc['machine']['versions'].get('faiss', '?')}; torch and faiss threads: {o['threads']}; "
        f"1/5/15-min load average at the end: {', '.join(f'{x:.1f}' for x in doc['loadavg'])}",
        f"- Run: `{doc['run_dir']}` (width {dim}, ladder {doc['model']['ladder']}, {doc['model']['real_items']} "
        f"real items, max_len {doc['model']['max_len']})",
        f"- Wall time {doc['seconds']:.0f} s ("
        + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in doc["phase_seconds"].items())
        + f"); peak RSS {mib(doc['peak_rss_bytes'])} MiB",
        "",
        "## Setup",
        "",
        f"- Catalog: the model's {doc['model']['real_items']} real item embeddings (d={dim}) tiled to "
        f"{cat['items']:,} rows ({cat['copies_per_real_item']:.0f} copies each). Copy 0 is the real item, copy j >= 1 "
        f"is `e_i + sigma * noise` with sigma = {cat['sigma']} and "
        + (
            "noise drawn with the real embeddings' covariance (`z @ (E - mean) / sqrt(N-1)`, z ~ N(0, I)): "
            "per dim it has the real per-dim std, across dims the real correlations"
            if cat["noise"] == "cov"
            else "independent Gaussian noise per dim scaled by the real per-dim std"
        )
        + f" (real per-dim std: mean {cat['real_std_per_dim']['mean']:.3f}, range "
        f"[{cat['real_std_per_dim']['min']:.3f}, {cat['real_std_per_dim']['max']:.3f}]).",
        f"- Queries: {doc['queries']['count']} user states ({doc['queries']['source']}); size d uses the "
        f"[:d] prefix of the d={dim} state. Top-{o['k']}, no seen-item filtering.",
        f"- Reference: flat exact d={dim} top-{o['k']} (torch matmul + topk, fp32). Against the float64 exact "
        f"top-{o['k']} it has recall {ref['fp32_vs_fp64_recall']:.4f} (fp32 rounding at the k-th place). Its "
        f"top-{o['k']} holds copies of {ref['distinct_sources_in_top_k']:.1f} distinct real items on average "
        f"({ref['real_items_in_top_k']:.2f} real items themselves): the shortlist must pick the right copies, "
        "not only the right items.",
        f"- Timings: median [min, max] over {o['repeats']} rounds (all settings interleaved in each round). "
        f"p50/p99: one query per call, up to {o['latency_queries']} calls per round (at least 10; a setting "
        f"stops once {o['budget_s']:.0f} s are spent). Throughput: the {doc['queries']['count']} queries in "
        f"batches of {o['batch']} (a setting stops after the batch that crosses {o['budget_s']:.0f} s). "
        f"Single queries run on one thread in faiss (it parallelises over queries), on {o['threads']} in torch. "
        f"Retrieval only: computing the user state (d={dim} backbone, one history) "
        f"takes {doc['encoder']['p50_ms']:.2f} ms p50 ({doc['encoder']['batched_per_s']:.0f} histories/s "
        f"batched), the same for every setting (the small sizes use its prefix).",
        "- Memory: bytes of what a setting reads: the catalog at its size (flat), the faiss index "
        f"(serialized size) plus the d={dim} catalog that the re-rank gathers rows from (funnel).",
        "",
        "## Target",
        "",
    ]
    if best:
        lines.append(
            f"**Met.** `{best['name']}` recovers {best['recall']:.4f} of the flat d={dim} top-{o['k']} at "
            f"{best['p50_speedup']:.1f}x lower p50 ({best['p50']['median']:.2f} ms vs {tgt['baseline_p50_ms']:.2f} ms, "
            f"flat {tgt['baseline_p50_engine']}) and {best['qps_speedup']:.1f}x higher throughput "
            f"({best['qps']['median']:.0f} vs {tgt['baseline_qps']:.0f} queries/s, flat {tgt['baseline_qps_engine']}); "
            f"its slowest round against the flat scan's fastest: {best['p50_speedup_worst']:.1f}x p50, "
            f"{best['qps_speedup_worst']:.1f}x throughput. "
            f"{len(tgt['settings_meeting'])} settings meet the target (>= {tgt['recall']} recall, >= "
            f"{tgt['p50_speedup']:.0f}x p50, >= {tgt['qps_speedup']:.0f}x throughput): "
            + ", ".join(f"`{n}`" for n in tgt["settings_meeting"])
            + "."
        )
        enc = doc["encoder"]["p50_ms"]
        lines += [
            "",
            f"End to end, with the d={dim} user-state pass ({enc:.2f} ms p50) added to both: "
            f"{tgt['baseline_p50_ms'] + enc:.2f} ms flat vs {best['p50']['median'] + enc:.2f} ms for that funnel "
            f"({(tgt['baseline_p50_ms'] + enc) / (best['p50']['median'] + enc):.1f}x).",
        ]
    else:
        close = next((r for r in rows if r["name"] == tgt["closest"]), None)
        lines.append(
            f"**Not met**: no funnel reaches >= {tgt['recall']} recall at >= {tgt['p50_speedup']:.0f}x lower p50 and "
            f">= {tgt['qps_speedup']:.0f}x higher throughput than flat d={dim} ({tgt['baseline_p50_ms']:.2f} ms p50, "
            f"{tgt['baseline_qps']:.0f} queries/s)."
            + (
                f" Closest: `{close['name']}`, recall {close['recall']:.4f}, {close['p50_speedup']:.1f}x p50, "
                f"{close['qps_speedup']:.1f}x throughput."
                if close
                else ""
            )
        )
    lines += [
        "",
        "## Flat tiers (exact scan)",
        "",
        f"| tier | recall of flat d{dim} top-{o['k']} | p50 ms | p99 ms | queries/s (batch {o['batch']}) | memory MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["kind"] == "flat":
            lines.append(
                f"| {r['name']} | {r['recall']:.4f} | {fmt_s(r['p50'])} | {fmt_s(r['p99'])} | {fmt_s(r['qps'], 0)} "
                f"| {mib(r['bytes'])} |"
            )
    lines += [
        "",
        f"## Funnels: shortlist of S at a small size, exact re-rank at d={dim}",
        "",
        f"Speed-ups against the faster flat d={dim} engine (p50: {tgt['baseline_p50_engine']}, "
        f"throughput: {tgt['baseline_qps_engine']}). Memory = small index + d={dim} catalog.",
        "",
        "| funnel | recall | p50 ms | p99 ms | queries/s | p50 speed-up | throughput speed-up | memory MiB "
        "(index + re-rank) | index build s | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        if r["kind"] == "funnel":
            lines.append(
                f"| {r['name']} | {r['recall']:.4f} | {fmt_s(r['p50'])} | {fmt_s(r['p99'])} | {fmt_s(r['qps'], 0)} "
                f"| {r['p50_speedup']:.1f}x | {r['qps_speedup']:.1f}x | {mib(r['bytes'])} "
                f"({mib(r['param']['small_bytes'])} + {mib(r['param']['rerank_bytes'])}) | {r['build_s']:.1f} "
                f"| {'yes' if r['meets_target'] else '-'} |"
            )
    if doc["indexes"]:
        lines += ["", "Indexes:", ""]
        for a in doc["indexes"]:
            opts = ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("d", "kind", "build_s", "bytes"))
            lines.append(
                f"- d{a['d']} {a['kind']} ({opts}): built in {a['build_s']:.1f} s, {mib(a['bytes'])} MiB"
            )
    if doc["sweep"]:
        lines += [
            "",
            "## Recall at other noise models and levels (exact flat shortlists, no ANN)",
            "",
            f"The catalog rebuilt for each (noise, sigma); recall of the flat d{dim} top-{o['k']} by each small "
            f"size's own flat top-{o['k']} and by its exact top-S re-ranked at d{dim} (an ANN shortlist can only "
            "lose recall against these). `diag` noise is independent per dim: it puts variation in the last "
            "dims that the first ones do not predict, unlike the model's own embeddings (a stress test).",
            "",
            f"| noise | sigma | distinct real items in top-{o['k']} | size | own top-{o['k']} | "
            + " | ".join(f"S={s}" for s in o["shortlists"])
            + " |",
            "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in o["shortlists"]) + " |",
        ]
        for sw in sorted([doc["sweep_main"], *doc["sweep"]], key=lambda x: (x["noise"], x["sigma"])):
            main = " (main)" if sw is doc["sweep_main"] else ""
            for d, row in sw["sizes"].items():
                lines.append(
                    f"| {sw['noise']}{main} | {sw['sigma']} | {sw['reference_sources']:.1f} | {d} "
                    f"| {row['own_top_k']:.4f} | "
                    + " | ".join(f"{row['funnel'][str(s)]:.4f}" for s in o["shortlists"])
                    + " |"
                )
    lines += ["", "Figures: `serving.json` (every value); `serving.png` (recall vs p50 latency)."]
    return "\n".join(lines) + "\n"


MISS_FLOOR = 1e-4  # where 1 - recall = 0 (exact) is drawn on the log axis


def plot(doc: dict, path: Path) -> bool:
    """1 - recall (log) against p50 latency and against throughput, every setting; flat tiers as stars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows, dim, k = doc["settings"], doc["model"]["width"], doc["options"]["k"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    colors = dict(zip(sorted({r["d"] for r in rows}), palette))
    markers = {"flat": "s", "hnsw": "o", "ivf": "^"}
    for ax, key, label in (
        (axes[0], "p50", "p50 latency, one query (ms)"),
        (axes[1], "qps", f"queries/s (batch {doc['options']['batch']})"),
    ):
        for r in rows:
            x, y = r[key]["median"], max(MISS_FLOOR, 1.0 - r["recall"])
            if r["kind"] == "flat":
                ax.scatter(x, y, marker="*", s=200, color=colors[r["d"]], edgecolor="black", zorder=3)
                dy = 8 if r["index"] == "torch" else -12
                ax.annotate(r["name"], (x, y), fontsize=7, xytext=(5, dy), textcoords="offset points")
            else:
                size = 12 + (r["shortlist"] or 0) / 12
                ax.scatter(x, y, marker=markers[r["index"]], s=size, color=colors[r["d"]], alpha=0.75)
        ax.axhline(1.0 - TARGET["recall"], color="gray", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(MISS_FLOOR / 2, 1.2)
        ax.set_xlabel(label)
        ax.set_ylabel(f"1 - recall of flat d{dim} top-{k} (log; {MISS_FLOOR:g} = exact)")
        ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], marker="*", ls="", color="gray", markersize=10, label="flat (exact scan)")]
    handles += [
        plt.Line2D([], [], marker=m, ls="", color="gray", label=f"funnel, {name} shortlist")
        for name, m in markers.items()
    ]
    handles += [plt.Line2D([], [], marker="o", ls="", color=c, label=f"d{d}") for d, c in colors.items()]
    handles.append(plt.Line2D([], [], ls="--", color="gray", label=f"target recall {TARGET['recall']}"))
    axes[1].legend(handles=handles, fontsize=8, loc="upper left")
    cat = doc["catalog"]
    fig.suptitle(
        f"{cat['items']:,} items, {cat['noise']} noise, sigma {cat['sigma']}: funnel = shortlist of S at a small "
        f"size, exact re-rank at d{dim} (marker size ~ S)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(doc: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "serving.json", out / "serving.md"]
    paths[0].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(doc))
    if plot(doc, out / "serving.png"):
        paths.append(out / "serving.png")
    return paths


# ============================================================================ command line
def parse_list(text: str, cast=int) -> tuple:
    return tuple(cast(x) for x in text.split(",") if x.strip())


def parse_sweep(text: str) -> tuple[tuple[str, float], ...]:
    """Parse ``cov:0.5,diag:1`` into ``(("cov", 0.5), ("diag", 1.0))``."""
    out = []
    for item in parse_list(text, str):
        noise, _, sigma = item.partition(":")
        if noise not in ("cov", "diag") or not sigma:
            raise SystemExit(f"--sweep items are NOISE:SIGMA with NOISE cov or diag, got {item!r}")
        out.append((noise, float(sigma)))
    return tuple(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="trained run (width 1024); default: train/cache one"
    )
    parser.add_argument("--quick", action="store_true", help=f"small and fast: {QUICK}")
    parser.add_argument("--items", type=int, default=None, help="catalog rows (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=None, help="user states (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (>= 3 for the report)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and faiss threads (default: usable CPUs)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64, help="queries per call for throughput")
    parser.add_argument(
        "--latency-queries", type=int, default=None, help="single-query calls per round (100)"
    )
    parser.add_argument(
        "--budget", type=float, default=5.0, help="seconds per setting per round, latency and throughput each"
    )
    parser.add_argument("--sigma", type=float, default=1.0, help="noise scale (x the real per-dim std)")
    parser.add_argument("--noise", choices=["cov", "diag"], default="cov")
    parser.add_argument(
        "--sweep", default=None, help="other NOISE:SIGMA, recall only (default cov:0.5,cov:2,diag:0.5)"
    )
    parser.add_argument("--sizes", default="32,64", help="small sizes that shortlist")
    parser.add_argument("--shortlists", default=None, help="shortlist sizes S (default 100,200,500,1000)")
    parser.add_argument("--ann", default="hnsw,ivf", help="faiss shortlist indexes: hnsw, ivf")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ivf-nprobe", default=None, help="IVF nprobe values (default 32,128)")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default ~4 sqrt(items))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--small-catalog", action="store_true", help="the per-tier table of an export instead"
    )
    parser.add_argument("--export-dir", type=Path, default=None, help="--small-catalog: the export")
    parser.add_argument("--rounds", type=int, default=10, help="--small-catalog: batched calls per timing")
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> Options:
    q = QUICK if args.quick else {}

    def pick(name, default):
        value = getattr(args, name)
        return value if value is not None else q.get(name, default)

    return Options(
        items=pick("items", 1_000_000),
        queries=pick("queries", 256),
        repeats=args.repeats,
        threads=args.threads or len(os.sched_getaffinity(0)),
        k=args.k,
        batch=args.batch,
        latency_queries=pick("latency_queries", 100),
        budget_s=args.budget,
        sigma=args.sigma,
        noise=args.noise,
        sweep=parse_sweep(pick("sweep", "cov:0.5,cov:2,diag:0.5")),
        small_sizes=parse_list(args.sizes),
        shortlists=parse_list(pick("shortlists", "100,200,500,1000")),
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ivf_nprobe=parse_list(pick("ivf_nprobe", "32,128")),
        nlist=args.nlist,
        ann=parse_list(args.ann, str),
        seed=args.seed,
    )


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        faiss_module().omp_set_num_threads(threads)
    except ImportError:
        pass


def machine_info(threads: int) -> dict:
    from importlib import metadata

    from recsys.bench.machine import describe

    info = describe(ROOT, threads, peaks=False)
    try:
        info["versions"]["faiss"] = metadata.version("faiss-cpu")
    except metadata.PackageNotFoundError:
        pass
    info["command"] = " ".join([f"{Path(sys.executable).name} -m benchmarks.serving", *sys.argv[1:]])
    return info


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.small_catalog:
        return small_catalog_main(args)
    opts = options_from_args(args)
    set_threads(opts.threads)
    faiss_module()  # fail early without faiss
    overrides = QUICK_TRAIN_OVERRIDES if args.quick else TRAIN_OVERRIDES
    run_dir = args.run_dir or train_default_run(default_run_dir(overrides), overrides)
    _, dataset, model = load_model(run_dir)
    if model.config.width != LARGE:
        print(f"note: {run_dir} has width {model.config.width}, not {LARGE}; its width is the reference size")
    doc = run_benchmark(model, dataset, opts, log=lambda m: print(m, flush=True))
    doc["options"]["quick"] = args.quick
    doc["run_dir"] = str(run_dir)
    doc["machine"] = machine_info(opts.threads)
    doc["loadavg"] = list(os.getloadavg())
    paths = write_results(doc, args.out)
    print(paths[1].read_text())
    print("wrote", ", ".join(str(p) for p in paths))


# ============================================================================ small catalog (per tier)
def small_catalog_main(args: argparse.Namespace) -> None:
    """Every exported tier through serving.Recommender on the run's own catalog, and the funnel between
    its smallest and largest tier (the benchmark before the catalog-scale one)."""
    from omegaconf import OmegaConf

    from recsys.builders import build_dataset
    from serving.funnel import FunnelRecommender, funnel_recall
    from serving.tiers import TierSet

    if args.run_dir is None:
        raise SystemExit("--small-catalog needs --run-dir")
    export_dir = args.export_dir or args.run_dir / "export"
    if not (export_dir / "index.json").is_file():
        from recsys.export.exporter import export_run

        print(f"exporting {args.run_dir} -> {export_dir}")
        export_run(args.run_dir, out=export_dir)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    tiers = TierSet(export_dir)
    names = sorted(tiers.tiers, key=lambda n: tiers.tiers[n])
    largest = tiers.get(names[-1])
    inputs = build_dataset(OmegaConf.load(args.run_dir / "config.yaml")).split("test").inputs
    order = torch.argsort((inputs != 0).sum(1), descending=True, stable=True)[:512]  # longest first
    histories = [[largest.item_ids[i - 1] for i in row.tolist() if i > 0] for row in inputs[order]]
    k, calls = min(args.k, largest.num_items), 100 if args.repeats < 20 else args.repeats

    def lat(fn):
        best = None
        for _ in range(3):
            times = single_latency(fn, histories, calls, budget_s=1e9, one=lambda qs, i: qs[i])
            p = (statistics.median(times), percentile(times, 0.99))
            best = p if best is None or p[0] < best[0] else best
        return best

    def qps(fn):
        batches = [
            [histories[(r * args.batch + j) % len(histories)] for j in range(args.batch)]
            for r in range(args.rounds)
        ]
        fn(batches[0])
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            for b in batches:
                fn(b)
            best = max(best, args.rounds * args.batch / (time.perf_counter() - t0))
        return best

    rows = []
    for name in names:
        rec = tiers.get(name)
        entry = tiers.index["entries"][str(rec.size)]
        p50, p99 = lat(lambda h, r=rec: r.recommend(h, k))
        rows.append(
            {
                "tier": name,
                "size": rec.size,
                "p50": p50,
                "p99": p99,
                "qps": qps(lambda b, r=rec: r.recommend_batch(b, k)),
                "bytes": sum(p.stat().st_size for p in (export_dir / entry["dir"]).iterdir() if p.is_file()),
                "params": entry["parameters"],
                "ndcg": entry["metrics"]["test"].get("ndcg@10"),
            }
        )
        print(rows[-1])
    small = tiers.get(names[0])
    shortlists = [int(s) for s in (args.shortlists or "50,100,200,400").split(",") if s.strip()]
    rec_s = funnel_recall(FunnelRecommender(small, largest), histories[:256], k, shortlists)
    lines = [
        "# Serving benchmark, the run's own catalog (per tier)",
        "",
        f"Run `{args.run_dir}` ({largest.num_items} items, max_len {largest.max_len}), export `{export_dir}`; "
        f"CPU {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. p50/p99: best of 3 rounds of {calls} single requests; "
        f"throughput: best of 3 timings of {args.rounds} calls of {args.batch} histories.",
        "",
        "| tier | size | params | artifact bytes | test NDCG@10 | p50 ms | p99 ms | req/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ndcg = "-" if r["ndcg"] is None else f"{r['ndcg']:.4f}"
        lines.append(
            f"| {r['tier']} | {r['size']} | {r['params']:,} | {r['bytes']:,} | {ndcg} | {r['p50']:.2f} "
            f"| {r['p99']:.2f} | {r['qps']:.0f} |"
        )
    lines += [
        "",
        f"## Funnel {names[0]} -> {names[-1]} (top-{k})",
        "",
        "| shortlist S | recall | p50 ms | req/s |",
    ]
    lines.append("| ---: | ---: | ---: | ---: |")
    for s in shortlists:
        f = FunnelRecommender(small, largest, shortlist=s)
        p50, _ = lat(lambda h, f=f: f.recommend(h, k))
        lines.append(f"| {s} | {rec_s[s]:.3f} | {p50:.2f} | {qps(lambda b, f=f: f.query_batch(b, k)):.0f} |")
    out = args.out / "serving_small_catalog.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
