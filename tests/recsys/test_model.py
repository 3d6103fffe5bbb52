import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from recsys.config import BACKBONE_SCHEMAS
from recsys.model import DEFAULT_LADDER, MatryoshkaRecModel, ModelConfig
from recsys.nn import LRUConfig, MambaConfig, SASRecConfig, backbone_config_from_dict
from recsys.nn.nested import NestedLinear, sliced_state_dict

NUM_ITEMS, FEATURE_DIMS = 50, {"text": 16, "image": 8}


def make_model(seed=0, num_blocks=1, dropout=0.1, **kw) -> MatryoshkaRecModel:
    """An LRU model on the irregular ladder (4, 12, 40); ``kw``: other ModelConfig fields."""
    torch.manual_seed(seed)
    config = ModelConfig(
        **{"ladder": (4, 12, 40), "backbone": LRUConfig(num_blocks=num_blocks, dropout=dropout), **kw}
    )
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
        ladder = model.ladder[: m + 1]
        config = dataclasses.replace(
            model.config, ladder=ladder, backbone=dataclasses.replace(model.config.backbone, ladder=ladder)
        )
        built = MatryoshkaRecModel(config, NUM_ITEMS, model.feature_dims).eval()
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
    [("ladder", (8, 4)), ("ladder", ()), ("modalities", ()), ("projector_hidden", -1), ("max_len", 0)],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


@pytest.mark.parametrize(
    "field, value",
    [
        ("dropout", 1.0),
        ("num_blocks", 0),
        ("ffn_multiplier", 0),
        ("r_max", 1.0),
        ("r_min", 0.95),
        ("ladder", (8, 4)),
        ("max_len", 0),
        ("dropout", "0.1"),
    ],
)
def test_backbone_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"LRUConfig.{field}"):
        LRUConfig(**{field: value})


def test_config_accepts_lists_and_irregular_ladders():
    config = ModelConfig(ladder=[4, 12, 40], modalities=["text"])
    assert config.ladder == (4, 12, 40) and config.modalities == ("text",) and config.width == 40
    with pytest.raises(ValueError, match="feature_dims"):
        MatryoshkaRecModel(ModelConfig(), 5, {})


def test_backbone_config_gets_the_models_ladder_and_max_len():
    config = ModelConfig(ladder=(4, 12), max_len=7, backbone=LRUConfig(num_blocks=3))
    assert config.backbone == LRUConfig(ladder=(4, 12), max_len=7, num_blocks=3)
    assert ModelConfig().backbone.ladder == DEFAULT_LADDER
    with pytest.raises(ValueError, match="backbone.ladder"):
        ModelConfig(ladder=(4, 12), backbone=LRUConfig(ladder=(4, 8)))
    with pytest.raises(ValueError, match="backbone.max_len"):
        ModelConfig(max_len=7, backbone=LRUConfig(max_len=8))
    with pytest.raises(ValueError, match="ModelConfig.backbone"):
        ModelConfig(backbone={"num_blocks": 1})


@pytest.mark.parametrize(
    "backbone", [LRUConfig(r_min=0.0, r_max=0.3), MambaConfig(ffn=True, d_state=4), SASRecConfig(heads=2)]
)
def test_config_round_trips_through_json_with_its_backbone_class(backbone):
    config = ModelConfig(ladder=(4, 8), backbone=backbone)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["backbone"]["_target_"] == f"{type(backbone).__module__}.{type(backbone).__name__}"
    assert ModelConfig.from_dict(data) == config
    assert type(ModelConfig.from_dict(data).backbone) is type(backbone)


def test_each_backbone_schema_mirrors_its_config_dataclass():
    """recsys/config.py may not import torch, so it repeats every backbone config's fields (the
    model's ladder and max_len excepted): same names, types and defaults."""
    for schema in BACKBONE_SCHEMAS.values():
        target = schema._target_
        config_class = type(backbone_config_from_dict({"_target_": target}))
        fields = {
            f.name: (f.type, f.default)
            for f in dataclasses.fields(config_class)
            if f.name not in ("ladder", "max_len")
        }
        mirrored = {f.name: (f.type, f.default) for f in dataclasses.fields(schema) if f.name != "_target_"}
        assert mirrored == fields, target


