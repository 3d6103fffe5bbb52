import pytest
import torch
from torch import nn

from recsys.nn.nested import (
    NestedLayerNorm,
    NestedLinear,
    block_mask,
    chunk_bounds,
    sliced_state_dict,
    triangular_pieces,
    truncate_ladder,
    validate_ladder,
)

LADDERS = [(4, 12, 40), (2, 4, 8, 16)]
KS = [1, 2, 4]


@pytest.mark.parametrize("ladder", LADDERS)
@pytest.mark.parametrize("k_in", KS)
@pytest.mark.parametrize("k_out", KS)
def test_block_mask_is_block_lower_triangular(ladder, k_in, k_out):
    mask = block_mask(ladder, k_out, k_in)
    assert mask.shape == (k_out * ladder[-1], k_in * ladder[-1])
    for (a, b), s in zip(chunk_bounds(ladder, k_out), ladder):
        rows = mask[a:b]
        assert bool((rows[:, : k_in * s] == 1).all())
        assert bool((rows[:, k_in * s :] == 0).all())


@pytest.mark.parametrize("ladder", LADDERS)
@pytest.mark.parametrize("k_in", KS)
@pytest.mark.parametrize("k_out", KS)
def test_nested_linear_prefix_depends_only_on_input_prefix_and_equals_slice(ladder, k_in, k_out):
    torch.manual_seed(0)
    layer = NestedLinear(ladder, k_in=k_in, k_out=k_out)
    x = torch.randn(5, k_in * ladder[-1])
    y = layer(x)
    for i, d in enumerate(ladder):
        x2 = x.clone()
        x2[:, k_in * d :] = torch.randn_like(x2[:, k_in * d :])
        torch.testing.assert_close(layer(x2)[:, : k_out * d], y[:, : k_out * d], rtol=0, atol=1e-6)
        small = NestedLinear(ladder[: i + 1], k_in=k_in, k_out=k_out)
        small.load_state_dict(sliced_state_dict(layer, d))
        torch.testing.assert_close(small(x[:, : k_in * d]), y[:, : k_out * d], rtol=0, atol=1e-5)


@pytest.mark.parametrize("k_in", KS)
@pytest.mark.parametrize("k_out", KS)
def test_nested_linear_masked_entries_and_outer_blocks_get_zero_grad(k_in, k_out):
    ladder = (4, 12, 40)
    layer = NestedLinear(ladder, k_in=k_in, k_out=k_out)
    d = 12
    layer(torch.randn(3, k_in * 40))[:, : k_out * d].pow(2).sum().backward()
    grad = layer.weight.grad
    assert bool((grad[block_mask(ladder, k_out, k_in) == 0] == 0).all())
    assert bool((grad[k_out * d :] == 0).all())
    assert bool((grad[:, k_in * d :] == 0).all())
    assert bool((layer.bias.grad[k_out * d :] == 0).all())
    assert bool((grad[: k_out * d, : k_in * d][block_mask(ladder[:2], k_out, k_in) == 1] != 0).any())


def test_nested_linear_with_flat_input_slices_rows_only():
    layer = NestedLinear((4, 12, 40), k_out=2, in_features=7)
    assert layer.weight.shape == (80, 7)
    state = sliced_state_dict(layer, 12)
    assert state["weight"].shape == (24, 7) and state["bias"].shape == (24,)
    small = NestedLinear((4, 12), k_out=2, in_features=7)
    small.load_state_dict(state)
    x = torch.randn(3, 7)
    torch.testing.assert_close(small(x), layer(x)[:, :24])


@pytest.mark.parametrize("ladder", LADDERS)
def test_nested_layer_norm_uses_per_chunk_statistics(ladder):
    torch.manual_seed(0)
    norm = NestedLayerNorm(ladder)
    x = torch.randn(6, ladder[-1]) * 3 + 1
    y = norm(x)
    for a, b in chunk_bounds(ladder):
        chunk = x[:, a:b]
        mean, var = chunk.mean(-1, keepdim=True), chunk.var(-1, unbiased=False, keepdim=True)
        torch.testing.assert_close(y[:, a:b], (chunk - mean) / torch.sqrt(var + 1e-5))
    for i, d in enumerate(ladder):
        x2 = x.clone()
        x2[:, d:] *= 100
        assert torch.equal(norm(x2)[:, :d], y[:, :d])
        small = NestedLayerNorm(ladder[: i + 1])
        small.load_state_dict(sliced_state_dict(norm, d))
        assert torch.equal(small(x[:, :d]), y[:, :d])


