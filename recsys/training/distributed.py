"""Multi-process training: torchrun env detection, sharded item tables (torchrec DMP), dense DDP.

Layout of one distributed job (``torchrun --nproc_per_node=N -m recsys.training.cli ...``):

* process group: NCCL on CUDA (one GPU per ``LOCAL_RANK``), gloo on CPU;
* ``model.tables`` (the frozen modality EmbeddingBagCollection and the optional trainable nested
  id table) are sharded by torchrec's ``DistributedModelParallel`` with its planner; the sharding
  type is the planner's choice (``trainer.sharding=auto``) or forced with
  ``ParameterConstraints(sharding_types=[...])``;
* the dense part (projector, backbone) is replicated and wrapped in DDP by DMP; the DDP comm
  hook SUMS gradients (no division by world size) because every rank's loss is already divided
  by the GLOBAL number of target positions: sum over ranks = the single-process gradient. The
  sharded tables' gradients are summed the same way by the embedding all-to-all's backward
  (torchrec's gradient division, on by default, is switched off) and data_parallel tables' own
  DDP gets the same summing hook.

Trainable sharded table = an ordinary parameter shard, updated like single-process training.
Every table uses torchrec's DENSE compute kernel (:func:`use_dense_kernels`): a table shard is a
parameter with a ``.grad``, so the trainer's optimiser (AdamW as configured), its warmup+cosine
``LambdaLR``, gradient clipping over the GLOBAL norm of all parameters (replicated ones once,
table shards summed over ranks: :func:`clip_grad_norm_global`) and the checkpointed optimiser
state (each rank's ``{name}.rank{r}.pt``, with its shards' AdamW moments) all apply to the id
table exactly as in one process; 2-process runs match single-process ones to ~1e-7 (tested
for row_wise and table_wise, including resume). The alternative, torchrec's FUSED kernels
(the optimiser runs inside the backward, per table), was rejected: the update happens before the
global gradient norm is known, so single-process clipping cannot be reproduced; fbgemm's CPU
kernels have no Adam(W) (only SGD/Adagrad variants), and the fused state lives outside the
trainer's optimiser and scheduler. The price of DENSE: a dense gradient and two AdamW moments
per table shard (3x the shard's memory) and no fbgemm fused/UVM/caching kernels; fine for
ML-1M-sized catalogs, for catalogs that do not fit three times in memory a fused Adam kernel
(CUDA) with the learning rate set every step and no clipping of the table would be the trade-off.
The planner only proposes fused kernels for model-parallel tables and refuses a DENSE constraint
for them, so the plan's kernels are rewritten after planning (the sharded modules implement
DENSE for every sharding type). Frozen tables (rows detached before the projector) get no
gradient and are not given to the optimiser.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("recsys.training.distributed")

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
def _sharder() -> Any:
    """EBC sharder offering row_wise on every device (torchrec lists it for CUDA only)."""
    from torchrec.distributed.embedding_types import ShardingType
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    class AnyDeviceEBCSharder(EmbeddingBagCollectionSharder):
        """Offers the CUDA list of sharding types on every device (row_wise works on CPU too)."""

        def sharding_types(self, compute_device_type: str) -> list[str]:
            types = super().sharding_types("cuda")
            return types if ShardingType.ROW_WISE.value in types else [*types, ShardingType.ROW_WISE.value]

    return AnyDeviceEBCSharder()


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
    return {name: ParameterConstraints(sharding_types=kinds) for name in table_names(model)}


def use_dense_kernels(plan: Any) -> None:
    """Switch every table of a planned ``ShardingPlan`` to the DENSE compute kernel (in place).

    torchrec's planner only proposes fused kernels (optimiser inside the backward) for model-parallel
    tables and rejects a DENSE constraint for them, but the sharded modules implement DENSE for every
    sharding type: the shard is then an ordinary parameter with a ``.grad``. data_parallel tables
    already use it.
    """
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel

    for module_plan in plan.plan.values():
        for spec in module_plan.values():
            spec.compute_kernel = EmbeddingComputeKernel.DENSE.value


def sum_allreduce_hook(process_group, bucket):  # unannotated: DDP rejects a bucket annotation other than
    # the GradBucket class itself, and ``from __future__ import annotations`` makes it a string
    """DDP comm hook: all-reduce SUM of each gradient bucket (the loss is pre-normalised globally)."""
    fut = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class LossModule(nn.Module):
    """forward(*args) = loss_fn(model, *args): lets DMP's DDP see a forward for the loss."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.loss_fn(self.model, *args, **kwargs)


