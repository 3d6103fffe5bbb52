"""Backbone interface and registry: sequence encoders (B, L, D) -> (B, L, D), fully nested.

A backbone is registered by name and built from the model config::

    @register_backbone("mybackbone")
    class MyBackbone(Backbone):
        def __init__(self, config): super().__init__(config); ...
        def forward(self, x, pad_mask): ...

``build_backbone("mybackbone", config)`` then builds it and ``model.py`` needs no change. Every
parameter must sit in a module that declares its nesting (``sliced_state(d)``, see nested.py),
so ``slice(d)`` works for any backbone without backbone-specific code.

A backbone whose weights are not nested sets ``nested = False`` (sasrec): its ``slice(d)`` keeps
the full-width weights and sets ``config.output_size = d``, and its ``forward`` must then return
only ``hidden[..., :d]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from recsys.nn.nested import sliced_state_dict, truncate_ladder

if TYPE_CHECKING:
    from recsys.model import ModelConfig

_REGISTRY: dict[str, Callable[[ModelConfig], Backbone]] = {}


class Backbone(nn.Module):
    """Nested sequence encoder. Subclasses set up layers from ``config`` (ladder, blocks, dropout...)."""

    name: str = ""
    nested: bool = True  # False: weights are dense; slice(d) = full width + output truncated to d

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) bool, True = real item -> hidden (B, L, D)."""
        raise NotImplementedError

    def slice(self, d: int) -> Backbone:
        """Standalone backbone of width d holding only the ``[:d]`` slices of this one's weights
        (non-nested backbone: all its weights, output truncated to ``[:d]``)."""
        ladder = truncate_ladder(self.config.ladder, d)
        if not self.nested:
            small = build_backbone(self.name, dataclasses.replace(self.config, output_size=d))
            small.load_state_dict(self.state_dict())
            return small.train(self.training)
        config = dataclasses.replace(self.config, ladder=ladder)
        small = build_backbone(self.name, config)
        small.load_state_dict(sliced_state_dict(self, d))
        return small.train(self.training)


def register_backbone(name: str) -> Callable[[type[Backbone]], type[Backbone]]:
    """Class decorator: make ``build_backbone(name, config)`` build this backbone."""

    def decorate(cls: type[Backbone]) -> type[Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone '{name}' is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def build_backbone(name: str, config: ModelConfig) -> Backbone:
    """Build the registered backbone ``name`` (ValueError listing the known names otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone '{name}'; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](config)


def registered_backbones() -> list[str]:
    return sorted(_REGISTRY)
