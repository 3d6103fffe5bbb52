"""Backbone interface: sequence encoders (B, L, D) -> (B, L, D), each with one config dataclass.

A backbone is a config dataclass (a :class:`BackboneConfig` subclass: its settings) and the module
built from it (a :class:`Backbone` subclass), linked by :func:`register_backbone`::

    @dataclass
    class MyConfig(BackboneConfig):
        name: ClassVar[str] = "mine"
        kernel: int = 3

    @register_backbone(MyConfig)
    class MyBackbone(Backbone):
        def __init__(self, config: MyConfig): super().__init__(config); ...
        def forward(self, x, pad_mask): ...

``MyConfig(ladder=(8, 16), max_len=50).build()`` then builds it, Hydra builds the config from a
``configs/backbone/mine.yaml`` holding ``_target_: mypackage.MyConfig`` (plus a schema in
recsys/config.py), and ``model.py`` needs no change. Every parameter must sit in a module that
declares its nesting (``sliced_state(d)``, see nested.py), so ``slice(d)`` works for any backbone
without backbone-specific code.

Inference reads only the last position: ``forward_last(x, pad_mask)`` (B, D) defaults to
``forward(x, pad_mask)[:, -1]``, and ``forward_last_items(items, seq)`` (the inputs as a per-item
table and ids) to ``forward_last(items[seq], seq != 0)``; a backbone overrides them to skip the
work no later position needs (lru, mamba and sasrec do). Training uses ``forward``.

A backbone whose weights are not nested sets ``nested = False`` (sasrec): its ``slice(d)`` keeps
every weight and cuts the output to ``[:d]`` (:class:`TruncatedBackbone`).

Serialised (config.json of a saved model or an export), a config is its fields plus ``_target_``,
the dotted name of its class; :func:`backbone_config_from_dict` rebuilds it from the registry
only, never importing a name read from a file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from recsys.nn.nested import sliced_state_dict, truncate_ladder, validate_ladder

_REGISTRY: dict[str, type[BackboneConfig]] = {}  # dotted class name -> config class


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def target_of(cls: type) -> str:
    """The dotted name Hydra's ``_target_`` uses for ``cls``, e.g. ``recsys.nn.lru.LRUConfig``."""
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class BackboneConfig:
    """Settings every backbone has; a subclass adds its own.

    ``ladder`` and ``max_len`` are the model's: ``None`` until ModelConfig (or the Hydra builder)
    sets them. A backbone is built from a config whose ladder and max_len are set.
    """

    name: ClassVar[str] = ""  # short name, for logs
    backbone_class: ClassVar[type[Backbone] | None] = None  # set by register_backbone

    ladder: tuple[int, ...] | None = None  # increasing sizes; the last is the width D
    max_len: int | None = None  # longest input sequence
    num_blocks: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.ladder is not None:
            try:
                self.ladder = validate_ladder(self.ladder)
            except (ValueError, TypeError) as err:
                raise ValueError(f"invalid {type(self).__name__}.ladder: {err}") from None
        for key, ok in self.checks().items():
            if not ok:
                raise ValueError(f"invalid {type(self).__name__}.{key}: {getattr(self, key)!r}")

    def checks(self) -> dict[str, bool]:
        """Field -> whether its value is valid; a subclass adds its fields to ``super().checks()``."""
        return {
            "max_len": self.max_len is None or (is_int(self.max_len) and self.max_len >= 1),
            "num_blocks": is_int(self.num_blocks) and self.num_blocks >= 1,
            "dropout": is_real(self.dropout) and 0.0 <= self.dropout < 1.0,
        }

    @property
    def width(self) -> int:
        """D, the largest size of the ladder."""
        if self.ladder is None:
            raise ValueError(f"{type(self).__name__}.ladder is not set")
        return self.ladder[-1]

    def build(self) -> Backbone:
        """The backbone module of this config (ladder and max_len must be set)."""
        if self.ladder is None or self.max_len is None:
            raise ValueError(f"{type(self).__name__}: set ladder and max_len before building the backbone")
        if self.backbone_class is None:
            raise ValueError(
                f"{type(self).__name__} is not registered; decorate its backbone with @register_backbone"
            )
        return self.backbone_class(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``_target_`` (the class, as Hydra names it) and every field."""
        return {"_target_": target_of(type(self)), **dataclasses.asdict(self)}


def register_backbone(config_class: type[BackboneConfig]) -> Any:
    """Class decorator on a Backbone: ``config_class(...).build()`` builds it, and
    :func:`backbone_config_from_dict` accepts ``config_class``'s ``_target_``."""

    def decorate(cls: type[Backbone]) -> type[Backbone]:
        target = target_of(config_class)
        if target in _REGISTRY:
            raise ValueError(f"backbone config {target} is already registered")
        config_class.backbone_class = cls
        _REGISTRY[target] = config_class
        return cls

    return decorate


def registered_backbones() -> list[str]:
    """The ``_target_`` of every registered backbone config, sorted."""
    return sorted(_REGISTRY)


def backbone_config_from_dict(data: Any) -> BackboneConfig:
    """Rebuild a config from :meth:`BackboneConfig.to_dict`'s output; ValueError for an unregistered
    ``_target_`` (nothing is imported) or a missing, unknown or invalid field."""
    if not isinstance(data, dict):
        raise ValueError(f"a backbone config must be an object with a '_target_', got {data!r}")
    target = data.get("_target_")
    cls = _REGISTRY.get(target) if isinstance(target, str) else None
    if cls is None:
        raise ValueError(f"unknown backbone config _target_={target!r}; registered: {registered_backbones()}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields - {"_target_"})
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")
    return cls(**{k: v for k, v in data.items() if k != "_target_"})


class Backbone(nn.Module):
    """Nested sequence encoder built from its config (ladder, blocks, dropout...)."""

    nested: ClassVar[bool] = True  # False: dense weights; slice(d) keeps them all and cuts the output

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config

    @property
    def width(self) -> int:
        """Width of the output hidden state."""
        return self.config.width

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) bool, True = real item -> hidden (B, L, D)."""
        raise NotImplementedError

    def forward_at(self, x: torch.Tensor, pad_mask: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L), at (B, L) bool -> (P, D): the hidden states of the P
        positions where ``at`` is True, in row-major order, equal to ``self(x, pad_mask)[at]``
        (training: the loss reads the scored positions only). A backbone may override it to run
        only there what no other position needs; this fallback runs the full forward."""
        return self(x, pad_mask)[at]

    def forward_last(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, D): the hidden state of the last position only, equal
        to ``self(x, pad_mask)[:, -1]`` (inference: scoring reads nothing else). A backbone may
        override it to skip the work no later position needs; this fallback runs the full forward."""
        return self(x, pad_mask)[:, -1]

    def forward_last_items(
        self, items: torch.Tensor, seq: torch.Tensor, cache: dict | None = None
    ) -> torch.Tensor:
        """items (N+1, D) the input of each item id (row 0: padding), seq (B, L) ids, 0 = padding ->
        (B, D): ``forward_last(items[seq], seq != 0)``. A backbone may override it to run per item of
        the catalog what it would run per position (lru with one block), keeping what it computed
        from ``items`` in ``cache`` (a dict the caller passes again with the same ``items`` and
        unchanged weights, e.g. across the batches of one evaluation; inference only)."""
        return self.forward_last(items[seq], seq != 0)

    def slice(self, d: int) -> Backbone:
        """Standalone backbone whose output is this one's ``[..., :d]`` (ValueError if d is not in the
        ladder): the ``[:d]`` slices of the weights at width d, or, not nested, every weight and
        the output cut to d."""
        ladder = truncate_ladder(self.config.ladder, d)
        if self.nested:
            small = dataclasses.replace(self.config, ladder=ladder).build()
            small.load_state_dict(sliced_state_dict(self, d))
        else:
            small = self.config.build()
            small.load_state_dict(self.state_dict())
            if d < self.width:
                small = TruncatedBackbone(small, d)
        return small.train(self.training)


class TruncatedBackbone(Backbone):
    """A backbone's output cut to its first ``size`` dims: (B, L, D) -> (B, L, size).

    How a backbone whose weights are not nested is sliced. ``config`` is the wrapped backbone's
    (width D); ``build_backbone(config, size)`` rebuilds this wrapper.
    """

    def __init__(self, backbone: Backbone, size: int):
        super().__init__(backbone.config)
        truncate_ladder(backbone.config.ladder, size)  # ValueError unless size is a rung
        if size >= backbone.width:
            raise ValueError(f"size {size} does not cut a backbone of width {backbone.width}")
        self.inner, self.size = backbone, size

    @property
    def width(self) -> int:
        return self.size

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, L, size)."""
        return self.inner(x, pad_mask)[..., : self.size]

    def forward_at(self, x: torch.Tensor, pad_mask: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L), at (B, L) -> (P, size), the positions of ``at`` only."""
        return self.inner.forward_at(x, pad_mask, at)[..., : self.size]

    def forward_last(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, size), the last position only."""
        return self.inner.forward_last(x, pad_mask)[..., : self.size]

    def forward_last_items(
        self, items: torch.Tensor, seq: torch.Tensor, cache: dict | None = None
    ) -> torch.Tensor:
        """items (N+1, D), seq (B, L) -> (B, size), the last position only."""
        return self.inner.forward_last_items(items, seq, cache)[..., : self.size]

    def slice(self, d: int) -> Backbone:
        truncate_ladder(truncate_ladder(self.config.ladder, self.size), d)  # d <= size
        return self.inner.slice(d)


def build_backbone(config: BackboneConfig, width: int | None = None) -> Backbone:
    """The backbone of ``config``, its output cut to ``width`` (a size of its ladder) when that is
    below the backbone's width (:class:`TruncatedBackbone`); ``None``: the full width."""
    backbone = config.build()
    if width is None or width == config.width:
        return backbone
    return TruncatedBackbone(backbone, width)
