import pytest
import torch
import torch.nn.functional as F

from recsys.losses.matryoshka import (
    FullSoftmaxLoss,
    _logits_to_gradients_,
    all_size_logits,
    cpu_budget_bytes,
    loss_budget_bytes,
    matryoshka_cross_entropy,
    positions_per_chunk,
    size_weights_tensor,
)

LADDER = (4, 12, 40)


def float64_problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden (9, 40), items (21, 40) float64 leaves with gradients, targets (9,) in 1..20."""
    torch.manual_seed(seed)
    hidden = torch.randn(9, 40, dtype=torch.float64, requires_grad=True)
    items = torch.randn(21, 40, dtype=torch.float64, requires_grad=True)
    return hidden, items, torch.randint(1, 21, (9,))


def naive_loss(hidden, targets, items, ladder, weights, scales=None):
    per_size = []
    for m, d in enumerate(ladder):
        logits = hidden[:, :d] @ items[:, :d].T * (1.0 if scales is None else scales[m])
        logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], 1)
        per_size.append(F.cross_entropy(logits, targets))
    per_size = torch.stack(per_size)
    return (weights * per_size).sum(), per_size


@pytest.mark.parametrize("grad", [False, True])
def test_all_size_logits_equals_naive_per_size_matmul(grad):
    torch.manual_seed(0)
    hidden, items = torch.randn(7, 40, requires_grad=grad), torch.randn(21, 40)
    with torch.set_grad_enabled(grad):
        fused = all_size_logits(hidden, items, LADDER)
    assert fused.shape == (3, 7, 21)
    for m, d in enumerate(LADDER):
        torch.testing.assert_close(fused[m], hidden[:, :d] @ items[:, :d].T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("budget", [1 << 30, 3 * 4 * 21 * 2, 1])  # one chunk, chunks of 2, chunks of 1
@pytest.mark.parametrize("weights", [None, [0.0, 1.0, 3.0]])
def test_chunked_fused_loss_equals_unchunked_naive_loss_and_grads(budget, weights):
    torch.manual_seed(0)
    hidden = torch.randn(9, 40, dtype=torch.float64, requires_grad=True)
    items = torch.randn(21, 40, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 21, (9,))
    w = size_weights_tensor(LADDER, weights).double()
    total, per_size = matryoshka_cross_entropy(hidden, targets, items, LADDER, weights, budget_bytes=budget)
    assert not per_size.requires_grad and per_size.shape == (3,)
    ref_total, ref_per_size = naive_loss(hidden, targets, items, LADDER, w)
    torch.testing.assert_close(total, ref_total)
    torch.testing.assert_close(per_size, ref_per_size.detach())
    g = torch.autograd.grad(2.5 * total, (hidden, items))
    g_ref = torch.autograd.grad(2.5 * ref_total, (hidden, items))
    torch.testing.assert_close(g[0], g_ref[0])
    torch.testing.assert_close(g[1], g_ref[1])
    with torch.no_grad():
        total_ng, per_size_ng = matryoshka_cross_entropy(
            hidden, targets, items, LADDER, weights, budget_bytes=budget
        )
    torch.testing.assert_close(total_ng, ref_total.detach())


def test_loss_budget_by_device_half_the_cpu_cache_and_256_mib_on_a_gpu():
    budget = cpu_budget_bytes()
    assert 1 << 22 <= budget <= 1 << 28
    assert loss_budget_bytes(torch.device("cpu"), None) == budget
    assert loss_budget_bytes(torch.device("cuda"), None) == 1 << 28
    assert loss_budget_bytes(torch.device("cpu"), 12345) == 12345  # an explicit budget wins


def test_default_budget_gives_the_explicit_one_chunk_result():
    hidden, items, targets = float64_problem(3)
    total, per_size = matryoshka_cross_entropy(hidden, targets, items, LADDER)
    ref_total, ref_per_size = matryoshka_cross_entropy(hidden, targets, items, LADDER, budget_bytes=1 << 30)
    torch.testing.assert_close(total, ref_total)
    torch.testing.assert_close(per_size, ref_per_size)


@pytest.mark.parametrize("budget", [1 << 30, 3 * 4 * 21 * 2])
def test_per_size_logit_scales_equal_the_naive_scaled_softmax_and_grads(budget):
    from recsys.losses.matryoshka import size_logit_scales

    torch.manual_seed(1)
    hidden = torch.randn(9, 40, dtype=torch.float64, requires_grad=True)
    items = torch.randn(21, 40, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 21, (9,))
    scales = size_logit_scales(LADDER, 0.5)
    assert scales == pytest.approx([(40 / 4) ** 0.5, (40 / 12) ** 0.5, 1.0])
    w = size_weights_tensor(LADDER, [1.0, 2.0, 1.0]).double()
    total, per_size = matryoshka_cross_entropy(
        hidden, targets, items, LADDER, [1.0, 2.0, 1.0], budget_bytes=budget, size_scales=scales
    )
    ref_total, ref_per_size = naive_loss(hidden, targets, items, LADDER, w, scales)
    torch.testing.assert_close(total, ref_total)
    torch.testing.assert_close(per_size, ref_per_size.detach())
    # the scaled loss really differs from the plain one (the test would catch scales being ignored)
    assert not torch.allclose(per_size, naive_loss(hidden, targets, items, LADDER, w)[1].detach())
    g = torch.autograd.grad(total, (hidden, items))
    g_ref = torch.autograd.grad(ref_total, (hidden, items))
    torch.testing.assert_close(g[0], g_ref[0])
    torch.testing.assert_close(g[1], g_ref[1])
    with torch.no_grad():
        _, per_size_ng = matryoshka_cross_entropy(hidden, targets, items, LADDER, size_scales=scales)
    torch.testing.assert_close(per_size_ng, naive_loss(hidden, targets, items, LADDER, w, scales)[1].detach())
    assert size_logit_scales(LADDER, 0.0) is None
    with pytest.raises(ValueError, match="size_scales"):
        matryoshka_cross_entropy(hidden, targets, items, LADDER, size_scales=[1.0, 0.0, 1.0])


def test_loss_on_one_size_leaves_later_dims_without_gradient():
    hidden = torch.randn(5, 40, requires_grad=True)
    items = torch.randn(11, 40, requires_grad=True)
    total, _ = matryoshka_cross_entropy(hidden, torch.randint(1, 11, (5,)), items, LADDER, [0, 1, 0])
    total.backward()
    assert bool((hidden.grad[:, 12:] == 0).all()) and bool((items.grad[:, 12:] == 0).all())
    assert bool((hidden.grad[:, :12] != 0).any())
    assert bool((items.grad[0] == 0).all())  # padding is never a candidate


def test_size_weights_default_equal_and_validated():
    torch.testing.assert_close(size_weights_tensor(LADDER, None), torch.full((3,), 1 / 3))
    torch.testing.assert_close(size_weights_tensor(LADDER, [1, 1, 2]), torch.tensor([0.25, 0.25, 0.5]))
    for bad in ([1, 1], [-1, 1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="size_weights"):
            size_weights_tensor(LADDER, bad)


def test_positions_per_chunk_respects_budget():
    assert positions_per_chunk(8, 20_001, 1 << 30) * 8 * 20_001 * 4 <= 1 << 30
    assert positions_per_chunk(8, 20_001, 1) == 1


def _scaled_grad(x: torch.Tensor, g: float) -> torch.Tensor:
    """x forward, g * dL/dx backward."""
    return g * x + (1.0 - g) * x.detach()


@pytest.mark.parametrize("g", [0.0, 0.3, (0.0, 1.0, 1.0), (1.0, 0.2, 0.7)])  # one g; one per chunk
@pytest.mark.parametrize("budget", [1 << 30, 4 * 4 * 21 * 2])  # one chunk; chunks of 2 (M + 1 slabs)
def test_cross_size_grad_equals_naive_stop_gradient_reference(g, budget):
    """Size m's logits = P_m + sum_{c<m} (g_c P_c + (1-g_c) sg(P_c)): same loss value, scaled gradients."""
    from recsys.nn.nested import chunk_bounds

    hidden, items, targets = float64_problem(seed=2)
    weights = [1.0, 2.0, 1.0]
    w = size_weights_tensor(LADDER, weights).double()
    total, per_size = matryoshka_cross_entropy(
        hidden, targets, items, LADDER, weights, budget_bytes=budget, cross_size_grad=g
    )
    partials = [hidden[:, a:b] @ items[:, a:b].T for a, b in chunk_bounds(LADDER)]
    ref_total = 0.0
    for m in range(len(LADDER)):
        gs = [g] * len(LADDER) if isinstance(g, float) else list(g)
        scaled = (_scaled_grad(p, gs[c]) for c, p in enumerate(partials[:m]))
        logits = partials[m] + sum(scaled, torch.zeros_like(partials[m]))
        logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], 1)
        ref_total = ref_total + w[m] * F.cross_entropy(logits, targets)
    exact_total, exact_per_size = naive_loss(hidden, targets, items, LADDER, w)
    torch.testing.assert_close(total, exact_total)  # the value is the exact Matryoshka loss
    torch.testing.assert_close(per_size, exact_per_size.detach())
    grads = torch.autograd.grad(total, (hidden, items))
    ref = torch.autograd.grad(ref_total, (hidden, items))
    exact = torch.autograd.grad(exact_total, (hidden, items))
    torch.testing.assert_close(grads[0], ref[0])
    torch.testing.assert_close(grads[1], ref[1])
    assert not torch.allclose(grads[0], exact[0])  # the rule really changes the gradient
    # the widest chunk's dims are reached by the widest size only: exact there
    torch.testing.assert_close(grads[0][:, 12:], exact[0][:, 12:])
    if g == (0.0, 1.0, 1.0):  # the rule on the first chunk only: every other chunk exact
        torch.testing.assert_close(grads[0][:, 4:], exact[0][:, 4:])
    with pytest.raises(ValueError, match="cross_size_grad"):
        matryoshka_cross_entropy(hidden, targets, items, LADDER, cross_size_grad=1.5)
    with pytest.raises(ValueError, match="one value per size"):
        matryoshka_cross_entropy(hidden, targets, items, LADDER, cross_size_grad=[0.0, 1.0])


