import dataclasses

import pytest
import torch

from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn.nested import NestedLinear, sliced_state_dict

NUM_ITEMS, FEATURE_DIMS = 50, {"text": 16, "image": 8}
DEFAULT_LADDER = (8, 16, 32, 64, 128, 256, 512, 1024)


def make_model(seed=0, **kw) -> MatryoshkaRecModel:
    torch.manual_seed(seed)
    config = ModelConfig(**{"ladder": (4, 12, 40), "num_blocks": 1, **kw})
    model = MatryoshkaRecModel(config, NUM_ITEMS, FEATURE_DIMS)
    model.load_item_features({m: torch.randn(NUM_ITEMS + 1, FEATURE_DIMS[m]) for m in config.modalities})
    return model


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, NUM_ITEMS + 1, (3, 10), generator=g)
    seq[0, :4] = 0  # left padding
    seq[1, :9] = 0
    targets = torch.roll(seq, -1, 1)
    targets[:, -1] = torch.randint(1, NUM_ITEMS + 1, (3,), generator=g)
    targets[seq == 0] = 0
    return seq, targets


def train_steps(model, steps=3, lr=1e-2, make_batch=None):
    """A few AdamW steps on random batches (``make_batch(seed)``, default :func:`batch`); returns the model in eval mode."""
    make_batch = make_batch or batch
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        total, _ = model.loss(*make_batch(seed=10 + step))
        opt.zero_grad()
        total.backward()
        opt.step()
    return model.eval()


def assert_scores_match(actual, expected):
    """fp32: 1e-5 absolute plus ~8 ulps of the largest score (GEMMs of different shapes round differently)."""
    assert actual.shape == expected.shape
    assert bool(torch.isneginf(actual[..., 0]).all()) and bool(torch.isneginf(expected[..., 0]).all())
    a, e = actual[..., 1:], expected[..., 1:]
    tol = 1e-5 + 1e-6 * e.abs().max().item()
    assert (a - e).abs().max().item() <= tol


def check_every_size(model):
    seq, _ = batch()
    with torch.no_grad():
        full = model.score(seq)
        assert full.shape == (len(model.ladder), 3, NUM_ITEMS + 1)
        for m, d in enumerate(model.ladder):
            small = model.slice(d)
            assert small.config.width == d and small.ladder == model.ladder[: m + 1]
            sliced = small.score(seq)
            assert sliced.shape == (m + 1, 3, NUM_ITEMS + 1)
            assert_scores_match(sliced[-1], full[m])


VARIANTS = {
    "text": {},
    "id_table": {"use_id_table": True},
    "two_modalities": {"modalities": ("text", "image")},
    "id_only": {"modalities": (), "use_id_table": True},
    "hidden_projector_trainable_features": {
        "projector_hidden": 2,
        "trainable_features": True,
        "num_blocks": 2,
    },
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_slice_scores_equal_full_model_scores_at_every_size_before_and_after_training(variant):
    model = make_model(**VARIANTS[variant]).eval()
    check_every_size(model)
    check_every_size(train_steps(model))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["text", "id_table", "two_modalities"])
def test_slice_invariant_on_default_ladder_8_to_1024(variant):
    model = make_model(ladder=DEFAULT_LADDER, **VARIANTS[variant]).eval()
    check_every_size(model)
    check_every_size(train_steps(model, steps=2, lr=1e-3))


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "kw", [{}, {"use_id_table": True, "modalities": ("text", "image"), "projector_hidden": 2}]
)
def test_slice_has_parameter_count_of_model_built_at_width_d_and_loads_into_it(kw):
    model = train_steps(make_model(num_blocks=2, **kw))
    check_slices_are_models_built_at_width_d(model, batch()[0])


