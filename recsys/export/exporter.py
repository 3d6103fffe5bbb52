"""``recsys-export``: one standalone serving artifact per size d of a trained run.

    recsys-export RUN_DIR [--sizes 64,256,1024] [--out DIR] [--checkpoint best|last|PATH]
                  [--latency-runs 20] [--no-cards]
    recsys-export RUN_DIR/checkpoints/best.pt            # a checkpoint file: run dir = its parent's parent

For every size d (default: the whole ladder) it writes ``OUT/d{d:04d}/`` (default OUT =
RUN_DIR/export; layout in recsys/export/artifact.py and docs/serving.md) and a top-level
``index.json`` listing every size with its test metrics, parameter count, bytes on disk, latency and
model card (printed as a table, one row per size with its card's path). Each size's ``items.json``
holds the original item ids and, when the dataset's items.parquet has a non-empty ``text`` column,
their titles (the first line of each text, stripped, at most 200 characters; "" where missing), both
in item_idx order (what the try-it page of ``recsys-serve`` searches and shows).

The width-d inference model (``recsys.export.artifact.InferenceModule``) is ``model.slice(d)``'s
backbone plus the precomputed (N+1, d) catalog matrix: history ids -> matrix rows -> backbone ->
last position -> h @ E^T. The feature tables and projector are not needed at serving time. The
serialized program is a ``torch.export`` ExportedProgram of it (the complex-valued LRU scan exports
fine), loadable with ``torch.export.load`` without the recsys package (it unpickles:
``recsys-serve`` loads it only with ``--trust-program``).

Each size folder also gets a model card, ``README.md`` (Hugging Face style: YAML front matter with
width, parameters, bytes, latency, tier and the test metrics as ``model-index``; then the metrics
under both protocols with their ratio to the largest size, the latency, the dataset's manifest
counts, the training config summary, how to load it and its intended serving tier). It is written
before the folder's checksums.json, so it is covered like every other file: an edited card fails
verification. Exports without cards (older ones, ``--no-cards``) load as before. The latency is
measured by the exporter: the median of ``--latency-runs`` (default 20) single-request scorings of
the staged artifact on CPU (python engine, history (1, max_len) -> scores -> top-10), recorded in
metrics.json (``latency``), index.json (``latency_ms``) and the card.

After the sizes, ``OUT/checksums.json`` records the sha256 of index.json and of every size's
checksums.json, and the export digest over that list is printed (``recsys.export.artifact.export_digest``):
keep it outside the export and pass it to ``recsys-serve --expect-digest`` to detect any change.
Every file is written with the mode a normal file gets (0666 & ~umask), safetensors included.

Before an artifact is published (staged in a temporary directory, then renamed into place) the
exporter checks parity: on a sample of test users, the artifact's top-K (K = 10 and 50), loaded
back with recsys.export.artifact through the python engine and through the program, equals the
trained model's size-d top-K, scores within 1e-4 relative; and its parameter count equals that
of a backbone built from scratch from the width-d model's config. A failure raises
:class:`ParityError` and nothing is written for that size.

A backbone whose weights are not nested (sasrec) has no width-d network: ``model.slice(d)`` keeps
it whole with its output cut to d, so its size-d artifact holds the full-width backbone, the
full-width input item embeddings (``input_embeddings``, (N+1, D), in item_embeddings.safetensors)
and the (N+1, d) catalog; metrics.json counts ``input_embedding_parameters``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from data_prep import layout
from recsys.builders import load_run, resolve_run
from recsys.export.artifact import (
    CHECKSUMS_FILE,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    INPUT_EMB_KEY,
    ITEM_EMB_FILE,
    ITEM_EMB_KEY,
    ITEMS_FILE,
    METRICS_FILE,
    PROGRAM_FILE,
    WEIGHTS_FILE,
    InferenceModule,
    export_digest,
    load_artifact,
    size_dir_name,
    write_checksums,
    write_export_checksums,
)
from recsys.model import MatryoshkaRecModel
from recsys.nn import build_backbone

log = logging.getLogger("recsys.export.exporter")
PARITY_KS = (10, 50)
PARITY_RTOL = 1e-4
CARD_FILE = "README.md"  # the model card of a size folder (covered by its checksums.json like every file)
LATENCY_RUNS = 20  # timed single-request scorings per size (after LATENCY_WARMUP untimed ones)
LATENCY_WARMUP = 3
LATENCY_K = 10
TITLE_CHARS = 200  # items.json titles: the first line of the item's text, cut to this many characters


class ParityError(AssertionError):
    """An artifact does not reproduce the trained model's size-d ranking."""


