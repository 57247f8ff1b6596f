"""fused_span_kd against span_kd on full logits: same value and gradients, any chunk size, no full logits kept."""

import pytest
import torch
import torch.nn.functional as F

from lit_distill.losses.functional.cross_tokenizer import span_kd_terms
from lit_distill.losses.fused.cross_tokenizer import fused_span_kd

VS, VT = 19, 13
#: Student/teacher classes: shared ones, a class holding two student tokens, unmatched tokens on both sides.
S_CLS = torch.tensor([0, 1, 2, 3, 3, 4, 5, -1, -1, 6, 7, -1, 8, 9, -1, -1, 10, -1, -1])
T_CLS = torch.tensor([10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, -1, -1])
NONE_S, NONE_T = torch.full((VS,), -1), torch.full((VT,), -1)
SAME = torch.arange(VS)


def make(n=9, dtype=torch.float64, seed=0, bias=True, vt=VT):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    student = [rnd(n, 6), rnd(VS, 6), rnd(VS, scale=0.5) if bias else None]
    teacher = [rnd(n, 8), rnd(vt, 8), rnd(vt, scale=0.5) if bias else None]
    return student, teacher


def reference(student, teacher, s_cls, t_cls, temperature, uld_weight, top_k):
    s = [None if x is None else x.detach().clone().requires_grad_() for x in student]
    kl, w1 = span_kd_terms(F.linear(*s), F.linear(*teacher), s_cls, t_cls, temperature, top_k)
    (kl + uld_weight * w1).backward()
    return kl, w1, [None if x is None else x.grad for x in s]


def fused(student, teacher, s_cls, t_cls, temperature, uld_weight, top_k, chunk_size):
    s = [None if x is None else x.detach().clone().requires_grad_() for x in student]
    parts = fused_span_kd(
        s[0], s[1], teacher[0], teacher[1], s_cls, t_cls, temperature=temperature, uld_weight=uld_weight,
        uld_top_k=top_k, chunk_size=chunk_size, student_bias=s[2], teacher_bias=teacher[2],
    )  # fmt: skip
    parts.loss.backward()
    return parts, [None if x is None else x.grad for x in s]


@pytest.mark.parametrize("chunk_size", [1, 4, None])
@pytest.mark.parametrize(
    ("classes", "uld_weight", "top_k"),
    [((S_CLS, T_CLS), 1.0, None), ((S_CLS, T_CLS), 0.5, 3), ((NONE_S, NONE_T), 1.0, None), ((S_CLS, T_CLS), 0.0, None)],
)
def test_fused_equals_the_formula_on_full_logits(classes, uld_weight, top_k, chunk_size):
    student, teacher = make()
    kl, w1, want = reference(student, teacher, *classes, 1.7, uld_weight, top_k)
    parts, got = fused(student, teacher, *classes, 1.7, uld_weight, top_k, chunk_size)
    assert parts.kl.item() == pytest.approx(kl.item(), abs=1e-12)
    assert parts.uld.item() == pytest.approx(w1.item() if uld_weight else 0.0, abs=1e-12)  # no sort when unused
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_one_vocabulary_on_both_sides_is_forward_kl_fused():
    student, teacher = make(vt=VS)
    kl, _, want = reference(student, teacher, SAME, SAME, 1.0, 1.0, None)
    parts, got = fused(student, teacher, SAME, SAME, 1.0, 1.0, None, 4)
    assert parts.uld.item() == 0.0 and parts.loss.item() == pytest.approx(kl.item(), abs=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_give_the_reference_in_fp32(dtype):
    student, teacher = make(dtype=dtype, n=16)
    kl, w1, want = reference([x.float() for x in student], [x.float() for x in teacher], S_CLS, T_CLS, 1.0, 1.0, None)
    parts, got = fused(student, teacher, S_CLS, T_CLS, 1.0, 1.0, None, 5)
    assert parts.loss.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert parts.loss.item() == pytest.approx((kl + w1).item(), rel=tol, abs=tol)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), w, rtol=tol * 5, atol=tol)


def test_no_rows_give_zero_loss_and_zero_gradients():
    student, teacher = make(n=0)
    parts, got = fused(student, teacher, S_CLS, T_CLS, 1.0, 1.0, None, None)
    assert parts.loss.item() == 0.0 and all(bool((g == 0).all()) for g in got)


def test_without_grad_only_the_value_is_computed():
    student, teacher = make()
    with torch.no_grad():
        parts = fused_span_kd(student[0], student[1], teacher[0], teacher[1], S_CLS, T_CLS)
    assert parts.loss.item() > 0 and parts.loss.grad_fn is None


def test_a_scaled_loss_scales_the_gradients():
    student, teacher = make(bias=False)
    _, base = fused(student, teacher, S_CLS, T_CLS, 1.0, 1.0, None, None)
    s = [x.detach().clone().requires_grad_() for x in student[:2]]
    (3.0 * fused_span_kd(s[0], s[1], teacher[0], teacher[1], S_CLS, T_CLS).loss).backward()
    torch.testing.assert_close(s[1].grad, 3.0 * base[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"student_classes": torch.zeros(3)}, "student classes"),
        ({"teacher_hidden": torch.zeros(4, 8)}, "same rows"),
        ({"teacher_weight": torch.zeros(VT, 5)}, r"\[vocab, hidden\]"),
        ({"uld_top_k": 0}, "uld_top_k"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_bad_arguments_are_refused(change, message):
    student, teacher = make(bias=False)
    args = {
        "student_hidden": student[0], "student_weight": student[1], "teacher_hidden": teacher[0],
        "teacher_weight": teacher[1], "student_classes": S_CLS, "teacher_classes": T_CLS,
    }  # fmt: skip
    with pytest.raises(ValueError, match=message):
        fused_span_kd(**{**args, **change})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_in_bf16_it_matches_the_float64_reference():
    student, teacher = make(n=300, dtype=torch.float64)
    kl, w1, want = reference(student, teacher, S_CLS, T_CLS, 1.0, 1.0, None)
    cuda = [[None if x is None else x.cuda().bfloat16() for x in side] for side in (student, teacher)]
    parts, got = fused(*cuda, S_CLS.cuda(), T_CLS.cuda(), 1.0, 1.0, None, 64)
    assert parts.loss.item() == pytest.approx((kl + w1).item(), rel=2e-2)
    for g, w in zip(got, want):
        assert float((g.double().cpu() - w).norm() / w.norm()) < 2e-2