def test_sliced_state_dict_rejects_parameters_without_declared_nesting():
    module = nn.Sequential(NestedLinear((2, 4)), nn.Linear(4, 4))
    with pytest.raises(TypeError, match="sliced_state"):
        sliced_state_dict(module, 2)


def test_ladder_validation_and_truncation():
    assert validate_ladder([4, 12, 40]) == (4, 12, 40)
    for bad in [(), (4, 4), (8, 4), (0, 4), (2.0, 4)]:
        with pytest.raises(ValueError):
            validate_ladder(bad)
    assert truncate_ladder((4, 12, 40), 12) == (4, 12)
    with pytest.raises(ValueError, match="not in the ladder"):
        truncate_ladder((4, 12, 40), 10)


@pytest.mark.parametrize(
    "ladder,k_in,k_out,bias",
    [
        ((8, 16, 32, 64, 128, 256, 512, 1024), 1, 4, True),
        ((8, 16, 32, 64, 128, 256, 512, 1024), 4, 1, True),
        ((8, 16, 32, 64), 1, 1, False),
        ((2, 4), 1, 1, True),
        ((4, 8, 12), 2, 1, True),
        ((16,), 1, 1, True),
    ],
)
def test_triangular_pieces_equal_the_masked_dense_reference_forward_and_backward(ladder, k_in, k_out, bias):
    # the pieces (exact GEMMs over the big blocks + one masked GEMM) vs ONE masked dense GEMM
    torch.manual_seed(len(ladder))
    lin = NestedLinear(ladder, k_in=k_in, k_out=k_out, bias=bias)
    x = torch.randn(2, 9, k_in * ladder[-1], requires_grad=True)
    grad_out = torch.randn(2, 9, k_out * ladder[-1])
    results = []
    for forward in (lin.forward, lin.forward_reference):
        y = forward(x)
        results.append((y, *torch.autograd.grad(y, [x, *lin.parameters()], grad_out)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the inference path (no autograd Function) computes the same
        torch.testing.assert_close(lin(x), results[1][0], rtol=1e-5, atol=1e-5)
    # the pieces tile every row once and read no column beyond the row's chunk
    rows = sorted((r0, r1) for r0, r1, _ in lin.pieces)
    assert rows[0][0] == 0 and rows[-1][1] == k_out * ladder[-1]
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))


def test_triangular_pieces_of_the_default_ladder_do_a_third_fewer_flops():
    ladder = (8, 16, 32, 64, 128, 256, 512, 1024)
    prefix, pieces = triangular_pieces(ladder, 4, 1)
    assert prefix == 6 and len(pieces) == 3
    dense = 4 * 1024 * 1024
    assert sum((r1 - r0) * c for r0, r1, c in pieces) / dense == pytest.approx(0.6875)


def test_bf16_autocast_runs_the_pieces_in_bf16_and_keeps_fp32_gradients():
    torch.manual_seed(0)
    lin = NestedLinear((8, 16, 32, 64), k_in=1, k_out=2)
    x = torch.randn(5, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert lin.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    ref = lin.forward_reference(x)
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)  # bf16: 8 mantissa bits


@pytest.mark.parametrize("g", [0.0, 0.4])
@pytest.mark.parametrize(
    "ladder,k_in,k_out", [((8, 16, 32, 64, 128, 256), 1, 1), ((4, 12, 40), 1, 2), ((8, 16, 32, 64), 3, 1)]
)
def test_cross_size_grad_pieces_equal_the_chunkwise_stop_gradient_reference(g, ladder, k_in, k_out):
    from recsys.nn.nested import set_cross_size_grad

    torch.manual_seed(0)
    lin = NestedLinear(ladder, k_in=k_in, k_out=k_out).double()
    set_cross_size_grad(lin, g)
    x = torch.randn(5, k_in * ladder[-1], dtype=torch.float64, requires_grad=True)
    out = lin(x)
    ref = lin.forward_reference(x)
    torch.testing.assert_close(out, ref)
    upstream = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, lin.weight), upstream)
    rx, rw = torch.autograd.grad(ref, (x, lin.weight), upstream)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)  # the weight gradient is the exact one
    set_cross_size_grad(lin, 1.0)
    exact = torch.autograd.grad(lin(x), x, upstream)[0]
    assert not torch.allclose(gx, exact)
    last = k_in * ladder[-2]
    torch.testing.assert_close(gx[:, last:], exact[:, last:])  # the widest chunk's inputs: exact
    with pytest.raises(ValueError, match="cross_size_grad"):
        set_cross_size_grad(lin, -0.1)