def parse_sizes(text: str | None, ladder: tuple[int, ...]) -> list[int]:
    """``--sizes`` ("64,256") -> sorted sizes of ``ladder`` (all of it for None/empty); ValueError otherwise."""
    if not text:
        return list(ladder)
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers, got {text!r}") from None
    bad = [s for s in sizes if s not in ladder]
    if bad or not sizes:
        raise ValueError(f"--sizes {bad or text!r} not in the trained ladder {list(ladder)}")
    return sizes


# ---------------------------------------------------------------------------- parity
def _topk_matches(ref: torch.Tensor, got: torch.Tensor, k: int, what: str) -> None:
    """ref/got (B, N+1) scores: same top-k items (swaps allowed only between fp-tied scores)."""
    ref_v, ref_i = torch.topk(ref, k, dim=1)
    got_v, got_i = torch.topk(got, k, dim=1)
    scale = ref_v.abs().clamp_min(1.0)
    if not torch.allclose(got_v, ref_v, rtol=PARITY_RTOL, atol=PARITY_RTOL):
        err = float(((got_v - ref_v).abs() / scale).max())
        raise ParityError(f"{what}: top-{k} scores differ from the trained model (max rel err {err:.2e})")
    # positions whose items differ must be near-ties in the reference
    differ = got_i != ref_i
    if differ.any():
        ref_at_got = torch.gather(ref, 1, got_i)
        gap = ((ref_at_got - ref_v).abs() / scale)[differ]
        if float(gap.max()) > PARITY_RTOL:
            raise ParityError(f"{what}: top-{k} items differ from the trained model's ranking")


def check_parity(
    model: MatryoshkaRecModel,
    small: MatryoshkaRecModel,
    staging: Path,
    inputs: torch.Tensor,
    full_emb: torch.Tensor,
) -> dict[str, Any]:
    """Raise ParityError unless the staged artifact of ``small = model.slice(d)`` reproduces
    ``model``'s size-d top-K on ``inputs`` (B, L), through both engines."""
    d = small.config.width
    with torch.inference_mode():
        ref = model.score(inputs, full_emb)[model.ladder.index(d)].float()  # (B, N+1)
    # checksums are written after parity; the program is the one just exported, so it is trusted
    artifact = load_artifact(staging, verify=False, trust_program=True)
    k_max = min(max(PARITY_KS), artifact.num_items)
    for engine in ("python", "program"):
        got = artifact.scores(inputs, engine).float()
        for k in PARITY_KS:
            _topk_matches(ref, got, min(k, k_max), f"size {d}, {engine} path")
    fresh = sum(p.numel() for p in build_backbone(small.config.backbone, d).parameters())
    if artifact.num_parameters != fresh:
        raise ParityError(
            f"size {d}: artifact holds {artifact.num_parameters} parameters, a width-{d} backbone has {fresh}"
        )
    return {
        "users": int(inputs.shape[0]),
        "ks": list(PARITY_KS),
        "rtol": PARITY_RTOL,
        "engines": ["python", "program"],
    }


# ---------------------------------------------------------------------------- writing
def default_file_mode() -> int:
    """The mode a newly created regular file gets: 0o666 minus the process umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors.save_file, then the file mode of any other file (save_file writes 0600)."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, default_file_mode())


def export_program(module: InferenceModule, max_len: int, path: Path) -> None:
    example = torch.ones(2, max_len, dtype=torch.long)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(module, (example,), dynamic_shapes={"history": {0: batch}})
    torch.export.save(program, str(path))


def item_title(text: Any) -> str:
    """An item's title from its text: the first line, stripped, cut to ``TITLE_CHARS`` ("" for none)."""
    if not isinstance(text, str):
        return ""
    lines = text.splitlines()
    return lines[0].strip()[:TITLE_CHARS] if lines else ""


