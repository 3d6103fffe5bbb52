"""Nested (Matryoshka) layers: the fMRLRec operator and its companions.

A *ladder* ``(s_1 < s_2 < ... < s_M = D)`` cuts a width-D vector into M chunks; chunk j spans
dims ``[s_{j-1}:s_j]`` (``s_0 = 0``). A tensor of width ``k*D`` is cut the same way, scaled:
chunk j spans ``[k*s_{j-1}:k*s_j]``. The slicing invariant says that for every size d in the
ladder, the first d dims (k*d for a k*D tensor) of every activation depend only on the first d
dims of the input and on the ``[:d]`` slice of every weight. The layers here keep it:

- ``NestedLinear``: block lower-triangular weight. Output chunk j reads only inputs
  ``[:k_in*s_j]``. Computed as a few exact GEMMs over the triangle's largest blocks plus one
  masked GEMM over the small remainder (``_TriangularLinear``): ~2/3 of a dense GEMM's FLOPs
  for a doubling ladder, and no mask multiply over the whole weight.
- ``NestedLayerNorm``: statistics per chunk, so a width-d model never sees later dims.

Every nested module answers ``sliced_state(d)``: its state dict cut to the width-d model. The
walker ``sliced_state_dict(module, d)`` assembles the whole model's, and fails loudly on a
parameter whose nesting nobody declared.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys.nn.dropout import Dropout


def validate_ladder(ladder: Sequence[int]) -> tuple[int, ...]:
    """Return the ladder as a tuple; ValueError unless it is non-empty, positive, strictly increasing."""
    ladder = tuple(ladder)
    if not ladder or any(not isinstance(s, int) or isinstance(s, bool) or s <= 0 for s in ladder):
        raise ValueError(f"ladder must be a non-empty sequence of positive ints, got {ladder}")
    if any(b <= a for a, b in zip(ladder, ladder[1:])):
        raise ValueError(f"ladder must be strictly increasing, got {ladder}")
    return ladder


def truncate_ladder(ladder: Sequence[int], d: int) -> tuple[int, ...]:
    """The ladder of the width-d model: ``ladder`` up to and including d (ValueError if d is not a rung)."""
    ladder = tuple(ladder)
    if d not in ladder:
        raise ValueError(f"size {d} is not in the ladder {ladder}")
    return ladder[: ladder.index(d) + 1]


def chunk_bounds(ladder: Sequence[int], k: int = 1) -> list[tuple[int, int]]:
    """``[(k*s_{j-1}, k*s_j)]`` for every chunk j of a width ``k*D`` tensor."""
    starts = (0, *ladder[:-1])
    return [(k * a, k * b) for a, b in zip(starts, ladder)]


def chunk_index(ladder: Sequence[int], k: int = 1) -> torch.Tensor:
    """(k*D,) long: the chunk each dim of a width ``k*D`` tensor belongs to."""
    sizes = [b - a for a, b in chunk_bounds(ladder, k)]
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def block_mask(ladder: Sequence[int], k_out: int = 1, k_in: int = 1) -> torch.Tensor:
    """(k_out*D, k_in*D) float 0/1: row r of chunk j may read column c iff ``c < k_in*s_j``."""
    ends = torch.tensor(ladder)[chunk_index(ladder, k_out)] * k_in  # (k_out*D,) readable prefix per row
    cols = torch.arange(k_in * ladder[-1])
    return (cols[None, :] < ends[:, None]).float()


def cross_size_grad_mask(ladder: Sequence[int], k_out: int, k_in: int, g: float) -> torch.Tensor:
    """(k_out*D, k_in*D) float: 1 where row chunk j reads its own input chunk j, ``g`` where it
    reads an earlier chunk, 0 above the triangle: how much of each weight entry's path carries the
    input gradient under the ``cross_size_grad`` rule (see ``NestedLinear``)."""
    own_start = torch.tensor((0, *ladder[:-1]))[chunk_index(ladder, k_out)] * k_in  # (k_out*D,)
    cols = torch.arange(k_in * ladder[-1])
    earlier = (cols[None, :] < own_start[:, None]).float()
    return block_mask(ladder, k_out, k_in) - (1.0 - g) * earlier


def triangular_pieces(ladder: Sequence[int], k_out: int, k_in: int) -> tuple[int, list[tuple[int, int, int]]]:
    """How ``NestedLinear`` splits its block lower-triangular weight (k_out*D, k_in*D) into GEMMs.

    Returns ``(prefix_chunks, pieces)``: the first ``prefix_chunks`` chunks form one masked GEMM
    over the weight's top-left ``[:k_out*s_p, :k_in*s_p]``; every later chunk j is an exact GEMM
    ``weight[k_out*s_{j-1}:k_out*s_j, :k_in*s_j]``. ``pieces`` lists ``(row_start, row_end, cols)``
    for all of them in row order, the masked prefix (if any) first. Chunks are peeled off the
    top while the remaining prefix is more than 1/16 of the dense area: for 8, 16, ..., 1024 that
    is the two largest chunks, 0.69 of the dense FLOPs in three GEMMs (all exact: 0.67 in eight,
    most of them too small to run at GEMM speed).
    """
    bounds = chunk_bounds(ladder, k_out)
    width = ladder[-1]
    prefix = len(ladder)
    while prefix > 1 and ladder[prefix - 1] ** 2 > width**2 / 16:
        prefix -= 1
    pieces = [(0, k_out * ladder[prefix - 1], k_in * ladder[prefix - 1])]
    pieces += [(bounds[j][0], bounds[j][1], k_in * ladder[j]) for j in range(prefix, len(ladder))]
    return prefix, pieces


def _triangular_forward(x, weight, bias, pieces, prefix_mask):
    """x (n, in) -> (out (n, rows), x in the compute dtype, the weight pieces in it): see ``_TriangularLinear``."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    xc = x.to(dtype)
    with torch.autocast(device, enabled=False):
        ws = []
        for i, (r0, r1, c) in enumerate(pieces):
            w = weight[r0:r1, :c]
            if i == 0 and prefix_mask is not None:
                w = w * prefix_mask
            ws.append(w.to(dtype))
        outs = [xc[:, :c] @ w.T for (_, _, c), w in zip(pieces, ws)]
        out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        if bias is not None:
            out = out + bias.to(dtype)
    return out, xc, ws