@dataclass
class ShardedModel:
    """What :func:`shard_model` returns.

    ``parameters``: this rank's trainable parameters in the single-process ``parameters()`` order:
    the replicated dense ones and this rank's non-empty shards of trainable tables (frozen tables
    are left out); hand them to the trainer's optimiser. ``sharded``: the subset held as disjoint
    shards (not all-reduced: their squared gradient norms add up over ranks). ``names``: the
    single-process name (``model.named_parameters()``) of each of ``parameters``.
    """

    dmp: nn.Module
    plan: Any
    parameters: list[nn.Parameter]
    sharded: list[nn.Parameter]
    names: list[str]

    @property
    def table_sharding(self) -> dict[str, str]:
        return plan_summary(self.plan)


def shard_model(
    model: nn.Module, loss_fn: Callable[..., Any], env: DistEnv, sharding: str = "auto"
) -> ShardedModel:
    """Shard ``model.tables`` in place with DMP (planner + constraints, DENSE kernels) and DDP-wrap the rest.

    ``model`` keeps working as before (its tables are now sharded modules: every lookup is a
    collective, so every rank must call it). Weights are preserved: the full unsharded state is
    copied into the shards after sharding. Sets torchrec's gradient division off (process-wide):
    the embedding all-to-all's backward then SUMS the ranks' gradients, like the DDP hook.
    """
    from torchrec.distributed import comm_ops
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.types import ShardingEnv

    if getattr(model.tables, "categories", None) is not None:
        raise NotImplementedError(
            "model.modalities includes 'categorical': its per-field tables are not sharded yet (under torchrun "
            "the full-state gather reads item rows, not vocabulary rows). Train it in one process, or leave "
            "'categorical' out of model.modalities"
        )
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sharder = _sharder()
    pg = dist.group.WORLD
    planner = EmbeddingShardingPlanner(
        topology=Topology(
            world_size=env.world_size, compute_device=env.device.type, local_world_size=_local_world()
        ),
        constraints=sharding_constraints(model, sharding),
    )
    wrapper = LossModule(model, loss_fn)
    trainable = [name for name, p in wrapper.named_parameters() if p.requires_grad]
    plan = planner.collective_plan(wrapper, [sharder], pg)
    use_dense_kernels(plan)
    comm_ops.set_gradient_division(False)  # sum, not mean, over ranks (the loss is globally normalised)
    dmp = DistributedModelParallel(
        module=wrapper,
        env=ShardingEnv.from_process_group(pg),
        device=env.device,
        plan=plan,
        sharders=[sharder],
    )
    for ddp in _ddp_modules(dmp):  # the dense part and data_parallel tables' lookups: SUM, not mean
        ddp.register_comm_hook(pg, sum_allreduce_hook)
    load_full_state_dict(model, full)
    named = dict(dmp.named_parameters())
    if set(trainable) - set(named):
        raise RuntimeError(f"parameters lost by sharding: {sorted(set(trainable) - set(named))}")
    kinds = plan_summary(plan)
    kept = [n for n in trainable if named[n].numel() > 0]  # frozen tables stay out
    params = [named[n] for n in kept]
    sharded = [  # table shards (model.tables.<ebc>.embedding_bags.<table>.weight), not data_parallel copies
        named[n]
        for n in trainable
        if n.startswith("model.tables.")
        and named[n].numel() > 0
        and kinds.get(n.split(".")[-2], "data_parallel") != "data_parallel"
    ]
    return ShardedModel(dmp, plan, params, sharded, [n.removeprefix("model.") for n in kept])


