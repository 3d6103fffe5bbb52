"""Image encoders: ImageNet MobileNetV2 (default, pure torch) and optional local CLIP / SigLIP."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from data_prep.encoders.base import ImageEncoder, register_image_encoder

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_rgb(path: str | Path | None):
    """The image at ``path`` as an RGB PIL image, or None when it is missing or unreadable."""
    if path is None or str(path) == "":
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (512, 512))  # JPEG: decode at reduced scale when much larger (fast)
            return im.convert("RGB")
    except Exception as e:  # FileNotFoundError, UnidentifiedImageError, truncated files, bombs...
        log.debug("unreadable image %s: %s", path, e)
        return None


def load_image_tensor(path: str | Path | None, resize: int = 256, crop: int = 224) -> torch.Tensor | None:
    """torchvision-style ImageNet preprocessing with PIL + numpy only: shorter side -> ``resize``
    (bilinear), center crop ``crop``, scale to [0, 1], normalize by ImageNet mean/std. (3, crop, crop)."""
    from PIL import Image

    im = open_rgb(path)
    if im is None:
        return None
    w, h = im.size
    if w <= h:
        nw, nh = resize, max(1, int(resize * h / w))
    else:
        nw, nh = max(1, int(resize * w / h)), resize
    im = im.resize((nw, nh), Image.BILINEAR)
    top = int(round((nh - crop) / 2.0))
    left = int(round((nw - crop) / 2.0))
    im = im.crop((left, top, left + crop, top + crop))  # PIL pads with zeros if crop > size
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, dtype=np.float32)) / np.asarray(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


@register_image_encoder("mobilenet_v2")
class MobileNetV2Encoder(ImageEncoder):
    """torchvision's ImageNet MobileNetV2 (our pure-torch copy): 1280-d global-average-pooled features."""

    version = "torchvision-b0353104-gap1280-1"

    def __init__(self, device: str = "cpu", weights: str | Path | None = None, num_workers: int = 4):
        from data_prep.encoders.mobilenet_v2 import FEATURE_DIM, mobilenet_v2_imagenet

        self.name = "mobilenet_v2"
        self.dim = FEATURE_DIM
        self.device = torch.device(device)
        self.model = mobilenet_v2_imagenet(weights).to(self.device)
        self._pool = ThreadPoolExecutor(max(1, num_workers)) if num_workers > 0 else None

    def _load(self, paths: Sequence[str | None]) -> list[torch.Tensor | None]:
        if self._pool is None or len(paths) < 2:
            return [load_image_tensor(p) for p in paths]
        return list(self._pool.map(load_image_tensor, paths))

    @torch.inference_mode()
    def encode(self, paths: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = self._load(paths)
        mask = torch.tensor([x is not None for x in imgs], dtype=torch.bool)
        out = torch.zeros(len(paths), self.dim, dtype=torch.float32)
        idx = mask.nonzero().flatten().tolist()
        if idx:
            batch = torch.stack([imgs[i] for i in idx]).to(self.device)  # type: ignore[misc]
            out[idx] = self.model.forward_features(batch).float().cpu()
        return out, mask

    @torch.inference_mode()
    def classify(self, paths: Sequence[str]) -> torch.Tensor:
        """ImageNet logits (n, 1000); a sanity check that the weights are right."""
        batch = torch.stack([load_image_tensor(p) for p in paths]).to(self.device)  # type: ignore[misc]
        return self.model(batch).cpu()


class TransformersImageEncoder(ImageEncoder):
    """``get_image_features`` of a locally stored transformers CLIP / SigLIP model."""

    kind = ""

    def __init__(self, model: str, device: str = "cpu"):
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        import transformers

        model_cls = getattr(transformers, "CLIPModel" if self.kind == "clip" else "SiglipModel")
        try:
            self.model = model_cls.from_pretrained(model, local_files_only=True).to(device).eval()
            self.processor = transformers.AutoImageProcessor.from_pretrained(
                model, local_files_only=True, use_fast=False
            )
        except Exception as e:
            raise RuntimeError(
                f"image encoder '{self.kind}:{model}': no local {model_cls.__name__} weights found "
                f"(offline mode; no CLIP/SigLIP weights ship in any installed package). Pass a folder "
                f"saved with save_pretrained() (config.json, weights, preprocessor_config.json) or a "
                f"model already in the Hugging Face cache. Cause: {type(e).__name__}: {e}"
            ) from e
        cfg = self.model.config
        self.dim = int(getattr(cfg, "projection_dim", 0) or cfg.vision_config.hidden_size)
        self.name = f"{self.kind}:{model}"
        self.device = torch.device(device)

    @torch.inference_mode()
    def encode(self, paths: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = [open_rgb(p) for p in paths]
        mask = torch.tensor([x is not None for x in imgs], dtype=torch.bool)
        out = torch.zeros(len(paths), self.dim, dtype=torch.float32)
        idx = mask.nonzero().flatten().tolist()
        if idx:
            inputs = self.processor(images=[imgs[i] for i in idx], return_tensors="pt")
            feats = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
            if not isinstance(feats, torch.Tensor):  # newer transformers may return a model output
                pooled = getattr(feats, "pooler_output", None)
                feats = pooled if pooled is not None else feats[0]
            out[idx] = feats.float().cpu().reshape(len(idx), -1)[:, : self.dim]
        return out, mask


@register_image_encoder("clip:")
class CLIPImageEncoder(TransformersImageEncoder):
    kind = "clip"


@register_image_encoder("siglip:")
class SiglipImageEncoder(TransformersImageEncoder):
    kind = "siglip"
