"""Distributions over two vocabularies: Universal Logit Distillation and the aligned-span hybrid (GOLD).

Rows are the aligned positions of a teacher and a student that do not share a tokenizer
(:mod:`lit_distill.losses.functional.alignment`): both have read the same text and predict its continuation, each
over its own vocabulary. Student and teacher logits may have different widths.

* :func:`uld`: the Wasserstein-1 distance between the two probability vectors sorted in decreasing order
  (Boizard et al. 2024), which needs no vocabulary map at all.
* :func:`span_kd`: a vocabulary map (:mod:`lit_distill.losses.vocab_map`) puts tokens that continue the text the
  same way into shared classes; the KL divergence between the class distributions (each renormalised over the
  matched classes) covers the matched tokens and ULD the unmatched ones: the hybrid of TRL's GOLD trainer. With one
  tokenizer on both sides every token is its own class and it is exactly token-level forward KL.

``uld_top_k`` sorts only the ``k`` largest probabilities of each side and compares the rest as one remaining mass
(``|tail_s - tail_t|``): a lower bound of ULD, equal to it once ``k`` reaches the vocabulary, and much cheaper on
LLM vocabularies than a full sort.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.losses.arguments import check_nonnegative, check_temperature
from lit_distill.losses.functional._common import _compute_dtype, masked_mean

__all__ = ["uld", "span_kd", "span_kd_terms", "sorted_l1", "check_classes"]


def sorted_l1(a: Tensor, b: Tensor, top_k: int | None = None) -> Tensor:
    """Per row ``Σ_i |sort↓(a)_i - sort↓(b)_i|``, the shorter row padded with zeros (ULD's distance).

    With ``top_k``, only the ``k`` largest entries of each row are paired and the remaining mass is compared as a
    whole: ``Σ_{i<k} |sort↓(a)_i - sort↓(b)_i| + |Σ a - Σ_{i<k} sort↓(a)_i - (Σ b - Σ_{i<k} sort↓(b)_i)|``.

    Example:
        >>> round(sorted_l1(torch.tensor([[0.1, 0.9]]), torch.tensor([[0.5, 0.3, 0.2]])).item(), 4)  # .4 + .2 + .2
        0.8
    """
    width = max(a.shape[-1], b.shape[-1])
    if top_k is None or top_k >= width:
        sa, sb = a.sort(-1, descending=True).values, b.sort(-1, descending=True).values
        return (F.pad(sa, (0, width - sa.shape[-1])) - F.pad(sb, (0, width - sb.shape[-1]))).abs().sum(-1)
    ta = a.topk(min(top_k, a.shape[-1]), -1).values
    tb = b.topk(min(top_k, b.shape[-1]), -1).values
    head = (F.pad(ta, (0, top_k - ta.shape[-1])) - F.pad(tb, (0, top_k - tb.shape[-1]))).abs().sum(-1)
    tail = (a.sum(-1) - ta.sum(-1)) - (b.sum(-1) - tb.sum(-1))
    return head + tail.abs()


def _check_rows(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None) -> None:
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} must hold "
            "the same rows (aligned positions); only the vocabulary width may differ."
        )
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} must equal the logits' rows {tuple(student_logits.shape[:-1])}.")


def _mean(per_row: Tensor, mask: Tensor | None) -> Tensor:
    # No aligned row at all (a batch of prompts only) is 0, not NaN.
    return masked_mean(per_row, torch.ones_like(per_row, dtype=torch.bool) if mask is None else mask)


def matched_share(class_probs: Tensor) -> Tensor:
    """Class probabilities renormalised over the matched classes (all zeros where a side has no matched mass)."""
    return class_probs / class_probs.sum(-1, keepdim=True).clamp_min(torch.finfo(class_probs.dtype).tiny)


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"uld_top_k must be an int >= 1 or None (sort whole vocabularies), got {top_k!r}.")


def check_classes(classes: Tensor, width: int, side: str) -> Tensor:
    """A side's class ids as a long vector of its logits' width (-1: unmatched)."""
    if classes.ndim != 1 or classes.shape[0] != width:
        raise ValueError(
            f"{side} classes {tuple(classes.shape)} must give one class id per {side} logit ({width}); build them "
            "with lit_distill.losses.vocab_map and fit them to the LM head (VocabMap.fit)."
        )
    return classes.long()


def uld(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Universal Logit Distillation (Boizard et al. 2024), mean over counted rows.

    ``ULD = Σ_i |sort↓(softmax(s/T))_i - sort↓(softmax(t/T))_i|``, the smaller vocabulary padded with zeros: the
    closed-form Wasserstein-1 distance between the two distributions when every token is one unit from every other.

    Args:
        student_logits: ``[..., V_s]``.
        teacher_logits: ``[..., V_t]``, the same rows.
        temperature: softening temperature of both sides (no ``T²`` factor).
        top_k: sort only the ``k`` largest probabilities of each side (see :func:`sorted_l1`); None: all.
        mask: ``[...]`` True on counted rows.

    Example:
        >>> uld(torch.zeros(3, 4), torch.zeros(3, 4)).item()
        0.0
    """
    check_temperature(temperature)
    _check_top_k(top_k)
    _check_rows(student_logits, teacher_logits, mask)
    dtype = _compute_dtype(student_logits, teacher_logits)
    p_s = F.softmax(student_logits.to(dtype) / temperature, -1)
    p_t = F.softmax(teacher_logits.to(dtype) / temperature, -1)
    return _mean(sorted_l1(p_s, p_t, top_k), mask)


def span_kd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_classes: Tensor,
    teacher_classes: Tensor,
    temperature: float = 1.0,
    uld_top_k: int | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(T²·KL(P‖Q) over the matched classes, ULD over the unmatched tokens)``, each a mean over counted rows.

    ``P_c ∝ Σ_{j: class(j)=c} p_t(j)`` and ``Q_c ∝ Σ_{i: class(i)=c} q_s(i)``, each renormalised over the matched
    classes (what each model predicts given that the text continues with a token both vocabularies hold); ULD
    compares the unmatched probabilities of the two sides (:func:`sorted_l1`). :func:`span_kd` is
    ``kl + uld_weight · unmatched``; the two terms apart are what a strategy logs.

    Example:
        >>> s, t = torch.randn(4, 6), torch.randn(4, 5)
        >>> s_cls, t_cls = torch.tensor([0, 1, 2, -1, -1, 3]), torch.tensor([0, 1, 2, 3, -1])
        >>> kl, unmatched = span_kd_terms(s, t, s_cls, t_cls)
        >>> torch.allclose(span_kd(s, t, s_cls, t_cls, uld_weight=0.5), kl + 0.5 * unmatched)
        True
    """
    check_temperature(temperature)
    _check_top_k(uld_top_k)
    _check_rows(student_logits, teacher_logits, mask)
    s_cls = check_classes(student_classes, student_logits.shape[-1], "student")
    t_cls = check_classes(teacher_classes, teacher_logits.shape[-1], "teacher")
    n = int(max(s_cls.max(), t_cls.max(), -1)) + 1
    dtype = _compute_dtype(student_logits, teacher_logits)
    p_s = F.softmax(student_logits.to(dtype) / temperature, -1)
    p_t = F.softmax(teacher_logits.to(dtype) / temperature, -1)
    rows = p_s.shape[:-1]
    q_cls = matched_share(p_s.new_zeros(*rows, n + 1).index_add(-1, torch.where(s_cls < 0, n, s_cls), p_s)[..., :n])
    p_cls = matched_share(p_t.new_zeros(*rows, n + 1).index_add(-1, torch.where(t_cls < 0, n, t_cls), p_t)[..., :n])
    kl = (torch.xlogy(p_cls, p_cls) - torch.xlogy(p_cls, q_cls)).sum(-1) * temperature**2
    unmatched = sorted_l1(p_s[..., s_cls < 0], p_t[..., t_cls < 0], uld_top_k)
    return _mean(kl, mask), _mean(unmatched, mask)


def span_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_classes: Tensor,
    teacher_classes: Tensor,
    temperature: float = 1.0,
    uld_weight: float = 1.0,
    uld_top_k: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Aligned-span KD at aligned positions (the hybrid of TRL's GOLD trainer), mean over counted rows.

    ``T²·KL(P‖Q) + uld_weight · ULD(unmatched)``, ``P``/``Q`` the teacher's/student's probabilities summed per
    class of the vocabulary map and renormalised over the matched classes (:func:`span_kd_terms`).
    One tokenizer on both sides (every token its own class): ``T²·KL(p_t‖q_s)``, token-level forward KL.

    Args:
        student_logits: ``[..., V_s]`` at aligned positions.
        teacher_logits: ``[..., V_t]`` at the same positions.
        student_classes: ``[V_s]`` class id of each student token, -1 when unmatched.
        teacher_classes: ``[V_t]`` class id of each teacher token, -1 when unmatched.
        temperature: softening temperature ``T`` of both sides.
        uld_weight: weight of the ULD term on the unmatched tokens (0: the class KL alone).
        uld_top_k: sort only the ``k`` largest unmatched probabilities per side (:func:`sorted_l1`); None: all.
        mask: ``[...]`` True on counted rows.

    Example:
        >>> same = torch.arange(5)
        >>> s, t = torch.randn(2, 5), torch.randn(2, 5)
        >>> from lit_distill.losses.functional import kl_divergence
        >>> bool(torch.isclose(span_kd(s, t, same, same), kl_divergence(s, t)))
        True
    """
    check_nonnegative("uld_weight", uld_weight)
    kl, unmatched = span_kd_terms(
        student_logits, teacher_logits, student_classes, teacher_classes, temperature, uld_top_k, mask
    )
    return kl + uld_weight * unmatched
