"""Full-ranking evaluation at every size from one forward pass, and the ``recsys-eval`` command.

``recsys-eval run_dir=runs/demo/... [split=test] [checkpoint=best] [filter_history=false]``
evaluates a trained run's checkpoint at every size of its ladder and prints the table.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from data_prep.io import write_json_atomic
from recsys.data import EvalSplit
from recsys.evaluation.metrics import MetricAccumulator, mask_history, validate_ks
from recsys.evaluation.reporting import SizeMetrics, format_table, jsonable_metrics
from recsys.model import MatryoshkaRecModel

log = logging.getLogger("recsys.evaluation.evaluate")

@torch.no_grad()
def evaluate_split(
    model: MatryoshkaRecModel,
    split: EvalSplit,
    ks: tuple[int, ...] | list[int],
    filter_history: bool = False,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    user_range: tuple[int, int] | None = None,
    split_name: str = "evaluation",
) -> MetricAccumulator:
    """Rank every catalog item for each user of ``split`` at every size of ``model.ladder``.

    The catalog embeddings (N+1, D) are computed once; each batch costs one backbone pass and
    one fused all-sizes scoring. ``user_range`` restricts to users [start, stop) (used to shard
    users across ranks). Returns the accumulator of per-user sums (call ``.compute()``). Users whose
    scores hold a NaN or +inf count as misses and are logged (``split_name``) and counted
    (``acc.nonfinite_users()``).
    """
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(sizes=tuple(model.ladder), ks=validate_ks(ks, model.num_items))
    item_emb = model.item_embeddings()
    start, stop = user_range if user_range is not None else (0, len(split))
    for inputs, targets, history in split.batches(batch_size, start, stop):
        inputs, targets, history = inputs.to(device), targets.to(device), history.to(device)
        # float64 dot products: fp32 rounding of the large common score offset reorders near-ties
        scores = model.score(inputs, item_emb, dtype=torch.float64)  # (M, B, N+1), padding column -inf
        if filter_history:
            scores = mask_history(scores, history, targets)
        acc.update(scores, targets)
    model.train(was_training)
    bad = {d: n for d, n in acc.nonfinite_users().items() if n}
    if bad:
        log.warning(
            "%s: non-finite scores for %s users (size: users); they are counted as misses",
            split_name, ", ".join(f"d{d}: {n}" for d, n in bad.items()),
        )
    return acc


def main(argv: list[str] | None = None) -> None:
    from recsys.builders import build_dataset, build_model
    from recsys.training.checkpoint import load_checkpoint

    args = OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv))
    if "run_dir" not in args:
        raise SystemExit("usage: recsys-eval run_dir=RUN_DIR [split=test|validation] [checkpoint=best|last|PATH] "
                         "[filter_history=true|false]")
    run_dir = Path(args.run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    split_name = args.get("split", "test")
    ckpt = args.get("checkpoint", "best")
    ckpt_path = run_dir / "checkpoints" / f"{ckpt}.pt" if ckpt in ("best", "last") else Path(ckpt)
    filter_history = bool(args.get("filter_history", cfg.eval.filter_history))
    dataset = build_dataset(cfg)
    model = build_model(cfg, dataset)
    model.load_state_dict(load_checkpoint(ckpt_path)["model"])
    results: SizeMetrics = evaluate_split(
        model, dataset.split(split_name), cfg.eval.ks, filter_history, cfg.eval.batch_size
    ).compute()
    print(format_table(results, title=f"{split_name} metrics of {ckpt_path} (filter_history={filter_history})"))
    out = run_dir / f"eval_{split_name}_{ckpt_path.stem}.json"
    write_json_atomic(out, {"split": split_name, "checkpoint": str(ckpt_path), "filter_history": filter_history,
                            "metrics": jsonable_metrics(results)})
    print(f"written {out}")


if __name__ == "__main__":
    main()