def item_titles(dataset: Any) -> list[str] | None:
    """The title of every item, in item_idx order (that of ``dataset.item_ids``), from the ``text``
    column of the dataset's items.parquet (data_prep/layout.py); None when the dataset has no such
    file or column, when every text is empty, or when its rows do not match the dataset's items."""
    directory = getattr(dataset, "directory", None)
    path = Path(directory) / layout.ITEMS if directory is not None else None
    if path is None or not path.is_file():
        return None
    columns = pl.read_parquet_schema(path)
    if "text" not in columns or "item_idx" not in columns:
        return None
    items = pl.read_parquet(path, columns=["item_idx", "text"]).sort("item_idx")
    expected = list(range(1, len(dataset.item_ids) + 1))
    if items["item_idx"].to_list() != expected:
        log.warning("%s: item_idx is not 1..%d; the export gets no titles", path, len(expected))
        return None
    titles = [item_title(t) for t in items["text"].to_list()]
    return titles if any(titles) else None


def write_size(
    small: MatryoshkaRecModel,
    staging: Path,
    item_ids: list[str],
    run_metrics: dict[str, Any],
    source: dict[str, Any],
    titles: list[str] | None = None,
) -> None:
    """Stage the artifact of ``small = model.slice(d)`` (eval mode) in ``staging``; ``titles``: one
    per item, parallel to ``item_ids`` (items.json's optional ``titles``), or None."""
    d = small.config.width
    with torch.inference_mode():
        full = (
            small.item_embeddings().float()
        )  # (N+1, D): the backbone's inputs (D = d unless its output is cut)
    emb = full[:, :d].clone().contiguous()  # (N+1, d) catalog (own storage)
    inputs = None if full.shape[1] == d else full.contiguous()
    backbone_state = {k: v.detach().contiguous().cpu() for k, v in small.backbone.state_dict().items()}
    staging.mkdir(parents=True)
    save_safetensors(backbone_state, staging / WEIGHTS_FILE, metadata={"format": FORMAT, "size": str(d)})
    tables = {ITEM_EMB_KEY: emb} if inputs is None else {ITEM_EMB_KEY: emb, INPUT_EMB_KEY: inputs}
    save_safetensors(tables, staging / ITEM_EMB_FILE, metadata={"format": FORMAT, "size": str(d)})
    items: dict[str, Any] = {"item_ids": item_ids}
    if titles is not None:
        if len(titles) != len(item_ids):
            raise ValueError(f"{len(titles)} titles for {len(item_ids)} items")
        items["titles"] = titles
    (staging / ITEMS_FILE).write_text(json.dumps(items))
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "size": d,
        "num_items": small.num_items,
        "max_len": small.config.max_len,
        "model_config": small.config.to_dict(),
        "program": PROGRAM_FILE,
        "program_format": "torch.export",
        "program_signature": "history int64 (B, max_len), left-padded with 0 -> scores float32 (B, N+1), col 0 = -inf",
        "torch_version": torch.__version__,
        "source": source,
    }
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    module = InferenceModule(small.backbone, emb, inputs).eval()
    export_program(module, small.config.max_len, staging / PROGRAM_FILE)
    params = int(sum(v.numel() for v in backbone_state.values()))
    metrics = {
        "size": d,
        "validation": run_metrics.get("validation", {}).get(str(d), {}),
        "test": run_metrics.get("test", {}).get(str(d), {}),
        "protocols": run_metrics.get("protocols"),
        "parameters": params,
        "catalog_parameters": int(emb.numel()),
        **({} if inputs is None else {"input_embedding_parameters": int(inputs.numel())}),
        "trained_model_parameters_at_size": int(sum(p.numel() for p in small.parameters())),
    }
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))