def _ddp_modules(dmp: nn.Module) -> list[nn.parallel.DistributedDataParallel]:
    """Every DDP inside a DMP: its dense-part wrapper and each data_parallel table lookup's own DDP
    (kept in the sharded modules' plain ``_lookups`` lists, so ``modules()`` does not reach them)."""
    found: list[nn.parallel.DistributedDataParallel] = []
    for module in dmp.modules():
        for m in (module, *getattr(module, "_lookups", ())):
            if isinstance(m, nn.parallel.DistributedDataParallel) and all(m is not f for f in found):
                found.append(m)
    return found


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def plan_summary(plan: Any) -> dict[str, str]:
    """{table: sharding type} of a torchrec plan."""
    out = {}
    for module_plan in plan.plan.values():
        for table, spec in module_plan.items():
            out[table] = spec.sharding_type
    return out


def _is_sharded(value: Any) -> bool:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return isinstance(value, ShardedTensor)


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
                        slice(o, o + s)
                        for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
                    )
                    shard.tensor.copy_(src[idx])
            elif hasattr(target, "to_local"):  # DTensor
                from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

                shape, offset = compute_local_shape_and_global_offset(
                    src.shape, target.device_mesh, target.placements
                )
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
            state[f"tables.features.embedding_bags.{modality}_table.weight"] = features[
                :, start : start + dim
            ].cpu()
            start += dim
    if id_emb is not None:
        state["tables.ids.embedding_bags.item_id_table.weight"] = id_emb.cpu()
    return {k: v.cpu() for k, v in state.items()}


def clip_grad_norm_global(
    params: list[torch.Tensor], sharded: list[torch.Tensor], max_norm: float, env: DistEnv
) -> torch.Tensor:
    """``clip_grad_norm_`` over the GLOBAL gradient of the whole model (a collective).

    ``params``: this rank's trainable parameters; ``sharded``: those held as disjoint shards. The
    replicated gradients (identical on every rank after the summing all-reduce) count once, the
    shards' squared norms are summed over ranks: the norm single-process ``clip_grad_norm_``
    computes over ``model.parameters()``. Scales every gradient by ``max_norm / (norm + 1e-6)``
    when that is < 1, like torch. Returns the norm (a float32 scalar tensor, NaN/inf propagate).
    In one process this is ``torch.nn.utils.clip_grad_norm_(params, max_norm)`` itself.
    """
    if not env.enabled:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    sharded_ids = {id(p) for p in sharded}
    sq = torch.zeros(2, dtype=torch.float64)  # [replicated, sharded] sums of squares
    grads = []
    for p in params:
        if p.grad is None:
            continue
        grads.append(p.grad)
        sq[int(id(p) in sharded_ids)] += p.grad.detach().double().pow(2).sum().cpu()
    shard_sq = sq[1:].to(env.device, copy=True)
    dist.all_reduce(shard_sq)
    sq[1] = shard_sq.cpu()[0]
    total = sq.sum().sqrt().float()
    coef = max_norm / (float(total) + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


def all_reduce_accumulator(acc, env: DistEnv):
    """Sum a MetricAccumulator's per-user sums, its non-finite user counts and its user count over
    ranks (in place; returns it)."""
    if not env.enabled:
        return acc
    from recsys.evaluation.metrics import UNSEEN, metrics_from_ranks

    zero = torch.zeros(1)  # both protocols' names, whatever this rank accumulated
    names = sorted({*metrics_from_ranks(zero, acc.ks), *metrics_from_ranks(zero, acc.ks, UNSEEN)})
    nonfinite = torch.tensor([float(n) for n in acc.nonfinite_users().values()], dtype=torch.float64)
    stacked = torch.stack(
        [acc.sums.get(n, torch.zeros(len(acc.sizes), dtype=torch.float64)).double() for n in names]
        + [nonfinite, torch.full((len(acc.sizes),), float(acc.count), dtype=torch.float64)]
    ).to(env.device)
    dist.all_reduce(stacked)
    stacked = stacked.cpu()
    acc.sums = {n: stacked[i] for i, n in enumerate(names)}
    acc.nonfinite = stacked[-2].round().long()
    acc.count = int(round(float(stacked[-1, 0])))
    return acc


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if not env.enabled:
        return t
    out = t.detach().to(env.device).clone()
    dist.all_reduce(out)
    return out.cpu()
