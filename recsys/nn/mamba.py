"""Mamba (selective state space, Mamba-1) backbone, fully nested.

One Mamba mixer on a (B, L, D) input, expand factor E, state size N, dt rank R::

    x, z   = in_x(u), in_z(u)                         (B, L, E*D) each, NestedLinear k_out = E
    x      = silu(causal depthwise conv1d(x))         per channel, kernel d_conv
    B, C, dt_lr = x_proj(x[..., :E*s_1])              (B, L, N), (B, L, N), (B, L, R)
    delta  = softplus(dt_proj(dt_lr) + dt_bias)       (B, L, E*D)
    h_t    = exp(delta_t * A) h_{t-1} + delta_t B_t x_t   per channel, state (E*D, N), A = -exp(A_log)
    y_t    = C_t . h_t + D * x_t
    out    = out_proj(y * silu(z))                    NestedLinear k_in = E

Nesting (the slicing invariant). Channel c of the E*D-wide inner activations belongs to chunk j
when ``E*s_{j-1} <= c < E*s_j``; it reads inputs ``[:s_j]`` only (NestedLinear), and everything
per channel (conv weight/bias, A_log, D, dt_proj rows, dt_bias) is sliced ``[:E*d]``. The one
cross-channel part of Mamba is the *selection*: B, C and the low-rank dt are shared by all
channels. Here they are **computed from the smallest slice of the ladder**: ``x_proj`` reads
only channels ``[:E*s_1]`` (which depend on inputs ``[:s_1]`` only), so a model of any width
d >= s_1 computes exactly the same B, C, dt_lr, and ``x_proj`` is not sliced at all (it is the
same (R + 2N, E*s_1) matrix in every slice). ``dt_proj`` (R -> E*D) is row-sliced. With a
one-rung ladder (D,) this is exactly standard Mamba (tests compare with mambapy).

Padding (left padding, pad_mask False): the inner input x is zeroed at padding before the conv,
the conv output too after the activation, and delta is zeroed there, so padding steps have
decay exp(0) = 1 and input 0: they never change the state, wherever they are (as in lru.py).

Kernels: on CUDA, with ``mamba_ssm`` importable, the scan runs on
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` and the conv on
``causal_conv1d.causal_conv1d_fn`` when that package is present (both imported lazily, only
there). Elsewhere the scan is the parallel ``linear_scan`` of lru.py over (B, L, E*D, N), in
channel chunks to bound memory; ``selective_scan_sequential`` is a plain loop kept for tests.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys.nn.backbone import Backbone, BackboneConfig, is_int, register_backbone
from recsys.nn.dropout import Dropout
from recsys.nn.lru import linear_scan
from recsys.nn.nested import NestedGatedFFN, NestedLayerNorm, NestedLinear

#: elements of one (B, L, chunk, N) scan tensor on the CPU path (fp32: 64 MiB)
SCAN_CHUNK_ELEMENTS = 1 << 24


@dataclass
class MambaConfig(BackboneConfig):
    """Mamba backbone: ``num_blocks`` blocks of (nested Mamba mixer, optionally a nested gated FFN).

    Example::

        >>> backbone = MambaConfig(ladder=(4, 8), max_len=10, num_blocks=1).build()
        >>> backbone(torch.randn(2, 10, 8), torch.ones(2, 10, dtype=torch.bool)).shape
        torch.Size([2, 10, 8])
    """

    name: ClassVar[str] = "mamba"
    ffn_multiplier: int = 4  # hidden width of the FFN = k * D (with ffn only)
    d_state: int = 16  # SSM state size N per channel
    d_conv: int = 4  # causal depthwise conv kernel
    expand: int = 2  # inner width = expand * D
    dt_rank: int = 0  # low-rank dt; 0 = auto, ceil(s_1 / 16) (x_proj reads the smallest slice)
    ffn: bool = False  # add the nested gated FFN after each Mamba mixer

    def checks(self) -> dict[str, bool]:
        positive = {
            k: is_int(getattr(self, k)) and getattr(self, k) >= 1
            for k in ("ffn_multiplier", "d_state", "d_conv", "expand")
        }
        return {
            **super().checks(),
            **positive,
            "dt_rank": is_int(self.dt_rank) and self.dt_rank >= 0,
            "ffn": isinstance(self.ffn, bool),
        }


def auto_dt_rank(ladder: tuple[int, ...], dt_rank: int = 0) -> int:
    """dt rank: ``dt_rank`` if > 0, else Mamba's rule applied to the width x_proj reads: ceil(s_1 / 16)."""
    return dt_rank if dt_rank > 0 else math.ceil(ladder[0] / 16)


