"""Training with the Matryoshka objective, validation at every size, early stopping, resume.

``recsys-train experiment=demo trainer.max_epochs=3`` (Hydra overrides; ``-m`` for sweeps).
A run directory receives ``config.yaml``, ``checkpoints/{last,best}.pt``, ``tb/``,
``metrics.json`` and ``metrics_vs_size.png``.

Exact resume: a checkpoint holds the model, optimiser, scheduler and RNG states plus the
data-order position (epoch, next batch). Epoch ``e``'s order is drawn from ``seed`` and ``e``
alone, so a resumed run replays the same batches with the same dropout masks as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from data_prep.io import write_json_atomic
from recsys.builders import build_dataset, build_model
from recsys.config import (
    CONFIG_DIR,
    check_resume_changes,
    effective_ladder,
    register_schemas,
    validate,
    validate_for_dataset,
)
from recsys.data import SequenceDataset
from recsys.evaluation.evaluate import evaluate_split
from recsys.evaluation.reporting import (
    SizeMetrics,
    format_table,
    jsonable_metrics,
    save_metrics_plot,
)
from recsys.losses.sampled import (
    full_softmax_sum,
    item_popularity,
    sample_negatives,
    sampled_softmax_sum,
)
from recsys.model import MatryoshkaRecModel
from recsys.training.checkpoint import atomic_torch_save, load_checkpoint, rng_state, set_rng_state
from recsys.training.distributed import (
    all_reduce_accumulator,
    all_reduce_sum,
    barrier,
    broadcast_object,
    clip_grad_norm_global,
    full_state_dict,
    init_distributed,
    load_full_state_dict,
    local_shard,
    rank_range,
    shard_model,
)
from recsys.training.tensorboard import TensorBoardLogger

log = logging.getLogger("recsys.training.trainer")


def _first_not_none(*values: Any) -> Any:
    return next((v for v in values if v is not None and v != "None"), None)


OmegaConf.register_new_resolver("recsys.first", _first_not_none, replace=True)
register_schemas()


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Filling every new tensor with NaN (the deterministic-mode default) costs several x on CPU
        # and changes no result of a correct program.
        torch.utils.deterministic.fill_uninitialized_memory = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name} but no CUDA device is available; use trainer.device=cpu")
    return device


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LR multiplier: linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class Trainer:
    """Fits a :class:`MatryoshkaRecModel` on a :class:`SequenceDataset` as configured by ``cfg``."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, dataset: SequenceDataset | None = None) -> None:
        validate(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed, cfg.trainer.deterministic)
        self.env = init_distributed(cfg.trainer.device)
        self.device = self.env.device if self.env.enabled else resolve_device(cfg.trainer.device)
        self.dataset = dataset if dataset is not None else build_dataset(cfg)
        validate_for_dataset(cfg, self.dataset.num_items)
        self.model: MatryoshkaRecModel = build_model(cfg, self.dataset).to(self.device)
        self.loss_name = cfg.loss.name
        self.popularity = None
        if self.loss_name == "sampled_softmax":
            self.popularity = item_popularity(self.dataset._train_targets, self.dataset.num_items)
        self.dmp, self.sharded = None, None
        if self.env.enabled:  # item tables sharded by torchrec DMP (DENSE kernels), dense part DDP (grads summed)
            self.sharded = shard_model(self.model, self._loss_sum, self.env, cfg.trainer.get("sharding", "auto"))
            self.dmp, self.sharding_plan = self.sharded.dmp, self.sharded.table_sharding
            log.info("rank %d/%d: table sharding %s", self.env.rank, self.env.world_size, self.sharding_plan)
        self.sizes = effective_ladder(cfg.model)
        self.size_weights = list(cfg.loss.size_weights) if cfg.loss.size_weights is not None else None
        self.ks = tuple(cfg.eval.ks)
        self.batches_per_epoch = self.dataset.num_train_batches(cfg.trainer.batch_size)
        self.total_steps = cfg.trainer.max_epochs * self.batches_per_epoch
        if self.sharded is not None:  # dense replicas + this rank's table shards: one optimiser for all
            params = self.sharded.parameters
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = instantiate(cfg.trainer.optimizer)(params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(cfg.trainer.warmup_steps, self.total_steps, cfg.trainer.min_lr_ratio)
        )
        self.use_bf16 = bool(cfg.trainer.bf16) and self.device.type == "cuda"
        self.loss_fn = self.model.loss
        if cfg.trainer.compile and self.device.type == "cuda":
            self.loss_fn = torch.compile(self.model.loss)
        self.monitor_size = cfg.trainer.monitor_size or self.sizes[-1]
        # training position and early-stopping state (all of it goes into checkpoints)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_value, self.best_step, self.bad_validations = -math.inf, -1, 0
        self.val_history: list[dict[str, Any]] = []
        self.nonfinite_steps = 0  # steps skipped for a NaN/inf loss or gradient norm
        self.tb = TensorBoardLogger(self.run_dir / "tb", self.sizes, self.ks) if self.env.is_main else _NullLogger()

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            # always the plain single-process format (sharded tables gathered: a collective)
            "model": full_state_dict(self.model) if self.env.enabled else self.model.state_dict(),
            "world_size": self.env.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "bad_validations": self.bad_validations,
            "val_history": self.val_history,
            "nonfinite_steps": self.nonfinite_steps,
            "sizes": list(self.sizes),
            "config": OmegaConf.to_container(self.cfg, resolve=True),  # checked on resume
        }

    def save_checkpoint(self, name: str) -> Path:
        path = self.ckpt_dir / f"{name}.pt"
        state = self.state()
        if self.env.enabled:  # rank 0: model + progress; every rank: its optimiser (incl. its table shards) and RNG
            if self.env.is_main:
                atomic_torch_save(state, path)
            atomic_torch_save(
                {"optimizer": state["optimizer"], "rng": state["rng"], "param_shapes": self._param_shapes()},
                self.ckpt_dir / f"{name}.rank{self.env.rank}.pt",
            )
            barrier(self.env)
        else:
            atomic_torch_save(state, path)
        return path

    def _param_shapes(self) -> list[list[int]]:
        """Shapes of the optimised parameters on this rank (the table shards differ by rank and sharding)."""
        return [list(p.shape) for group in self.optimizer.param_groups for p in group["params"]]

    def resume_from(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device, required=RESUME_KEYS)
        if list(ckpt["sizes"]) != list(self.sizes):
            raise ValueError(f"checkpoint {path} was trained with sizes {ckpt['sizes']}, config has {list(self.sizes)}")
        if int(ckpt.get("world_size", 1)) != self.env.world_size:
            raise ValueError(
                f"checkpoint {path} was written by {ckpt.get('world_size', 1)} processes; resume with the same world size"
            )
        if self.env.enabled:
            load_full_state_dict(self.model, ckpt["model"])
            rank_path = Path(path).with_name(f"{Path(path).stem}.rank{self.env.rank}.pt")
            rank_ckpt = load_checkpoint(rank_path, map_location=self.device, required=("optimizer", "rng"))
            if rank_ckpt.get("param_shapes", self._param_shapes()) != self._param_shapes():
                raise ValueError(
                    f"{rank_path} holds optimiser state of other parameter shards than this run's "
                    f"(table sharding {self.sharding_plan}); resume with the same world size and trainer.sharding"
                )
            ckpt.update(rank_ckpt)
        else:
            self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        for key in ("epoch", "batch_in_epoch", "step", "best_value", "best_step", "bad_validations", "val_history"):
            setattr(self, key, ckpt[key])
        self.nonfinite_steps = int(ckpt.get("nonfinite_steps", 0))
        log.info("Resumed from %s at epoch %d, batch %d, step %d", path, self.epoch, self.batch_in_epoch, self.step)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split: str) -> SizeMetrics:
        data = self.dataset.split(split)
        # distributed: contiguous per-rank user ranges (each user once), metric sums all-reduced
        user_range = rank_range(len(data), self.env.world_size, self.env.rank) if self.env.enabled else None
        acc = evaluate_split(
            self.model, data, self.ks, self.cfg.eval.filter_history,
            self.cfg.eval.batch_size, self.device, user_range=user_range, split_name=split,
        )
        return all_reduce_accumulator(acc, self.env).compute()

    def validate(self) -> bool:
        """Validate, log, keep the best checkpoint; return True when early stopping triggers."""
        results = self.evaluate("validation")
        self.tb.log_eval("validation", self.step, results)
        value = results[self.monitor_size][self.cfg.trainer.monitor]
        self.val_history.append({"step": self.step, "epoch": self.epoch, "value": value})
        improved = math.isfinite(value) and value > self.best_value  # a non-finite value is never "best"
        if improved:
            self.best_value, self.best_step, self.bad_validations = value, self.step, 0
        else:
            self.bad_validations += 1
        log.info(
            "step %d validation %s@d%d = %.4f (best %.4f at step %d)",
            self.step, self.cfg.trainer.monitor, self.monitor_size, value, self.best_value, self.best_step,
        )
        if improved:
            self.save_checkpoint("best")
        self.save_checkpoint("last")
        patience = self.cfg.trainer.patience
        return patience > 0 and self.bad_validations >= patience

    # ------------------------------------------------------------------ training
    def _loss_sum(self, model: MatryoshkaRecModel, seq: torch.Tensor, targets: torch.Tensor):
        """(loss summed over this process's target positions, per-size sums, count)."""
        if self.loss_name == "sampled_softmax":
            gen = torch.Generator().manual_seed(
                (self.cfg.seed * 1_000_003 + self.step) * 1009 + self.env.rank  # resumable, distinct per rank
            )
            q = self.popularity if self.cfg.loss.sampler == "popularity" else None
            negatives = sample_negatives(int(self.cfg.loss.num_negatives), model.num_items, gen, q)
            return sampled_softmax_sum(model, seq, targets, self.size_weights, negatives, self.popularity, q)
        return full_softmax_sum(model, seq, targets, self.size_weights)

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, list[float]]:
        if self.dmp is not None or self.loss_name != "full_softmax":
            return self._train_step_sum(inputs, targets)
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            total, per_size = self.loss_fn(inputs, targets, self.size_weights)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = None
        if self.cfg.trainer.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.grad_clip)
        if self._step_is_finite(total.detach(), grad_norm):
            self.optimizer.step()
            self.scheduler.step()
        return float(total.detach()), [float(x) for x in per_size]

    def _step_is_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
        """False (gradients dropped, the step skipped and counted) for a NaN/inf loss or gradient norm.

        Raises ``FloatingPointError`` naming the step once more than ``trainer.max_nonfinite_steps``
        steps were skipped, so a diverged run stops instead of training on garbage.
        """
        finite = bool(torch.isfinite(loss)) and (grad_norm is None or bool(torch.isfinite(grad_norm)))
        if finite:
            return True
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        what = f"loss {float(loss)}" if not torch.isfinite(loss) else f"gradient norm {float(grad_norm)}"
        where = f"step {self.step + 1} (epoch {self.epoch}, batch {self.batch_in_epoch})"
        allowed = int(self.cfg.trainer.max_nonfinite_steps)
        if self.nonfinite_steps > allowed:
            raise FloatingPointError(
                f"non-finite training {what} at {where}; {self.nonfinite_steps} non-finite step(s), "
                f"trainer.max_nonfinite_steps={allowed}. Lower trainer.optimizer.lr, keep trainer.grad_clip > 0, "
                f"or allow skipped steps with trainer.max_nonfinite_steps=N"
            )
        log.warning("skipped %s: non-finite training %s (%d of %d allowed)", where, what, self.nonfinite_steps, allowed)
        return False

    def _train_step_sum(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, list[float]]:
        """Step on this rank's shard of the global batch; loss = local sum / GLOBAL target count.

        Summed over ranks (DDP sum hook for the dense part, the all-to-all backward for sharded
        tables) the gradients equal the single-process gradients of the whole batch; clipping uses
        their global norm and one AdamW + LambdaLR updates dense replicas and table shards alike.
        """
        global_count = int((targets != 0).sum())
        inputs, targets = local_shard(inputs, self.env).to(self.device), local_shard(targets, self.env).to(self.device)
        forward = self.dmp if self.dmp is not None else (lambda s, t: self._loss_sum(self.model, s, t))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            total_sum, per_size_sum, _ = forward(inputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        (total_sum / global_count).backward()
        stats = all_reduce_sum(torch.cat([total_sum.detach().reshape(1).cpu(), per_size_sum.cpu()]), self.env)
        stats = stats / global_count  # the global loss: every rank takes the same skip decision below
        grad_norm = None
        if self.cfg.trainer.grad_clip > 0 and self.sharded is not None:  # norm of ALL params, table shards too
            grad_norm = clip_grad_norm_global(
                self.sharded.parameters, self.sharded.sharded, self.cfg.trainer.grad_clip, self.env
            )
        elif self.cfg.trainer.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.grad_clip)
        if self._step_is_finite(stats[0], grad_norm):
            self.optimizer.step()
            self.scheduler.step()
        return float(stats[0]), [float(x) for x in stats[1:]]

    def fit(self) -> str:
        """Train until max_epochs, early stopping or ``stop_after_steps``. Returns the reason it stopped."""
        tcfg = self.cfg.trainer
        self.model.train()
        bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not (tcfg.progress and self.env.is_main),
            desc="train", unit="step",
        )
        t0, seen = time.perf_counter(), 0
        try:
            while self.epoch < tcfg.max_epochs:
                batches = self.dataset.train_batches(tcfg.batch_size, self.epoch, self.cfg.seed, skip=self.batch_in_epoch)
                for inputs, targets in batches:
                    loss, per_size = self.train_step(inputs, targets)
                    self.step += 1
                    self.batch_in_epoch += 1
                    seen += inputs.shape[0]
                    bar.update(1)
                    if self.step % tcfg.log_every_n_steps == 0:
                        throughput = seen / max(1e-9, time.perf_counter() - t0)
                        self.tb.log_train(self.step, loss, per_size, self.scheduler.get_last_lr()[0], throughput)
                        bar.set_postfix(epoch=self.epoch, loss=f"{loss:.3f}", seq_s=f"{throughput:.0f}")
                        t0, seen = time.perf_counter(), 0
                    if self.batch_in_epoch == self.batches_per_epoch:  # position: start of next epoch
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    stop = False
                    if tcfg.val_every_n_steps > 0 and self.step % tcfg.val_every_n_steps == 0:
                        stop = self.validate()
                    elif tcfg.val_every_n_steps == 0 and self.batch_in_epoch == 0:
                        stop = self.validate()
                    elif tcfg.checkpoint_every_n_steps > 0 and self.step % tcfg.checkpoint_every_n_steps == 0:
                        self.save_checkpoint("last")
                    if stop:
                        return "early_stopping"
                    if 0 < tcfg.stop_after_steps <= self.step:
                        self.save_checkpoint("last")
                        return "stop_after_steps"
                    if self.batch_in_epoch == 0:
                        break  # epoch finished: draw the next epoch's order
            if not self.val_history or self.val_history[-1]["step"] != self.step:
                self.validate()  # the last steps are never left unvalidated (and a best checkpoint exists)
            return "max_epochs"
        finally:
            bar.close()

    # ------------------------------------------------------------------ end of run
    def test_best(self) -> dict[str, SizeMetrics]:
        """Evaluate the best checkpoint on validation and (once) on test; write metrics.json + plot."""
        best = self.ckpt_dir / "best.pt"
        if not best.is_file():
            raise FileNotFoundError(
                f"{best} is missing: there is no best checkpoint to test (it is written at the first validation). "
                f"Restore it, or evaluate another checkpoint with recsys-eval run_dir={self.run_dir} checkpoint=last"
            )
        best_state = load_checkpoint(best, map_location=self.device)["model"]
        if self.env.enabled:
            load_full_state_dict(self.model, best_state)
        else:
            self.model.load_state_dict(best_state)
        results = {"validation": self.evaluate("validation"), "test": self.evaluate("test")}
        self.tb.log_eval("test", self.step, results["test"])
        if not self.env.is_main:
            return results
        write_json_atomic(
            self.run_dir / "metrics.json",
            {
                "sizes": list(self.sizes),
                "ks": list(self.ks),
                "filter_history": bool(self.cfg.eval.filter_history),
                "monitor": f"{self.cfg.trainer.monitor}@d{self.monitor_size}",
                "best_step": self.best_step,
                "best_validation_value": self.best_value,
                "validation": jsonable_metrics(results["validation"]),
                "test": jsonable_metrics(results["test"]),
            },
        )
        save_metrics_plot(results["test"], self.run_dir / "metrics_vs_size.png", f"test metrics vs size ({self.cfg.name})")
        final = {f"test_{m}_d{d}": results["test"][d][m] for d in (self.sizes[0], self.sizes[-1]) for m in ("ndcg@10", "recall@10")}
        hparams = {
            "name": self.cfg.name, "backbone": self.cfg.backbone.name, "width": self.sizes[-1],
            "ladder": str(list(self.sizes)), "lr": self.cfg.trainer.optimizer.lr, "batch_size": self.cfg.trainer.batch_size,
            "max_len": self.cfg.data.max_len, "num_blocks": self.cfg.backbone.num_blocks,
            "dropout": self.cfg.backbone.dropout, "seed": self.cfg.seed,
        }
        self.tb.log_hparams(hparams, final)
        return results


