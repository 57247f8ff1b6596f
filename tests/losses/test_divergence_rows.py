"""One formula on every path: JSD(β) continuous in β and reaching forward KL at β=0 and reverse KL at β=1 (values and
gradients, near both ends), and the temperature convention (T² or not) the same on full logits, the fused LM-head
path and the top-k cache."""

import math

import pytest
import torch

from lit_distill.losses import functional as LF
from lit_distill.losses.topk import topk_divergence
from tests.losses.fused.test_linear_kd import _triton_runnable
from tests.losses.test_functional import NAMES, reference

NEAR = [1e-2, 1e-4, 1e-6]


def heads(dtype, n=6, h=5, v=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs, ws = torch.randn(n, h, generator=g, dtype=torch.float64), torch.randn(v, h, generator=g, dtype=torch.float64)
    ht, wt = torch.randn(n, h, generator=g, dtype=torch.float64), torch.randn(v, h, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (hs, ws * 0.6, ht, wt * 0.6)]


def value_and_grad(path, name, hs, ws, ht, wt, temperature=1.0, **options):
    """The loss and its gradient with respect to the student's hidden states, by one path."""
    hs = hs.detach().clone().requires_grad_()
    if path.startswith("fused"):
        impl = path.split("-")[1]
        loss = LF.fused_linear_kd(hs, ws, ht, wt, divergence=name, temperature=temperature, impl=impl, chunk_size=4,
                                  **options)  # fmt: skip
    else:
        zs, zt = hs @ ws.T, ht @ wt.T
        if path == "full":
            loss = LF.divergence(name, zs, zt, temperature=temperature, **options)
        else:  # the top-k cache with its tail bucket, k < vocabulary, the tail stored at this temperature
            values, indices = zt.topk(5, dim=-1)
            tail = (zt.double() / temperature).log_softmax(-1).scatter(-1, indices, -math.inf).logsumexp(-1)
            loss = topk_divergence(name, zs, values, indices, tail, temperature, temperature=temperature, **options)
    loss.backward()
    return float(loss.detach()), hs.grad.double()


def paths(dtype):
    out = ["full", "fused-torch", "cache"]
    if dtype == torch.float32 and _triton_runnable():
        out.append("fused-triton")
    return out


def close(a, b, tol):
    (va, ga), (vb, gb) = a, b
    return abs(va - vb) <= tol * abs(vb) + 1e-7 and float((ga - gb).norm()) <= tol * float(gb.norm()) + 1e-7


def error(got, target):
    (v, g), (tv, tg) = got, target
    return max(abs(v - tv) / abs(tv), float((g - tg).norm() / tg.norm()))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_jsd_reaches_forward_kl_at_0_and_reverse_kl_at_1_on_every_path(dtype, tol):
    """JSD(β) at β and 1-β for β = 1e-2, 1e-4, 1e-6 against plain KL (JSD has no T²: KL/T²), values and gradients.

    The approach is about linear in β where the student's probabilities are not tiny where the teacher's are
    (these inputs), slower otherwise (log(1/β) caps the log-ratio): the error must shrink towards 0 either way.
    """
    inputs = heads(dtype)
    temperature = 1.5
    for path in paths(dtype):
        for end, kl in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
            v, g = value_and_grad(path, kl, *inputs, temperature)
            target = (v / temperature**2, g / temperature**2)
            assert error(value_and_grad(path, "jsd", *inputs, temperature, beta=end), target) < 1e-6, (path, end)
            errors = []
            for gap in NEAR:
                beta = gap if end == 0.0 else 1.0 - gap
                errors.append(error(value_and_grad(path, "jsd", *inputs, temperature, beta=beta), target))
            assert errors[0] > errors[1] > errors[2] or errors[2] < tol, (path, end, errors)
            assert errors[2] < 100 * NEAR[2] + tol, (path, end, errors)  # at β = 1e-6 (1 - 1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_jsd_is_continuous_in_beta(dtype):
    """No jump anywhere on a grid from 0 to 1, ends included: neighbouring β differ by a bounded slope (a jump, as
    GKD's unnormalised JSD(β) makes at its ends, where it tends to 0 but is defined as KL, would be of the order
    of the loss itself)."""
    inputs = heads(dtype, seed=1)
    betas = [0.0, 1e-6, 1e-3, *[i / 100 for i in range(1, 100)], 1 - 1e-3, 1 - 1e-6, 1.0]
    for path in paths(dtype):
        curve = [value_and_grad(path, "jsd", *inputs, beta=b) for b in betas]
        scale = max(abs(v) for v, _ in curve)
        for (b0, (v0, g0)), (b1, (v1, g1)) in zip(zip(betas, curve), zip(betas[1:], curve[1:])):
            assert abs(v1 - v0) <= 50 * scale * (b1 - b0) + 1e-6, (path, b0, b1, v0, v1)
            assert float((g1 - g0).norm()) <= 50 * float(g0.norm()) * (b1 - b0) + 1e-5, (path, b0, b1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_convention_is_the_same_on_every_path(name, temperature):
    """Full logits, the fused path and a cache holding every logit all give the reference of the paper's formula
    at temperature T, times T² for the KL family and 1 for JSD and TVD (written out in test_functional)."""
    hs, ws, ht, wt = heads(torch.float64, seed=2)
    zs, zt = hs @ ws.T, ht @ wt.T
    want = reference(name, zs, zt, temperature, beta=0.3, alpha=0.2, mu=0.4)
    options = {"beta": 0.3, "alpha": 0.2, "head_mass": 0.4}
    full = LF.divergence(name, zs, zt, temperature=temperature, **options)
    fused = LF.fused_linear_kd(hs, ws, ht, wt, divergence=name, temperature=temperature, **options)
    values, indices = zt.topk(zt.shape[-1], dim=-1)
    tail = torch.full(zt.shape[:-1], -math.inf, dtype=zt.dtype)  # no mass outside "the top 13 of 13"
    cache = topk_divergence(name, zs, values, indices, tail, temperature, temperature=temperature, **options)
    for got in (full, fused, cache):
        assert float(got) == pytest.approx(want, rel=1e-9)
    if name in ("forward_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl"):  # finite renormalised
        renormalised = topk_divergence(name, zs, values, indices, temperature=temperature, **options)
        assert float(renormalised) == pytest.approx(want, rel=1e-9)


def test_fused_triton_kernel_jsd_near_the_ends_matches_float64():
    """The kernel's log1p forms near the ends (fp32) against the float64 formula."""
    if not _triton_runnable():
        pytest.skip("needs triton with CUDA, or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hs, ws, ht, wt = heads(torch.float64, seed=3)
    for beta in (1e-6, 1 - 1e-6):
        exact = value_and_grad("full", "jsd", hs, ws, ht, wt, 1.0, beta=beta)
        h32 = [x.float().to(dev) for x in (hs, ws, ht, wt)]
        got = value_and_grad("fused-triton", "jsd", *h32, 1.0, beta=beta)
        assert close((got[0], got[1].cpu()), exact, 1e-5), beta


def test_log_ratio_to_mixture_is_exact_near_the_ends():
    from lit_distill.losses.divergence_rows import log_ratio_to_mixture

    log_a = torch.tensor([-0.1, -3.0, -20.0, -1.0])
    log_b = torch.tensor([-2.0, -0.2, -0.5, -1.0 - 1e-7])
    for w in (1e-7, 0.3, 1 - 1e-7, 0.0, 1.0):
        got = log_ratio_to_mixture(log_a, log_b, w).double()
        a, b = log_a.double().exp(), log_b.double().exp()
        want = log_a.double() - torch.log(w * a + (1 - w) * b)
        # relative precision, also where the ratio is tiny (w near 1, a ≈ b)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-12), (w, got, want)
