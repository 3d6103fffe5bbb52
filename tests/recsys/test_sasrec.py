"""SASRec baseline: trains, causal, padding-invariant, MRL scores = h[:, :d] . E[:, :d]; slice refused."""

import pytest
import torch
from test_model import FEATURE_DIMS, NUM_ITEMS

from recsys.model import MatryoshkaRecModel, ModelConfig
from recsys.nn.sasrec import SlicingNotSupported


def make_model(seed=0, **kw) -> MatryoshkaRecModel:
    torch.manual_seed(seed)
    config = ModelConfig(**{"ladder": (4, 12, 40), "backbone": "sasrec", "num_blocks": 2, "sasrec_heads": 2, **kw})
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


def test_slice_raises_a_clear_error():
    model = make_model()
    with pytest.raises(SlicingNotSupported, match="not nested"):
        model.slice(12)
    with pytest.raises(ValueError, match="sasrec_heads"):
        ModelConfig(ladder=(4, 10), backbone="sasrec", sasrec_heads=4)


@pytest.mark.slow
def test_sasrec_loss_drops_on_the_synthetic_dataset(processed_dataset, tmp_path):
    from test_train import tiny_cfg

    from recsys.train import Trainer

    cfg = tiny_cfg(processed_dataset, "backbone=sasrec", "backbone.num_blocks=1", "backbone.dropout=0.0",
                   "trainer.max_epochs=4", "trainer.optimizer.lr=0.01")
    trainer = Trainer(cfg, tmp_path / "run")
    x, y = next(trainer.dataset.train_batches(64, epoch=0, seed=0))
    trainer.model.eval()
    with torch.no_grad():
        before = float(trainer.model.loss(x, y)[0])
    trainer.fit()
    trainer.model.eval()
    with torch.no_grad():
        after = float(trainer.model.loss(x, y)[0])
    trainer.tb.close()
    assert after < 0.8 * before
    assert trainer.evaluate("validation")[16]["recall@10"] > 0.3
