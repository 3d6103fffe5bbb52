"""Inference runs only what the last position needs (``Backbone.forward_last``, ``model.score``):
the same scores as the full forward taken at its last position, for every backbone and size."""

import pytest
import torch
from test_model import FEATURE_DIMS, NUM_ITEMS, assert_scores_match, train_steps

from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn import LRUConfig, MambaConfig, SASRecConfig
from recsys.nn.backbone import Backbone, BackboneConfig, TruncatedBackbone
from recsys.scoring import score_items

BACKBONES = {
    "lru": lambda: LRUConfig(num_blocks=2, dropout=0.1),
    "lru_one_block": lambda: LRUConfig(num_blocks=1, dropout=0.1, r_min=0.5, r_max=0.99),
    "mamba": lambda: MambaConfig(num_blocks=2, dropout=0.1),
    "mamba_ffn": lambda: MambaConfig(num_blocks=1, dropout=0.1, ffn=True),
    "sasrec": lambda: SASRecConfig(num_blocks=2, dropout=0.1, heads=2),
}


def make_model(name: str, seed: int = 0) -> MatryoshkaRecModel:
    torch.manual_seed(seed)
    config = ModelConfig(ladder=(4, 12, 40), backbone=BACKBONES[name]())
    model = MatryoshkaRecModel(config, NUM_ITEMS, FEATURE_DIMS)
    model.load_item_features({m: torch.randn(NUM_ITEMS + 1, FEATURE_DIMS[m]) for m in config.modalities})
    return model.eval()


def padded_batch(seed: int = 3, rows: int = 6, length: int = 13) -> torch.Tensor:
    """Random histories, left-padded by different amounts (one row all padding, one none)."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, NUM_ITEMS + 1, (rows, length), generator=g)
    for r, pad in enumerate([0, 1, 5, length - 1, length, 7][:rows]):
        seq[r, :pad] = 0
    return seq


def old_score(model: MatryoshkaRecModel, seq: torch.Tensor, dtype=None) -> torch.Tensor:
    """The reference path: full encode over every position, then the last position, then scoring."""
    item_emb = model.item_embeddings()
    last = model.encode(seq, item_emb)[:, -1]
    if dtype is not None:
        last, item_emb = last.to(dtype), item_emb.to(dtype)
    return score_items(last, item_emb, model.ladder)


def check_model(model: MatryoshkaRecModel, seq: torch.Tensor) -> None:
    with torch.no_grad():
        new, old = model.score(seq), old_score(model, seq)
        assert_scores_match(new, old)  # every size at once: (M, B, N+1)
        torch.testing.assert_close(model.encode_last(seq), model.encode(seq)[:, -1], rtol=1e-5, atol=1e-5)
        new64, old64 = model.score(seq, dtype=torch.float64), old_score(model, seq, torch.float64)
        assert new64.dtype == torch.float64
        assert_scores_match(new64, old64)
        for m, d in enumerate(model.ladder):  # the slicing invariant, through the new path
            small = model.slice(d)
            assert_scores_match(small.score(seq)[-1], new[m])
            assert_scores_match(small.score(seq), old_score(small, seq))


@pytest.mark.parametrize("name", BACKBONES)
def test_last_position_scores_equal_full_forward_at_every_size_before_and_after_training(name):
    model = make_model(name)
    seq = padded_batch()
    check_model(model, seq)
    check_model(train_steps(model, steps=3, lr=1e-2), seq)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_forward_last_equals_forward_with_interior_padding(name):
    """Any pad mask (padding inside the history too) gives the full forward's last position."""
    backbone = make_model(name).backbone
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 9, backbone.config.width, generator=g)
    mask = torch.rand(4, 9, generator=g) > 0.4
    mask[0] = True
    mask[1, :] = False
    mask[2, -1] = False  # the last position itself is padding
    x = x * mask[..., None]
    with torch.no_grad():
        last = backbone.forward_last(x, mask)
        assert last.shape == (4, backbone.width)
        torch.testing.assert_close(last, backbone(x, mask)[:, -1], rtol=1e-5, atol=1e-5)


def test_truncated_and_generic_backbones_fall_back_to_the_full_forward():
    backbone = make_model("sasrec").backbone
    cut = TruncatedBackbone(backbone, 12)
    x, mask = torch.randn(2, 7, 40), torch.ones(2, 7, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(cut.forward_last(x, mask), cut(x, mask)[:, -1], rtol=1e-5, atol=1e-5)

    class Doubling(Backbone):  # a backbone that only defines forward
        def forward(self, x, pad_mask):
            return 2 * x * pad_mask[..., None]

    generic = Doubling(BackboneConfig(ladder=(4, 8), max_len=7))
    x8 = torch.randn(2, 7, 8)
    torch.testing.assert_close(generic.forward_last(x8, mask), 2 * x8[:, -1])


def test_encode_for_training_still_returns_every_position():
    model = make_model("lru")
    seq = padded_batch()
    with torch.no_grad():
        assert model.encode(seq).shape == (seq.shape[0], seq.shape[1], model.config.width)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("num_items", [20, 500])  # catalog below / above the batch's positions
def test_backbone_forward_last_items_equals_forward_on_gathered_inputs(name, num_items):
    backbone = make_model(name).backbone
    g = torch.Generator().manual_seed(7)
    items = torch.randn(num_items + 1, backbone.config.width, generator=g)
    items[0] = 0
    seq = torch.randint(1, num_items + 1, (8, 11), generator=g)
    for r, pad in enumerate([0, 2, 10, 11, 4, 0, 6, 1]):
        seq[r, :pad] = 0
    with torch.no_grad():
        last = backbone.forward_last_items(items, seq)
        torch.testing.assert_close(last, backbone(items[seq], seq != 0)[:, -1], rtol=1e-5, atol=1e-5)


def test_a_cache_kept_across_batches_gives_the_same_scores_and_follows_the_item_table():
    model = make_model("lru_one_block")
    seq = padded_batch()
    emb = model.item_embeddings()

    def reference(rows, item_emb):
        return score_items(model.encode(rows, item_emb)[:, -1], item_emb, model.ladder)

    cache: dict = {}
    with torch.no_grad():
        assert_scores_match(model.score(seq[:4], emb, cache=cache), reference(seq[:4], emb))
        assert len(cache) == 1  # the block's per-item tables
        assert_scores_match(model.score(seq[4:], emb, cache=cache), reference(seq[4:], emb))  # reused
        other = emb * 0.5  # another table: recomputed, not the cached one
        assert_scores_match(model.score(seq, other, cache=cache), reference(seq, other))
