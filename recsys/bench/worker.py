"""One measurement in a fresh process: ``python worker.py '{"suite": "speed", ...}'`` prints one JSON line.

Standalone on purpose: ``recsys-bench --compare REF`` runs THIS file against another commit's tree
(``PYTHONPATH=<tree>``), so it imports only APIs present in both the current tree and older ones
(e4e3404: flat ``ModelConfig(backbone="lru", num_blocks=..., ffn_multiplier=...)``,
``recsys.evaluate``; now: ``ModelConfig(backbone=LRUConfig(...))``, ``recsys.evaluation.evaluate``),
and never ``recsys.bench`` itself.

Suites:

Each tree runs as it ships (``tree_defaults``: its CPU training precision, its AdamW options)
unless the command forces one precision for all (``--bf16`` / ``--fp32``).

- ``speed``: AdamW training steps (``model.loss`` forward + backward, global-norm clip 1.0, step) on
  DISTINCT random batches shaped like ML-100K; per-step seconds, non-padding targets, FLOPs of one
  step (``torch.utils.flop_counter.FlopCounterMode``) and this process's peak RSS.
- ``eval``: full-ranking evaluation passes (``evaluate_split``) over random histories; seconds per
  pass, FLOPs of one pass, peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(__file__):
    sys.path.pop(0)  # run by path: this folder (cli.py, report.py, ...) must not shadow top-level modules

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build_published(p: dict):
    """The published fMRLRec block re-implemented (``published.py`` beside this file, torch only,
    so the same code whatever tree is under test)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "recsys_bench_published", os.path.join(os.path.dirname(os.path.abspath(__file__)), "published.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.PublishedStyleModel(
        tuple(p["ladder"]), p["num_items"], p["feature_dim"], p["num_blocks"], p["dropout"]
    )
    g = torch.Generator().manual_seed(p["seed"])
    model.features.copy_(torch.randn(p["num_items"] + 1, p["feature_dim"], generator=g))
    return model, "published"


def build_model(p: dict):
    """The model through whichever ModelConfig API this tree has (or the published block)."""
    if p.get("model") == "published":
        return build_published(p)
    from recsys.model import MatryoshkaRecModel, ModelConfig

    ladder = tuple(p["ladder"])
    try:
        from recsys.nn.lru import LRUConfig
    except ImportError:  # flat config (e4e3404 and before)
        api = "flat"
        config = ModelConfig(
            ladder=ladder,
            max_len=p["max_len"],
            backbone="lru",
            num_blocks=p["num_blocks"],
            ffn_multiplier=p["ffn_multiplier"],
            dropout=p["dropout"],
        )
    else:
        api = "backbone_config"
        config = ModelConfig(
            ladder=ladder,
            max_len=p["max_len"],
            backbone=LRUConfig(
                num_blocks=p["num_blocks"], ffn_multiplier=p["ffn_multiplier"], dropout=p["dropout"]
            ),
        )
    model = MatryoshkaRecModel(config, p["num_items"], {"text": p["feature_dim"]})
    g = torch.Generator().manual_seed(p["seed"])
    model.load_item_features({"text": torch.randn(p["num_items"] + 1, p["feature_dim"], generator=g)})
    return model, api


def random_sequences(n: int, p: dict, g: torch.Generator) -> torch.Tensor:
    """(n, max_len + 1) left-padded sequences of random item ids with random lengths 2..max_len+1."""
    length = p["max_len"] + 1
    seq = torch.randint(1, p["num_items"] + 1, (n, length), generator=g)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    seq[torch.arange(length)[None, :] < (length - lengths)[:, None]] = 0
    return seq


def make_batches(p: dict, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(p["seed"] + 1)
    batches = []
    for _ in range(count):
        full = random_sequences(p["batch"], p, g)
        inputs, targets = full[:, :-1].clone(), full[:, 1:].clone()
        targets[inputs == 0] = 0
        batches.append((inputs, targets))
    return batches


def loss_of(model, inputs, targets):
    out = model.loss(inputs, targets)
    return out[0] if isinstance(out, tuple) else out


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def tree_defaults(tree: str | None) -> dict:
    """What the tree under test ships as its CPU training defaults: GEMM precision and AdamW options.

    Newer trees: ``trainer.precision`` (``auto`` resolved by the tree's own rule) and the optimizer
    group's options; e4e3404 and before: ``bf16`` was CUDA only, so fp32 on CPU, plain AdamW.
    """
    from omegaconf import OmegaConf

    root = os.path.abspath(tree or ".")
    trainer = OmegaConf.load(os.path.join(root, "configs", "trainer", "cpu.yaml"))
    bf16 = False
    if "precision" in trainer:
        from recsys.training.precision import autocast_dtype

        bf16 = autocast_dtype(str(trainer.precision), torch.device("cpu")) is not None
    optimizer = os.path.join(root, "configs", "optimizer", "adamw.yaml")
    adamw = {}
    if os.path.isfile(optimizer):
        opt = OmegaConf.to_container(OmegaConf.load(optimizer))
        adamw = {k: v for k, v in opt.items() if k in ("fused", "foreach")}
    return {"bf16": bf16, "adamw": adamw}


#: ``recsys-bench speed --ablate``: each lever of the training step, and how to turn it off in THIS
#: tree (never used against another tree)
LEVERS = ("bf16", "fused_adamw", "packing", "triangular", "cpu_scan", "loss_chunks", "fast_dropout")


def turn_off(lever: str, p: dict) -> None:
    """Undo one training-speed lever in this process (the reference path each was tested against)."""
    if lever == "bf16":
        p["bf16"] = False
    elif lever == "fused_adamw":
        p["adamw"] = {}
    elif lever == "packing":  # every map on every position, padding included
        from recsys.nn.backbone import Backbone
        from recsys.nn.lru import LRUBackbone

        LRUBackbone.forward = LRUBackbone.forward_padded
        LRUBackbone.forward_at = Backbone.forward_at  # the full (now padded) forward, then [at]
    elif lever == "triangular":  # one masked dense GEMM per nested linear
        from recsys.nn.nested import NestedLinear

        NestedLinear.forward = NestedLinear.forward_reference
    elif lever == "cpu_scan":  # recursive doubling on CPU too
        from recsys.nn import lru

        lru._step_by_step = lambda t: False
    elif lever == "loss_chunks":  # the loss's logits in chunks of 256 MiB on CPU too (not cache-sized)
        from recsys.losses import matryoshka

        matryoshka.cpu_budget_bytes = lambda: matryoshka.DEFAULT_BUDGET_BYTES
    elif lever == "fast_dropout":  # torch's own dropout (one Bernoulli draw per element)
        from torch import nn

        from recsys.nn.dropout import Dropout

        Dropout.forward = nn.Dropout.forward
    else:
        raise ValueError(f"unknown lever {lever!r}; known: {LEVERS}")


def autocast(p: dict):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(p.get("bf16")))


