"""``recsys-eval run_dir=RUN_DIR [split=test|validation] [checkpoint=best|last|PATH]``.

Evaluates a trained run's checkpoint at every size of its ladder, prints the table and writes
``RUN_DIR/eval_{split}_{checkpoint}.json``.
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from data_prep.io import write_json_atomic
from recsys.builders import load_run, resolve_run
from recsys.evaluation.evaluate import evaluate_split
from recsys.evaluation.reporting import SizeMetrics, format_table, jsonable_metrics

USAGE = (
    "usage: recsys-eval run_dir=RUN_DIR [split=test|validation] [checkpoint=best|last|PATH] "
    "(both protocols: all items and unseen items only)"
)


def main(argv: list[str] | None = None) -> None:
    args = OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv))
    if "run_dir" not in args:
        raise SystemExit(USAGE)
    run_dir, ckpt_path = resolve_run(args.run_dir, str(args.get("checkpoint", "best")))
    cfg, dataset, model = load_run(run_dir, ckpt_path)
    split_name = args.get("split", "test")
    results: SizeMetrics = evaluate_split(
        model, dataset.split(split_name), cfg.eval.ks, cfg.eval.batch_size
    ).compute()
    print(format_table(results, title=f"{split_name} metrics of {ckpt_path}"))
    out = run_dir / f"eval_{split_name}_{ckpt_path.stem}.json"
    summary = {"split": split_name, "checkpoint": str(ckpt_path)}
    write_json_atomic(out, {**summary, "metrics": jsonable_metrics(results)})
    print(f"written {out}")


if __name__ == "__main__":
    main()
