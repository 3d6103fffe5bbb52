"""Multi-process training: torchrun env detection, sharded item tables (torchrec DMP), dense DDP.

Layout of one distributed job (``torchrun --nproc_per_node=N -m recsys.train ...``):

* process group: NCCL on CUDA (one GPU per ``LOCAL_RANK``), gloo on CPU;
* ``model.tables`` (the frozen modality EmbeddingBagCollection and the optional trainable nested
  id table) are sharded by torchrec's ``DistributedModelParallel`` with its planner; the sharding
  type is the planner's choice (``trainer.sharding=auto``) or forced with
  ``ParameterConstraints(sharding_types=[...])``. Tables use the DENSE compute kernel, so the
  trainable id table is an ordinary parameter shard updated by the trainer's optimiser (same
  update rule as single process) and the frozen tables are never touched by a fused optimiser;
* the dense part (projector, backbone) is replicated and wrapped in DDP by DMP; the DDP comm
  hook SUMS gradients (no division by world size) because every rank's loss is already divided
  by the GLOBAL number of target positions: sum over ranks = the single-process gradient. The
  sharded tables' gradients are summed across ranks by the all-to-all's backward, consistently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("recsys.distributed")

SHARDING_TYPES = ("auto", "table_wise", "row_wise", "column_wise", "data_parallel")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (torchrun) and init the process group once (idempotent).

    Returns a single-process env when WORLD_SIZE is absent or 1.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not dist.is_initialized():
        return DistEnv()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def rank_range(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Contiguous [start, stop) of n items for ``rank`` (sizes differ by at most 1, no padding)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def local_shard(batch: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """This rank's contiguous rows of a global batch: the union over ranks is the batch."""
    if not env.enabled:
        return batch
    start, stop = rank_range(batch.shape[0], env.world_size, env.rank)
    return batch[start:stop]


# ---------------------------------------------------------------------- sharding
def _sharder(fused_params: dict[str, Any] | None = None):
    from torchrec.distributed.embedding_types import ShardingType
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    class AnyDeviceEBCSharder(EmbeddingBagCollectionSharder):
        """Offers the CUDA list of sharding types on every device (row_wise works on CPU too)."""

        def sharding_types(self, compute_device_type: str) -> list[str]:
            types = super().sharding_types("cuda")
            return types if ShardingType.ROW_WISE.value in types else [*types, ShardingType.ROW_WISE.value]


    return AnyDeviceEBCSharder(fused_params=fused_params)


def table_names(model: nn.Module) -> list[str]:
    tables = model.tables
    names = [f"{m}_table" for m in tables.modalities] if tables.features is not None else []
    if tables.ids is not None:
        names.append("item_id_table")
    return names


def sharding_constraints(model: nn.Module, sharding: str) -> dict[str, Any]:
    """ParameterConstraints per table: the sharding type unless 'auto' (planner's choice)."""
    from torchrec.distributed.planner.types import ParameterConstraints

    if sharding not in SHARDING_TYPES:
        raise ValueError(f"trainer.sharding='{sharding}' must be one of {SHARDING_TYPES}")
    kinds = None if sharding == "auto" else [sharding]
    return {
        name: ParameterConstraints(sharding_types=kinds) for name in table_names(model)
    }


def sum_allreduce_hook(process_group, bucket):
    """DDP comm hook: all-reduce SUM of each gradient bucket (the loss is pre-normalised globally)."""
    fut = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class LossModule(nn.Module):
    """forward(*args) = loss_fn(model, *args): lets DMP's DDP see a forward for the loss."""

    def __init__(self, model: nn.Module, loss_fn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, *args, **kwargs):
        return self.loss_fn(self.model, *args, **kwargs)


def fused_params_for(optimizer_cfg: dict[str, Any] | None, device_type: str = "cpu") -> dict[str, Any]:
    """torchrec fused-optimiser params of the sharded tables, matching the trainer's optimiser.

    On CUDA, Adam(W) -> fbgemm ADAM with decoupled weight decay (the trainable id table); fbgemm's
    CPU kernels have no Adam, so on CPU -> EXACT_ROWWISE_ADAGRAD at the configured lr; other
    optimisers -> exact SGD. Frozen tables never receive a gradient (their rows are detached).
    """
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode

    cfg = dict(optimizer_cfg or {})
    lr = float(cfg.get("lr", 1e-3))
    if "Adam" in str(cfg.get("_target_", "")) and device_type == "cpu":
        return {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": lr}
    if "Adam" in str(cfg.get("_target_", "")):
        betas = cfg.get("betas", (0.9, 0.999))
        return {
            "optimizer": EmbOptimType.ADAM, "learning_rate": lr, "eps": float(cfg.get("eps", 1e-8)),
            "beta1": float(betas[0]), "beta2": float(betas[1]),
            "weight_decay": float(cfg.get("weight_decay", 0.01 if "AdamW" in str(cfg.get("_target_")) else 0.0)),
            "weight_decay_mode": WeightDecayMode.DECOUPLE,
        }
    return {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": lr}


def shard_model(
    model: nn.Module, loss_fn, env: DistEnv, sharding: str = "auto", fused_params: dict[str, Any] | None = None
):
    """Shard ``model.tables`` in place with DMP (planner + constraints) and DDP-wrap the rest.

    Returns (dmp, plan). ``model`` keeps working as before (its tables are now sharded modules:
    every lookup is a collective, so every rank must call it). Weights are preserved: the full
    unsharded state is copied into the shards after sharding.
    """
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.types import ShardingEnv

    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sharder = _sharder(fused_params)
    pg = dist.group.WORLD
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=env.world_size, compute_device=env.device.type, local_world_size=_local_world()),
        constraints=sharding_constraints(model, sharding),
    )
    wrapper = LossModule(model, loss_fn)
    plan = planner.collective_plan(wrapper, [sharder], pg)
    dmp = DistributedModelParallel(
        module=wrapper, env=ShardingEnv.from_process_group(pg), device=env.device, plan=plan, sharders=[sharder]
    )
    ddp = dmp._dmp_wrapped_module
    if isinstance(ddp, nn.parallel.DistributedDataParallel):
        ddp.register_comm_hook(pg, sum_allreduce_hook)
    load_full_state_dict(model, full)
    return dmp, plan


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def plan_summary(plan, model: nn.Module) -> dict[str, str]:
    """{table: sharding type} of a torchrec plan."""
    out = {}
    for module_plan in plan.plan.values():
        for table, spec in module_plan.items():
            out[table] = spec.sharding_type
    return out