def measure_latency(staging: Path, history: torch.Tensor, runs: int = LATENCY_RUNS) -> dict[str, Any]:
    """Median wall time of ``runs`` single-request scorings with the staged artifact on CPU: one
    history (1, max_len) -> scores (1, N+1) through the python engine (what ``recsys-serve`` runs by
    default) -> top-``LATENCY_K``, after ``LATENCY_WARMUP`` untimed ones."""
    artifact = load_artifact(staging, verify=False)
    history = history[:1].cpu()
    k = min(LATENCY_K, artifact.num_items)
    times = []
    for i in range(LATENCY_WARMUP + runs):
        start = time.perf_counter()
        torch.topk(artifact.scores(history), k, dim=1)
        if i >= LATENCY_WARMUP:
            times.append((time.perf_counter() - start) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "runs": runs,
        "batch_size": 1,
        "k": k,
        "engine": "python",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def finalize_size(
    staging: Path,
    parity: dict[str, Any],
    final: Path,
    latency: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Complete metrics.json (parity, latency, file sizes), write the model card (README.md, from
    ``card``: :func:`card_context`) and checksums.json over every file, card included, then move
    the staged folder to ``final``; returns its index.json entry."""
    metrics = json.loads((staging / METRICS_FILE).read_text())
    metrics["parity"] = parity
    if latency is not None:
        metrics["latency"] = latency
    files = {
        p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file() and p.name != METRICS_FILE
    }
    metrics["file_bytes"] = files
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if card is not None:
        files = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
        (staging / CARD_FILE).write_text(model_card(metrics, files, card), encoding="utf-8")
    write_checksums(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    total = sum(p.stat().st_size for p in final.iterdir() if p.is_file())
    entry = {
        "dir": final.name,
        "size": metrics["size"],
        "metrics": {
            split: {m: metrics[split].get(m) for m in ("ndcg@10", "recall@10")}
            for split in ("validation", "test")
        },
        "parameters": metrics["parameters"],
        "catalog_parameters": metrics["catalog_parameters"],
        "bytes": total,
    }
    if latency is not None:
        entry["latency_ms"] = latency["median_ms"]
    if card is not None:
        entry["card"] = f"{final.name}/{CARD_FILE}"
    return entry


# ---------------------------------------------------------------------------- model card
def card_metric_names(ks: list[int]) -> list[str]:
    """Recall, NDCG and MRR at k = 10 (else the smallest k of the run), all items then unseen only."""
    k = 10 if 10 in ks or not ks else min(ks)
    return [f"{p}{m}@{k}" for p in ("", "unseen/") for m in ("ndcg", "recall", "mrr")]


def _short_target(target: Any) -> str:
    return str(target).rpartition(".")[2] if target else "-"


def card_context(
    cfg: DictConfig,
    dataset: Any,
    model: MatryoshkaRecModel,
    run_metrics: dict[str, Any],
    source: dict[str, Any],
) -> dict[str, Any]:
    """What every size's model card shares: the run's name, ladder and test metrics by size, the
    dataset's manifest counts and the training config summary (from the run's config.yaml)."""
    manifest = dataset.manifest if isinstance(getattr(dataset, "manifest", None), dict) else {}
    final = manifest.get("final") if isinstance(manifest.get("final"), dict) else {}
    counted = {
        "users": len(dataset.sequences),
        "items": int(dataset.num_items),
        "interactions": int(sum(len(s) for s in dataset.sequences)),
    }
    counts = {key: final.get(key, counted[key]) for key in counted}
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    optimizer = OmegaConf.to_container(cfg.trainer.optimizer, resolve=True)
    ks = [int(k) for k in run_metrics.get("ks") or cfg.eval.ks]
    return {
        "name": str(cfg.name),
        "ladder": [int(d) for d in model.ladder],
        "test": run_metrics.get("test", {}),
        "metric_names": card_metric_names(ks),
        "dataset": {
            "name": str(manifest.get("dataset", cfg.data.name)),
            "config": str(cfg.data.name),
            "path": str(cfg.data.path),
            **counts,
            "counts_from": "manifest.json"
            if all(k in final for k in counted)
            else "manifest.json + sequences",
            "max_len": int(cfg.data.max_len),
        },
        "training": {
            "backbone": _short_target(backbone.get("_target_")),
            "backbone_config": {
                k: v for k, v in backbone.items() if k not in ("_target_", "ladder", "max_len")
            },
            "ladder": [int(d) for d in model.ladder],
            "max_epochs": int(cfg.trainer.max_epochs),
            "best_step": run_metrics.get("best_step"),
            "monitor": run_metrics.get("monitor"),
            "optimizer": _short_target(optimizer.get("_target_")),
            "lr": optimizer.get("lr"),
            "batch_size": int(cfg.trainer.batch_size),
            "loss": _short_target(cfg.loss.get("_target_")),
            "seed": int(cfg.seed),
            "modalities": [str(m) for m in cfg.model.modalities],
        },
        "source": source,
    }


def intended_tier(d: int, ladder: list[int]) -> tuple[str, str]:
    """(tier, sentence): the lower half of the ladder shortlists, the upper half re-ranks."""
    if d == ladder[-1]:
        return "re-ranking", (
            "Re-ranking / final ranking: the full-width, most accurate size. Re-rank the shortlist of a "
            "small size with it (the large tier of serving/funnel.py), or serve it alone when its "
            "per-request cost (~ catalog size x d) fits the latency budget."
        )
    if ladder.index(d) < len(ladder) / 2:
        return "shortlist", (
            "Shortlist / candidate generation: a small size whose full-catalog scoring is cheap "
            "(~ catalog size x d per request); keep its top few hundred candidates and re-rank them "
            "with a large size (the small tier of serving/funnel.py), or use it where memory or "
            "latency rule out the large sizes."
        )
    return "re-ranking", (
        "Re-ranking, or single-stage serving at a lower cost than the largest size: re-rank a small "
        "size's shortlist with it (the large tier of serving/funnel.py) when the largest size is too slow."
    )


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _monitor_text(monitor: Any) -> str:
    """metrics.json's ``monitor`` ("ndcg@10@d16") as "`ndcg@10` at d=16"."""
    if not monitor:
        return "-"
    metric, sep, size = str(monitor).rpartition("@d")
    return f"`{metric}` at d={size}" if sep and size.isdigit() else f"`{monitor}`"


def _ratio(value: Any, ref: Any) -> float | None:
    return None if value is None or not ref else float(value) / float(ref)


def model_card(metrics: dict[str, Any], files: dict[str, int], card: dict[str, Any]) -> str:
    """The Hugging Face-style README.md of one size folder: YAML front matter (width, parameters,
    bytes, latency, tier, ``model-index`` metrics) and a markdown body (model, metrics and their ratio
    to the largest size, latency, data, training, how to load, intended use, files)."""
    d, ladder = int(metrics["size"]), card["ladder"]
    largest = ladder[-1]
    dir_name = size_dir_name(d)
    test = metrics.get("test") or {}
    top = card["test"].get(str(largest), {})
    names = card["metric_names"]
    latency = metrics.get("latency")
    artifact_bytes = int(sum(files.values()))
    tier, use = intended_tier(d, ladder)
    data, train = card["dataset"], card["training"]
    title = f"{card['name']}-{dir_name}"
    front = {
        "tags": ["recommendation", "sequential-recommendation", "matryoshka", "recsys-mrl"],
        "width": d,
        "ladder": ladder,
        "parameters": int(metrics["parameters"]),
        "catalog_parameters": int(metrics["catalog_parameters"]),
        "artifact_bytes": artifact_bytes,
        "latency_ms_median": None if latency is None else round(float(latency["median_ms"]), 4),
        "tier": tier,
        "datasets": [data["name"]],
        "model-index": [
            {
                "name": title,
                "results": [
                    {
                        "task": {"type": "sequential-recommendation", "name": "next-item recommendation"},
                        "dataset": {"name": data["name"], "type": data["config"], "split": "test"},
                        "metrics": [
                            {"type": n, "name": f"test {n}", "value": test[n]} for n in names if n in test
                        ],
                    }
                ],
            }
        ],
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    lines += [
        f"# {title}: the width-{d} model",
        "",
        f"One size of a nested (Matryoshka) sequential recommender: the `[:{d}]` slice of a model "
        f"trained at every width of the ladder {ladder} in one run, exported by `recsys-export` as a "
        "standalone artifact (backbone weights, the precomputed catalog matrix, the item ids and a "
        "`torch.export` program). Input: a user's item history; output: a score for every catalog item.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| width d | {d} (largest size of the run: {largest}) |",
        f"| parameters | {metrics['parameters']:,} (backbone; "
        f"+ {metrics['catalog_parameters']:,} in the ({data['items']} + 1) x {d} catalog matrix"
        + (
            f", + {metrics['input_embedding_parameters']:,} full-width input embeddings"
            if "input_embedding_parameters" in metrics
            else ""
        )
        + ") |",
        f"| artifact size | {artifact_bytes:,} bytes (the files below; README.md and checksums.json excluded) |",
        f"| backbone | {train['backbone']} {json.dumps(train['backbone_config'])} |",
        f"| max history length | {data['max_len']} items |",
        "",
        f"## Metrics (test split, full ranking, ratio to the largest size d={largest})",
        "",
    ]
    if test:
        lines += [
            "| metric | value | ratio to d=" + str(largest) + " |",
            "|---|---|---|",
            *(f"| `{n}` | {_fmt(test.get(n))} | {_fmt(_ratio(test.get(n), top.get(n)), 3)} |" for n in names),
            "",
            "`ndcg@10`, `recall@10`, `mrr@10`: every catalog item is ranked; `unseen/...`: the items the "
            "user has already seen are left out of the ranking, as serving does (`exclude_seen`). "
            "Leave-one-out: the last item of each user's sequence is the test target. "
            f"Best checkpoint selected on validation {_monitor_text(train['monitor'])}.",
        ]
    else:
        lines.append("Not measured: the run had no metrics.json when it was exported.")
    lines += ["", "## Latency", ""]
    if latency is not None:
        lines.append(
            f"Median {latency['median_ms']:.3f} ms (min {latency['min_ms']:.3f}, max {latency['max_ms']:.3f}) "
            f"over {latency['runs']} single-request scorings: one history (1, {data['max_len']}) -> scores of "
            f"all {data['items']} items -> top-{latency['k']}, {latency['engine']} engine on "
            f"{latency['device'].upper()}, {latency['threads']} threads, measured by `recsys-export` on the "
            "exporting machine (torch "
            + str(latency["torch_version"])
            + "); HTTP and id mapping not included."
        )
    else:
        lines.append("Not measured.")
    lines += [
        "",
        "## Training data",
        "",
        f"`{data['name']}` (`data.name={data['config']}`, `data.path={data['path']}`): "
        f"{data['users']:,} users, {data['items']:,} items, {data['interactions']:,} interactions "
        f"(from {data['counts_from']}); chronological leave-one-out split per user.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| backbone | {train['backbone']} |",
        f"| ladder | {train['ladder']} (every size trained at once) |",
        f"| epochs | at most {train['max_epochs']} (best step {train['best_step'] if train['best_step'] is not None else '-'}) |",
        f"| optimizer, lr | {train['optimizer']}, {train['lr']} |",
        f"| batch size | {train['batch_size']} |",
        f"| loss | {train['loss']} |",
        f"| seed | {train['seed']} |",
        f"| item features | {', '.join(train['modalities'])} |",
        f"| source | `{card['source']['run_dir']}`, checkpoint `{Path(card['source']['checkpoint']).name}` |",
        "",
        "## How to use",
        "",
        "`EXPORT_DIR` is the folder that holds `index.json` (the parent of this folder).",
        "",
        "```python",
        "from serving import load",
        "",
        f'recs = load("EXPORT_DIR", tiers={{"d{d}": {d}}})  # checks every sha256 first',
        f'recs.recommend(["item-id-1", "item-id-2"], k=10, tier="d{d}")  # [(item id, score)], best first',
        "```",
        "",
        "```bash",
        f"recsys-serve EXPORT_DIR --expect-digest DIGEST   # tier d{d}; DIGEST: printed by recsys-export",
        "```",
        "",
        f"Without serving: `recsys.export.artifact.load_artifact('EXPORT_DIR/{dir_name}').scores(history)` "
        "(history (B, max_len) item_idx, left-padded with 0 -> scores (B, N+1)).",
        "",
        "## Intended use",
        "",
        f"Tier: **{tier}**. {use}",
        "",
        "Out of scope: users or items that were not in the training data (unknown item ids are "
        "ignored; new items need a new export).",
        "",
        "## Files",
        "",
        "| file | bytes |",
        "|---|---|",
        *(f"| {name} | {size:,} |" for name, size in sorted(files.items())),
        "",
        f"Every file of this folder, this card included, is listed with its sha256 in `{CHECKSUMS_FILE}`, "
        "which the export's root checksums (and its digest) cover: loading fails if any of them changes.",
        "",
    ]
    return "\n".join(lines)


def export_run(
    target: str | Path,
    sizes: list[int] | str | None = None,
    out: str | Path | None = None,
    checkpoint: str = "best",
    parity_users: int = 256,
    latency_runs: int = LATENCY_RUNS,
    cards: bool = True,
) -> dict[str, Any]:
    """Export every size; returns the index written to OUT/index.json.

    ``latency_runs``: single-request scorings timed per size (:func:`measure_latency`; 0: none);
    ``cards``: write each size's model card (README.md, :func:`model_card`)."""
    run_dir, ckpt = resolve_run(target, checkpoint)
    cfg, dataset, model = load_run(run_dir, ckpt)
    sizes = parse_sizes(
        sizes if isinstance(sizes, str) or sizes is None else ",".join(map(str, sizes)), tuple(model.ladder)
    )
    out = Path(out) if out is not None else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.json"
    run_metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if not run_metrics:
        log.warning("%s has no metrics.json; artifacts will carry no metrics", run_dir)
    source = {
        "run_dir": str(run_dir.resolve()),
        "checkpoint": str(ckpt.resolve()),
        "ladder": list(model.ladder),
    }
    split = dataset.split("test")
    gen = torch.Generator().manual_seed(0)
    sample = torch.randperm(len(split), generator=gen)[: min(parity_users, len(split))]
    inputs = split.inputs[sample]
    with torch.inference_mode():
        full_emb = model.item_embeddings()
    card = card_context(cfg, dataset, model, run_metrics, source) if cards else None
    titles = item_titles(dataset)
    entries = {}
    for d in sizes:
        final = out / size_dir_name(d)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out))
        staging.rmdir()
        try:
            small = model.slice(d).eval()
            write_size(small, staging, dataset.item_ids, run_metrics, source, titles)
            parity = check_parity(model, small, staging, inputs, full_emb)
            latency = measure_latency(staging, inputs, latency_runs) if latency_runs > 0 else None
            entries[str(d)] = finalize_size(staging, parity, final, latency, card)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        log.info("exported size %d -> %s (%d bytes)", d, final, entries[str(d)]["bytes"])
    index = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "sizes": sizes,
        "num_items": dataset.num_items,
        "max_len": model.config.max_len,
        "ladder": list(model.ladder),
        "source": source,
        "entries": entries,
    }
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    digest = write_export_checksums(out)
    log.info("export digest (sha256) %s", digest)
    return index


