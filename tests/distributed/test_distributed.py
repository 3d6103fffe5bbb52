"""2-process gloo training with sharded item tables equals single-process training (CPU).

One spawned 2-process job per sharding type (row_wise, table_wise) runs every distributed check
of that sharding type in one go (process start-up, imports and sharding dominate the wall time):

* ``feat``: frozen feature table only (trains, evaluates, checkpoints, tests best.pt);
* ``ids``: with the trainable item-id table (``model.use_id_table=true``), 8 steps, gradient
  clipping active on most of them; its final weights are gathered in the single-process format;
* ``ids_stop`` + ``ids_resume``: the same run stopped after 4 steps, then resumed from
  ``last.pt`` on the same world size (model, per-rank optimiser state incl. the table shards,
  scheduler, RNG) and continued to the end. These two also average the weights
  (``trainer.ema_decay``), which must not change training: the resumed raw weights (the
  checkpoint's ``train_model``, loaded into the sharded tables) and losses equal the others'.

One more job trains the id table with column_wise and data_parallel sharding. The parent
compares each with a single-process run on the same data and seed. Dropout off so the runs are
comparable.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from support import tiny_cfg as support_tiny_cfg
from support import write_processed_dataset

from recsys.training.checkpoint import load_checkpoint
from recsys.training.runner import run
from recsys.training.trainer import Trainer

pytestmark = pytest.mark.distributed

COMMON = [
    "trainer.max_epochs=1",
    "trainer.optimizer.lr=0.01",
    "trainer.val_every_n_steps=3",
    "trainer.log_every_n_steps=1",
]
# id-table runs: 1 epoch (8 steps) with a clip threshold inside the range of the gradient norms
# (4.1-9.1: 6 of the 8 steps are clipped), so a wrong global norm (e.g. without the table shards)
# changes which steps are clipped and by how much; the final weights are kept (no test_best)
ID_RUN = ["model.use_id_table=true", "trainer.grad_clip=5.0", "test_at_end=false"]
STOP_AT = 4
EMA = ["trainer.ema_decay=0.9"]
SHARDINGS = ["row_wise", "table_wise"]
# measured differences are ~1e-7 (float32 reduction order); leaving the table shards out of the
# clipping norm alone moves the losses by ~1e-4 and the weights by ~1e-4
LOSS_TOL = {"rel": 2e-5}
WEIGHT_TOL = {"rtol": 1e-5, "atol": 2e-6}


def tiny_cfg(dataset_dir: Path, *overrides: str):
    return support_tiny_cfg(dataset_dir, *COMMON, *overrides)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recording_run(cfg, run_dir: Path) -> dict[str, Any]:
    """``run(cfg, run_dir)`` recording every step's loss, the weights before the first step
    (after a resume: the resumed ones) and right after ``fit`` (before ``test_best`` loads best.pt),
    in the plain single-process format."""
    import recsys.training.runner as runner
    from recsys.training.distributed import full_state_dict

    losses: list[float] = []
    initial: dict[str, torch.Tensor] = {}
    final: dict[str, torch.Tensor] = {}
    trainer_cls = runner.Trainer

    class Recording(trainer_cls):
        def state_now(self) -> dict[str, torch.Tensor]:
            state = full_state_dict(self.model) if self.env.enabled else self.model.state_dict()
            return {k: v.detach().clone() for k, v in state.items()}

        def train_step(self, inputs, targets):
            if not losses:
                initial.update(self.state_now())
            loss, per_size = super().train_step(inputs, targets)
            losses.append(loss)
            return loss, per_size

        def fit(self) -> str:
            reason = super().fit()
            final.update(self.state_now())
            return reason

    runner.Trainer = Recording
    try:
        res = run(cfg, run_dir)
    finally:
        runner.Trainer = trainer_cls
    trainer = res["trainer"]
    val = trainer.evaluate("validation")  # a collective when distributed
    return {
        "losses": losses,
        "initial": initial,
        "final": final,
        "val": {str(k): v for k, v in val.items()},
        "plan": getattr(trainer, "sharding_plan", {}),
        "reason": res["reason"],
    }


def _worker(
    rank: int, world: int, port: int, dataset_dir: str, jobs: list[tuple[str, str, list[str]]], out: str
):
    """One rank: run every (name, run_dir, overrides) job in order; rank 0 saves the results."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    results = {
        name: _recording_run(tiny_cfg(Path(dataset_dir), *overrides), Path(run_dir))
        for name, run_dir, overrides in jobs
    }
    if rank == 0:
        torch.save(results, out)
    torch.distributed.destroy_process_group()


