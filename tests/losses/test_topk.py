"""Divergences against a top-k teacher, with the tail bucket (exact over k+1 outcomes) or renormalised over the k,
against the papers' formulas written in float64 Python (tests/losses/test_functional.py); LogitKD uses them."""

import math

import pytest
import torch

from lit_distill.losses import LogitKD
from lit_distill.losses import functional as LF
from lit_distill.losses.topk import (
    TOPK_INDICES,
    TOPK_TAIL,
    TOPK_TAIL_TEMPERATURE,
    TOPK_VALUES,
    topk_divergence,
    topk_teacher,
)
from lit_distill.outputs import ModelOutput
from tests.losses.test_functional import NAMES, T_SQUARED, row, softmax_rows

OPTIONS = {"beta": 0.3, "alpha": 0.2, "head_mass": 0.4}
#: Finite against a teacher renormalised over its k (zero outside): no reverse-KL part.
RENORMALISABLE = ["forward_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl"]


def reference(name, s, t, indices, temperature=1.0, mask=None, tail=True, **options):
    """Python float64: ``tail``: both distributions coarsened to the k ids + one bucket for the rest; else the
    teacher's k values renormalised, zero elsewhere, against the student's whole vocabulary."""
    options = {**OPTIONS, **options}
    ps, pt = softmax_rows(s, temperature), softmax_rows(t, temperature)
    keep = [True] * len(ps) if mask is None else mask.reshape(-1).tolist()
    rows = []
    for p_s, p_t, ids, k in zip(ps, pt, indices.reshape(-1, indices.shape[-1]).tolist(), keep):
        if not k:
            continue
        if tail:
            p_t = [p_t[i] for i in ids] + [sum(p for j, p in enumerate(p_t) if j not in ids)]
            p_s = [p_s[i] for i in ids] + [sum(p for j, p in enumerate(p_s) if j not in ids)]
        else:
            z = sum(p_t[i] for i in ids)
            p_t = [p_t[j] / z if j in ids else 0.0 for j in range(len(p_t))]
        rows.append(row(name, p_t, p_s, options["beta"], options["alpha"], options["head_mass"]))
    return (temperature**2 if name in T_SQUARED else 1.0) * sum(rows) / max(len(rows), 1)


def sample(dtype, shape=(3, 5), vocab=11, k=4, seed=0, temperature=1.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(*shape, vocab, generator=g) * 3).to(dtype)
    t = (torch.randn(*shape, vocab, generator=g) * 3).to(dtype)
    values, indices = t.topk(k, dim=-1)
    log_p = (t.double() / temperature).log_softmax(-1)
    tail = log_p.scatter(-1, indices, -math.inf).logsumexp(-1).float()  # what the cache writer stores
    return s, t, values, indices.int(), tail


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_tail_bucket_is_exact_over_k_plus_one_outcomes(dtype, name, temperature):
    # bf16 inputs: the reference reads the same rounded numbers, and the function computes in fp32.
    s, t, values, indices, tail = sample(dtype, temperature=temperature)
    got = topk_divergence(name, s, values, indices, tail, temperature, temperature=temperature, **OPTIONS)
    # values are the teacher's own top-k logits, so the coarsened teacher is exact
    want = reference(name, s, t.float(), indices, temperature)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=2e-5, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", RENORMALISABLE)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_renormalised_equals_the_dense_formula(dtype, name, temperature):
    s, t, values, indices, _ = sample(dtype)
    got = topk_divergence(name, s, values, indices, temperature=temperature, **OPTIONS)
    want = reference(name, s, t.float(), indices, temperature, tail=False)
    assert got.item() == pytest.approx(want, rel=2e-5, abs=1e-6)


@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_mask_counts_only_true_rows(name, tail):
    if not tail and name not in RENORMALISABLE:
        pytest.skip("infinite without the tail")
    s, t, values, indices, log_tail = sample(torch.float32, temperature=2.0)
    log_tail = log_tail if tail else None
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) > 0.4
    got = topk_divergence(name, s, values, indices, log_tail, temperature=2.0, mask=mask, **OPTIONS)
    assert got.item() == pytest.approx(reference(name, s, t, indices, 2.0, mask, tail=tail), rel=2e-5, abs=1e-6)
    s2 = s.clone()
    s2[~mask] = torch.randn_like(s2[~mask]) * 10  # masked rows change nothing
    assert torch.equal(topk_divergence(name, s2, values, indices, log_tail, temperature=2.0, mask=mask, **OPTIONS), got)


