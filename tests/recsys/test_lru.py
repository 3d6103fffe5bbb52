from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from omegaconf import OmegaConf

from recsys.builders import backbone_config
from recsys.nn import (
    Backbone,
    BackboneConfig,
    LRUConfig,
    backbone_config_from_dict,
    register_backbone,
    registered_backbones,
)
from recsys.nn import lru as lru_module
from recsys.nn.lru import linear_scan


def sequential_scan(a, b):
    h, out = torch.zeros_like(b[:, 0]), []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


@pytest.mark.parametrize("step_by_step", [True, False], ids=["cpu-path", "doubling-path"])
@pytest.mark.parametrize("length", [1, 2, 7, 16, 33])
def test_parallel_scan_equals_sequential_loop_forward_and_grad(length, step_by_step, monkeypatch):
    # both implementations of the scan (step by step: CPU; recursive doubling: GPU) against a loop
    monkeypatch.setattr(lru_module, "_step_by_step", lambda t: step_by_step)
    torch.manual_seed(length)
    lam = torch.polar(torch.rand(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) * 6.28)
    real = torch.ones(3, length, 1, dtype=torch.bool)
    real[0, : length // 2] = False  # left padding
    real[1, : length - 1] = False
    b = torch.complex(
        torch.randn(3, length, 5, dtype=torch.float64), torch.randn(3, length, 5, dtype=torch.float64)
    )
    b = (b * real).requires_grad_()
    lam_param = lam.clone().requires_grad_()
    outs, grads = [], []
    for scan in (linear_scan, sequential_scan):
        a = torch.where(real, lam_param, torch.ones_like(lam_param))
        h = scan(a, b)
        loss = (h.real * torch.arange(5.0, dtype=torch.float64)).sum() + h.imag.pow(2).sum()
        outs.append(h)
        grads.append(torch.autograd.grad(loss, (b, lam_param), materialize_grads=True))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert bool((outs[0][0, : length // 2] == 0).all())


def small_config(**kw) -> LRUConfig:
    return LRUConfig(**{"ladder": (4, 12, 40), "max_len": 16, "num_blocks": 2, "dropout": 0.0, **kw})


def test_left_padding_does_not_change_the_real_positions():
    torch.manual_seed(0)
    backbone = small_config().build().eval()
    x = torch.randn(1, 6, 40)
    unpadded = backbone(x, torch.ones(1, 6, dtype=torch.bool))
    padded_x = torch.cat([torch.randn(1, 4, 40), x], 1)
    mask = torch.tensor([[False] * 4 + [True] * 6])
    torch.testing.assert_close(backbone(padded_x, mask)[:, 4:], unpadded, rtol=1e-5, atol=1e-5)


def test_lru_backbone_slice_equals_prefix_of_full_output():
    torch.manual_seed(0)
    backbone = small_config().build().eval()
    x = torch.randn(2, 9, 40)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :3] = False
    y = backbone(x, mask)
    for d in (4, 12, 40):
        small = backbone.slice(d)
        assert small.config.ladder[-1] == d and not small.training
        torch.testing.assert_close(small(x[..., :d], mask), y[..., :d], rtol=1e-5, atol=1e-5)


def test_lru_eigenvalues_start_in_the_ring():
    from recsys.nn.lru import LRU

    lru = LRU((8, 64), r_min=0.2, r_max=0.5)
    modulus = lru.eigenvalues().abs()
    assert bool((modulus >= 0.2 - 1e-6).all()) and bool((modulus <= 0.5 + 1e-6).all())


def test_backbone_registry_builds_registered_configs_and_rejects_unknown():
    assert "recsys.nn.lru.LRUConfig" in registered_backbones()
    for target in ("nope", "os.system", None):  # never imported: only registered classes are built
        with pytest.raises(ValueError, match="unknown backbone config"):
            backbone_config_from_dict({"_target_": target, "ladder": [4]})
    with pytest.raises(ValueError, match="not a registered backbone config"):
        backbone_config(OmegaConf.create({"_target_": "builtins.print"}), (4,), 8)
    with pytest.raises(ValueError, match="no fields"):
        backbone_config_from_dict({**small_config().to_dict(), "heads": 2})

    @dataclass
    class IdentityConfig(BackboneConfig):
        name: ClassVar[str] = "identity_for_test"

    @register_backbone(IdentityConfig)
    class Identity(Backbone):
        def forward(self, x, pad_mask):
            return x

    config = backbone_config_from_dict(IdentityConfig(ladder=(4, 8), max_len=5).to_dict())
    assert config == IdentityConfig(ladder=(4, 8), max_len=5) and isinstance(config.build(), Identity)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(IdentityConfig)(Identity)
    with pytest.raises(ValueError, match="set ladder and max_len"):
        LRUConfig().build()


@pytest.mark.parametrize("num_blocks", [1, 2])
def test_packed_forward_equals_the_padded_reference_at_real_positions_with_gradients(num_blocks):
    # forward runs norms/FFN/projections on the real positions only; forward_padded on the whole grid
    torch.manual_seed(num_blocks)
    backbone = small_config(num_blocks=num_blocks).build()
    x = torch.randn(4, 16, 40, requires_grad=True)
    real = torch.ones(4, 16, dtype=torch.bool)
    real[0, :9] = False  # left padding
    real[1, :15] = False
    real[2, 3:6] = False  # interior padding
    real[3, :] = False  # no history at all: the last position is still computed
    out = backbone(x, real)
    ref = backbone.forward_padded(x, real)
    read = real.clone()
    read[:, -1] = True  # real positions and the last one
    torch.testing.assert_close(out[read], ref[read], rtol=1e-5, atol=1e-6)
    assert bool((out[~read] == 0).all())  # other padding rows are zero, not junk
    weight = torch.randn_like(out) * read[..., None]  # a loss that reads those positions only
    grads = [torch.autograd.grad((y * weight).sum(), [x, *backbone.parameters()]) for y in (out, ref)]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("num_blocks", [1, 2])
def test_forward_at_equals_the_full_forward_at_the_scored_positions_with_gradients(num_blocks):
    # training reads the scored positions only; forward_at skips the last block's output work elsewhere
    torch.manual_seed(10 + num_blocks)
    backbone = small_config(num_blocks=num_blocks).build().eval()
    x = torch.randn(4, 16, 40, requires_grad=True)
    real = torch.ones(4, 16, dtype=torch.bool)
    real[0, :9] = False  # left padding
    real[2, 3:6] = False  # interior padding
    real[3, :] = False  # no history at all
    at = real & (torch.rand(4, 16) < 0.4)  # the last positions of overlapping windows, or any subset
    at[1, -3:] = True
    at[3, -1] = True  # a padding position asked for: the same value as forward gives it
    out = backbone.forward_at(x, real, at)
    ref = backbone(x, real)[at]
    assert out.shape == (int(at.sum()), 40)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    weight = torch.randn_like(out)
    grads = [torch.autograd.grad((y * weight).sum(), [x, *backbone.parameters()]) for y in (out, ref)]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert backbone.forward_at(x, real, torch.zeros_like(real)).shape == (0, 40)