class _TriangularLinear(torch.autograd.Function):
    """y = x @ (W * mask)^T + b computed piece by piece (see ``triangular_pieces``).

    x (n, in), weight (out, in), mask (rows, cols) 0/1 of the prefix piece or None -> (n, out).
    Under autocast the GEMMs run in its dtype (inputs and weight pieces cast once, kept for
    backward); the weight gradient is written into one fp32 buffer, zero outside the triangle.
    ``cross_grad`` = (g, prefix grad mask or None) < 1 scales the input gradient that output chunk
    j sends into the earlier input chunks (see ``NestedLinear``); None = the exact gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, pieces, prefix_mask, cross_grad=None):
        out, xc, ws = _triangular_forward(x, weight, bias, pieces, prefix_mask)
        ctx.save_for_backward(xc, *ws)
        ctx.pieces, ctx.has_mask, ctx.has_bias = pieces, prefix_mask is not None, bias is not None
        ctx.x_dtype, ctx.w_shape, ctx.w_dtype = x.dtype, weight.shape, weight.dtype
        ctx.cross_grad = cross_grad
        if ctx.has_mask:
            ctx.mask = prefix_mask
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xc, *ws = ctx.saved_tensors
        g = grad_out.to(xc.dtype)
        grad_x = grad_w = grad_b = None
        last = len(ctx.pieces) - 1
        if ctx.needs_input_grad[0] and ctx.cross_grad is not None:
            grad_x = _cross_size_input_grad(g, ws, ctx.pieces, ctx.has_mask, *ctx.cross_grad)
            grad_x = grad_x.to(ctx.x_dtype)
        elif ctx.needs_input_grad[0]:
            # the last piece reads every input column: it initialises grad_x, the others add to a prefix
            r0, r1, _ = ctx.pieces[last]
            grad_x = (g[:, r0:r1] @ ws[last]).to(ctx.x_dtype)
            for (r0, r1, c), w in zip(ctx.pieces[:last], ws[:last]):
                grad_x[:, :c] += g[:, r0:r1] @ w
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(ctx.w_shape, dtype=ctx.w_dtype, device=g.device)
            for i, (r0, r1, c) in enumerate(ctx.pieces):
                piece = g[:, r0:r1].T @ xc[:, :c]
                if i == 0 and ctx.has_mask:
                    piece = piece * ctx.mask
                grad_w[r0:r1, :c] = piece
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


def _cross_size_input_grad(g, ws, pieces, has_mask, scale, prefix_grad_mask):
    """dL/dx (n, in) under the cross-size rule: piece i's columns before its own chunk times ``scale``.

    The masked prefix piece uses ``prefix_grad_mask`` (``cross_size_grad_mask`` of its chunks);
    every later piece is one output chunk j whose own input columns start where the previous
    piece's columns end.
    """
    grad_x = g.new_zeros(g.shape[0], pieces[-1][2])
    for i, ((r0, r1, c), w) in enumerate(zip(pieces, ws)):
        if i == 0:
            w = w * prefix_grad_mask.to(w.dtype) if has_mask else w
            grad_x[:, :c] += g[:, r0:r1] @ w
            continue
        part = g[:, r0:r1] @ w  # (n, c)
        own = pieces[i - 1][2]
        grad_x[:, own:c] += part[:, own:]
        grad_x[:, :own] += scale * part[:, :own]
    return grad_x


class NestedLinear(nn.Module):
    """Linear map (..., k_in*D) -> (..., k_out*D) whose output chunk j reads inputs ``[:k_in*s_j]``.

    The logical weight is block lower-triangular; it is stored dense (so the width-d model is its
    ``[:k_out*d, :k_in*d]`` slice) and applied by ``_TriangularLinear``: exact GEMMs over its
    largest blocks, one masked GEMM over the small remainder; entries above the triangle are
    never read and get exactly zero gradient. ``effective_weight()`` is the masked dense weight,
    the reference the pieces are tested against.
    With ``in_features`` set, the input is not nested (e.g. raw item features of width F): every
    row reads every input and only the rows (and bias) are sliced.

    Example::

        >>> lin = NestedLinear((2, 4), k_in=1, k_out=2)
        >>> lin(torch.randn(3, 4)).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        ladder: Sequence[int],
        k_in: int = 1,
        k_out: int = 1,
        bias: bool = True,
        in_features: int | None = None,
    ):
        super().__init__()
        self.ladder = validate_ladder(ladder)
        self.cross_size_grad = 1.0  # set model-wide by ``set_cross_size_grad``
        self._grad_mask: tuple[float, torch.Tensor] | None = None
        self.k_in, self.k_out, self.nested_input = k_in, k_out, in_features is None
        width = self.ladder[-1]
        fan_in = in_features if in_features is not None else k_in * width
        self.weight = nn.Parameter(torch.empty(k_out * width, fan_in))
        self.bias = nn.Parameter(torch.empty(k_out * width)) if bias else None
        if self.nested_input:
            prefix, self.pieces = triangular_pieces(self.ladder, k_out, k_in)
            # the prefix piece's mask; None when the prefix is one chunk (a dense square block)
            prefix_mask = block_mask(self.ladder[:prefix], k_out, k_in) if prefix > 1 else None
            self.register_buffer("prefix_mask", prefix_mask, persistent=False)
        else:
            self.pieces, self.prefix_mask = None, None
        self.reset_parameters()

    @property
    def mask(self) -> torch.Tensor | None:
        """(k_out*D, k_in*D) 0/1 of the triangle (None for an un-nested input), built on demand:
        the forward pass never needs the whole of it (kept as a buffer it cost 64 MiB at D=1024)."""
        if not self.nested_input:
            return None
        return block_mask(self.ladder, self.k_out, self.k_in).to(self.weight.device)

    def reset_parameters(self) -> None:
        # Uniform(+-1/sqrt(fan_in)) per row, fan_in = inputs the row can read (not k_in*D), so
        # every chunk starts variance-preserving whatever its position in the ladder.
        mask = self.mask
        fan = (
            mask.sum(1)
            if mask is not None
            else torch.full((self.weight.shape[0],), 1.0 * self.weight.shape[1])
        )
        bound = (1.0 / fan.sqrt())[:, None]
        with torch.no_grad():
            self.weight.copy_((torch.rand_like(self.weight) * 2 - 1) * bound)
            if self.bias is not None:
                self.bias.copy_((torch.rand_like(self.bias) * 2 - 1) * bound[:, 0])

    def effective_weight(self) -> torch.Tensor:
        """(k_out*D, k_in*D or F): the weight as applied (masked entries zero)."""
        mask = self.mask
        return self.weight if mask is None else self.weight * mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., k_in*D or F) -> (..., k_out*D)."""
        if self.pieces is None:
            return F.linear(x, self.weight, self.bias)
        if len(self.pieces) == 1 and self.prefix_mask is None:  # one chunk: a plain dense layer
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, x.shape[-1])
        if torch.is_grad_enabled() and (flat.requires_grad or self.weight.requires_grad):
            out = _TriangularLinear.apply(
                flat, self.weight, self.bias, self.pieces, self.prefix_mask, self._cross_grad()
            )
        else:  # inference (and torch.export): the same pieces without the autograd Function
            out = _triangular_forward(flat, self.weight, self.bias, self.pieces, self.prefix_mask)[0]
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same map as ONE masked dense GEMM: what ``forward`` is tested against; under
        ``cross_size_grad`` < 1 its input gradient is the rule's too (chunk by chunk, stop-gradient)."""
        if self.cross_size_grad == 1.0 or self.pieces is None:
            return F.linear(x, self.effective_weight(), self.bias)
        w, g = self.effective_weight(), self.cross_size_grad
        outs = []
        for j, (a, b) in enumerate(chunk_bounds(self.ladder, self.k_out)):
            start, end = (0, *self.ladder)[j] * self.k_in, self.ladder[j] * self.k_in
            earlier = x[..., :start]
            earlier = g * earlier + (1.0 - g) * earlier.detach()
            inp = torch.cat([earlier, x[..., start:end]], dim=-1)
            outs.append(F.linear(inp, w[a:b, :end], None if self.bias is None else self.bias[a:b]))
        return torch.cat(outs, dim=-1)

    def _cross_grad(self) -> tuple[float, torch.Tensor | None] | None:
        """(g, the prefix piece's gradient mask) when ``cross_size_grad`` < 1, else None (cached)."""
        g = float(self.cross_size_grad)
        if g == 1.0:
            return None
        if self.prefix_mask is None:
            return g, None
        cached = self._grad_mask
        if cached is None or cached[0] != g or cached[1].device != self.prefix_mask.device:
            rows = self.prefix_mask.shape[0]
            prefix_ladder = tuple(s for s in self.ladder if s * self.k_out <= rows)
            mask = cross_size_grad_mask(prefix_ladder, self.k_out, self.k_in, g)
            self._grad_mask = (g, mask.to(self.prefix_mask.device))
        return g, self._grad_mask[1]

    def sliced_state(self, d: int) -> dict[str, torch.Tensor]:
        rows = self.k_out * d
        cols = self.k_in * d if self.nested_input else self.weight.shape[1]
        state = {"weight": self.weight[:rows, :cols]}
        if self.bias is not None:
            state["bias"] = self.bias[:rows]
        return state

    def extra_repr(self) -> str:
        return f"ladder={self.ladder}, k_in={self.k_in}, k_out={self.k_out}, nested_input={self.nested_input}"


