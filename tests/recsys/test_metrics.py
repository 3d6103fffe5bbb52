"""Metric functions against hand-computed values: ties, k beyond the catalog, padding, history."""

import math

import pytest
import torch

from recsys.evaluation.metrics import (
    MetricAccumulator,
    mask_history,
    metrics_from_ranks,
    target_ranks,
    unseen_ranks,
    validate_ks,
)

NEG = float("-inf")


def test_rank_of_target_counts_strictly_higher_items():
    scores = torch.tensor([[NEG, 0.1, 0.9, 0.5, 0.3]])  # item 0 = padding
    assert target_ranks(scores, torch.tensor([3])).tolist() == [1]  # only item 2 beats item 3
    assert target_ranks(scores, torch.tensor([2])).tolist() == [0]
    assert target_ranks(scores, torch.tensor([1])).tolist() == [3]


def test_ties_count_against_the_target():
    scores = torch.tensor([[NEG, 0.5, 0.5, 0.5, 0.1]])
    # two other items tie with the target: rank 2, not 0
    assert target_ranks(scores, torch.tensor([2])).tolist() == [2]
    constant = torch.zeros(1, 6)
    constant[:, 0] = NEG
    assert target_ranks(constant, torch.tensor([4])).tolist() == [4]  # N-1 = 4


