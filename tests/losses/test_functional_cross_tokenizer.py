"""ULD and aligned-span KD (lit_distill.losses.functional.cross_tokenizer) against textbook implementations."""

import math

import pytest
import torch

from lit_distill.losses.functional import kl_divergence
from lit_distill.losses.functional.cross_tokenizer import sorted_l1, span_kd, span_kd_terms, uld

torch.manual_seed(0)


def paper_uld(student_logits, teacher_logits, temperature=1.0):
    """Boizard et al. 2024, eq. (ULD): per position, the absolute differences of the two probability vectors sorted
    in decreasing order, the smaller vocabulary padded with zeros, summed; averaged over positions. Plain loops."""
    rows = []
    for s_row, t_row in zip(student_logits.double().tolist(), teacher_logits.double().tolist()):
        ps = sorted(softmax(s_row, temperature), reverse=True)
        pt = sorted(softmax(t_row, temperature), reverse=True)
        size = max(len(ps), len(pt))
        ps, pt = ps + [0.0] * (size - len(ps)), pt + [0.0] * (size - len(pt))
        rows.append(sum(abs(a - b) for a, b in zip(ps, pt)))
    return sum(rows) / len(rows)


def softmax(row, temperature):
    top = max(row)
    exps = [math.exp((x - top) / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def class_kl(student_logits, teacher_logits, s_cls, t_cls, temperature):
    """T²·KL between the class distributions, each renormalised over the matched classes, row by row with dicts."""
    total = 0.0
    for s_row, t_row in zip(student_logits.double().tolist(), teacher_logits.double().tolist()):
        q, p = {}, {}
        for prob, c in zip(softmax(s_row, temperature), s_cls.tolist()):
            if c >= 0:
                q[c] = q.get(c, 0.0) + prob
        for prob, c in zip(softmax(t_row, temperature), t_cls.tolist()):
            if c >= 0:
                p[c] = p.get(c, 0.0) + prob
        q_sum, p_sum = sum(q.values()), sum(p.values())
        total += sum(pc / p_sum * math.log(pc / p_sum / (q[c] / q_sum)) for c, pc in p.items() if pc > 0)
    return temperature**2 * total / student_logits.shape[0]


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("widths", [(7, 7), (5, 9), (12, 4)])
def test_uld_equals_the_papers_formula(widths, temperature):
    s, t = torch.randn(6, widths[0]) * 3, torch.randn(6, widths[1]) * 3
    assert uld(s, t, temperature) == pytest.approx(paper_uld(s, t, temperature), abs=1e-6)
    assert uld(s.double(), t.double(), temperature).item() == pytest.approx(paper_uld(s, t, temperature), abs=1e-12)


def test_uld_in_bf16_is_computed_in_fp32():
    s, t = torch.randn(6, 9), torch.randn(6, 5)
    got = uld(s.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32 and got.item() == pytest.approx(paper_uld(s.bfloat16(), t.bfloat16()), abs=1e-6)


def test_uld_top_k_is_a_lower_bound_that_reaches_uld():
    s, t = torch.randn(8, 30), torch.randn(8, 20)
    exact = uld(s, t)
    approx = [uld(s, t, top_k=k) for k in (1, 4, 10, 20, 30, 64)]
    assert all(a <= exact + 1e-6 for a in approx) and approx[-1] == pytest.approx(exact.item(), abs=1e-7)
    assert approx[-2] == pytest.approx(exact.item(), abs=1e-7)  # k reaches the larger vocabulary


def test_sorted_l1_top_k_pairs_the_largest_and_pools_the_rest():
    a, b = torch.tensor([[0.5, 0.1, 0.3, 0.1]]), torch.tensor([[0.2, 0.6, 0.2]])
    # top-2: (0.5, 0.3) vs (0.6, 0.2) -> 0.1 + 0.1; rest 0.2 vs 0.2 -> 0.
    assert sorted_l1(a, b, top_k=2).item() == pytest.approx(0.2)


def test_masked_rows_do_not_count():
    s, t = torch.randn(2, 3, 6), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert uld(s, t, mask=mask) == pytest.approx(paper_uld(s[mask], t[mask]), abs=1e-6)
    assert uld(s, t, mask=torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_one_tokenizer_on_both_sides_is_token_level_forward_kl(temperature):
    s, t = torch.randn(5, 11, dtype=torch.float64) * 4, torch.randn(5, 11, dtype=torch.float64) * 4
    same = torch.arange(11)
    mask = torch.tensor([True, True, False, True, True])
    got = span_kd(s, t, same, same, temperature, mask=mask)
    want = kl_divergence(s, t, temperature, mask=mask)
    assert got.item() == pytest.approx(want.item(), abs=1e-12)
    got32 = span_kd(s.float(), t.float(), same, same, temperature, mask=mask)
    assert got32.item() == pytest.approx(want.item(), rel=1e-6)  # float32: to its own precision


def test_hybrid_is_class_kl_plus_uld_on_the_unmatched_tokens():
    # Student tokens 0-5, teacher 0-6: classes shared by student {0, 1, 2} / teacher {3, 1, 0}, student 3 and 4 both
    # in class 3 with teacher 5 (e.g. "first byte" classes), the rest unmatched.
    s_cls = torch.tensor([0, 1, 2, 3, 3, -1])
    t_cls = torch.tensor([2, 1, -1, 0, -1, 3, -1])
    s, t = torch.randn(4, 6), torch.randn(4, 7)
    kl, rest = span_kd_terms(s, t, s_cls, t_cls, temperature=1.5)
    assert kl.item() == pytest.approx(class_kl(s, t, s_cls, t_cls, 1.5), abs=1e-6)
    p_s, p_t = torch.softmax(s / 1.5, -1), torch.softmax(t / 1.5, -1)
    assert rest.item() == pytest.approx(sorted_l1(p_s[:, s_cls < 0], p_t[:, t_cls < 0]).mean().item(), abs=1e-7)
    assert span_kd(s, t, s_cls, t_cls, 1.5, uld_weight=0.3).item() == pytest.approx((kl + 0.3 * rest).item())


def test_a_side_without_unmatched_tokens_gives_a_finite_kl():
    # A byte-level student: every byte has a twin among the teacher's tokens, nothing is left unmatched on its side,
    # while most of the teacher's mass sits on tokens it alone has.
    s_cls, t_cls = torch.arange(4), torch.tensor([0, 1, 2, 3, -1, -1, -1])
    s, t = torch.randn(3, 4), torch.randn(3, 7) + torch.tensor([0, 0, 0, 0, 5.0, 5.0, 5.0])
    kl, rest = span_kd_terms(s, t, s_cls, t_cls)
    assert torch.isfinite(kl) and kl.item() == pytest.approx(class_kl(s, t, s_cls, t_cls, 1.0), abs=1e-6)
    assert rest.item() > 0


def test_no_class_at_all_is_uld():
    s, t = torch.randn(4, 6), torch.randn(4, 3)
    none_s, none_t = torch.full((6,), -1), torch.full((3,), -1)
    assert span_kd(s, t, none_s, none_t).item() == pytest.approx(uld(s, t).item(), abs=1e-7)


def test_no_rows_give_zero_not_nan():
    s = torch.zeros(0, 6, requires_grad=True)
    cls = torch.arange(6)
    total = uld(s, torch.zeros(0, 4)) + span_kd(s, torch.zeros(0, 6), cls, cls)
    total.backward()
    assert total.item() == 0.0 and s.grad.shape == (0, 6)


def test_gradients_match_finite_differences():
    s = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.float64)
    s_cls, t_cls = torch.tensor([0, 1, 1, -1, -1, 2]), torch.tensor([1, 0, -1, 2, -1])
    assert torch.autograd.gradcheck(lambda x: span_kd(x, t, s_cls, t_cls, 1.3, uld_weight=0.7), (s,))
    assert torch.autograd.gradcheck(lambda x: uld(x, t, 0.8), (s,))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: uld(torch.zeros(2, 3), torch.zeros(3, 3)), "same rows"),
        (lambda: uld(torch.zeros(2, 3), torch.zeros(2, 4), temperature=0), "temperature"),
        (lambda: uld(torch.zeros(2, 3), torch.zeros(2, 4), top_k=0), "uld_top_k"),
        (lambda: uld(torch.zeros(2, 3), torch.zeros(2, 4), mask=torch.ones(3).bool()), "mask"),
        (lambda: span_kd(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.zeros(4)), "student classes"),
        (lambda: span_kd(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(3), torch.zeros(4), uld_weight=-1), "uld_w"),
    ],
)
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
