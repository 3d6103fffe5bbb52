"""mamba_ssm CUDA kernels vs the torch reference scan: forward and gradients (needs CUDA + mamba-ssm)."""

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("mamba_ssm", reason="needs the `gpu` extra (mamba-ssm)")

from recsys.model import MatryoshkaRecModel, ModelConfig  # noqa: E402
from recsys.nn.mamba import MambaConfig, cuda_kernels, selective_scan_cuda, selective_scan_torch  # noqa: E402


def inputs(batch=4, length=50, channels=96, n=16, device="cuda"):
    g = torch.Generator(device="cpu").manual_seed(0)
    real = torch.ones(batch, length, 1)
    real[1, :20] = 0
    real[2, :49] = 0  # left padding
    u = torch.randn(batch, length, channels, generator=g) * real
    delta = torch.nn.functional.softplus(torch.randn(batch, length, channels, generator=g) - 2) * real
    A = -torch.exp(torch.randn(channels, n, generator=g))
    B = torch.randn(batch, length, n, generator=g)
    C = torch.randn(batch, length, n, generator=g)
    D = torch.randn(channels, generator=g)
    return [t.to(device).requires_grad_() for t in (u, delta, A, B, C, D)]


def test_kernel_matches_reference_forward_and_gradients():
    assert cuda_kernels() is not None
    args = inputs()
    ref = selective_scan_torch(*args)
    got = selective_scan_cuda(*args)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(got, args, g), torch.autograd.grad(ref, args, g)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_model_on_cuda_matches_cpu_and_keeps_the_slicing_invariant():
    torch.manual_seed(0)
    config = ModelConfig(ladder=(8, 16, 64), backbone=MambaConfig(num_blocks=2, dropout=0.0))
    model = MatryoshkaRecModel(config, 100, {"text": 32})
    model.load_item_features({"text": torch.randn(101, 32)})
    model.eval()
    seq = torch.randint(1, 101, (5, 20))
    seq[0, :7] = 0
    with torch.no_grad():
        cpu = model.score(seq)
        gpu_model = model.cuda()
        gpu = gpu_model.score(seq.cuda())
        torch.testing.assert_close(gpu.cpu()[..., 1:], cpu[..., 1:], rtol=1e-3, atol=1e-3)
        for m, d in enumerate(config.ladder):
            small = gpu_model.slice(d).score(seq.cuda())[-1]
            tol = 1e-4 + 1e-5 * gpu[m, :, 1:].abs().max().item()
            assert (small[:, 1:] - gpu[m, :, 1:]).abs().max().item() <= tol