def set_cross_size_grad(module: nn.Module, g: float) -> None:
    """Set the cross-size gradient rule on every ``NestedLinear`` in ``module``.

    ``g`` in [0, 1] multiplies the gradient an output chunk j sends back into the earlier input
    chunks (the dims it shares with the smaller sizes); the forward pass is unchanged, so the
    slicing invariant and every prediction are too. 1 = the exact gradient; 0 = (with the loss's
    own rule, ``loss.cross_size_grad``, at 0 as well) the parameters of chunk j, the dims size s_j
    adds, are trained by the size-s_j loss only: the smallest size learns as a model of its width
    alone would, each larger size learns its new dims on top of the smaller ones, which it reads
    but does not train (tests/recsys/test_model.py checks this parameter by parameter).
    """
    if not 0.0 <= float(g) <= 1.0:
        raise ValueError(f"cross_size_grad must be in [0, 1], got {g}")
    for m in module.modules():
        if isinstance(m, NestedLinear):
            m.cross_size_grad = float(g)


class NestedLayerNorm(nn.Module):
    """LayerNorm with statistics per ladder chunk: (..., D) -> (..., D).

    Chunk j is normalised by the mean and variance of its own dims ``[s_{j-1}:s_j]`` only, so
    the first d dims never see statistics of later ones (one fused layer_norm kernel per chunk,
    the same kernels in the width-d model, hence bit-identical). gamma/beta are sliced ``[:d]``.
    """

    def __init__(self, ladder: Sequence[int], eps: float = 1e-5):
        super().__init__()
        self.ladder, self.eps = validate_ladder(ladder), eps
        self.sizes = [b - a for a, b in chunk_bounds(self.ladder)]
        self.weight = nn.Parameter(torch.ones(self.ladder[-1]))
        self.bias = nn.Parameter(torch.zeros(self.ladder[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D)."""
        chunks = [F.layer_norm(c, (c.shape[-1],), eps=self.eps) for c in x.split(self.sizes, dim=-1)]
        return torch.addcmul(self.bias, torch.cat(chunks, dim=-1), self.weight)

    def sliced_state(self, d: int) -> dict[str, torch.Tensor]:
        return {"weight": self.weight[:d], "bias": self.bias[:d]}


class NestedGatedFFN(nn.Module):
    """Gated FFN (..., D) -> (..., D): ``down(silu(gate(x)) * up(x))``, hidden width k*D, all nested."""

    def __init__(self, ladder: Sequence[int], multiplier: int = 4, dropout: float = 0.0):
        super().__init__()
        self.gate = NestedLinear(ladder, k_in=1, k_out=multiplier)
        self.up = NestedLinear(ladder, k_in=1, k_out=multiplier)
        self.down = NestedLinear(ladder, k_in=multiplier, k_out=1)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.gate(x)) * self.up(x)  # (..., k*D), chunk j at [k*s_{j-1}:k*s_j]
        return self.down(self.dropout(hidden))


def sliced_state_dict(module: nn.Module, d: int) -> dict[str, torch.Tensor]:
    """State dict of the width-d model cut from ``module`` (cloned, contiguous).

    A submodule with ``sliced_state(d)`` answers for its whole subtree; other submodules are
    walked. A parameter or persistent buffer that no ``sliced_state`` covers is an error, so a
    new layer cannot silently break the slicing invariant.
    """
    out: dict[str, torch.Tensor] = {}

    def walk(mod: nn.Module, prefix: str) -> None:
        if hasattr(mod, "sliced_state"):
            for name, t in mod.sliced_state(d).items():
                out[prefix + name] = t.detach().clone().contiguous()
            return
        own = list(mod.named_parameters(recurse=False)) + [
            (n, b) for n, b in mod.named_buffers(recurse=False) if n not in mod._non_persistent_buffers_set
        ]
        if own:
            raise TypeError(f"{type(mod).__name__} at '{prefix}' has parameters but no sliced_state(d)")
        for name, child in mod.named_children():
            walk(child, f"{prefix}{name}.")

    walk(module, "")
    return out
