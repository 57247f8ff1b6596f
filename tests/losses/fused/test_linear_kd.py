"""fused_linear_kd against the direct full-logits formula of lit_distill.losses.functional.

Every comparison builds the full ``[N, V]`` logits with ``F.linear`` and differentiates
``functional.divergence`` with autograd; the fused function must give the same value and the same
gradients for the student hidden states, weight and bias, for any chunk size.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from lit_distill.losses import functional as LF
from lit_distill.losses.fused import FusedKDParts, auto_chunk_size, fused_linear_kd

DIVERGENCES = [
    ("forward_kl", 0.5),
    ("reverse_kl", 0.5),
    ("jsd", 0.3),
    ("jsd", 0.0),
    ("jsd", 1.0),
    ("jsd", 1e-6),  # near the ends JSD(beta) / (beta (1 - beta)) takes its log1p forms
    ("jsd", 1 - 1e-6),
    ("tvd", 0.5),
    ("skew_forward_kl", 0.5),  # beta is not read: the skew is alpha's default, 0.1
    ("skew_reverse_kl", 0.5),
    ("adaptive_kl", 0.5),
]
#: Every divergence but adaptive_kl, which sorts each row and has no kernel.
TRITON_DIVERGENCES = [d for d in DIVERGENCES if d[0] != "adaptive_kl"]


def make(n=11, hs=5, ht=7, v=23, dtype=torch.float64, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    student = [rnd(n, hs), rnd(v, hs, scale=0.8), rnd(v, scale=0.5) if bias else None]
    teacher = [rnd(n, ht), rnd(v, ht, scale=0.8), rnd(v, scale=0.5) if bias else None]
    labels = torch.randint(0, v, (n,), generator=g)
    labels[[1, min(4, n - 1)]] = -100
    return student, teacher, labels


def leaves(tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def grads(tensors):
    return [None if t is None else t.grad for t in tensors]


def direct(student, teacher, labels, divergence, beta=0.5, temperature=1.0, ce_weight=0.0, ignore_index=-100):
    """The reference: full logits, functional.divergence, autograd."""
    s = leaves(student)
    zs = F.linear(s[0], s[1], s[2])
    zt = F.linear(teacher[0], teacher[1], teacher[2])
    mask = None if labels is None else labels != ignore_index
    loss = LF.divergence(divergence, zs, zt, temperature=temperature, beta=beta, mask=mask)
    if ce_weight:
        log_q = torch.log_softmax(zs.to(loss.dtype), dim=-1)
        nll = -log_q.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
        loss = loss + ce_weight * LF.masked_mean(nll, mask)
    loss.backward()
    return loss.detach(), grads(s)


def fused(student, teacher, labels, divergence, **kw):
    s = leaves(student)
    loss = fused_linear_kd(
        s[0], s[1], teacher[0], teacher[1], divergence=divergence, labels=labels,
        student_bias=s[2], teacher_bias=teacher[2], **kw,
    )  # fmt: skip
    loss.backward()
    return loss.detach(), grads(s)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def assert_same(got, ref, tol):
    (loss, g), (ref_loss, ref_g) = got, ref
    assert abs(float(loss) - float(ref_loss)) <= tol * abs(float(ref_loss)), (float(loss), float(ref_loss))
    for name, a, b in zip(("hidden", "weight", "bias"), g, ref_g):
        if b is not None:
            assert rel(a, b) <= tol, f"{name} gradient differs: relative error {rel(a, b):.2e} > {tol}"


# ------------------------------------------------------------------------ value and gradient
@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_matches_direct_formula_float64(divergence, beta, temperature, chunk_size):
    student, teacher, labels = make()
    ref = direct(student, teacher, labels, divergence, beta, temperature)
    got = fused(
        student, teacher, labels, divergence, beta=beta, temperature=temperature, chunk_size=chunk_size, impl="torch"
    )
    assert_same(got, ref, 1e-10)


def test_every_chunk_size_gives_the_same_result():
    """Chunk sizes 1..N, with an uneven last chunk for most of them."""
    student, teacher, labels = make(n=9, seed=3)
    ref = direct(student, teacher, labels, "jsd", beta=0.7, temperature=1.5)
    for chunk_size in range(1, 10):
        got = fused(student, teacher, labels, "jsd", beta=0.7, temperature=1.5, chunk_size=chunk_size, impl="torch")
        assert_same(got, ref, 1e-10)


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
def test_matches_direct_formula_float32_3d(divergence, beta):
    """[B, T, H] inputs and [B, T] labels are flattened; float32 agrees to rounding."""
    student, teacher, labels = make(n=12, dtype=torch.float32, seed=1)
    student = [student[0].reshape(3, 4, -1), *student[1:]]
    teacher = [teacher[0].reshape(3, 4, -1), *teacher[1:]]
    labels = labels.reshape(3, 4)
    ref = direct(student, teacher, labels, divergence, beta, temperature=2.0)
    got = fused(student, teacher, labels, divergence, beta=beta, temperature=2.0, chunk_size=5, impl="torch")
    assert got[1][0].shape == (3, 4, 5)
    assert_same(got, ref, 2e-5)


def test_ignore_index_and_mean_over_counted_rows():
    student, teacher, labels = make(seed=4)
    labels = labels.clone()
    labels[labels == -100] = 5
    labels[[0, 2, 3]] = -1
    ref = direct(student, teacher, labels, "forward_kl", temperature=3.0, ignore_index=-1)
    got = fused(student, teacher, labels, "forward_kl", temperature=3.0, ignore_index=-1, chunk_size=3, impl="torch")
    assert_same(got, ref, 1e-10)
    # Ignored rows get exactly zero gradient.
    assert torch.count_nonzero(got[1][0][[0, 2, 3]]) == 0


def test_no_labels_averages_every_row():
    student, teacher, _ = make(seed=5, bias=False)
    ref = direct(student, teacher, None, "reverse_kl", temperature=2.0)
    got = fused(student, teacher, None, "reverse_kl", temperature=2.0, chunk_size=4, impl="torch")
    assert_same(got, ref, 1e-10)


def test_all_rows_ignored_gives_zero_not_nan():
    student, teacher, labels = make(seed=6)
    labels = torch.full_like(labels, -100)
    loss, g = fused(student, teacher, labels, "jsd", impl="torch")
    assert float(loss) == 0.0
    for t in g:
        assert torch.count_nonzero(t) == 0 and torch.isfinite(t).all()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_hard_label_ce_mixed_in(temperature):
    student, teacher, labels = make(seed=7)
    ref = direct(student, teacher, labels, "jsd", beta=0.4, temperature=temperature, ce_weight=0.3)
    got = fused(student, teacher, labels, "jsd", beta=0.4, temperature=temperature, ce_weight=0.3, chunk_size=3)
    assert_same(got, ref, 1e-10)


def test_return_parts_reports_each_term():
    student, teacher, labels = make(seed=8, bias=False)
    s = leaves(student)
    parts = fused_linear_kd(
        s[0], s[1], teacher[0], teacher[1], labels=labels, divergence="tvd", ce_weight=0.5, return_parts=True
    )
    assert isinstance(parts, FusedKDParts)
    kd = direct(student, teacher, labels, "tvd")[0]
    zs = F.linear(student[0], student[1])
    ce = F.cross_entropy(zs, labels, ignore_index=-100)
    assert torch.allclose(parts.kd, kd, rtol=1e-10) and torch.allclose(parts.ce, ce, rtol=1e-10)
    assert torch.allclose(parts.loss, kd + 0.5 * ce, rtol=1e-10)
    assert not parts.kd.requires_grad and parts.loss.requires_grad


def test_upstream_gradient_scales_the_stored_gradients():
    student, teacher, labels = make(seed=9)
    s = leaves(student)
    loss = fused_linear_kd(
        s[0], s[1], teacher[0], teacher[1], labels=labels, student_bias=s[2], teacher_bias=teacher[2], chunk_size=5
    )
    (3.0 * loss).backward()
    _, ref_g = direct(student, teacher, labels, "forward_kl")
    for a, b in zip(grads(s), ref_g):
        assert rel(a, 3.0 * b) < 1e-10


@pytest.mark.parametrize("divergence,beta", [d for d in DIVERGENCES if d[0] != "adaptive_kl"])
def test_gradcheck_float64(divergence, beta):
    """(adaptive_kl's weights are constants for its gradient, so finite differences do not apply: its gradient
    equals the direct formula's autograd gradient above, which tests/losses/test_functional.py verifies.)"""
    student, teacher, labels = make(n=4, hs=3, ht=2, v=6, seed=10)
    s = leaves(student)

    def fn(h, w, b):
        return fused_linear_kd(
            h, w, teacher[0], teacher[1], divergence=divergence, beta=beta, temperature=1.7, labels=labels,
            student_bias=b, teacher_bias=teacher[2], chunk_size=3, impl="torch",
        )  # fmt: skip

    # Full Jacobians for one divergence, random projections (much cheaper) for the others.
    fast = (divergence, beta) != ("jsd", 0.3)
    assert torch.autograd.gradcheck(fn, tuple(s), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


def test_teacher_gets_no_gradient_and_no_grad_mode_works():
    student, teacher, labels = make(seed=11, bias=False)
    s, t = leaves(student), leaves(teacher)
    loss = fused_linear_kd(s[0], s[1], t[0], t[1], labels=labels, divergence="jsd")
    loss.backward()
    assert t[0].grad is None and t[1].grad is None and s[1].grad is not None
    with torch.no_grad():
        again = fused_linear_kd(s[0], s[1], t[0], t[1], labels=labels, divergence="jsd")
    assert not again.requires_grad and torch.allclose(again, loss.detach(), rtol=1e-12)


def test_second_backward_recomputes():
    """The stored gradients are handed to autograd once; a retained graph's next backward recomputes them."""
    student, teacher, labels = make(seed=12, bias=False)
    s = leaves(student)
    loss = fused_linear_kd(s[0], s[1], teacher[0], teacher[1], labels=labels, chunk_size=4)
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in s[:2]]
    loss.backward()
    for t, g in zip(s[:2], first):
        assert rel(t.grad, 2 * g) < 1e-12


# --------------------------------------------------------------------------------- bf16 inputs
def truth(student, teacher, labels, divergence, **kw):
    """float64 direct formula on the same (rounded) inputs."""
    up = [[None if t is None else t.double() for t in side] for side in (student, teacher)]
    return direct(*up, labels, divergence, **kw)


@pytest.mark.parametrize("divergence,beta", [("forward_kl", 0.5), ("jsd", 0.5), ("tvd", 0.5)])
def test_bf16_equals_direct_bf16_formula(divergence, beta):
    """Same bf16 logits as ``h @ W.T`` in bf16, hence the same loss; gradients as close to the exact
    ones as the direct formula's, and closer with ``fp32_logits``."""
    student, teacher, labels = make(n=16, hs=8, ht=12, v=300, dtype=torch.bfloat16, seed=13)
    kw = {"beta": beta, "temperature": 1.5}
    exact = truth(student, teacher, labels, divergence, **kw)
    ref = direct(student, teacher, labels, divergence, **kw)
    got = fused(student, teacher, labels, divergence, chunk_size=5, impl="torch", **kw)
    assert abs(float(got[0]) - float(ref[0])) <= 1e-5 * abs(float(ref[0]))
    precise = fused(student, teacher, labels, divergence, chunk_size=5, impl="torch", fp32_logits=True, **kw)
    assert abs(float(precise[0]) - float(exact[0])) <= 1e-5 * abs(float(exact[0]))
    for a, b, p, e in zip(got[1], ref[1], precise[1], exact[1]):
        assert a.dtype == torch.bfloat16
        assert rel(a, e) <= 1.25 * rel(b, e) + 1e-3
        assert rel(p, e) <= rel(b, e)
        assert rel(p, e) < 8e-3


def test_fp32_weight_with_bf16_hidden_runs_the_head_in_bf16():
    student, teacher, labels = make(n=6, v=40, dtype=torch.bfloat16, seed=14, bias=False)
    w32 = student[1].float().requires_grad_()
    h = student[0].clone().requires_grad_()
    loss = fused_linear_kd(h, w32, teacher[0], teacher[1], labels=labels, chunk_size=4)
    loss.backward()
    assert w32.grad.dtype == torch.float32 and h.grad.dtype == torch.bfloat16
    ref = direct([student[0], student[1], None], teacher, labels, "forward_kl")
    assert abs(float(loss.detach()) - float(ref[0])) <= 1e-5 * float(ref[0])
    assert rel(w32.grad, ref[1][1]) < 1e-2


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "change,match",
    [
        ({"divergence": "kl"}, "unknown divergence 'kl'"),
        ({"beta": 1.5}, r"beta must lie in \[0, 1\], got 1.5"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
        ({"chunk_size": 0}, "chunk_size must be an int >= 1 or None"),
        ({"chunk_size": 2.5}, "got 2.5"),
        ({"ce_weight": -1.0}, "ce_weight must be a finite number >= 0, got -1.0"),
        ({"impl": "cuda"}, "impl must be"),
    ],
)
def test_bad_options_are_named(change, match):
    student, teacher, labels = make(seed=15, bias=False)
    with pytest.raises(ValueError, match=match):
        fused_linear_kd(student[0], student[1], teacher[0], teacher[1], labels=labels, **change)


def test_bad_shapes_are_named():
    (hs, ws, _), (ht, wt, _), labels = make(seed=16, bias=False)
    with pytest.raises(ValueError, match=r"student vocab 23 != teacher vocab 22"):
        fused_linear_kd(hs, ws, ht, wt[:22])
    with pytest.raises(ValueError, match=r"must end in the student weight's hidden size 5"):
        fused_linear_kd(hs[:, :4], ws, ht, wt)
    with pytest.raises(ValueError, match=r"must end in the teacher weight's hidden size 7"):
        fused_linear_kd(hs, ws, ht[:, :6], wt)
    with pytest.raises(ValueError, match="same leading"):
        fused_linear_kd(hs, ws, ht[:10], wt)
    with pytest.raises(ValueError, match=r"labels shape \(10,\)"):
        fused_linear_kd(hs, ws, ht, wt, labels=labels[:10])
    with pytest.raises(ValueError, match=r"weights must be 2-D"):
        fused_linear_kd(hs, ws[None], ht, wt)
    with pytest.raises(ValueError, match=r"student_bias must have shape \(23,\)"):
        fused_linear_kd(hs, ws, ht, wt, student_bias=torch.zeros(22, dtype=hs.dtype))
    with pytest.raises(ValueError, match="ce_weight > 0 needs `labels`"):
        fused_linear_kd(hs, ws, ht, wt, ce_weight=1.0)
    with pytest.raises(ValueError, match="label 23 is outside"):
        fused_linear_kd(hs, ws, ht, wt, labels=torch.full_like(labels, 23), ce_weight=1.0)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        fused_linear_kd(hs, ws, ht, wt, labels=labels.double())


# --------------------------------------------------------------------------------- chunk size
def test_auto_chunk_size_respects_the_cpu_budget():
    for n, v, per_row in [(10, 50, 400), (100_000, 32_000, 4 * 32_000), (7, 10**6, 10**9)]:
        c = auto_chunk_size(n, v, per_row, torch.device("cpu"))
        assert 1 <= c <= n
        assert c == 1 or c * per_row <= 256 << 20
    assert auto_chunk_size(10_000, 32_000, 4 * 32_000, torch.device("cpu")) == 2048


# ----------------------------------------------------------------------------- Triton kernel
def _triton_runnable():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(not _triton_runnable(), reason="needs triton with CUDA, or TRITON_INTERPRET=1")
@pytest.mark.parametrize("divergence,beta", TRITON_DIVERGENCES)
def test_triton_kernel_matches_torch_path(divergence, beta):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for dtype, fp32_logits, tol in ((torch.float32, False, 2e-5), (torch.float16, True, 2e-3)):
        student, teacher, labels = make(n=13, hs=8, ht=12, v=37, dtype=dtype, seed=17)
        student = [t.to(dev) for t in student]
        teacher = [t.to(dev) for t in teacher]
        labels = labels.to(dev)
        for temperature, ce in ((1.0, 0.0), (2.5, 0.7)):
            kw = {
                "beta": beta,
                "temperature": temperature,
                "ce_weight": ce,
                "chunk_size": 4,
                "fp32_logits": fp32_logits,
            }
            got = fused(student, teacher, labels, divergence, impl="triton", **kw)
            ref = fused(student, teacher, labels, divergence, impl="torch", **kw)
            assert math.isfinite(float(got[0]))
            assert_same(got, ref, tol)


def test_adaptive_kl_has_no_triton_kernel_and_says_so():
    student, teacher, labels = make(seed=18, bias=False)
    with pytest.raises(ValueError, match="adaptive_kl has no Triton kernel"):
        fused_linear_kd(*student[:2], *teacher[:2], labels=labels, divergence="adaptive_kl", impl="triton")
    # impl="auto" runs it on the PyTorch path, on any device.
    ref = direct(student, teacher, labels, "adaptive_kl")
    assert_same(fused(student, teacher, labels, "adaptive_kl", impl="auto"), ref, 1e-10)


@pytest.mark.parametrize(
    "divergence,options",
    [("skew_forward_kl", {"alpha": 0.35}), ("skew_reverse_kl", {"alpha": 0.02}), ("adaptive_kl", {"head_mass": 0.2})],
)
def test_skew_and_head_options_reach_the_fused_path(divergence, options):
    student, teacher, labels = make(seed=19)
    s = leaves(student)
    zs = F.linear(s[0], s[1], s[2])
    zt = F.linear(teacher[0], teacher[1], teacher[2])
    ref = LF.divergence(divergence, zs, zt, temperature=1.5, mask=labels != -100, **options)
    ref.backward()
    got = fused(student, teacher, labels, divergence, temperature=1.5, chunk_size=4, **options)
    assert_same(got, (ref.detach(), grads(s)), 1e-10)
    default = fused(student, teacher, labels, divergence, temperature=1.5, chunk_size=4)
    assert abs(float(default[0]) - float(got[0])) > 1e-6  # the option is not ignored