def _is_sharded(value: Any) -> bool:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return isinstance(value, ShardedTensor)


def sharded_parameters(model: nn.Module, plan) -> list[torch.Tensor]:
    """Trainable table parameters held as disjoint shards (not replicated): their grad norms add up."""
    kinds = plan_summary(plan, model)
    if model.tables.ids is None or kinds.get("item_id_table") == "data_parallel":
        return []
    return [p for p in model.tables.ids.parameters() if p.requires_grad]


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a plain (single-process) state dict into a model whose tables may be sharded."""
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if missing or unexpected:
        raise KeyError(f"state dict mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    with torch.no_grad():
        for key, target in own.items():
            src = state[key]
            if _is_sharded(target):
                for shard in target.local_shards():
                    idx = tuple(
                        slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
                    )
                    shard.tensor.copy_(src[idx])
            elif hasattr(target, "to_local"):  # DTensor
                from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

                shape, offset = compute_local_shape_and_global_offset(src.shape, target.device_mesh, target.placements)
                idx = tuple(slice(o, o + s) for o, s in zip(offset, shape))
                target.to_local().copy_(src[idx])
            else:
                target.copy_(src)


@torch.no_grad()
def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain, unsharded state dict (same keys as a single-process model); a collective.

    Table rows are gathered by looking every id up through the sharded tables (the KJT all-to-all
    moves the rows), which is exact (SUM pooling of one row) and independent of the sharding type.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("tables.")}
    tables = model.tables
    ids = model.item_ids
    features, id_emb = tables(ids)
    if features is not None:
        start = 0
        for modality in tables.modalities:
            dim = model.feature_dims[modality]
            state[f"tables.features.embedding_bags.{modality}_table.weight"] = features[:, start : start + dim].cpu()
            start += dim
    if id_emb is not None:
        state["tables.ids.embedding_bags.item_id_table.weight"] = id_emb.cpu()
    return {k: v.cpu() for k, v in state.items()}


def clip_grad_norm_global(params: list[torch.Tensor], sharded: list[torch.Tensor], max_norm: float, env: DistEnv):
    """clip_grad_norm_ with the GLOBAL norm: replicated grads counted once, shard norms summed."""
    sharded_ids = {id(p) for p in sharded}
    dense_sq = torch.zeros((), dtype=torch.float64)
    shard_sq = torch.zeros((), dtype=torch.float64)
    grads = []
    for p in params:
        if p.grad is None:
            continue
        grads.append(p.grad)
        sq = p.grad.detach().double().pow(2).sum().cpu()
        if id(p) in sharded_ids:
            shard_sq += sq
        else:
            dense_sq += sq
    if env.enabled:
        t = shard_sq.to(env.device)
        dist.all_reduce(t)
        shard_sq = t.cpu()
    total = float((dense_sq + shard_sq).sqrt())
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


def all_reduce_accumulator(acc, env: DistEnv):
    """Sum a MetricAccumulator's per-user sums and its count over ranks (in place; returns it)."""
    if not env.enabled:
        return acc
    from recsys.metrics import metrics_from_ranks

    names = sorted(metrics_from_ranks(torch.zeros(1), acc.ks))
    stacked = torch.stack(
        [acc.sums.get(n, torch.zeros(len(acc.sizes), dtype=torch.float64)).double() for n in names]
        + [torch.full((len(acc.sizes),), float(acc.count), dtype=torch.float64)]
    ).to(env.device)
    dist.all_reduce(stacked)
    stacked = stacked.cpu()
    acc.sums = {n: stacked[i] for i, n in enumerate(names)}
    acc.count = int(round(float(stacked[-1, 0])))
    return acc


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if not env.enabled:
        return t
    out = t.detach().to(env.device).clone()
    dist.all_reduce(out)
    return out.cpu()
