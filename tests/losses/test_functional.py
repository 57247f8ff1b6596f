"""Every divergence of lit_distill.losses.functional against its paper's formula, written here in float64 Python."""

import math

import pytest
import torch

from lit_distill.losses import functional as LF


def softmax_rows(x, t):
    """Direct softmax, one row at a time, in float64."""
    out = []
    for row in x.reshape(-1, x.shape[-1]).double():
        e = [math.exp(v / t) for v in row.tolist()]
        z = sum(e)
        out.append([v / z for v in e])
    return out


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def mix(w, a, b):
    return [w * x + (1 - w) * y for x, y in zip(a, b)]


def akl(p, q, mu):
    """Wu et al. 2024: head = the teacher's top entries up to cumulative mass mu (the first always)."""
    order = sorted(range(len(p)), key=lambda i: -p[i])
    head, mass = set(), 0.0
    for rank, i in enumerate(order):
        mass += p[i]
        if rank == 0 or mass <= mu:
            head.add(i)
    g_head = sum(abs(p[i] - q[i]) for i in head)
    g_tail = sum(abs(p[i] - q[i]) for i in range(len(p)) if i not in head)
    total = g_head + g_tail
    return 0.0 if total == 0 else (g_head * kl(p, q) + g_tail * kl(q, p)) / total


def row(name, p_t, p_s, beta=0.5, alpha=0.1, mu=0.5):
    """One row of each divergence, unscaled, teacher p_t and student p_s."""
    if name == "forward_kl":
        return kl(p_t, p_s)
    if name == "reverse_kl":
        return kl(p_s, p_t)
    if name == "tvd":
        return 0.5 * sum(abs(a - b) for a, b in zip(p_t, p_s))
    if name == "jsd":  # GKD's JSD(beta) / (beta (1 - beta)), its limits at the ends
        if beta == 0:
            return kl(p_t, p_s)
        if beta == 1:
            return kl(p_s, p_t)
        m = mix(beta, p_t, p_s)
        return (beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)) / (beta * (1 - beta))
    if name == "skew_forward_kl":  # DistiLLM: KL(p || a p + (1-a) q)
        return kl(p_t, mix(alpha, p_t, p_s))
    if name == "skew_reverse_kl":  # DistiLLM: KL(q || (1-a) p + a q)
        return kl(p_s, mix(alpha, p_s, p_t))
    assert name == "adaptive_kl"
    return akl(p_t, p_s, mu)


T_SQUARED = {"forward_kl", "reverse_kl", "skew_forward_kl", "skew_reverse_kl", "adaptive_kl"}


def reference(name, s, t, temperature=1.0, beta=0.5, mask=None, alpha=0.1, mu=0.5):
    ps, pt = softmax_rows(s, temperature), softmax_rows(t, temperature)
    keep = [True] * len(ps) if mask is None else mask.reshape(-1).tolist()
    rows = [row(name, p_t, p_s, beta, alpha, mu) for p_s, p_t, k in zip(ps, pt, keep) if k]
    scale = temperature**2 if name in T_SQUARED else 1.0
    return scale * sum(rows) / max(len(rows), 1)


NAMES = ["forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl", "adaptive_kl"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_matches_direct_formula_fp32(name, temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g) * 3, torch.randn(3, 5, 7, generator=g) * 3
    got = LF.divergence(name, s, t, temperature=temperature, beta=0.3, alpha=0.2, head_mass=0.6)
    want = reference(name, s, t, temperature, beta=0.3, alpha=0.2, mu=0.6)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_match_formula_on_the_same_values(name):
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(6, 11, generator=g) * 2).bfloat16()
    t = (torch.randn(6, 11, generator=g) * 2).bfloat16()
    got = LF.divergence(name, s, t, temperature=2.0, beta=0.7)
    # bf16 inputs are upcast before the softmax, so the result equals the formula on the bf16 values.
    assert got.item() == pytest.approx(reference(name, s.float(), t.float(), 2.0, 0.7), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_beta_and_end_points(beta):
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    got = LF.jensen_shannon(s, t, beta=beta)
    assert got.item() == pytest.approx(reference("jsd", s, t, beta=beta), rel=1e-5, abs=1e-7)
    if beta == 0.0:
        assert torch.allclose(got, LF.kl_divergence(s, t))
    if beta == 1.0:
        assert torch.allclose(got, LF.kl_divergence(s, t, reverse=True))


@pytest.mark.parametrize("name", NAMES)
def test_mask_counts_only_true_rows(name):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 6, 5, generator=g), torch.randn(2, 6, 5, generator=g)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    got = LF.divergence(name, s, t, temperature=2.0, mask=mask)
    assert got.item() == pytest.approx(reference(name, s, t, 2.0, mask=mask), rel=1e-5, abs=1e-7)
    # Changing masked-out rows changes nothing.
    s2 = s.clone()
    s2[~mask] = torch.randn_like(s2[~mask]) * 10
    assert torch.equal(LF.divergence(name, s2, t, temperature=2.0, mask=mask), got)


