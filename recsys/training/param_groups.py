"""Optimiser parameter groups: which parameters weight decay applies to.

Every trainable parameter falls in exactly one kind:

- ``norm``: the gain and bias of a layer norm (``nn.LayerNorm``, ``NestedLayerNorm``);
- ``recurrence``: the parameters a sequence layer names in its ``no_decay_parameters`` class
  attribute (the LRU's eigenvalue parameters ``nu_log``/``theta_log``/``gamma_log`` and ``skip``,
  Mamba's ``A_log``/``D``): decaying them pulls |lambda| toward a fixed value, not toward zero weights;
- ``bias``: every other parameter named ``bias``;
- ``embedding``: the rows of a torchrec embedding table (the nested item-id table, the
  categorical tables, trainable feature tables);
- ``weight``: everything else (the linear layers' matrices).

``trainer.no_decay`` lists the kinds that get ``weight_decay = 0``; the rest get the optimiser's
``weight_decay``. This is what strong sequential recommenders do (no decay on norms, biases and
recurrence parameters); ``[]`` decays everything, as AdamW over ``model.parameters()`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torchrec import EmbeddingBagCollection

from recsys.nn.nested import NestedLayerNorm

PARAMETER_KINDS = ("weight", "bias", "norm", "recurrence", "embedding")
NO_DECAY_KINDS = ("bias", "norm", "recurrence", "embedding")  # what trainer.no_decay may name


def parameter_kinds(model: nn.Module) -> dict[str, str]:
    """{parameter name (as in ``model.named_parameters()``): kind}, for every parameter of ``model``."""
    kinds: dict[str, str] = {}
    tables = [f"{n}." for n, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)]
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        recurrence = set(getattr(module, "no_decay_parameters", ()))
        for name, _ in module.named_parameters(recurse=False):
            if any(prefix.startswith(t) for t in tables):
                kind = "embedding"
            elif isinstance(module, (nn.LayerNorm, NestedLayerNorm)):
                kind = "norm"
            elif name in recurrence:
                kind = "recurrence"
            elif name == "bias":
                kind = "bias"
            else:
                kind = "weight"
            kinds[prefix + name] = kind
    return kinds


FEATURE_TABLES = "tables.features."  # name prefix of the modality feature tables (trainer.feature_lr_scale)


def decay_groups(
    named: Sequence[tuple[str, nn.Parameter]],
    kinds: dict[str, str],
    no_decay: Sequence[str],
    weight_decay: float,
    lr_scales: dict[str, float] | None = None,
    lr: float | None = None,
) -> list[dict[str, Any]]:
    """Optimiser groups over ``named`` (names as keys of ``kinds``), each parameter in one, in ``named``'s order:
    ``{"params": [...], "weight_decay": weight_decay, "kinds": [...]}`` for the decayed kinds and
    the same with ``weight_decay = 0.0`` for ``no_decay``. ``lr_scales`` {name prefix: s}: the
    parameters under a prefix go to groups of their own with ``"lr": lr * s`` (e.g. trainable feature
    tables at a tenth of the learning rate). An empty group is left out."""
    unknown = sorted(set(no_decay) - set(NO_DECAY_KINDS))
    if unknown:
        raise ValueError(f"trainer.no_decay: unknown kinds {unknown}; choose from {list(NO_DECAY_KINDS)}")
    missing = [n for n, _ in named if n not in kinds]
    if missing:
        raise ValueError(f"parameters without a kind: {missing[:5]}")
    scales = {k: float(v) for k, v in (lr_scales or {}).items() if float(v) != 1.0}
    if scales and lr is None:
        raise ValueError("lr_scales needs the base learning rate lr")

    def scale_of(name: str) -> float:
        return next((s for prefix, s in scales.items() if name.startswith(prefix)), 1.0)

    groups = []
    for exempt in (False, True):
        for scale in (1.0, *sorted(set(scales.values()))):
            members = [(n, p) for n, p in named if (kinds[n] in no_decay) == exempt and scale_of(n) == scale]
            if not members:
                continue
            group: dict[str, Any] = {
                "params": [p for _, p in members],
                "weight_decay": 0.0 if exempt else weight_decay,
                "kinds": sorted(set(no_decay) if exempt else set(PARAMETER_KINDS) - set(no_decay)),
            }
            if scale != 1.0:
                group["lr"] = lr * scale
            groups.append(group)
    return groups