def test_full_softmax_loss_takes_the_rule_per_chunk_or_once():
    loss = FullSoftmaxLoss(cross_size_grad_chunks=[0, 1, 1])
    assert loss.cross_size_grad == [0.0, 1.0, 1.0]
    assert FullSoftmaxLoss(cross_size_grad=0.5).cross_size_grad == 0.5
    with pytest.raises(ValueError, match="not both"):
        FullSoftmaxLoss(cross_size_grad=0.5, cross_size_grad_chunks=[0, 1, 1])
    with pytest.raises(ValueError, match="cross_size_grad_chunks must be in"):
        FullSoftmaxLoss(cross_size_grad_chunks=[0, 2, 1])


def test_cross_entropy_stays_exact_where_the_target_probability_underflows():
    """The training path reads CE = -log p(target) off its softmax; a target ~100 nats below the
    best item (p ~ 1e-44, subnormal in fp32) must still get its exact CE, not inf or a rounded one."""
    torch.manual_seed(3)
    hidden = torch.randn(6, 40)
    items = torch.randn(21, 40)
    targets = torch.randint(1, 21, (6,))
    items[targets[0]] = -hidden[0] * 3.0  # row 0: the target far below every other item
    hidden64, items64 = hidden.double(), items.double()
    w = size_weights_tensor(LADDER, None).double()
    _, ref_per_size = naive_loss(hidden64, targets, items64, LADDER, w)
    row0 = hidden64[:1] @ items64.T
    row0[0, 0] = float("-inf")
    assert -torch.log_softmax(row0, -1)[0, targets[0]] > 90  # really in fp32's subnormal range
    h = hidden.clone().requires_grad_()
    total, per_size = matryoshka_cross_entropy(h, targets, items.clone().requires_grad_(), LADDER)
    torch.testing.assert_close(per_size.double(), ref_per_size, rtol=1e-5, atol=1e-4)
    total.backward()
    assert torch.isfinite(h.grad).all()