def format_index(index: dict[str, Any]) -> str:
    """The table ``recsys-export`` prints: one row per size, its model card's path relative to the
    export (``-`` for an export without cards)."""
    lines = [
        f"{'size':>6} {'dir':>6} {'test NDCG@10':>13} {'test R@10':>10} {'params':>10} {'bytes':>12} "
        f"{'latency ms':>10}  card"
    ]
    for d in index["sizes"]:
        e = index["entries"][str(d)]
        t = e["metrics"]["test"]
        nd = f"{t['ndcg@10']:.4f}" if t.get("ndcg@10") is not None else "-"
        rc = f"{t['recall@10']:.4f}" if t.get("recall@10") is not None else "-"
        ms = f"{e['latency_ms']:.3f}" if e.get("latency_ms") is not None else "-"
        lines.append(
            f"{d:>6} {e['dir']:>6} {nd:>13} {rc:>10} {e['parameters']:>10} {e['bytes']:>12} {ms:>10}  "
            f"{e.get('card') or '-'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recsys-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory, or a checkpoint file (run dir = its parent's parent)")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes (default: the whole ladder)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/export)")
    parser.add_argument("--checkpoint", default="best", help="best | last | PATH (default: best)")
    parser.add_argument("--parity-users", type=int, default=256, help="test users checked for parity")
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=LATENCY_RUNS,
        help=f"single-request CPU scorings timed per size for the card (default {LATENCY_RUNS}; 0: none)",
    )
    parser.add_argument("--no-cards", action="store_true", help="write no model card (README.md) per size")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        index = export_run(
            args.run,
            args.sizes,
            args.out,
            args.checkpoint,
            args.parity_users,
            latency_runs=args.latency_runs,
            cards=not args.no_cards,
        )
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"recsys-export: {err}") from None
    out = Path(args.out) if args.out else resolve_run(args.run, args.checkpoint)[0] / "export"
    digest = export_digest(out)
    print(format_index(index))
    if any(e.get("card") for e in index["entries"].values()):
        print(f"model cards: {out}/d*/{CARD_FILE} (one per size, covered by the checksums)")
    print(f"written {out / INDEX_FILE}")
    print(f"export digest (sha256): {digest}")
    print(f"keep it outside the export and serve with: recsys-serve {out} --expect-digest {digest}")


if __name__ == "__main__":
    main()
