"""2-process gloo training with sharded item tables equals single-process training (CPU).

One spawned job per sharding type trains a few steps, evaluates, checkpoints; the parent compares
with a single-process run on the same data and seed. Dropout off so the runs are comparable.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

from recsys.checkpoint import load_checkpoint
from recsys.sampled_softmax import log_expected_count, sampled_matryoshka_ce_sum
from recsys.train import CONFIG_DIR, Trainer, run

pytestmark = pytest.mark.distributed

COMMON = ["trainer.max_epochs=1", "trainer.optimizer.lr=0.01", "trainer.val_every_n_steps=3", "trainer.log_every_n_steps=1"]


def tiny_cfg(dataset_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "config",
            overrides=["experiment=tiny", "data.name=generic", f"data.path={dataset_dir}", *COMMON, *overrides],
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, dataset_dir: str, run_dir: str, overrides: list[str], out: str):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    cfg = tiny_cfg(Path(dataset_dir), *overrides)
    losses = []
    trainer_cls = Trainer

    class Recording(trainer_cls):
        def train_step(self, inputs, targets):
            loss, per_size = super().train_step(inputs, targets)
            losses.append(loss)
            return loss, per_size

    import recsys.train as train_mod

    train_mod.Trainer = Recording
    try:
        res = run(cfg, Path(run_dir))
    finally:
        train_mod.Trainer = trainer_cls
    trainer = res["trainer"]
    val = trainer.evaluate("validation")
    if rank == 0:
        Path(out).write_text(json.dumps({"losses": losses, "val": {str(k): v for k, v in val.items()},
                                         "plan": getattr(trainer, "sharding_plan", {})}))
    torch.distributed.destroy_process_group()


def _single(dataset_dir: Path, run_dir: Path, *overrides: str):
    losses = []
    cfg = tiny_cfg(dataset_dir, *overrides)
    trainer = Trainer(cfg, run_dir)
    orig = trainer.train_step

    def step(inputs, targets):
        loss, per_size = orig(inputs, targets)
        losses.append(loss)
        return loss, per_size

    trainer.train_step = step
    trainer.fit()
    trainer.test_best()
    trainer.tb.close()
    return losses, trainer


def _spawn(dataset_dir: Path, run_dir: Path, overrides: list[str], tmp_path: Path) -> dict:
    out = tmp_path / f"out_{run_dir.name}.json"
    mp.spawn(_worker, args=(2, _free_port(), str(dataset_dir), str(run_dir), overrides, str(out)), nprocs=2)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.conftest import write_processed_dataset

    return write_processed_dataset(tmp_path_factory.mktemp("dist") / "dataset")


@pytest.mark.parametrize("sharding", ["row_wise", "table_wise"])
def test_sharded_training_matches_single_process(dataset, tmp_path, sharding):
    single_losses, single = _single(dataset, tmp_path / "single")
    dist_out = _spawn(dataset, tmp_path / f"dist_{sharding}", [f"trainer.sharding={sharding}"], tmp_path)
    assert dist_out["plan"] == {"text_table": sharding}
    assert len(dist_out["losses"]) == len(single_losses) > 3
    assert dist_out["losses"] == pytest.approx(single_losses, rel=1e-4)
    single_val = single.evaluate("validation")
    for size, metrics in single_val.items():
        for name, value in metrics.items():
            assert dist_out["val"][str(size)][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (size, name)
    # the sharded run's best.pt is in the single-process format, with the same weights
    a = load_checkpoint(tmp_path / f"dist_{sharding}" / "checkpoints" / "best.pt")["model"]
    b = load_checkpoint(tmp_path / "single" / "checkpoints" / "best.pt")["model"]
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    metrics = json.loads((tmp_path / f"dist_{sharding}" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"4", "8", "16"}


def test_logq_correction_matches_hand_computation():
    torch.manual_seed(0)
    ladder = (2, 4)
    hidden, cands = torch.randn(3, 4), torch.randn(5, 4)
    target_index = torch.tensor([0, 2, 4])
    popularity = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.15, 0.25])
    cand_ids = torch.tensor([1, 2, 3, 4, 5])
    log_q = log_expected_count(cand_ids, num_positions=3, num_negatives=7, popularity=popularity, q=None)
    # Q(i) = P * pop(i) + K * (1 / N)
    expected_q = [3 * float(popularity[i]) + 7 / 5 for i in cand_ids]
    assert log_q.tolist() == pytest.approx([math.log(v) for v in expected_q])
    total, per_size = sampled_matryoshka_ce_sum(hidden, target_index, cands, log_q, ladder, (1.0, 3.0))
    hand = []
    for d in ladder:
        s = 0.0
        for p in range(3):
            logits = [float(hidden[p, :d] @ cands[c, :d]) - math.log(expected_q[c]) for c in range(5)]
            lse = math.log(sum(math.exp(x) for x in logits))
            s += lse - logits[int(target_index[p])]
        hand.append(s)
    assert per_size.tolist() == pytest.approx(hand, rel=1e-5)
    assert float(total) == pytest.approx(0.25 * hand[0] + 0.75 * hand[1], rel=1e-5)


def test_sampled_softmax_trains(dataset, tmp_path):
    cfg = tiny_cfg(dataset, "loss=sampled_softmax", "loss.num_negatives=16", "trainer.max_epochs=4")
    trainer = Trainer(cfg, tmp_path / "run")
    x, y = next(trainer.dataset.train_batches(64, epoch=0, seed=0))
    from recsys.sampled_softmax import full_softmax_sum

    def full_loss():
        with torch.no_grad():
            total, _, count = full_softmax_sum(trainer.model, x, y, None)
        return float(total) / count

    before = full_loss()
    trainer.fit()
    assert full_loss() < 0.8 * before  # the full-softmax loss drops when training with sampled softmax
    trainer.tb.close()


def test_distributed_sampled_softmax_and_evaluation(dataset, tmp_path):
    """2 ranks, sampled softmax, planner's choice of sharding: loss finite and dropping; the
    distributed evaluation of the final model equals a single-process evaluation of its best.pt."""
    run_dir = tmp_path / "dist_sampled"
    out = _spawn(dataset, run_dir, ["loss=sampled_softmax", "loss.num_negatives=16", "trainer.max_epochs=3"], tmp_path)
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