# ---------------------------------------------------------------------------- scans
def selective_scan_sequential(u, delta, A, B, C, D):
    """Reference loop (tests only). u, delta (B, L, Ch); A (Ch, N); B, C (B, L, N); D (Ch,) -> (B, L, Ch)."""
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])
    return torch.stack(ys, dim=1)


def _channel_step(batch: int, length: int, channels: int, n: int, chunk_elements: int) -> int:
    """Channels per chunk so a (B, L, c, N) intermediate holds at most ``chunk_elements`` values;
    all channels at once while torch.export/compile traces (keeps the batch dim dynamic)."""
    if torch.compiler.is_compiling():
        return channels
    return max(1, min(channels, chunk_elements // max(1, batch * length * n)))


def selective_scan_torch(u, delta, A, B, C, D, chunk_elements: int = SCAN_CHUNK_ELEMENTS):
    """Parallel CPU/GPU reference: linear_scan over (B, L, Ch, N), channels in chunks. Shapes as above."""
    batch, length, channels = u.shape
    n = A.shape[1]
    step = _channel_step(batch, length, channels, n, chunk_elements)
    outs = []
    for a in range(0, channels, step):
        b = min(channels, a + step)
        dlt = delta[..., a:b, None]  # (B, L, c, 1)
        decay = torch.exp(dlt * A[a:b])  # (B, L, c, N)
        drive = (dlt * u[..., a:b, None]) * B[:, :, None, :]  # (B, L, c, N)
        h = linear_scan(decay, drive)
        outs.append(torch.einsum("blcn,bln->blc", h, C) + D[a:b] * u[..., a:b])
    return torch.cat(outs, dim=-1)


def selective_scan_last_torch(u, delta, A, B, C, D, chunk_elements: int = SCAN_CHUNK_ELEMENTS):
    """The last position of :func:`selective_scan_torch` (B, Ch), without the scan: the last state is
    one weighted sum, h_L = sum_t exp(A * sum_{s>t} delta_s) * delta_t u_t B_t (delta is 0 at padding,
    so padding neither decays the state nor drives it). Shapes as :func:`selective_scan_sequential`."""
    batch, length, channels = u.shape
    n = A.shape[1]
    from_t = delta.flip(1).cumsum(1).flip(1)  # (B, L, Ch): sum_{s >= t} delta_s
    after = torch.cat([from_t[:, 1:], torch.zeros_like(from_t[:, :1])], dim=1)  # sum_{s > t}, no cancellation
    drive = delta * u  # (B, L, Ch)
    c_last = C[:, -1]  # (B, N)
    step = _channel_step(batch, length, channels, n, chunk_elements)
    outs = []
    for a in range(0, channels, step):
        b = min(channels, a + step)
        weight = torch.exp(after[..., a:b, None] * A[a:b]) * drive[..., a:b, None]  # (B, L, c, N)
        h = torch.einsum("blcn,bln->bcn", weight, B)  # (B, c, N): the last state
        outs.append(torch.einsum("bcn,bn->bc", h, c_last) + D[a:b] * u[:, -1, a:b])
    return torch.cat(outs, dim=-1)


def selective_scan_last(u, delta, A, B, C, D, impl: str = "auto"):
    """``selective_scan(...)[:, -1]`` (B, Ch): the closed form on the torch path, else the scan's last."""
    if impl == "auto":
        impl = "cuda" if u.is_cuda and cuda_kernels() is not None else "torch"
    if impl == "torch":
        return selective_scan_last_torch(u, delta, A, B, C, D)
    return selective_scan(u, delta, A, B, C, D, impl)[:, -1]


@functools.cache
def cuda_kernels():
    """(selective_scan_fn, causal_conv1d_fn or None), or None when mamba_ssm is not importable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - any import failure means "no kernel"
        return None
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # noqa: BLE001
        causal_conv1d_fn = None
    return selective_scan_fn, causal_conv1d_fn


def selective_scan_cuda(u, delta, A, B, C, D):
    """The mamba_ssm kernel with the (B, L, Ch) layout of this module (delta already softplus'd)."""
    selective_scan_fn = cuda_kernels()[0]
    y = selective_scan_fn(
        u.transpose(1, 2).contiguous(),
        delta.transpose(1, 2).contiguous(),
        A.contiguous(),
        B.transpose(1, 2).contiguous(),
        C.transpose(1, 2).contiguous(),
        D.float().contiguous(),
        None,
        None,
        False,
    )
    return y.transpose(1, 2)


def selective_scan(u, delta, A, B, C, D, impl: str = "auto"):
    """Dispatch: ``auto`` = CUDA kernel when on CUDA and importable, else ``torch``; or force one."""
    if impl == "auto":
        impl = "cuda" if u.is_cuda and cuda_kernels() is not None else "torch"
    if impl == "cuda":
        return selective_scan_cuda(u, delta, A, B, C, D)
    if impl == "torch":
        return selective_scan_torch(u, delta, A, B, C, D)
    if impl == "sequential":
        return selective_scan_sequential(u, delta, A, B, C, D)
    raise ValueError(f"unknown selective scan impl '{impl}'")


# ---------------------------------------------------------------------------- layers
class CausalDepthwiseConv(nn.Module):
    """Per-channel causal conv1d (B, L, Ch) -> (B, L, Ch); weight (Ch, 1, K), bias (Ch,), sliced ``[:k*d]``."""

    def __init__(self, channels: int, kernel: int, k: int):
        super().__init__()
        self.kernel, self.k = kernel, k
        bound = 1.0 / math.sqrt(kernel)  # nn.Conv1d's default for a depthwise conv
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = cuda_kernels() if x.is_cuda else None
        if kernels is not None and kernels[1] is not None:
            y = kernels[1](x.transpose(1, 2).contiguous(), self.weight[:, 0], self.bias, activation="silu")
            return y.transpose(1, 2)
        y = F.conv1d(
            F.pad(x.transpose(1, 2), (self.kernel - 1, 0)), self.weight, self.bias, groups=x.shape[-1]
        )
        return F.silu(y.transpose(1, 2))

    def sliced_state(self, d: int) -> dict[str, torch.Tensor]:
        return {"weight": self.weight[: self.k * d], "bias": self.bias[: self.k * d]}


class SelectionProjection(nn.Module):
    """x_proj: channels ``[:k*s_1]`` -> (dt_rank + 2N). Same matrix at every width (not sliced)."""

    def __init__(self, in_channels: int, out_features: int):
        super().__init__()
        self.in_channels = in_channels
        self.proj = nn.Linear(in_channels, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x[..., : self.in_channels])

    def sliced_state(self, d: int) -> dict[str, torch.Tensor]:
        return {"proj.weight": self.proj.weight}


class NestedMamba(nn.Module):
    """One nested Mamba mixer (B, L, D) -> (B, L, D); see the module docstring."""

    # state-space parameters exempt from weight decay under trainer.no_decay=[recurrence]
    no_decay_parameters = ("A_log", "D")

    def __init__(
        self,
        ladder: tuple[int, ...],
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int = 0,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        scan_impl: str = "auto",
    ):
        super().__init__()
        inner = expand * ladder[-1]
        self.expand, self.d_state, self.scan_impl = expand, d_state, scan_impl
        self.dt_rank = auto_dt_rank(ladder, dt_rank)
        self.in_x = NestedLinear(ladder, k_in=1, k_out=expand, bias=False)
        self.in_z = NestedLinear(ladder, k_in=1, k_out=expand, bias=False)
        self.conv = CausalDepthwiseConv(inner, d_conv, expand)
        self.x_proj = SelectionProjection(expand * ladder[0], self.dt_rank + 2 * d_state)
        self.dt_proj = nn.Linear(self.dt_rank, inner)  # row-sliced in sliced_state
        bound = self.dt_rank**-0.5
        dt = torch.exp(
            torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp_min(1e-4)
        with torch.no_grad():
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1)
        )
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = NestedLinear(ladder, k_in=expand, k_out=1, bias=False)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) bool True = real -> (B, L, D)."""
        real = pad_mask[..., None].to(x.dtype)  # (B, L, 1)
        u = self.conv(self.in_x(x) * real) * real  # (B, L, E*D): zero at padding
        z = self.in_z(x)
        dt_lr, b, c = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # The scan runs in fp32 even under autocast (exp of long products).
        delta = F.softplus(self.dt_proj(dt_lr).float()) * real.float()  # (B, L, E*D), 0 at padding
        A = -torch.exp(self.A_log.float())
        y = selective_scan(u.float(), delta, A, b.float(), c.float(), self.D.float(), self.scan_impl)
        return self.out_proj(y.to(x.dtype) * F.silu(z))

    def forward_last(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, D): ``forward(x, pad_mask)[:, -1]``. The conv and the
        selection read every position; the gate, the output map and the scan's readout only the last."""
        real = pad_mask[..., None].to(x.dtype)
        u = self.conv(self.in_x(x) * real) * real
        dt_lr, b, c = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt_lr).float()) * real.float()
        A = -torch.exp(self.A_log.float())
        y = selective_scan_last(u.float(), delta, A, b.float(), c.float(), self.D.float(), self.scan_impl)
        return self.out_proj(y.to(x.dtype) * F.silu(self.in_z(x[:, -1])))

    def sliced_state(self, d: int) -> dict[str, torch.Tensor]:
        rows = self.expand * d
        state = {"A_log": self.A_log[:rows], "D": self.D[:rows]}
        state["dt_proj.weight"], state["dt_proj.bias"] = self.dt_proj.weight[:rows], self.dt_proj.bias[:rows]
        for name in ("in_x", "in_z", "conv", "x_proj", "out_proj"):
            state.update({f"{name}.{k}": v for k, v in getattr(self, name).sliced_state(d).items()})
        return state


