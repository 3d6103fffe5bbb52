"""Nested (Matryoshka) building blocks and the backbone registry.

Importing this package registers the built-in backbones ("lru", "mamba", "sasrec").
"""

from recsys.nn import lru, mamba, sasrec  # noqa: F401  (register "lru", "mamba", "sasrec")
from recsys.nn.backbone import Backbone, build_backbone, register_backbone, registered_backbones
from recsys.nn.nested import NestedGatedFFN, NestedLayerNorm, NestedLinear, sliced_state_dict

__all__ = [
    "Backbone",
    "NestedGatedFFN",
    "NestedLayerNorm",
    "NestedLinear",
    "build_backbone",
    "register_backbone",
    "registered_backbones",
    "sliced_state_dict",
]