@pytest.mark.parametrize("name", NAMES)
def test_all_k_equals_the_full_logit_divergence(name):
    s, t, values, indices, tail = sample(torch.float32, k=11, temperature=3.0)
    want = LF.divergence(name, s, t, temperature=3.0, **OPTIONS)
    with_tail = topk_divergence(name, s, values, indices, tail, 3.0, temperature=3.0, **OPTIONS)
    assert with_tail.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    if name in RENORMALISABLE:
        renormalised = topk_divergence(name, s, values, indices, temperature=3.0, **OPTIONS)
        assert renormalised.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("name", [n for n in NAMES if n != "adaptive_kl"])  # its weights are held constant
def test_gradcheck_float64(name, tail):
    if not tail and name not in RENORMALISABLE:
        pytest.skip("infinite without the tail")
    s, _, values, indices, log_tail = sample(torch.float64, shape=(4,), vocab=7, k=3, temperature=1.5)
    s.requires_grad_(True)
    log_tail = log_tail.double() if tail else None

    def fn(x):
        return topk_divergence(name, x, values, indices, log_tail, temperature=1.5, **OPTIONS)

    assert torch.autograd.gradcheck(fn, (s,))


@pytest.mark.parametrize("name", NAMES)
def test_gradient_is_finite_when_k_covers_the_vocabulary(name):
    s, _, values, indices, tail = sample(torch.float32, k=11)
    for t in (tail, None) if name in RENORMALISABLE else (tail,):
        x = s.clone().requires_grad_(True)
        topk_divergence(name, x, values, indices, t, **OPTIONS).backward()
        assert torch.isfinite(x.grad).all(), name


def test_logit_kd_reads_top_k_teacher_outputs():
    s, t, values, indices, tail = sample(torch.float32)
    teacher = ModelOutput(extra={TOPK_VALUES: values.half(), TOPK_INDICES: indices})
    assert topk_teacher(teacher) is not None and topk_teacher(ModelOutput(logits=t)) is None
    loss = LogitKD(temperature=2.0)(ModelOutput(logits=s), teacher, None)
    assert loss.item() == pytest.approx(reference("forward_kl", s, t, indices, 2.0, tail=False), rel=1e-3)
    # with the tail stored (at the loss's temperature) LogitKD compares k + 1 outcomes
    _, _, _, _, tail2 = sample(torch.float32, temperature=2.0)
    extra = {TOPK_VALUES: values, TOPK_INDICES: indices, TOPK_TAIL: tail2, TOPK_TAIL_TEMPERATURE: 2.0}
    loss = LogitKD(temperature=2.0)(ModelOutput(logits=s), ModelOutput(extra=extra), None)
    assert loss.item() == pytest.approx(reference("forward_kl", s, t, indices, 2.0), rel=1e-5)
    # Full logits take precedence over any top-k extras.
    both = ModelOutput(logits=t, extra=extra)
    assert LogitKD(temperature=2.0)(ModelOutput(logits=s), both, None).item() == pytest.approx(
        LF.kl_divergence(s, t, 2.0).item(), rel=1e-6
    )


@pytest.mark.parametrize(
    "name, options",
    [("reverse_kl", {}), ("adaptive_kl", {}), ("jsd", {"beta": 1.0}), ("skew_reverse_kl", {"alpha": 0.0})],
)
def test_reverse_parts_against_a_renormalised_teacher_are_refused(name, options):
    s, _, values, indices, tail = sample(torch.float32)
    with pytest.raises(ValueError, match=f"{name} .*infinite against a top-k teacher renormalised"):
        topk_divergence(name, s, values, indices, **options)
    assert torch.isfinite(topk_divergence(name, s, values, indices, tail, **options))  # fine with the tail


def test_bad_inputs_are_refused_clearly():
    s, _, values, indices, tail = sample(torch.float32)
    teacher = ModelOutput(extra={TOPK_VALUES: values, TOPK_INDICES: indices})
    with pytest.raises(ValueError, match="reverse_kl .*infinite"):
        LogitKD(divergence="reverse_kl")(ModelOutput(logits=s), teacher, None)
    with pytest.raises(ValueError, match="outside the top-k at temperature 1.0, but this loss uses temperature 2.0"):
        topk_divergence("forward_kl", s, values, indices, tail, 1.0, temperature=2.0)
    with pytest.raises(ValueError, match="top-k tail"):
        topk_divergence("forward_kl", s, values, indices, tail[:2])
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        topk_divergence("kl", s, values, indices)
    with pytest.raises(ValueError, match="another vocabulary"):
        topk_divergence("forward_kl", s[..., :5], values, indices)
    with pytest.raises(ValueError, match="do not match the student logits"):
        topk_divergence("forward_kl", s[:2], values, indices)
    with pytest.raises(ValueError, match="temperature must be"):
        topk_divergence("tvd", s, values, indices, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        topk_divergence("skew_forward_kl", s, values, indices, alpha=1.0)
