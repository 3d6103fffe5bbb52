"""Nested Mamba backbone: slicing invariant at every size, parameter counts, scan vs loop, padding."""

import pytest
import torch
from test_model import (
    DEFAULT_LADDER,
    FEATURE_DIMS,
    NUM_ITEMS,
    assert_scores_match,
    batch,
    check_slices_are_models_built_at_width_d,
)
from test_model import train_steps as train_steps_on

from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn.mamba import (
    MambaConfig,
    NestedMamba,
    selective_scan,
    selective_scan_sequential,
    selective_scan_torch,
)


def make_model(seed=0, ladder=(4, 12, 40), **kw) -> MatryoshkaRecModel:
    """A Mamba model; ``kw``: MambaConfig fields (one block by default)."""
    torch.manual_seed(seed)
    config = ModelConfig(ladder=ladder, backbone=MambaConfig(**{"num_blocks": 1, **kw}))
    model = MatryoshkaRecModel(config, NUM_ITEMS, FEATURE_DIMS)
    model.load_item_features({m: torch.randn(NUM_ITEMS + 1, FEATURE_DIMS[m]) for m in config.modalities})
    return model


def short_batch(seed=1, length=8):
    seq, targets = batch(seed)
    return seq[:, -length:], targets[:, -length:]


def train_steps(model, steps=3, lr=1e-2):
    return train_steps_on(model, steps, lr, make_batch=short_batch)


def check_every_size(model):
    seq, _ = short_batch()
    with torch.no_grad():
        full = model.score(seq)
        for m, d in enumerate(model.ladder):
            small = model.slice(d)
            assert small.config.width == d
            assert_scores_match(small.score(seq)[-1], full[m])


@pytest.mark.parametrize(
    "kw",
    [
        {},  # irregular ladder 4, 12, 40: x_proj reads channels [:2*4]
        pytest.param({"ffn": True, "expand": 3, "d_state": 4}, marks=pytest.mark.slow),
        pytest.param({"dt_rank": 3, "num_blocks": 2}, marks=pytest.mark.slow),
    ],
)
def test_slice_scores_equal_full_scores_irregular_ladder_before_and_after_training(kw):
    model = make_model(**kw).eval()
    check_every_size(model)
    check_every_size(train_steps(model))


def test_slice_scores_equal_full_scores_on_default_ladder_8_to_1024():
    model = make_model(ladder=DEFAULT_LADDER, d_state=8).eval()
    check_every_size(model)
    check_every_size(train_steps(model, steps=2, lr=1e-3))


def test_slice_parameter_count_equals_model_built_at_width_d():
    check_slices_are_models_built_at_width_d(train_steps(make_model(ffn=True)), short_batch()[0])


def scan_inputs(seed=0, batch=3, length=9, channels=6, n=4, left_pad=(0, 3, 8)):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, channels, generator=g, dtype=torch.float64)
    delta = torch.nn.functional.softplus(
        torch.randn(batch, length, channels, generator=g, dtype=torch.float64)
    )
    real = torch.ones(batch, length, 1, dtype=torch.float64)
    for i, p in enumerate(left_pad):
        real[i, :p] = 0
    A = -torch.exp(torch.randn(channels, n, generator=g, dtype=torch.float64))
    B = torch.randn(batch, length, n, generator=g, dtype=torch.float64)
    C = torch.randn(batch, length, n, generator=g, dtype=torch.float64)
    D = torch.randn(channels, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (u * real, delta * real, A, B, C, D)]


@pytest.mark.parametrize("chunk", [1 << 24, 20])  # one chunk, and channels split in chunks
def test_parallel_scan_matches_sequential_loop_forward_and_gradients_with_left_padding(chunk):
    args = scan_inputs()
    ref = selective_scan_sequential(*args)
    got = selective_scan_torch(*args, chunk_elements=chunk)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, args, g)
    grads_got = torch.autograd.grad(got, args, g)
    for a, b in zip(grads_got, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert selective_scan(*[a.detach() for a in args], impl="auto").shape == ref.shape  # CPU -> torch


@pytest.mark.parametrize(
    "field, value", [("d_state", 0), ("d_conv", 0), ("expand", 0), ("dt_rank", -1), ("ffn", 1)]
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"MambaConfig.{field}"):
        MambaConfig(**{field: value})


def test_padding_never_changes_real_outputs():
    torch.manual_seed(0)
    mixer = NestedMamba((4, 8), d_state=4).double().eval()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    real = torch.ones(2, 6, dtype=torch.bool)
    out = mixer(x, real)
    padded = torch.cat([torch.randn(2, 5, 8, dtype=torch.float64) * 10, x], dim=1)  # garbage at padding
    mask = torch.cat([torch.zeros(2, 5, dtype=torch.bool), real], dim=1)
    torch.testing.assert_close(mixer(padded, mask)[:, 5:], out)


def test_one_rung_ladder_is_standard_mamba_as_in_mambapy():
    mambapy = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    width = 16
    mixer = NestedMamba((width,), d_state=8, d_conv=4, expand=2).eval()
    ref = mambapy.MambaBlock(
        mambapy.MambaConfig(d_model=width, n_layers=1, d_state=8, expand_factor=2, d_conv=4)
    )
    state = {
        "in_proj.weight": torch.cat([mixer.in_x.weight, mixer.in_z.weight]),
        "conv1d.weight": mixer.conv.weight,
        "conv1d.bias": mixer.conv.bias,
        "x_proj.weight": mixer.x_proj.proj.weight,
        "dt_proj.weight": mixer.dt_proj.weight,
        "dt_proj.bias": mixer.dt_proj.bias,
        "A_log": mixer.A_log,
        "D": mixer.D,
        "out_proj.weight": mixer.out_proj.weight,
    }
    ref.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    x = torch.randn(2, 7, width)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, torch.ones(2, 7, dtype=torch.bool)), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_mamba_trains_through_recsys_train(processed_dataset, tmp_path):
    from support import tiny_cfg

    from recsys.training.runner import run

    out = run(
        tiny_cfg(processed_dataset, "backbone=mamba", "backbone.num_blocks=1", "trainer.max_epochs=2"),
        tmp_path / "r",
    )
    assert set(out["results"]["test"]) == {4, 8, 16}