def test_empty_mask_gives_zero_not_nan():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    out = LF.kl_divergence(s, t, mask=torch.zeros(3, dtype=torch.bool))
    assert out.item() == 0.0


def test_temperature_squared_scaling_of_kl():
    s, t = torch.randn(5, 8), torch.randn(5, 8)
    unscaled = reference("forward_kl", s, t, 3.0) / 9.0
    assert LF.kl_divergence(s, t, temperature=3.0).item() == pytest.approx(9.0 * unscaled, rel=1e-5)


def test_identical_inputs_give_zero():
    x = torch.randn(4, 10)
    for name in NAMES:
        assert LF.divergence(name, x, x.clone(), temperature=2.0).abs().item() < 1e-6


@pytest.mark.parametrize("name", [n for n in NAMES if n != "adaptive_kl"])
def test_gradcheck_float64(name):
    g = torch.Generator().manual_seed(4)
    s = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.float64, generator=g)
    mask = torch.tensor([True, False, True])
    fn = lambda x: LF.divergence(name, x, t, temperature=1.7, beta=0.4, alpha=0.3, mask=mask)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (s,))


def test_adaptive_kl_gradient_holds_its_weights_constant():
    """AKL's head/tail weights are constants for the gradient (the paper detaches them): its gradient is that of
    ``w_head·FKL + w_tail·RKL`` with the weights of the point, which gradcheck verifies by finite differences."""
    g = torch.Generator().manual_seed(4)
    s = torch.randn(3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(3, 6, dtype=torch.float64, generator=g)
    temperature, mu = 1.7, 0.4
    weights = []
    for p_s, p_t in zip(softmax_rows(s.detach(), temperature), softmax_rows(t, temperature)):
        f, r = kl(p_t, p_s), kl(p_s, p_t)
        both = akl(p_t, p_s, mu)  # = w_h f + w_t r with w_h + w_t = 1
        w_h = (both - r) / (f - r)
        weights.append([w_h, 1 - w_h])
    w = torch.tensor(weights, dtype=torch.float64)

    def frozen(x):
        f = torch.stack([LF.kl_divergence(x[i], t[i], temperature) for i in range(3)])
        r = torch.stack([LF.kl_divergence(x[i], t[i], temperature, reverse=True) for i in range(3)])
        return (w[:, 0] * f + w[:, 1] * r).mean()

    assert torch.autograd.gradcheck(frozen, (s,))
    LF.adaptive_kl(s, t, head_mass=mu, temperature=temperature).backward()
    want = torch.autograd.grad(frozen(s), s)[0]
    assert torch.allclose(s.grad, want, rtol=1e-10, atol=1e-12)


def test_gradient_matches_finite_differences_in_fp32():
    s = torch.randn(2, 6, requires_grad=True)
    t = torch.randn(2, 6)
    LF.kl_divergence(s, t, temperature=2.0).backward()
    eps = 1e-3
    for i, j in [(0, 0), (1, 3)]:
        plus, minus = s.detach().clone(), s.detach().clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        fd = (LF.kl_divergence(plus, t, 2.0) - LF.kl_divergence(minus, t, 2.0)) / (2 * eps)
        assert s.grad[i, j].item() == pytest.approx(fd.item(), rel=2e-2, abs=1e-4)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, t: LF.kl_divergence(s, t, temperature=0.0), "temperature"),
        (lambda s, t: LF.kl_divergence(s, t, temperature=float("nan")), "temperature"),
        (lambda s, t: LF.jensen_shannon(s, t, beta=1.5), "beta"),
        (lambda s, t: LF.divergence("kl", s, t), "unknown divergence 'kl'"),
        (lambda s, t: LF.kl_divergence(s, t[:, :3]), r"\(4, 5\).*\(4, 3\)"),
        (lambda s, t: LF.kl_divergence(s, t, mask=torch.ones(5, dtype=torch.bool)), "mask shape"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(4, 5), torch.randn(4, 5))


@pytest.mark.parametrize("name", NAMES)
def test_nan_inputs_give_nan_not_a_silent_number(name):
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    t[1, 2] = float("nan")
    assert torch.isnan(LF.divergence(name, s, t))
    s[0, 0] = float("nan")
    assert torch.isnan(LF.divergence(name, s, torch.randn(3, 4)))


def test_zero_probability_entries_count_as_zero():
    t = torch.tensor([[0.0, float("-inf"), 1.0]])
    s = torch.tensor([[0.5, 0.1, 0.2]])
    got = LF.kl_divergence(s, t)
    assert torch.isfinite(got) and got.item() == pytest.approx(reference("forward_kl", s, t.clamp_min(-1e4)), rel=1e-5)
