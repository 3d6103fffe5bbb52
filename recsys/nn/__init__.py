"""Nested (Matryoshka) building blocks and the backbones, one config dataclass each.

Importing this package registers the built-in backbones (LRU, Mamba, SASRec).
"""

from recsys.nn.backbone import (
    Backbone,
    BackboneConfig,
    TruncatedBackbone,
    backbone_config_from_dict,
    build_backbone,
    register_backbone,
    registered_backbones,
)
from recsys.nn.lru import LRUConfig
from recsys.nn.mamba import MambaConfig
from recsys.nn.nested import NestedGatedFFN, NestedLayerNorm, NestedLinear, sliced_state_dict
from recsys.nn.sasrec import SASRecConfig

__all__ = [
    "Backbone",
    "BackboneConfig",
    "LRUConfig",
    "MambaConfig",
    "NestedGatedFFN",
    "NestedLayerNorm",
    "NestedLinear",
    "SASRecConfig",
    "TruncatedBackbone",
    "backbone_config_from_dict",
    "build_backbone",
    "register_backbone",
    "registered_backbones",
    "sliced_state_dict",
]