@pytest.mark.parametrize("gs", [(1.0, 1.0, 1.0), (0.0, 0.5, 1.0)])
def test_no_subnormal_probability_reaches_the_gradient_gemms(gs):
    """A sharp softmax over a catalog puts most items below 1e-38 (subnormal fp32), which makes the
    CPU's GEMMs ~30x slower; the gradients the GEMMs read must hold none, and still equal the
    float64 gradient of the loss."""
    torch.manual_seed(4)
    hidden, items = torch.randn(8, 40) * 3.0, torch.randn(33, 40) * 3.0
    targets = torch.randint(1, 33, (8,))
    logits = all_size_logits(hidden, items, LADDER)
    logits[:, :, 0] = float("-inf")
    probs = torch.softmax(logits, -1)
    subnormal = (probs > 0) & (probs < torch.finfo(torch.float32).tiny)
    assert subnormal.sum() > 10  # the case is real: the plain fp32 softmax has subnormal entries
    factors = [0.5, 0.25, 0.25]
    ce_sum = torch.empty(3)
    _logits_to_gradients_(logits, hidden, targets, items, LADDER, factors, gs, None, ce_sum)
    tiny = (logits != 0) & (logits.abs() < torch.finfo(torch.float32).tiny)
    assert not tiny.any(), f"{int(tiny.sum())} subnormal gradient entries"
    # float64 reference: R_c = G_c + g_c * sum_{m > c} G_m, G_m = f_m (softmax_m - onehot)
    ref = all_size_logits(hidden.double(), items.double(), LADDER)
    ref[:, :, 0] = float("-inf")
    onehot = F.one_hot(targets, 33).double()
    grads = [f * (torch.softmax(ref[m], -1) - onehot) for m, f in enumerate(factors)]
    for c in range(3):
        expected = grads[c] + gs[c] * sum(grads[c + 1 :], torch.zeros_like(grads[c]))
        torch.testing.assert_close(logits[c].double(), expected, rtol=1e-5, atol=1e-9)
    ref_ce = torch.stack([-torch.log_softmax(ref[m], -1)[torch.arange(8), targets].sum() for m in range(3)])
    torch.testing.assert_close(ce_sum.double(), ref_ce, rtol=1e-5, atol=1e-4)


