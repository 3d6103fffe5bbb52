"""Training objectives: the Matryoshka loss at every size of the ladder.

A loss is built from its config (``configs/loss/*.yaml``: ``_target_`` + its keys) and called by
the trainer once per step::

    loss.prepare(train_targets, num_items)           # once: statistics of the training data
    total_sum, per_size_sum, count = loss(model, seq, targets, step_seed)

seq (B, L) and targets (B, L) (0 = no target) are this process's rows of the batch. The loss is
SUMMED over the ``count`` target positions (``per_size_sum`` (M,) detached); the trainer divides
by the target count of the whole (global) batch, so that the ranks' shards add up to the
single-process loss and gradients. ``step_seed`` seeds whatever the loss draws (negatives).

* :class:`recsys.losses.matryoshka.FullSoftmaxLoss` (``loss=full_softmax``): full softmax over the catalog.
* :class:`recsys.losses.sampled.SampledSoftmaxLoss` (``loss=sampled_softmax``): logQ-corrected sampled softmax.
"""
