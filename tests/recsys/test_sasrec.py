"""SASRec baseline (its training is tested in test_train.py): causal, padding-invariant, MRL scores = h[:, :d] . E[:, :d]; slice(d) = full
weights + output truncated to d."""

import pytest
import torch
from test_model import FEATURE_DIMS, NUM_ITEMS

from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn import SASRecConfig, TruncatedBackbone
from recsys.nn.nested import sliced_state_dict


def make_model(seed=0, **kw) -> MatryoshkaRecModel:
    torch.manual_seed(seed)
    config = ModelConfig(
        **{"ladder": (4, 12, 40), "backbone": SASRecConfig(num_blocks=2, heads=2, dropout=0.1), **kw}
    )
    model = MatryoshkaRecModel(config, NUM_ITEMS, FEATURE_DIMS)
    model.load_item_features({m: torch.randn(NUM_ITEMS + 1, FEATURE_DIMS[m]) for m in config.modalities})
    return model.eval()


def test_future_items_do_not_change_earlier_outputs():
    model = make_model()
    seq = torch.randint(1, NUM_ITEMS + 1, (2, 8))
    seq[0, :3] = 0
    changed = seq.clone()
    changed[:, 5:] = (changed[:, 5:] % NUM_ITEMS) + 1
    with torch.no_grad():
        a, b = model.encode(seq), model.encode(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3


def test_left_padding_does_not_change_real_outputs():
    model = make_model()
    items = torch.randint(1, NUM_ITEMS + 1, (2, 5))
    short = torch.cat([torch.zeros(2, 2, dtype=torch.long), items], dim=1)
    long = torch.cat([torch.zeros(2, 9, dtype=torch.long), items], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(short)[:, 2:], model.encode(long)[:, 9:])
        torch.testing.assert_close(model.score(short), model.score(long))


def test_size_d_scores_are_truncated_hidden_dot_truncated_item_embeddings():
    model = make_model()
    seq = torch.randint(0, NUM_ITEMS + 1, (3, 8))
    with torch.no_grad():
        scores, h, emb = model.score(seq), model.encode(seq)[:, -1], model.item_embeddings()
    for m, d in enumerate(model.ladder):
        expected = h[:, :d] @ emb[:, :d].T
        torch.testing.assert_close(scores[m, :, 1:], expected[:, 1:], rtol=1e-5, atol=1e-5)
        assert bool(torch.isneginf(scores[m, :, 0]).all())


def test_slice_keeps_full_width_weights_and_truncates_the_output():
    model = make_model()
    seq = torch.randint(0, NUM_ITEMS + 1, (3, 8))
    seq[0, :4] = 0
    with torch.no_grad():
        full = model.score(seq)
        for m, d in enumerate(model.ladder):
            small = model.slice(d)
            assert small.ladder == model.ladder[: m + 1] and small.config.backbone == model.config.backbone
            assert isinstance(small.backbone, TruncatedBackbone) == (d < 40)
            assert sum(p.numel() for p in small.backbone.parameters()) == sum(
                p.numel() for p in model.backbone.parameters()
            )
            assert small.item_embeddings().shape == (NUM_ITEMS + 1, 40)  # what the backbone reads
            scores = small.score(seq)
            assert scores.shape == (m + 1, 3, NUM_ITEMS + 1)
            torch.testing.assert_close(scores, full[: m + 1], rtol=1e-5, atol=1e-5)
            assert small.encode(seq).shape == (3, 8, d)
            backbone = model.backbone.slice(d)  # Backbone.slice: same semantics
            x = torch.randn(3, 8, 40)
            torch.testing.assert_close(backbone(x, seq != 0), model.backbone(x, seq != 0)[..., :d])
        small = model.slice(12).slice(4)  # a cut backbone slices again
        torch.testing.assert_close(small.score(seq), full[:1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not in the ladder"):
        model.slice(10)
    with pytest.raises(ValueError, match="not in the ladder"):
        model.slice(12).slice(40)
    with pytest.raises(TypeError, match="no sliced_state"):  # the nested-weights walker refuses dense weights
        sliced_state_dict(model, 12)
    with pytest.raises(ValueError, match="SASRecConfig.heads"):
        ModelConfig(ladder=(4, 10), backbone=SASRecConfig(heads=4))


def test_sliced_model_saves_and_loads(tmp_path):
    model = make_model()
    seq = torch.randint(0, NUM_ITEMS + 1, (2, 8))
    model.slice(12).save(tmp_path / "s")
    with torch.no_grad():
        torch.testing.assert_close(
            MatryoshkaRecModel.load(tmp_path / "s").eval().score(seq), model.slice(12).score(seq)
        )