def naive_distilled_loss(hidden, targets, items, ladder, weights, alpha):
    """sum_m w_m ((1 - a_m) CE_m + a_m H(stop_grad(p_M), p_m)), a_M = 0, by plain autograd."""
    log_ps = []
    for d in ladder:
        logits = hidden[:, :d] @ items[:, :d].T
        log_ps.append(torch.log_softmax(logits[:, 1:], dim=-1))  # padding column left out
    teacher = log_ps[-1].exp().detach()
    total = 0.0
    for m, log_p in enumerate(log_ps):
        ce = -log_p.gather(1, (targets - 1)[:, None]).mean()
        a = alpha if m < len(ladder) - 1 else 0.0
        total = total + weights[m] * ((1 - a) * ce + a * -(teacher * log_p).sum(-1).mean())
    return total


@pytest.mark.parametrize("budget", [1 << 30, 1])  # one chunk, one position a chunk
@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_self_distillation_equals_the_naive_soft_target_loss_and_grads(budget, alpha):
    hidden, items, targets = float64_problem(seed=1)
    weights = [1.0, 2.0, 1.0]
    w = size_weights_tensor(LADDER, weights).double()
    total, per_size = matryoshka_cross_entropy(
        hidden, targets, items, LADDER, weights, budget_bytes=budget, distill_weight=alpha
    )
    ref = naive_distilled_loss(hidden, targets, items, LADDER, w, alpha)
    torch.testing.assert_close(total, ref)
    torch.testing.assert_close(
        per_size, naive_loss(hidden, targets, items, LADDER, w)[1].detach()
    )  # still CE
    g, g_ref = torch.autograd.grad(total, (hidden, items)), torch.autograd.grad(ref, (hidden, items))
    torch.testing.assert_close(g[0], g_ref[0])
    torch.testing.assert_close(g[1], g_ref[1])
    # the widest size's own gradient is untouched: with only it weighted, distillation changes nothing
    only_widest = [0.0, 0.0, 1.0]
    a = matryoshka_cross_entropy(hidden, targets, items, LADDER, only_widest, distill_weight=alpha)[0]
    b = matryoshka_cross_entropy(hidden, targets, items, LADDER, only_widest)[0]
    torch.testing.assert_close(torch.autograd.grad(a, hidden)[0], torch.autograd.grad(b, hidden)[0])
    with torch.no_grad():  # the evaluation path reports the same objective
        total_ng, _ = matryoshka_cross_entropy(hidden, targets, items, LADDER, weights, distill_weight=alpha)
    torch.testing.assert_close(total_ng, ref.detach())
    with pytest.raises(ValueError, match="distill_weight"):
        FullSoftmaxLoss(distill_weight=1.0)