def test_padding_column_never_outranks_the_target():
    scores = torch.tensor([[NEG, 0.2, 0.1]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [1]


def test_metric_values_by_hand():
    m = metrics_from_ranks(torch.tensor([0, 1, 4, 9]), ks=[5])
    assert m["recall@5"].tolist() == [1, 1, 1, 0]
    expected_ndcg = [1.0, 1 / math.log2(3), 1 / math.log2(6), 0.0]
    assert torch.allclose(m["ndcg@5"], torch.tensor(expected_ndcg, dtype=torch.float64))
    assert torch.allclose(m["mrr@5"], torch.tensor([1.0, 0.5, 0.2, 0.0], dtype=torch.float64))


def test_k_larger_than_catalog_gives_full_recall():
    scores = torch.tensor([[NEG, 0.3, 0.2, 0.1]])  # 3 items
    acc = MetricAccumulator(sizes=(8,), ks=(50,))
    acc.update(scores[None], torch.tensor([3]))
    out = acc.compute()[8]
    assert out["recall@50"] == 1.0
    assert out["ndcg@50"] == pytest.approx(1 / math.log2(4))
    assert out["mrr@50"] == pytest.approx(1 / 3)


def test_accumulator_averages_users_and_sizes_separately():
    scores = torch.tensor(
        [
            [[NEG, 0.9, 0.1, 0.2], [NEG, 0.1, 0.9, 0.2]],  # size 4: both users rank 0
            [[NEG, 0.1, 0.9, 0.2], [NEG, 0.1, 0.9, 0.2]],  # size 8: user 0 rank 2, user 1 rank 0
        ]
    )
    acc = MetricAccumulator(sizes=(4, 8), ks=(1, 2))
    acc.update(scores, torch.tensor([1, 2]))
    out = acc.compute()
    assert out[4]["recall@1"] == 1.0
    assert out[8]["recall@1"] == 0.5
    assert out[8]["recall@2"] == 0.5
    assert out[8]["mrr@2"] == pytest.approx(0.5)


def test_merged_shards_equal_one_pass():
    torch.manual_seed(0)
    scores = torch.randn(3, 10, 21)
    scores[..., 0] = NEG
    targets = torch.randint(1, 21, (10,))
    whole = MetricAccumulator(sizes=(1, 2, 3), ks=(5, 10))
    whole.update(scores, targets)
    a, b = MetricAccumulator(sizes=(1, 2, 3), ks=(5, 10)), MetricAccumulator(sizes=(1, 2, 3), ks=(5, 10))
    a.update(scores[:, :4], targets[:4])
    b.update(scores[:, 4:], targets[4:])
    a.merge(b)
    merged, one_pass = a.compute(), whole.compute()
    assert a.count == whole.count == 10
    for size in (1, 2, 3):
        assert merged[size] == pytest.approx(one_pass[size], abs=1e-12)


def test_history_filter_masks_seen_items_but_not_the_target():
    scores = torch.tensor([[[NEG, 0.9, 0.8, 0.7, 0.1]]])
    history = torch.tensor([[0, 1, 4]])  # saw items 1 and 4 (0 = padding)
    masked = mask_history(scores, history, torch.tensor([4]))
    assert masked[0, 0, 1] == NEG and masked[0, 0, 4] == 0.1 and masked[0, 0, 2] == 0.8
    assert target_ranks(masked, torch.tensor([3])).tolist() == [[1]]


@pytest.mark.parametrize("ks", [[], [0], [5, -1]])
def test_bad_ks_are_rejected(ks):
    with pytest.raises(ValueError, match="k"):
        validate_ks(ks)


def test_nan_scores_are_misses_not_perfect_hits():
    nan = float("nan")
    all_nan = torch.full((1, 6), nan)
    all_nan[:, 0] = NEG
    assert target_ranks(all_nan, torch.tensor([3])).tolist() == [5]  # rank N: beyond every k < N
    m = metrics_from_ranks(target_ranks(all_nan, torch.tensor([3])), ks=[5])
    assert m["recall@5"].tolist() == [0.0] and m["ndcg@5"].tolist() == [0.0] and m["mrr@5"].tolist() == [0.0]


def test_nan_item_scores_count_against_the_target():
    scores = torch.tensor([[NEG, 0.1, 0.9, float("nan"), float("nan")]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [2]  # two NaN items outrank it


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_infinite_target_score_is_a_miss(bad):
    scores = torch.tensor([[NEG, 0.1, bad, 0.5]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [3]


def test_accumulator_counts_users_with_nonfinite_scores():
    acc = MetricAccumulator(sizes=(4, 8), ks=(1,))
    scores = torch.tensor([[[NEG, 0.1, 0.9], [NEG, 0.3, 0.2]], [[NEG, float("nan"), 0.9], [NEG, 0.3, 0.2]]])
    acc.update(scores, torch.tensor([2, 1]))
    assert acc.nonfinite_users() == {4: 0, 8: 1}
    result = acc.compute()
    assert result[4]["recall@1"] == 1.0 and result[8]["recall@1"] == 0.5  # the NaN row is a miss


def test_k_not_below_the_catalog_is_rejected():
    with pytest.raises(ValueError, match="catalog size 20"):
        validate_ks([5, 20], num_items=20)
    assert validate_ks([5, 19], num_items=20) == (5, 19)


def test_unseen_ranks_equal_ranking_with_seen_items_masked_with_ties_duplicates_and_nan():
    # the cheap unseen protocol (all-items rank minus seen items at or above the target) against
    # the reference: mask seen items to -inf, then rank
    g = torch.Generator().manual_seed(0)
    sizes, users, items = 3, 40, 30
    scores = torch.randint(0, 6, (sizes, users, items + 1), generator=g).double()  # many ties
    scores[..., 0] = NEG
    scores[1, 5, 7] = float("nan")  # a NaN item, and a NaN target below
    targets = torch.randint(1, items + 1, (users,), generator=g)
    scores[2, 9, targets[9]] = float("nan")
    history = torch.randint(0, items + 1, (users, 12), generator=g)  # padding 0s and duplicates
    history[3, :4] = targets[3]  # the target itself in the history: never removed
    history[4] = 0  # no history: both protocols agree
    ranks = target_ranks(scores, targets)
    reference = target_ranks(mask_history(scores, history, targets), targets)
    got = unseen_ranks(ranks, scores, history, targets)
    assert torch.equal(got, reference)
    assert torch.equal(got[:, 4], ranks[:, 4]) and bool((got <= ranks).all())
    assert got[2, 9] == items  # a non-finite target stays a miss


def test_accumulator_reports_both_protocols_from_one_update():
    scores = torch.tensor([[[NEG, 0.9, 0.8, 0.7, 0.1]]])  # one size, one user
    acc = MetricAccumulator(sizes=(4,), ks=(1, 2))
    acc.update(scores, torch.tensor([2]), history=torch.tensor([[1, 0]]))  # saw item 1, ranked above
    result = acc.compute()[4]
    assert result["recall@1"] == 0.0 and result["recall@2"] == 1.0  # all items: rank 1
    assert result["unseen/recall@1"] == 1.0  # item 1 left out: rank 0
    assert result["unseen/ndcg@2"] == 1.0 and result["ndcg@2"] == pytest.approx(1 / math.log2(3))