def test_no_module_of_recsys_nn_imports_the_model():
    """recsys.nn is the bottom layer: its backbones carry their own configs (no import circle)."""
    for path in sorted((Path(__file__).resolve().parents[2] / "recsys" / "nn").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m and (m == "recsys.model" or m.startswith("recsys.model."))}, path


def _own_chunk_grads(model, d_index):
    """Gradient of every parameter on the elements of chunk ``d_index`` that no smaller size has:
    the width-d slice minus the previous size's slice (zeros where no gradient), keyed by name."""
    ladder = model.ladder
    inside = {k: v.shape for k, v in sliced_state_dict(model, ladder[d_index]).items()}
    before = {k: v.shape for k, v in sliced_state_dict(model, ladder[d_index - 1]).items()} if d_index else {}
    out = {}
    for name, p in model.named_parameters():
        if name not in inside:
            continue
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        region = torch.zeros_like(p, dtype=torch.bool)
        region[tuple(slice(0, s) for s in inside[name])] = True
        if name in before:
            region[tuple(slice(0, s) for s in before[name])] = False
        out[name] = g[region].clone()
    return out


@pytest.mark.parametrize("projector_hidden", [0, 2])
def test_cross_size_grad_0_trains_each_chunk_by_its_own_size_only(projector_hidden):
    """With the rule at 0 in the layers and at the scores, the parameters of chunk j (the dims size
    s_j adds) get the gradient of the size-s_j loss alone: the smallest size learns as a model of
    its width alone would, each larger one learns its new dims on top of the smaller ones."""
    kw = dict(use_id_table=True, num_blocks=2, dropout=0.0, projector_hidden=projector_hidden)
    m = 3
    for d_index in range(m):
        model = make_model(cross_size_grad=0.0, **kw)
        model.loss(*batch(), cross_size_grad=0.0)[0].backward()
        everything = _own_chunk_grads(model, d_index)
        alone = make_model(cross_size_grad=0.0, **kw)
        weights = [1.0 if j == d_index else 0.0 for j in range(m)]
        alone.loss(*batch(), size_weights=weights, cross_size_grad=0.0)[0].backward()
        own = _own_chunk_grads(alone, d_index)
        assert any(g.abs().sum() > 0 for g in own.values())
        for name in own:
            torch.testing.assert_close(everything[name] * m, own[name], rtol=1e-4, atol=1e-6, msg=name)
    # the exact gradient mixes the sizes: the same comparison fails without the rule
    exact = make_model(**kw)
    exact.loss(*batch())[0].backward()
    mixed = _own_chunk_grads(exact, 0)
    alone = make_model(**kw)
    alone.loss(*batch(), size_weights=[1.0, 0.0, 0.0])[0].backward()
    assert any(
        not torch.allclose(mixed[k] * m, g, rtol=1e-4, atol=1e-6)
        for k, g in _own_chunk_grads(alone, 0).items()
    )
    # the forward pass is the same whatever the rule: scores of every size equal
    a, b = make_model(cross_size_grad=0.0, **kw).eval(), make_model(**kw).eval()
    torch.testing.assert_close(a.score(batch()[0]), b.score(batch()[0]))


@pytest.mark.parametrize("backbone", ["lru", "sasrec"])
def test_loss_reads_the_scored_positions_as_the_full_encode_would(backbone):
    # model.loss encodes only what the scored positions need (Backbone.forward_at); the reference
    # encodes every position and keeps the scored ones. Every real position scored (windows that do
    # not overlap): the same dropout draws, so bit-equal in training mode; a subset (overlapping
    # windows score their last positions only): equal values in eval mode.
    from recsys.losses.matryoshka import matryoshka_cross_entropy

    config = LRUConfig(dropout=0.1) if backbone == "lru" else SASRecConfig(dropout=0.1)
    model = make_model(backbone=config).train()
    seq, targets = batch()

    def reference(targets):
        emb = model.item_embeddings()
        keep = targets != 0
        return matryoshka_cross_entropy(model.encode(seq, emb)[keep], targets[keep], emb, model.ladder)[0]

    torch.manual_seed(5)
    got = model.loss(seq, targets)[0]
    torch.manual_seed(5)
    assert torch.equal(got, reference(targets))
    model.eval()
    subset = targets.clone()
    subset[:, :6] = 0  # the first 6 positions of each window are context only
    torch.testing.assert_close(model.loss(seq, subset)[0], reference(subset), rtol=1e-5, atol=1e-6)