class _NullLogger:
    """Stands in for the TensorBoard logger on ranks other than 0."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def resolve_resume(cfg: DictConfig, run_dir: Path, search_siblings: bool = False) -> tuple[Path, Path | None]:
    """(run directory to write into, checkpoint to resume from or None) for ``cfg.resume``.

    ``resume=true`` continues ``run_dir``'s last checkpoint. Only when ``run_dir`` is Hydra's default
    fresh timestamped folder (``runs/NAME/TIME``, ``search_siblings``) does it fall back to the newest
    sibling run of the same name; a run directory the user chose is never swapped for another.
    """
    if cfg.resume is None or str(cfg.resume).lower() in ("false", "none", ""):
        return run_dir, None
    if str(cfg.resume).lower() in ("true", "last"):
        ckpt = run_dir / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            candidates = []
            if search_siblings:
                candidates = sorted(
                    (p for p in run_dir.parent.glob("*/checkpoints/last.pt") if p.parent.parent != run_dir),
                    key=lambda p: p.stat().st_mtime,
                )
            if not candidates:
                where = f"{run_dir} or its sibling runs" if search_siblings else str(run_dir)
                raise FileNotFoundError(f"resume=true: no checkpoints/last.pt in {where}")
            ckpt = candidates[-1]
        return ckpt.parent.parent, ckpt
    ckpt = Path(cfg.resume)
    if not ckpt.is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint file")
    return ckpt.parent.parent, ckpt


RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "batch_in_epoch", "step", "sizes")


def check_resumable(cfg: DictConfig, run_dir: Path, ckpt_path: Path) -> None:
    """Before anything is written: ``ckpt_path`` must load as a full training checkpoint, and ``cfg``
    may differ from the checkpointed run's config only in harmless keys or ``resume_allow_changes``."""
    ckpt = load_checkpoint(ckpt_path, required=RESUME_KEYS)
    old = ckpt.get("config")
    source = str(ckpt_path)
    if old is None and (run_dir / "config.yaml").is_file():  # checkpoints written before configs were stored
        old, source = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True), str(
            run_dir / "config.yaml"
        )
    if old is not None:
        new = OmegaConf.to_container(cfg, resolve=True)
        check_resume_changes(old, new, list(cfg.get("resume_allow_changes", [])), source)


