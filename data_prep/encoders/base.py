"""Encoder interfaces and the name -> class registries (re-exported by ``data_prep.encoders``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

__all__ = [
    "TextEncoder",
    "ImageEncoder",
    "register_text_encoder",
    "register_image_encoder",
    "text_encoder_names",
    "image_encoder_names",
    "resolve_text_encoder",
    "resolve_image_encoder",
]


class TextEncoder(ABC):
    """Maps item texts to fixed-size vectors.

    Subclasses set ``name`` and ``dim`` (after loading) and implement :meth:`embed` on non-empty
    texts; :meth:`encode` handles empty texts (zero vector, mask False). ``version`` is part of the
    cache fingerprint: bump it when the subclass changes what it outputs for the same input.
    """

    name: str = ""
    dim: int = 0
    version: str = "1"

    @abstractmethod
    def embed(self, texts: list[str]) -> torch.Tensor:
        """float32 (len(texts), dim) for non-empty texts."""

    def encode(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 (n, dim), bool mask (n,)); empty/None texts give zeros and mask False."""
        mask = torch.tensor([bool(t and t.strip()) for t in texts], dtype=torch.bool)
        out = torch.zeros(len(texts), self.dim, dtype=torch.float32)
        idx = mask.nonzero().flatten().tolist()
        if idx:
            emb = torch.as_tensor(self.embed([texts[i] for i in idx]), dtype=torch.float32)  # type: ignore[misc]
            out[idx] = emb.reshape(len(idx), self.dim).cpu()
        return out, mask


class ImageEncoder(ABC):
    """Maps image file paths to fixed-size vectors.

    ``encode`` must never raise on a missing/unreadable file: that row is zeros with mask False.
    """

    name: str = ""
    dim: int = 0
    version: str = "1"

    @abstractmethod
    def encode(self, paths: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 (n, dim), bool mask (n,))."""


T = TypeVar("T")
_TEXT: dict[str, type[TextEncoder]] = {}
_IMAGE: dict[str, type[ImageEncoder]] = {}


def _register(registry: dict[str, type], name: str) -> Callable[[type[T]], type[T]]:
    def deco(cls: type[T]) -> type[T]:
        if name in registry and registry[name] is not cls:
            raise ValueError(f"encoder name {name!r} is already registered to {registry[name].__name__}")
        registry[name] = cls
        return cls

    return deco


def register_text_encoder(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``get_text_encoder(name)`` builds ``cls(device=...)``.

    A name ending in ``:`` registers a prefix: ``"foo:<arg>"`` builds ``cls(arg, device=...)``.
    """
    return _register(_TEXT, name)


def register_image_encoder(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``get_image_encoder(name)`` builds ``cls(device=...)``.

    A name ending in ``:`` registers a prefix: ``"clip:<path>"`` builds ``cls(path, device=...)``.
    """
    return _register(_IMAGE, name)


def text_encoder_names() -> list[str]:
    return sorted(_TEXT)


def image_encoder_names() -> list[str]:
    return sorted(_IMAGE)


def _resolve(registry: dict[str, type], spec: str) -> tuple[type | None, str | None]:
    if spec in registry:
        return registry[spec], None
    if ":" in spec:
        prefix, arg = spec.split(":", 1)
        cls = registry.get(prefix + ":")
        if cls is not None:
            return cls, arg
    return None, None


def resolve_text_encoder(spec: str) -> tuple[type[TextEncoder] | None, str | None]:
    """(class, prefix argument) for a registered name/prefix, (None, None) otherwise."""
    return _resolve(_TEXT, spec)


def resolve_image_encoder(spec: str) -> tuple[type[ImageEncoder] | None, str | None]:
    return _resolve(_IMAGE, spec)
