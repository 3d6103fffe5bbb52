"""The training loop: the Matryoshka objective, validation at every size, early stopping, resume.

:class:`Trainer` orchestrates; the parts live beside it: the loss (``cfg.loss._target_``,
``recsys/losses/``), :class:`~recsys.training.early_stopping.EarlyStopping`, the checkpoint format
(``recsys/training/checkpoint.py``) and sharding (``recsys/training/distributed.py``). The run
around it (resume, test at the end) is ``recsys/training/runner.py``; the command line
``recsys/training/cli.py``.

One step path, single-process and distributed alike: the loss is SUMMED over this process's
target positions and divided by the target count of the whole batch (in one process: its own
count), gradients are clipped over the optimiser's parameters by their global norm, then AdamW
and the warmup + cosine schedule step, unless the loss or the norm is not finite.

Exact resume: a checkpoint holds the model, optimiser, scheduler and RNG states plus the
data-order position (epoch, next batch). Epoch ``e``'s order is drawn from ``seed`` and ``e``
alone, so a resumed run replays the same batches with the same dropout masks as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from data_prep.io import write_json_atomic
from recsys.builders import build_dataset, build_model
from recsys.config import effective_ladder, validate, validate_for_dataset
from recsys.data import SequenceDataset
from recsys.evaluation.evaluate import evaluate_split
from recsys.evaluation.metrics import protocol_of
from recsys.evaluation.reporting import SizeMetrics, jsonable_metrics, save_metrics_plot
from recsys.model import MatryoshkaRecModel
from recsys.nn.nested import sliced_state_dict
from recsys.training.checkpoint import (
    load_checkpoint,
    load_model_state,
    model_state,
    restore_training_state,
    save_training_checkpoint,
    training_state,
)
from recsys.training.distributed import (
    all_reduce_accumulator,
    all_reduce_sum,
    barrier,
    clip_grad_norm_global,
    init_distributed,
    local_shard,
    rank_range,
    shard_model,
)
from recsys.training.early_stopping import MEAN, EarlyStopping
from recsys.training.param_groups import FEATURE_TABLES, decay_groups, parameter_kinds
from recsys.training.precision import autocast_dtype
from recsys.training.tensorboard import NullLogger, TensorBoardLogger
from recsys.training.weight_average import WeightAverage

log = logging.getLogger("recsys.training.trainer")


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


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
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
        tcfg = cfg.trainer
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed, tcfg.deterministic)
        self.env = init_distributed(tcfg.device)
        self.device = self.env.device if self.env.enabled else resolve_device(tcfg.device)
        self.dataset = dataset if dataset is not None else build_dataset(cfg)
        validate_for_dataset(cfg, self.dataset.num_items)
        self.model: MatryoshkaRecModel = build_model(cfg, self.dataset).to(self.device)
        self.parameter_kinds = parameter_kinds(self.model)  # before sharding renames the tables' modules
        if tcfg.compile and self.device.type == "cuda":
            # in place (parameter names unchanged) and before sharding: every run compiles the same modules
            self.model.projector.compile()
            self.model.backbone.compile()
        # the objective (recsys/losses/): called as loss(model, seq, targets, step_seed) -> sums
        self.loss = instantiate(cfg.loss)
        self.loss.prepare(self.dataset._train_targets, self.dataset.num_items)
        self.dmp, self.sharded, self.sharding_plan = None, None, {}
        if self.env.enabled:
            # item tables sharded by torchrec DMP (DENSE kernels), dense part DDP (grads summed)
            self.sharded = shard_model(self.model, self.loss, self.env, tcfg.sharding)
            self.dmp, self.sharding_plan = self.sharded.dmp, self.sharded.table_sharding
            log.info("rank %d/%d: table sharding %s", self.env.rank, self.env.world_size, self.sharding_plan)
            # dense replicas + this rank's table shards: one optimiser
            named = list(zip(self.sharded.names, self.sharded.parameters))
        else:
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = decay_groups(
            named,
            self.parameter_kinds,
            list(tcfg.get("no_decay", [])),
            float(tcfg.optimizer.get("weight_decay", 0.0)),
            {FEATURE_TABLES: float(tcfg.get("feature_lr_scale", 1.0))},
            float(tcfg.optimizer.lr),
        )
        self.optimizer = instantiate(tcfg.optimizer)(
            [{k: v for k, v in g.items() if k != "kinds"} for g in groups]
        )
        # trainer.ema_decay > 0: validation, checkpoints' "model", test and export see the EMA weights
        ema_decay = float(tcfg.get("ema_decay", 0.0))
        self.ema = (
            WeightAverage([p for g in self.optimizer.param_groups for p in g["params"]], ema_decay)
            if ema_decay > 0
            else None
        )
        self.sizes = effective_ladder(cfg.model)
        self.ks = tuple(cfg.eval.ks)
        self.batches_per_epoch = self.dataset.num_train_batches(tcfg.batch_size)
        self.total_steps = tcfg.max_epochs * self.batches_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(tcfg.warmup_steps, self.total_steps, tcfg.min_lr_ratio)
        )
        self.autocast_dtype = autocast_dtype(tcfg.precision, self.device)  # None: fp32
        monitored_size = MEAN if tcfg.get("monitor_mean", False) else tcfg.monitor_size or self.sizes[-1]
        self.early_stopping = EarlyStopping(tcfg.monitor, monitored_size, tcfg.patience)
        # training position (all of it goes into checkpoints)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.val_history: list[dict[str, Any]] = []
        self.nonfinite_steps = 0  # steps skipped for a NaN/inf loss or gradient norm
        # wall time of fit (training + validation), over every resumed part: checkpoints carry it
        self.seconds_before, self._fit_started = 0.0, None
        self.tb = (
            TensorBoardLogger(self.run_dir / "tb", self.sizes, self.ks) if self.env.is_main else NullLogger()
        )
        if self.env.is_main:
            log.info("%s", self.summary())

    def _parameters_per_size(self) -> dict[int, int]:
        """{d: parameters of the width-d model}: from the sliced state where every layer declares its
        nesting, else by building the slice (SASRec's position table is cut by the slice itself)."""
        if self.env.enabled:  # tables sharded across ranks: counted by recsys-export, not here
            return {}
        out = {}
        for d in self.sizes:
            try:
                out[d] = sum(t.numel() for t in sliced_state_dict(self.model, d).values())
            except TypeError:
                out[d] = sum(p.numel() for p in self.model.slice(d).parameters())
        return out

    def summary(self) -> str:
        """One line: data counts, ladder, parameters per size, device, threads, precision, steps."""
        counts = {
            "users": len(self.dataset.sequences),
            "items": self.dataset.num_items,
            "interactions": int(sum(len(s) for s in self.dataset.sequences)),
            "train windows": self.dataset.num_train_batches(1),
        }
        params = ", ".join(
            f"d{d} {n / 1e6:.2f}M" if n >= 1e5 else f"d{d} {n:,}"
            for d, n in self._parameters_per_size().items()
        )
        threads = torch.get_num_threads() if self.device.type == "cpu" else "-"
        precision = "bf16 autocast" if self.autocast_dtype is not None else "fp32"
        ranks = f", {self.env.world_size} ranks" if self.env.enabled else ""
        return (
            f"{self.cfg.name}: "
            + ", ".join(f"{n:,} {k}" for k, n in counts.items())
            + f"; {type(self.model.backbone).__name__}, ladder {list(self.sizes)}; parameters {params}; "
            f"device {self.device}{ranks}, {threads} threads, {precision}; "
            f"{self.total_steps:,} steps ({self.cfg.trainer.max_epochs} epochs x {self.batches_per_epoch})"
        )

    def train_seconds(self) -> float:
        """Wall seconds spent in :meth:`fit` so far (training and validation), resumed parts included."""
        now = time.perf_counter()
        return self.seconds_before + (now - self._fit_started if self._fit_started is not None else 0.0)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, name: str) -> Path:
        progress = {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "val_history": self.val_history,
            "nonfinite_steps": self.nonfinite_steps,
            "sizes": list(self.sizes),
            "train_seconds": self.train_seconds(),
        }
        state = training_state(
            self.model, self.optimizer, self.scheduler, self.early_stopping, progress, self.cfg, self.env
        )
        if self.ema is not None:  # "model": the averaged weights (what is evaluated); "train_model": raw
            state["train_model"] = {k: v.detach().clone() for k, v in state["model"].items()}
            with self.ema.applied():
                averaged = model_state(self.model, self.env)
                state["model"] = {k: v.detach().clone() for k, v in averaged.items()}
            state.update(self.ema.state_dict())
        path = self.ckpt_dir / f"{name}.pt"
        save_training_checkpoint(state, path, self.optimizer, self.env)
        return path

    def resume_from(self, path: str | Path) -> None:
        progress = restore_training_state(
            path,
            self.model,
            self.optimizer,
            self.scheduler,
            self.early_stopping,
            self.sizes,
            self.env,
            self.device,
            self.sharding_plan,
            average=self.ema,
        )
        for key, value in progress.items():
            setattr(self, key, value)
        log.info(
            "Resumed from %s at epoch %d, batch %d, step %d", path, self.epoch, self.batch_in_epoch, self.step
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split: str) -> SizeMetrics:
        data = self.dataset.split(split)
        # distributed: contiguous per-rank user ranges (each user once), metric sums all-reduced
        user_range = rank_range(len(data), self.env.world_size, self.env.rank) if self.env.enabled else None
        acc = evaluate_split(
            self.model,
            data,
            self.ks,
            self.cfg.eval.batch_size,
            self.device,
            user_range=user_range,
            split_name=split,
        )
        return all_reduce_accumulator(acc, self.env).compute()

    def validate(self) -> bool:
        """Validate (the averaged weights with ``trainer.ema_decay > 0``), log, keep the best checkpoint;
        return True when early stopping triggers."""
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            results = self.evaluate("validation")
        self.tb.log_eval("validation", self.step, results)
        stopper = self.early_stopping
        value = stopper.monitored(results)
        self.val_history.append(
            {
                "step": self.step,
                "epoch": self.epoch,
                "value": value,
                "seconds": round(self.train_seconds(), 3),
            }
        )
        improved = stopper.update(value, self.step)
        log.info(
            "step %d validation %s (%s) @%s = %.4f (best %.4f at step %d)",
            self.step,
            stopper.monitor,
            "unseen items" if protocol_of(stopper.monitor) == "unseen" else "all items",
            stopper.label,
            value,
            stopper.best_value,
            stopper.best_step,
        )
        if improved:
            self.save_checkpoint("best")
        self.save_checkpoint("last")
        return stopper.should_stop

    # ------------------------------------------------------------------ training
    def _step_seed(self) -> int:
        """Seed of what the loss draws this step: resumable, distinct per rank."""
        return (self.cfg.seed * 1_000_003 + self.step) * 1009 + self.env.rank

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, list[float]]:
        """One optimiser step on the global batch inputs (B, L), targets (B, L); returns (loss, per-size losses).

        This process computes the loss sum over its rows (all of them in one process) and divides
        it by the GLOBAL target count. Summed over ranks (DDP sum hook for the dense part, the
        all-to-all backward for sharded tables) the gradients equal the single-process gradients
        of the whole batch; clipping uses their global norm.
        """
        global_count = int((targets != 0).sum())
        inputs = local_shard(inputs, self.env).to(self.device)  # (B_rank, L): this rank's rows
        targets = local_shard(targets, self.env).to(self.device)
        autocast = self.autocast_dtype is not None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=autocast):
            if self.dmp is not None:
                total_sum, per_size_sum, _ = self.dmp(inputs, targets, self._step_seed())
            else:
                total_sum, per_size_sum, _ = self.loss(self.model, inputs, targets, self._step_seed())
        self.optimizer.zero_grad(set_to_none=True)
        (total_sum / global_count).backward()
        # (1 + M,) global loss and per-size losses: every rank takes the same skip decision below
        stats = all_reduce_sum(torch.cat([total_sum.detach().reshape(1).cpu(), per_size_sum.cpu()]), self.env)
        stats = stats / global_count
        grad_norm = None
        if self.cfg.trainer.grad_clip > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            # the table shards' squared norms add up over ranks; in one process: torch's clip_grad_norm_
            sharded = self.sharded.sharded if self.sharded is not None else []
            grad_norm = clip_grad_norm_global(params, sharded, self.cfg.trainer.grad_clip, self.env)
        if self._step_is_finite(stats[0], grad_norm):
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update()
        return float(stats[0]), [float(x) for x in stats[1:]]

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
        log.warning(
            "skipped %s: non-finite training %s (%d of %d allowed)",
            where,
            what,
            self.nonfinite_steps,
            allowed,
        )
        return False

    def _validate_last_step(self) -> None:
        """Validate the current step unless it already was: the last steps are never left
        unvalidated, and a best checkpoint exists."""
        if not self.val_history or self.val_history[-1]["step"] != self.step:
            self.validate()

    def fit(self) -> str:
        """Train until max_epochs, early stopping, ``max_minutes`` or ``stop_after_steps``.

        Returns the reason it stopped: max_epochs | early_stopping | max_minutes | stop_after_steps."""
        tcfg = self.cfg.trainer
        self.model.train()
        # A terminal gets a progress bar; a log file, CI or nohup gets a plain line every ~5% of the run
        # instead of thousands of carriage-return redraws.
        interactive = sys.stderr.isatty()
        show = bool(tcfg.progress and self.env.is_main)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (show and interactive),
            desc="train",
            unit="step",
        )
        plain_every = max(1, self.total_steps // 20) if show and not interactive else 0
        start, start_step = time.perf_counter(), self.step
        self._fit_started = start
        t0, seen = time.perf_counter(), 0
        try:
            while self.epoch < tcfg.max_epochs:
                batches = self.dataset.train_batches(
                    tcfg.batch_size, self.epoch, self.cfg.seed, skip=self.batch_in_epoch
                )
                for inputs, targets in batches:
                    loss, per_size = self.train_step(inputs, targets)
                    self.step += 1
                    self.batch_in_epoch += 1
                    seen += inputs.shape[0]
                    bar.update(1)
                    if plain_every and (self.step % plain_every == 0 or self.step == self.total_steps):
                        rate = (self.step - start_step) / max(1e-9, time.perf_counter() - start)
                        left = (self.total_steps - self.step) / max(rate, 1e-9)
                        log.info(
                            "step %d/%d (epoch %d) loss %.4f, %.2f steps/s, ~%.0f s left",
                            self.step,
                            self.total_steps,
                            self.epoch,
                            loss,
                            rate,
                            left,
                        )
                    if self.step % tcfg.log_every_n_steps == 0:
                        throughput = seen / max(1e-9, time.perf_counter() - t0)
                        self.tb.log_train(
                            self.step, loss, per_size, self.scheduler.get_last_lr()[0], throughput
                        )
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
                    if 0 < tcfg.max_minutes and self.train_seconds() >= 60.0 * tcfg.max_minutes:
                        log.info(
                            "trainer.max_minutes=%g reached at step %d (epoch %d)",
                            tcfg.max_minutes,
                            self.step,
                            self.epoch,
                        )
                        self._validate_last_step()
                        self.save_checkpoint("last")  # a later run can resume it with a larger budget
                        return "max_minutes"
                    if self.batch_in_epoch == 0:
                        break  # epoch finished: draw the next epoch's order
            self._validate_last_step()
            return "max_epochs"
        finally:
            bar.close()
            self.seconds_before, self._fit_started = self.train_seconds(), None  # the clock stops with fit

    # ------------------------------------------------------------------ end of run
    def keep_selected(self) -> None:
        """Put the checkpoint ``trainer.select`` picks at ``best.pt``, the one test, ``recsys-export``
        and ``recsys-eval`` read by default. ``last``: a copy of ``last.pt`` (the weights training
        stopped with); the best validation checkpoint moves to ``best_validation.pt``. ``best``: the best
        validation checkpoint (already there, or moved back from ``best_validation.pt`` when the run was
        tested with ``last`` before, see ``retest``). Call once training has ended."""
        select = self.cfg.trainer.get("select", "best")
        best, aside = self.ckpt_dir / "best.pt", self.ckpt_dir / "best_validation.pt"
        if self.env.is_main and (select == "last" or aside.is_file()):
            best_step = self.early_stopping.best_step

            def step_of(path: Path) -> int | None:
                return int(load_checkpoint(path).get("step", -1)) if path.is_file() else None

            if select == "last":
                last = self.ckpt_dir / "last.pt"
                if not last.is_file():
                    raise FileNotFoundError(f"trainer.select=last: {last} is missing")
                if step_of(best) == best_step:
                    best.replace(aside)  # the best validation checkpoint, kept for select=best
                staged = best.with_name("best.pt.tmp")
                shutil.copyfile(last, staged)
                staged.replace(best)  # atomic: best.pt is never half-written
            elif step_of(best) != best_step and step_of(aside) == best_step:
                aside.replace(best)
        barrier(self.env)

    def test_best(self) -> dict[str, SizeMetrics]:
        """Evaluate the selected checkpoint (``best.pt``: the best validation one, or with
        ``trainer.select=last`` the last, see :meth:`keep_selected`) on validation and (once) on test;
        write metrics.json + plot."""
        best = self.ckpt_dir / "best.pt"
        if not best.is_file():
            raise FileNotFoundError(
                f"{best} is missing: there is no best checkpoint to test (it is written at the first validation). "
                f"Restore it, or evaluate another checkpoint with recsys-eval run_dir={self.run_dir} checkpoint=last"
            )
        selected = load_checkpoint(best, map_location=self.device)
        load_model_state(self.model, selected["model"], self.env)
        selection = self.cfg.trainer.get("select", "best")
        stopper = self.early_stopping
        selected_step = int(selected.get("step", stopper.best_step))  # best: stopper.best_step itself
        results = {"validation": self.evaluate("validation"), "test": self.evaluate("test")}
        self.tb.log_eval("test", self.step, results["test"])
        if not self.env.is_main:
            return results
        write_json_atomic(
            self.run_dir / "metrics.json",
            {
                "sizes": list(self.sizes),
                "ks": list(self.ks),
                "protocols": {"all": "every catalog item", "unseen": "items not in the user's history"},
                # users scored per split, and left out because their target never occurs in training
                "users": {s: len(self.dataset.split(s)) for s in results},
                "cold_targets": self.dataset.cold_targets,
                "cold_targets_dropped": {s: self.dataset.split(s).dropped for s in results},
                "monitor": f"{stopper.monitor}@{stopper.label}",
                # the tested checkpoint: "best" = the best validation one, "last" = where training stopped
                "selection": selection,
                "best_step": selected_step,
                "best_validation_step": stopper.best_step,
                "best_validation_value": stopper.best_value,
                # wall seconds of training + validation: until the tested checkpoint's validation, and in all
                "best_seconds": next(
                    (v.get("seconds") for v in self.val_history if v["step"] == selected_step),
                    round(self.train_seconds(), 3) if selection == "last" else None,
                ),
                "train_seconds": round(self.train_seconds(), 3),
                "validation": jsonable_metrics(results["validation"]),
                "test": jsonable_metrics(results["test"]),
            },
        )
        title = f"test metrics vs size ({self.cfg.name})"
        save_metrics_plot(results["test"], self.run_dir / "metrics_vs_size.png", title)
        final = {
            f"test_{m}_d{d}": results["test"][d][m]
            for d in (self.sizes[0], self.sizes[-1])
            for m in ("ndcg@10", "recall@10")
        }
        hparams = {
            "name": self.cfg.name,
            "backbone": type(self.model.backbone).__name__,
            "width": self.sizes[-1],
            "ladder": str(list(self.sizes)),
            "lr": self.cfg.trainer.optimizer.lr,
            "batch_size": self.cfg.trainer.batch_size,
            "max_len": self.cfg.data.max_len,
            "num_blocks": self.cfg.backbone.num_blocks,
            "dropout": self.cfg.backbone.dropout,
            "seed": self.cfg.seed,
        }
        self.tb.log_hparams(hparams, final)
        return results
