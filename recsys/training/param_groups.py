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


def decay_groups(
    named: Sequence[tuple[str, nn.Parameter]],
    kinds: dict[str, str],
    no_decay: Sequence[str],
    weight_decay: float,
) -> list[dict[str, Any]]:
    """Two optimiser groups over ``named`` (names as keys of ``kinds``), in ``named``'s order:
    ``{"params": [...], "weight_decay": weight_decay, "kinds": [...]}`` for the decayed kinds and
    the same with ``weight_decay = 0.0`` for ``no_decay``. An empty group is left out."""
    unknown = sorted(set(no_decay) - set(NO_DECAY_KINDS))
    if unknown:
        raise ValueError(f"trainer.no_decay: unknown kinds {unknown}; choose from {list(NO_DECAY_KINDS)}")
    missing = [n for n, _ in named if n not in kinds]
    if missing:
        raise ValueError(f"parameters without a kind: {missing[:5]}")
    decayed = [p for n, p in named if kinds[n] not in no_decay]
    exempt = [p for n, p in named if kinds[n] in no_decay]
    groups = [
        {
            "params": decayed,
            "weight_decay": weight_decay,
            "kinds": sorted(set(PARAMETER_KINDS) - set(no_decay)),
        },
        {"params": exempt, "weight_decay": 0.0, "kinds": sorted(no_decay)},
    ]
    return [g for g in groups if g["params"]]
