"""The fast CPU dropout: keep rate, unbiasedness, gradient, reproducibility, fall-backs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recsys.nn.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_keep_rate_and_scale(p: float) -> None:
    torch.manual_seed(0)
    keep, scale = keep_mask((1000, 1000), p)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    rate = keep.float().mean().item()
    # 1e6 Bernoulli draws: std of the rate <= 5e-4, so 3e-3 is > 6 sigma
    assert abs(rate - (1 - p)) < 3e-3
    realised_keep = 1 - round(p * 65536) / 65536
    assert scale == pytest.approx(1 / realised_keep, rel=1e-12)
    # every one of the four 16-bit words of a draw is used: no position class is biased
    by_word = keep.flatten()[: 4 * (keep.numel() // 4)].view(-1, 4).float().mean(0)
    assert torch.all((by_word - (1 - p)).abs() < 6e-3)


def test_unbiased_and_zeros_where_dropped() -> None:
    torch.manual_seed(1)
    x = torch.randn(512, 256)
    out = dropout(x, 0.2)
    dropped = out == 0
    assert 0.18 < dropped.float().mean().item() < 0.22
    kept = ~dropped
    scale = 65536 / (65536 - round(0.2 * 65536))
    torch.testing.assert_close(out[kept], x[kept] * scale)
    ones = torch.ones(2_000_000)
    assert dropout(ones, 0.2).mean().item() == pytest.approx(1.0, abs=3e-3)


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    out = dropout(x, 0.3)
    grad = torch.randn_like(out)
    out.backward(grad)
    kept = out.detach() != 0
    scale = 65536 / (65536 - round(0.3 * 65536))
    torch.testing.assert_close(x.grad, grad * kept * scale)


def test_reproducible_under_the_seed() -> None:
    x = torch.randn(100, 77)
    torch.manual_seed(3)
    a = dropout(x, 0.2)
    torch.manual_seed(3)
    b = dropout(x, 0.2)
    torch.manual_seed(4)
    c = dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the checkpointed RNG state replays it too
    state = torch.get_rng_state()
    d = dropout(x, 0.2)
    torch.set_rng_state(state)
    assert torch.equal(dropout(x, 0.2), d)


def test_bf16_input_keeps_its_dtype() -> None:
    torch.manual_seed(5)
    x = torch.randn(32, 50, 64).bfloat16()
    out = dropout(x, 0.2)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    kept = out != 0
    torch.testing.assert_close(out[kept], (x[kept].float() * 1.25).bfloat16())


def test_identity_in_eval_and_at_p0_and_p1_drops_all() -> None:
    x = torch.randn(10, 10)
    module = Dropout(0.2).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_module_is_a_torch_dropout() -> None:
    module = Dropout(0.25)
    assert isinstance(module, nn.Dropout) and module.p == 0.25
    assert module.state_dict() == {}
    torch.manual_seed(6)
    out = module(torch.ones(4000))
    assert 0.2 < (out == 0).float().mean().item() < 0.3