def check_slices_are_models_built_at_width_d(model, seq):
    """For every d: slice(d) has the parameter count of a model built at width d, and that model,
    loaded with the sliced weights, gives the full model's size-d scores."""
    with torch.no_grad():
        full = model.score(seq)
    for m, d in enumerate(model.ladder):
        built = MatryoshkaRecModel(
            dataclasses.replace(model.config, ladder=model.ladder[: m + 1]), NUM_ITEMS, model.feature_dims
        ).eval()
        assert count(model.slice(d)) == count(built)
        built.load_state_dict(sliced_state_dict(model, d))
        with torch.no_grad():
            assert_scores_match(built.score(seq)[-1], full[m])


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    model = train_steps(make_model(use_id_table=True, modalities=("text", "image")))
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "config.json").exists()
    loaded = MatryoshkaRecModel.load(tmp_path / "m").eval()
    assert loaded.config == model.config and loaded.num_items == NUM_ITEMS
    seq, _ = batch()
    with torch.no_grad():
        assert torch.equal(loaded.score(seq), model.score(seq))
        model.slice(12).save(tmp_path / "s")
        assert torch.equal(
            MatryoshkaRecModel.load(tmp_path / "s").eval().score(seq), model.slice(12).score(seq)
        )


@pytest.mark.parametrize("d_index", [0, 1])
def test_loss_at_one_size_leaves_weights_outside_its_slice_without_gradient(d_index):
    model = make_model(use_id_table=True, modalities=("text", "image"), num_blocks=2, dropout=0.0)
    ladder, d = model.ladder, model.ladder[d_index]
    weights = [1.0 if m == d_index else 0.0 for m in range(len(ladder))]
    model.loss(*batch(), size_weights=weights)[0].backward()
    inside = sliced_state_dict(model, d)
    for name, p in model.named_parameters():
        if p.grad is None:
            assert not p.requires_grad, name
            continue
        outside = torch.ones_like(p, dtype=torch.bool)
        outside[tuple(slice(0, s) for s in inside[name].shape)] = False
        assert bool((p.grad[outside] == 0).all()), name
    for name, module in model.named_modules():
        if isinstance(module, NestedLinear) and module.mask is not None:
            assert bool((module.weight.grad[module.mask == 0] == 0).all()), name
    assert model.tables.id_table().grad[:, :d].abs().sum() > 0


def test_features_are_frozen_torchrec_tables_by_default():
    from torchrec import EmbeddingBagCollection

    model = make_model(modalities=("text", "image"), use_id_table=True)
    assert isinstance(model.tables.features, EmbeddingBagCollection)
    assert not model.tables.feature_table("text").requires_grad
    assert model.tables.id_table().requires_grad and model.tables.id_table().shape == (NUM_ITEMS + 1, 40)
    assert make_model(trainable_features=True).tables.feature_table("text").requires_grad
    emb = model.item_embeddings()
    assert emb.shape == (NUM_ITEMS + 1, 40) and bool((emb[0] == 0).all())


def test_load_item_features_copies_and_checks_shapes():
    model = make_model()
    feats = torch.randn(NUM_ITEMS + 1, 16)
    model.load_item_features({"text": feats})
    assert torch.equal(model.tables.feature_table("text"), feats)
    with pytest.raises(ValueError, match="shape"):
        model.load_item_features({"text": torch.randn(3, 16)})
    with pytest.raises(ValueError, match="missing"):
        model.load_item_features({})


def test_encode_loss_and_score_shapes():
    model = make_model()
    seq, targets = batch()
    assert model.encode(seq).shape == (3, 10, 40)
    total, per_size = model.loss(seq, targets)
    assert total.shape == () and per_size.shape == (3,) and not per_size.requires_grad
    torch.testing.assert_close(total, per_size.mean(), rtol=1e-5, atol=1e-6)
    item_emb = model.item_embeddings()
    model.eval()
    torch.testing.assert_close(model.score(seq, item_emb.detach()), model.score(seq))


def test_slice_rejects_size_outside_ladder():
    with pytest.raises(ValueError, match="not in the ladder"):
        make_model().slice(20)


@pytest.mark.parametrize(
    "field, value",
    [
        ("ladder", (8, 4)),
        ("ladder", ()),
        ("dropout", 1.0),
        ("num_blocks", 0),
        ("ffn_multiplier", 0),
        ("lru_r_max", 1.0),
        ("lru_r_min", 0.5),
        ("modalities", ()),
        ("projector_hidden", -1),
        ("max_len", 0),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_config_accepts_lists_and_irregular_ladders():
    config = ModelConfig(ladder=[4, 12, 40], modalities=["text"])
    assert config.ladder == (4, 12, 40) and config.modalities == ("text",) and config.width == 40
    with pytest.raises(ValueError, match="feature_dims"):
        MatryoshkaRecModel(ModelConfig(), 5, {})
