"""Which dtype the training step's GEMMs run in (``trainer.precision``).

``bf16``: ``torch.autocast`` with bfloat16: the linear layers' GEMMs run in bf16 while the master
weights, the optimiser, the LRU recurrence (complex, no bf16), layer norms, the loss (softmax
over the catalog) and every metric stay in fp32. ``fp32``: everything in fp32. ``auto`` (the
default): bf16 where the hardware runs it fast - a CUDA device with bf16 support, or a CPU with
``avx512_bf16`` or ``amx_bf16`` (on other CPUs bf16 GEMMs are emulated, several times slower than
fp32) - and fp32 elsewhere. Evaluation always runs in fp32, with float64 final scores.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32")
FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def fast_bf16(device: torch.device) -> bool:
    """True where bf16 GEMMs run faster than fp32 on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in FAST_BF16_CPU_FLAGS)
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``trainer.precision`` on ``device`` -> the autocast dtype (None: no autocast, fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and not fast_bf16(device)):
        return None
    return torch.bfloat16
