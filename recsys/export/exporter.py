"""``recsys-export``: one standalone serving artifact per size d of a trained run.

    recsys-export RUN_DIR [--sizes 64,256,1024] [--out DIR] [--checkpoint best|last|PATH]
    recsys-export RUN_DIR/checkpoints/best.pt            # a checkpoint file: run dir = its parent's parent

For every size d (default: the whole ladder) it writes ``OUT/d{d:04d}/`` (default OUT =
RUN_DIR/export; layout in recsys/export/artifact.py and docs/serving.md) and a top-level
``index.json`` listing every size with its test metrics, parameter count and bytes on disk.

The width-d inference model (``recsys.export.artifact.InferenceModule``) is ``model.slice(d)``'s
backbone plus the precomputed (N+1, d) catalog matrix: history ids -> matrix rows -> backbone ->
last position -> h @ E^T. The feature tables and projector are not needed at serving time. The
serialized program is a ``torch.export`` ExportedProgram of it (the complex-valued LRU scan exports
fine), loadable with ``torch.export.load`` without the recsys package (it unpickles:
``recsys-serve`` loads it only with ``--trust-program``).

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
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from recsys.builders import load_run, resolve_run
from recsys.export.artifact import (
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


def write_size(
    small: MatryoshkaRecModel,
    staging: Path,
    item_ids: list[str],
    run_metrics: dict[str, Any],
    source: dict[str, Any],
) -> None:
    """Stage the artifact of ``small = model.slice(d)`` (eval mode) in ``staging``."""
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
    (staging / ITEMS_FILE).write_text(json.dumps({"item_ids": item_ids}))
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


def finalize_size(staging: Path, parity: dict[str, Any], final: Path) -> dict[str, Any]:
    metrics = json.loads((staging / METRICS_FILE).read_text())
    metrics["parity"] = parity
    files = {
        p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file() and p.name != METRICS_FILE
    }
    metrics["file_bytes"] = files
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    write_checksums(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    total = sum(p.stat().st_size for p in final.iterdir() if p.is_file())
    return {
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


def export_run(
    target: str | Path,
    sizes: list[int] | str | None = None,
    out: str | Path | None = None,
    checkpoint: str = "best",
    parity_users: int = 256,
) -> dict[str, Any]:
    """Export every size; returns the index written to OUT/index.json."""
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
    entries = {}
    for d in sizes:
        final = out / size_dir_name(d)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out))
        staging.rmdir()
        try:
            small = model.slice(d).eval()
            write_size(small, staging, dataset.item_ids, run_metrics, source)
            parity = check_parity(model, small, staging, inputs, full_emb)
            entries[str(d)] = finalize_size(staging, parity, final)
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
    lines = [f"{'size':>6} {'dir':>6} {'test NDCG@10':>13} {'test R@10':>10} {'params':>10} {'bytes':>12}"]
    for d in index["sizes"]:
        e = index["entries"][str(d)]
        t = e["metrics"]["test"]
        nd = f"{t['ndcg@10']:.4f}" if t.get("ndcg@10") is not None else "-"
        rc = f"{t['recall@10']:.4f}" if t.get("recall@10") is not None else "-"
        lines.append(f"{d:>6} {e['dir']:>6} {nd:>13} {rc:>10} {e['parameters']:>10} {e['bytes']:>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recsys-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory, or a checkpoint file (run dir = its parent's parent)")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes (default: the whole ladder)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/export)")
    parser.add_argument("--checkpoint", default="best", help="best | last | PATH (default: best)")
    parser.add_argument("--parity-users", type=int, default=256, help="test users checked for parity")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        index = export_run(args.run, args.sizes, args.out, args.checkpoint, args.parity_users)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"recsys-export: {err}") from None
    out = Path(args.out) if args.out else resolve_run(args.run, args.checkpoint)[0] / "export"
    digest = export_digest(out)
    print(format_index(index))
    print(f"written {out / INDEX_FILE}")
    print(f"export digest (sha256): {digest}")
    print(f"keep it outside the export and serve with: recsys-serve {out} --expect-digest {digest}")


if __name__ == "__main__":
    main()