def run(
    cfg: DictConfig, run_dir: str | Path, dataset: SequenceDataset | None = None, search_siblings: bool = False
) -> dict[str, Any]:
    """Train (or resume) and test one configuration; the programmatic entry point used by tests.

    ``search_siblings``: see :func:`resolve_resume` (True only for Hydra's default run directory).
    """
    env = init_distributed(cfg.trainer.device)
    run_dir, resume_ckpt = broadcast_object(resolve_resume(cfg, Path(run_dir), search_siblings), env)
    if resume_ckpt is not None:
        check_resumable(cfg, run_dir, resume_ckpt)  # raises before config.yaml or anything else is touched
    run_dir.mkdir(parents=True, exist_ok=True)
    if env.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = Trainer(cfg, run_dir, dataset)
    if resume_ckpt is not None:
        trainer.resume_from(resume_ckpt)
    try:
        reason = trainer.fit()
        log.info("training stopped: %s after %d steps", reason, trainer.step)
        results = None
        if reason != "stop_after_steps" and cfg.test_at_end:
            results = trainer.test_best()
            if env.is_main:
                print(format_table(results["test"], title=f"test metrics per size (best step {trainer.best_step})"))
    finally:
        trainer.tb.close()
    return {"reason": reason, "trainer": trainer, "results": results, "run_dir": run_dir}


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.model.get("independent", False):  # baseline: one model per size (recsys/training/independent.py)
        from recsys.training.independent import run_independent

        validate(cfg)
        res = run_independent(cfg, run_dir)["validation"]
        size = effective_ladder(cfg.model)[-1]
        return res[size][cfg.trainer.monitor] if size in res else None
    # resume=true may look at sibling runs only when the directory is Hydra's fresh default one
    chosen = cfg.run_dir is not None or any(o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra)
    out = run(cfg, run_dir, search_siblings=not chosen)
    print(f"\nrun directory: {out['run_dir']}\nTensorBoard:   tensorboard --logdir {out['run_dir'] / 'tb'}")
    if out["results"] is None:
        return None
    size = cfg.trainer.monitor_size or effective_ladder(cfg.model)[-1]
    return out["results"]["validation"][size][cfg.trainer.monitor]  # for Hydra sweepers


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