def run_speed(p: dict) -> dict:
    base_rss = rss_mib()
    torch.manual_seed(p["seed"])
    model, api = build_model(p)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3, **p.get("adamw", {}))
    params = [q for group in opt.param_groups for q in group["params"]]
    batches = make_batches(p, p["warmup"] + 1 + p["steps"])

    def step(inputs, targets) -> float:
        with autocast(p):
            loss = loss_of(model, inputs, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    for inputs, targets in batches[: p["warmup"]]:
        step(inputs, targets)
    flops = count_flops(lambda: step(*batches[p["warmup"]]))
    times, tokens, losses = [], [], []
    for inputs, targets in batches[p["warmup"] + 1 :]:
        start = time.perf_counter()
        losses.append(step(inputs, targets))
        times.append(time.perf_counter() - start)
        tokens.append(int((targets != 0).sum()))
    return {
        "api": api,
        "step_seconds": times,
        "tokens": tokens,
        "flops_per_step": flops,
        "flop_tokens": int((batches[p["warmup"]][1] != 0).sum()),
        "losses": losses,
        "rss_before_build_mib": base_rss,
        "peak_rss_mib": peak_rss_mib(),
    }


def evaluate_fn():
    try:
        from recsys.evaluation.evaluate import evaluate_split
    except ImportError:  # e4e3404 and before
        from recsys.evaluate import evaluate_split
    return evaluate_split


def make_split(p: dict):
    from recsys.data import EvalSplit

    g = torch.Generator().manual_seed(p["seed"] + 2)
    full = random_sequences(p["users"], p, g)
    inputs, targets = full[:, :-1].clone(), full[:, -1].clone()
    return EvalSplit(
        inputs=inputs, targets=targets, history=inputs.clone(), user_idx=torch.arange(p["users"])
    )


def run_eval(p: dict) -> dict:
    base_rss = rss_mib()
    torch.manual_seed(p["seed"])
    model, api = build_model(p)
    model.eval()
    split = make_split(p)
    evaluate_split = evaluate_fn()
    ks = tuple(k for k in (10, 20) if k < p["num_items"]) or (1,)

    def one_pass():
        with autocast(p):
            acc = evaluate_split(model, split, ks, batch_size=p["eval_batch"])
        return acc.compute()

    for _ in range(p["warmup"]):
        one_pass()
    flops = count_flops(one_pass)
    times = []
    for _ in range(p["passes"]):
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
    return {
        "api": api,
        "pass_seconds": times,
        "flops_per_pass": flops,
        "users": p["users"],
        "rss_before_build_mib": base_rss,
        "peak_rss_mib": peak_rss_mib(),
    }


def isolate_imports(tree: str | None) -> None:
    """Only ``tree`` (the tree under test, also on PYTHONPATH) may provide recsys and data_prep here."""
    if not tree:
        return
    sys.path.insert(0, os.path.abspath(tree))
    # An editable install's finder would resolve a subpackage missing from the tree under test
    # (e.g. recsys.evaluation in an old commit) to the installed checkout.
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path[:] = [e for e in sys.path if "__editable__" not in e]


def main() -> None:
    p = json.loads(sys.argv[1])
    isolate_imports(p.get("tree"))
    torch.set_num_threads(p["threads"])
    import recsys

    off = p.get("without")
    defaults = tree_defaults(p.get("tree"))
    if p.get("bf16") is None:  # as the tree ships (evaluation: fp32); --bf16 / --fp32 force one for all
        p["bf16"] = defaults["bf16"] and p["suite"] == "speed" and p.get("model") != "published"
    p["adamw"] = defaults["adamw"] if p.get("model") != "published" else {}  # published: fp32, plain AdamW
    if off:
        turn_off(off, p)
    result = {"suite": p["suite"], "recsys_path": os.path.dirname(os.path.abspath(recsys.__file__))}
    result.update({"precision": "bf16" if p["bf16"] else "fp32", "adamw_options": p["adamw"], "without": off})
    result.update(run_speed(p) if p["suite"] == "speed" else run_eval(p))
    result["threads"] = torch.get_num_threads()
    tree = os.path.dirname(result["recsys_path"])
    result["foreign_modules"] = sorted(
        name
        for name, module in list(sys.modules.items())
        if name.split(".")[0] in ("recsys", "data_prep")
        and getattr(module, "__file__", None)
        and not os.path.abspath(module.__file__).startswith(tree + os.sep)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
