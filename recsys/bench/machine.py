"""The machine a benchmark ran on: CPU (model, bf16-relevant flags, cores), measured matmul peaks,
GPU, versions, git commit and the command line."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

BF16_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")
PEAK_SHAPE = (1600, 1024, 4096)  # (M, K, N): (M x K) @ (K x N)
PEAK_CUT_S = 10.0  # a matmul estimated slower than this (bf16 without hardware support) is cut ...
PEAK_BUDGET_S = 3.0  # ... to about this long, by measuring fewer rows M


def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "model": model,
        "flags": {f: f in flags for f in BF16_FLAGS},
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
    }


def lscpu() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def gpu_info() -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _time_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    a @ b
    if a.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_peak(dtype: torch.dtype, repeats: int = 3, shape: tuple[int, int, int] = PEAK_SHAPE) -> dict:
    """GFLOP/s of (M x K) @ (K x N) in ``dtype`` at the current thread count: median of ``repeats``.

    Where one product would take longer than PEAK_CUT_S (bf16 on a CPU without bf16 hardware takes
    ~50 s), the rows M are cut so one product takes about PEAK_BUDGET_S; the shape is reported.
    """
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    b = torch.randn(k, n, generator=g).to(dtype)
    probe_m = 16
    probe = _time_matmul(torch.randn(probe_m, k, generator=g).to(dtype), b)  # also warms up
    estimate = probe * m / probe_m
    if estimate > PEAK_CUT_S:
        m = max(probe_m, int(m * PEAK_BUDGET_S / estimate) // 16 * 16)
    a = torch.randn(m, k, generator=g).to(dtype)
    _time_matmul(a, b)
    times = [_time_matmul(a, b) for _ in range(repeats)]
    flops = 2 * m * k * n
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "shape": [m, k, n],
        "gflops": flops / statistics.median(times) / 1e9,
        "seconds": times,
    }


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_state(root: Path) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def describe(root: Path, threads: int, peaks: bool = True) -> dict:
    """Everything about where and how a benchmark ran; ``threads``: the bench's torch thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)} if peaks else {}
    finally:
        torch.set_num_threads(previous)
    return {
        "cpu": cpu_info(),
        "torch_threads": threads,
        "matmul_peak": peak,
        "gpu": gpu_info(),
        "versions": versions(),
        "git": git_state(root),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "lscpu": lscpu(),
    }
