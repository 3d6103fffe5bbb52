"""Item feature encoders: a registry of text and image encoders by name.

Built in: text ``"minilm"`` (packaged all-MiniLM-L6-v2, 384-d, default), ``"wordllama"`` (static,
256-d, fast), any other string = a locally available sentence-transformers model name or path;
image ``"mobilenet_v2"`` (ImageNet MobileNetV2, 1280-d, default), ``"clip:<path>"``,
``"siglip:<path>"`` (local transformers weights). See docs/features.md to plug in a new one.
"""

from __future__ import annotations

from data_prep.encoders.base import (
    ImageEncoder,
    TextEncoder,
    image_encoder_names,
    register_image_encoder,
    register_text_encoder,
    resolve_image_encoder,
    resolve_text_encoder,
    text_encoder_names,
)
from data_prep.encoders.image import (
    MobileNetV2Encoder,
    TransformersImageEncoder,
    load_image_tensor,
    open_rgb,
)
from data_prep.encoders.text import MiniLMEncoder, SentenceTransformerEncoder, WordLlamaEncoder

__all__ = [
    "ImageEncoder",
    "TextEncoder",
    "register_image_encoder",
    "register_text_encoder",
    "text_encoder_names",
    "image_encoder_names",
    "get_text_encoder",
    "get_image_encoder",
    "encoder_identity",
    "MiniLMEncoder",
    "WordLlamaEncoder",
    "SentenceTransformerEncoder",
    "MobileNetV2Encoder",
    "TransformersImageEncoder",
    "open_rgb",
    "load_image_tensor",
]


def get_text_encoder(spec: str, device: str = "cpu") -> TextEncoder:
    """Build a text encoder: a registered name, a registered ``prefix:arg``, or else a
    sentence-transformers model name/local path (offline only)."""
    cls, arg = resolve_text_encoder(spec)
    if cls is None:
        return SentenceTransformerEncoder(spec, device=device)
    return cls(device=device) if arg is None else cls(arg, device=device)  # type: ignore[call-arg]


def get_image_encoder(spec: str, device: str = "cpu") -> ImageEncoder:
    """Build an image encoder from a registered name or ``prefix:arg`` (e.g. ``clip:/models/clip``)."""
    cls, arg = resolve_image_encoder(spec)
    if cls is None:
        raise ValueError(f"unknown image encoder {spec!r}; registered: {image_encoder_names()}")
    return cls(device=device) if arg is None else cls(arg, device=device)  # type: ignore[call-arg]


def encoder_identity(kind: str, spec: str) -> str:
    """A string naming what an encoder spec computes, without loading it (for cache fingerprints)."""
    if kind == "text":
        cls, _ = resolve_text_encoder(spec)
        cls = cls or SentenceTransformerEncoder
    elif kind == "image":
        cls, _ = resolve_image_encoder(spec)
        if cls is None:
            raise ValueError(f"unknown image encoder {spec!r}; registered: {image_encoder_names()}")
    else:
        raise ValueError(f"unknown encoder kind {kind!r}")
    return f"{kind}|{spec}|{cls.__module__}.{cls.__qualname__}|v{cls.version}"