def _spawn(dataset_dir: Path, jobs: list[tuple[str, Path, list[str]]], out: Path) -> dict[str, Any]:
    jobs_arg = [(name, str(run_dir), list(overrides)) for name, run_dir, overrides in jobs]
    mp.spawn(_worker, args=(2, _free_port(), str(dataset_dir), jobs_arg, str(out)), nprocs=2)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_processed_dataset(tmp_path_factory.mktemp("dist") / "dataset")


@pytest.fixture(scope="module")
def single(dataset, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Single-process references: ``feat`` (feature table only) and ``ids`` (with the id table)."""
    root = tmp_path_factory.mktemp("single")
    return {
        "feat": _recording_run(tiny_cfg(dataset), root / "feat"),
        "ids": _recording_run(tiny_cfg(dataset, *ID_RUN), root / "ids"),
        "root": root,
    }


@pytest.fixture(scope="module", params=SHARDINGS)
def distributed(request, dataset, tmp_path_factory) -> dict[str, Any]:
    """All 2-process runs of one sharding type, in one spawned job."""
    sharding = request.param
    root = tmp_path_factory.mktemp(f"dist_{sharding}")
    forced = f"trainer.sharding={sharding}"
    jobs = [
        ("feat", root / "feat", [forced]),
        ("ids", root / "ids", [forced, *ID_RUN]),
        ("ids_stop", root / "ids_resumed", [forced, *ID_RUN, *EMA, f"trainer.stop_after_steps={STOP_AT}"]),
        ("ids_resume", root / "ids_resumed", [forced, *ID_RUN, *EMA, "resume=true"]),
    ]
    out = _spawn(dataset, jobs, root / "results.pt")
    return {"sharding": sharding, "root": root, **out}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], **WEIGHT_TOL, msg=lambda m, key=key: f"{key}: {m}")


def test_sharded_training_matches_single_process(single, distributed):
    sharding, dist_out, ref = distributed["sharding"], distributed["feat"], single["feat"]
    assert dist_out["plan"] == {"text_table": sharding}
    assert len(dist_out["losses"]) == len(ref["losses"]) > 3
    assert dist_out["losses"] == pytest.approx(ref["losses"], **LOSS_TOL)
    for size, metrics in ref["val"].items():  # the best checkpoint's validation metrics
        for name, value in metrics.items():
            assert dist_out["val"][size][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (size, name)
    _assert_same_weights(dist_out["final"], ref["final"])
    # the sharded run's best.pt is in the single-process format, with the same weights
    a = load_checkpoint(distributed["root"] / "feat" / "checkpoints" / "best.pt")["model"]
    b = load_checkpoint(single["root"] / "feat" / "checkpoints" / "best.pt")["model"]
    _assert_same_weights(a, b)
    metrics = json.loads((distributed["root"] / "feat" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"4", "8", "16"}


def test_trainable_id_table_matches_single_process(single, distributed):
    """The sharded id table follows the single-process rule: AdamW, warmup+cosine, global clipping."""
    sharding, dist_out, ref = distributed["sharding"], distributed["ids"], single["ids"]
    assert dist_out["plan"] == {"text_table": sharding, "item_id_table": sharding}
    assert len(dist_out["losses"]) == len(ref["losses"]) >= 8
    assert dist_out["losses"] == pytest.approx(ref["losses"], **LOSS_TOL)
    _assert_same_weights(dist_out["final"], ref["final"])
    id_key = "tables.ids.embedding_bags.item_id_table.weight"
    table = ref["initial"][id_key]
    assert (ref["final"][id_key] - table).abs().max() > 100 * WEIGHT_TOL["atol"]  # the table does train

    # the rank files hold the AdamW moments of the table shards (checkpointed optimiser state):
    # dense parameters are replicated (counted on both ranks), the table's rows once in all
    def moment_numel(path: Path) -> int:
        state = load_checkpoint(path, required=("optimizer",))["optimizer"]["state"]
        return sum(s["exp_avg"].numel() for s in state.values())

    ckpts = distributed["root"] / "ids" / "checkpoints"
    total = moment_numel(single["root"] / "ids" / "checkpoints" / "last.pt")  # dense + whole table
    per_rank = [moment_numel(ckpts / f"last.rank{r}.pt") for r in (0, 1)]
    assert sum(per_rank) == 2 * (total - table.numel()) + table.numel()


def test_trainable_id_table_column_wise_and_data_parallel(single, dataset, tmp_path):
    """The other sharding types, in one spawned job: column shards (norms summed over ranks) and
    replicated data_parallel tables (their lookups' own DDP sums gradients; norm counted once)."""
    jobs = [
        (kind, tmp_path / kind, [f"trainer.sharding={kind}", *ID_RUN, "trainer.val_every_n_steps=0"])
        for kind in ("column_wise", "data_parallel")
    ]
    out = _spawn(dataset, jobs, tmp_path / "results.pt")
    ref = single["ids"]
    for kind, _, _ in jobs:
        assert out[kind]["plan"] == {"text_table": kind, "item_id_table": kind}
        assert out[kind]["losses"] == pytest.approx(ref["losses"], **LOSS_TOL), kind
        _assert_same_weights(out[kind]["final"], ref["final"])


def test_resume_on_same_world_size_equals_uninterrupted(single, distributed):
    """Run STOP_AT steps, checkpoint, resume, continue: the same losses and weights as one run."""
    stop, resumed, full = distributed["ids_stop"], distributed["ids_resume"], distributed["ids"]
    assert stop["reason"] == "stop_after_steps" and len(stop["losses"]) == STOP_AT
    assert stop["losses"] + resumed["losses"] == pytest.approx(full["losses"], **LOSS_TOL)
    assert stop["losses"] + resumed["losses"] == pytest.approx(single["ids"]["losses"], **LOSS_TOL)
    _assert_same_weights(resumed["initial"], stop["final"])  # the sharded raw weights were restored
    ckpt = load_checkpoint(distributed["root"] / "ids_resumed" / "checkpoints" / "last.pt")
    _assert_same_weights(ckpt["train_model"], full["final"])  # raw weights, gathered
    id_key = "tables.ids.embedding_bags.item_id_table.weight"  # the averaged table lags the raw one
    assert not torch.allclose(ckpt["model"][id_key], ckpt["train_model"][id_key], **WEIGHT_TOL)
    _assert_same_weights(resumed["final"], full["final"])
    _assert_same_weights(resumed["final"], single["ids"]["final"])


def test_distributed_sampled_softmax_and_evaluation(dataset, tmp_path):
    """2 ranks, sampled softmax, planner's choice of sharding: loss finite and dropping; the
    distributed evaluation of the final model equals a single-process evaluation of its best.pt."""
    run_dir = tmp_path / "dist_sampled"
    out = _spawn(
        dataset,
        [("sampled", run_dir, ["loss=sampled_softmax", "loss.num_negatives=16", "trainer.max_epochs=3"])],
        tmp_path / "results.pt",
    )["sampled"]
    losses = out["losses"]
    assert all(math.isfinite(v) for v in losses) and sum(losses[-3:]) < sum(losses[:3])
    cfg = tiny_cfg(dataset, "loss=sampled_softmax")
    trainer = Trainer(cfg, tmp_path / "single_eval")
    trainer.model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"])
    single_val = trainer.evaluate("validation")
    trainer.tb.close()
    for size, metrics in single_val.items():
        for name, value in metrics.items():
            assert out["val"][str(size)][name] == pytest.approx(value, rel=1e-9, abs=1e-12), (size, name)
