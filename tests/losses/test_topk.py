"""Divergences against a top-k teacher (renormalised over the k) vs a direct per-row formula; LogitKD uses them."""

import math

import pytest
import torch

from lit_distill.losses import LogitKD
from lit_distill.losses import functional as LF
from lit_distill.losses.topk import TOPK_INDICES, TOPK_VALUES, topk_divergence, topk_teacher
from lit_distill.outputs import ModelOutput


def reference(name, s, values, indices, temperature=1.0, beta=0.5, mask=None):
    """Dense textbook formula in float64 python math: teacher = softmax of its k values, zero elsewhere."""
    s = s.double().reshape(-1, s.shape[-1]).tolist()
    values = values.double().reshape(-1, values.shape[-1]).tolist()
    indices = indices.reshape(-1, indices.shape[-1]).tolist()
    keep = [True] * len(s) if mask is None else mask.reshape(-1).tolist()
    rows = []
    for srow, vrow, irow, k in zip(s, values, indices, keep):
        if not k:
            continue
        zs = sum(math.exp(x / temperature) for x in srow)
        q = [math.exp(x / temperature) / zs for x in srow]
        zt = sum(math.exp(v / temperature) for v in vrow)
        p = [0.0] * len(srow)
        for v, i in zip(vrow, irow):
            p[i] = math.exp(v / temperature) / zt

        def kl(a, b):
            return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)

        if name == "forward_kl":
            rows.append(kl(p, q) * temperature**2)
        elif name == "tvd":
            rows.append(0.5 * sum(abs(a - b) for a, b in zip(p, q)))
        elif name == "jsd":
            if beta == 0:
                rows.append(kl(p, q))
            else:
                m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
                rows.append(beta * kl(p, m) + (1 - beta) * kl(q, m))
    return sum(rows) / max(len(rows), 1)


def sample(dtype, shape=(3, 5), vocab=11, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(*shape, vocab, generator=g) * 3).to(dtype)
    t = (torch.randn(*shape, vocab, generator=g) * 3).to(dtype)
    values, indices = t.topk(k, dim=-1)
    return s, t, values, indices.int()


CASES = [("forward_kl", 0.5), ("tvd", 0.5), ("jsd", 0.3), ("jsd", 0.0), ("jsd", 0.9)]


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
@pytest.mark.parametrize("name, beta", CASES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_matches_direct_formula(dtype, rel, name, beta, temperature):
    # bf16 inputs: the reference reads the same rounded numbers, and the function computes in fp32.
    s, _, values, indices = sample(dtype)
    got = topk_divergence(name, s, values, indices, temperature=temperature, beta=beta)
    want = reference(name, s, values, indices, temperature, beta)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=rel, abs=1e-6)


@pytest.mark.parametrize("name, beta", CASES)
def test_mask_counts_only_true_rows(name, beta):
    s, _, values, indices = sample(torch.float32)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) > 0.4
    got = topk_divergence(name, s, values, indices, temperature=2.0, beta=beta, mask=mask)
    assert got.item() == pytest.approx(reference(name, s, values, indices, 2.0, beta, mask), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name, beta", CASES)
def test_all_k_equals_the_full_logit_divergence(name, beta):
    s, t, values, indices = sample(torch.float32, k=11)
    got = topk_divergence(name, s, values, indices, temperature=3.0, beta=beta)
    want = LF.divergence(name, s, t, temperature=3.0, beta=beta)
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


def test_gradient_matches_dense_autograd_reference():
    s, _, values, indices = sample(torch.float64, shape=(6,), vocab=9, k=3)
    s.requires_grad_(True)
    topk_divergence("jsd", s, values, indices, temperature=2.0, beta=0.4).backward()
    got = s.grad.clone()
    s.grad = None
    # Dense reference: teacher probabilities scattered into the vocabulary, zeros elsewhere.
    p = torch.zeros(6, 9, dtype=torch.float64).scatter(-1, indices.long(), torch.softmax(values / 2.0, -1))
    q = torch.softmax(s / 2.0, -1)
    m = 0.4 * p + 0.6 * q
    kl_pm = (p * (torch.where(p > 0, p, 1.0).log() - m.log())).sum(-1)  # 0·log0 = 0, finite gradient
    kl_qm = (q * (q / m).log()).sum(-1)
    (0.4 * kl_pm + 0.6 * kl_qm).mean().backward()
    assert torch.allclose(got, s.grad, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(got).all()


def test_gradient_is_finite_when_k_covers_the_vocabulary():
    s, _, values, indices = sample(torch.float32, k=11)
    s.requires_grad_(True)
    for name in ("tvd", "jsd"):
        topk_divergence(name, s, values, indices, beta=0.5).backward()
        assert torch.isfinite(s.grad).all(), name


def test_logit_kd_reads_top_k_teacher_outputs():
    s, t, values, indices = sample(torch.float32)
    teacher = ModelOutput(extra={TOPK_VALUES: values.half(), TOPK_INDICES: indices})
    assert topk_teacher(teacher) is not None and topk_teacher(ModelOutput(logits=t)) is None
    loss = LogitKD(temperature=2.0)(ModelOutput(logits=s), teacher, None)
    assert loss.item() == pytest.approx(reference("forward_kl", s, values.half(), indices, 2.0), rel=1e-5)
    # Full logits take precedence over any top-k extras.
    both = ModelOutput(logits=t, extra={TOPK_VALUES: values, TOPK_INDICES: indices})
    assert LogitKD(temperature=2.0)(ModelOutput(logits=s), both, None).item() == pytest.approx(
        LF.kl_divergence(s, t, 2.0).item(), rel=1e-6
    )


def test_reverse_kl_and_bad_inputs_are_refused_clearly():
    s, _, values, indices = sample(torch.float32)
    teacher = ModelOutput(extra={TOPK_VALUES: values, TOPK_INDICES: indices})
    with pytest.raises(ValueError, match="reverse_kl is infinite against a top-k teacher"):
        LogitKD(divergence="reverse_kl")(ModelOutput(logits=s), teacher, None)
    with pytest.raises(ValueError, match="beta=1 is reverse KL"):
        topk_divergence("jsd", s, values, indices, beta=1.0)
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        topk_divergence("kl", s, values, indices)
    with pytest.raises(ValueError, match="another vocabulary"):
        topk_divergence("forward_kl", s[..., :5], values, indices)
    with pytest.raises(ValueError, match="do not match the student logits"):
        topk_divergence("forward_kl", s[:2], values, indices)
    with pytest.raises(ValueError, match="temperature must be"):
        topk_divergence("tvd", s, values, indices, temperature=0.0)