class MambaBlock(nn.Module):
    """Pre-norm residual: x + Drop(Mamba(LN(x))), then optionally x + Drop(FFN(LN(x))). (B, L, D) -> (B, L, D)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        ladder = config.ladder
        self.norm1 = NestedLayerNorm(ladder)
        self.mixer = NestedMamba(ladder, config.d_state, config.d_conv, config.expand, config.dt_rank)
        self.dropout = Dropout(config.dropout)
        if config.ffn:
            self.norm2 = NestedLayerNorm(ladder)
            self.ffn = NestedGatedFFN(ladder, config.ffn_multiplier, config.dropout)
        else:
            self.norm2 = self.ffn = None

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, L, D)."""
        x = x + self.dropout(self.mixer(self.norm1(x), pad_mask))
        if self.ffn is not None:
            x = x + self.dropout(self.ffn(self.norm2(x)))
        return x

    def forward_last(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, D): ``forward(x, pad_mask)[:, -1]``."""
        x_last = x[:, -1] + self.dropout(self.mixer.forward_last(self.norm1(x), pad_mask))
        if self.ffn is not None:
            x_last = x_last + self.dropout(self.ffn(self.norm2(x_last)))
        return x_last


@register_backbone(MambaConfig)
class MambaBackbone(Backbone):
    """``num_blocks`` nested Mamba blocks then a final NestedLayerNorm. (B, L, D) -> (B, L, D)."""

    def __init__(self, config: MambaConfig):
        super().__init__(config)
        self.blocks = nn.ModuleList(MambaBlock(config) for _ in range(config.num_blocks))
        self.norm = NestedLayerNorm(config.ladder)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) bool True = real -> (B, L, D)."""
        for block in self.blocks:
            x = block(x, pad_mask)
        return self.norm(x)

    def forward_last(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), pad_mask (B, L) -> (B, D), the last position: every block but the last over
        all positions (the next block reads them), the last one only what its last output needs."""
        for block in self.blocks[:-1]:
            x = block(x, pad_mask)
        return self.norm(self.blocks[-1].forward_last(x, pad_mask))
