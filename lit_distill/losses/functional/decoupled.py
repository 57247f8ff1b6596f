"""Logit losses that decouple the teacher's signal: DKD (Zhao et al. 2022) and DIST (Huang et al. 2022)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.losses.arguments import check_nonnegative, check_temperature
from lit_distill.losses.divergence_rows import kl_rows
from lit_distill.losses.functional._common import (
    _check_pair,
    _compute_dtype,
    _mean_or_zero,
    masked_mean,
)


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Unweighted ``(T²·TCKD, T²·NCKD)`` of Decoupled KD; see :func:`dkd`.

    Example:
        >>> s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 3, 9, 1])
        >>> tckd, nckd = dkd_terms(s, t, y)
        >>> torch.allclose(dkd(s, t, y, alpha=1.0, beta=8.0), tckd + 8.0 * nckd)
        True"""
    check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, mask)
    num_classes = student_logits.shape[-1]
    if num_classes < 2:
        raise ValueError(f"DKD needs at least 2 classes, got logits with last dim {num_classes}.")
    if target.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal the logits shape without the last dim "
            f"{tuple(student_logits.shape[:-1])}."
        )
    dtype = _compute_dtype(student_logits, teacher_logits)
    s = student_logits.reshape(-1, num_classes).to(dtype) / temperature
    t = teacher_logits.reshape(-1, num_classes).to(dtype) / temperature
    rows = None if mask is None else mask.reshape(-1).to(torch.bool)
    tgt = target.reshape(-1).long()
    if rows is not None:
        tgt = torch.where(rows, tgt, torch.zeros_like(tgt))  # ignored rows may hold -100
    bad = (tgt < 0) | (tgt >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"DKD target {int(tgt[bad][0])} is outside [0, {num_classes}); targets must be class ids "
            "(mask out padding rows with `mask`)."
        )
    is_target = F.one_hot(tgt, num_classes).to(torch.bool)

    def binary(logits: Tensor) -> Tensor:
        # log [p_target, 1 - p_target]; the second via logsumexp over the other classes, exact even when p_target ≈ 1
        log_p = F.log_softmax(logits, dim=-1)
        log_target = log_p.gather(-1, tgt[:, None]).squeeze(-1)
        log_rest = torch.logsumexp(log_p.masked_fill(is_target, -math.inf), dim=-1)
        return torch.stack([log_target, log_rest], dim=-1)

    def others(logits: Tensor) -> Tensor:
        # softmax over the non-target classes only (the target column removed, not just damped)
        return F.log_softmax(logits[~is_target].view(-1, num_classes - 1), dim=-1)

    tckd = kl_rows(binary(t), binary(s))
    nckd = kl_rows(others(t), others(s))
    scale = temperature**2
    return masked_mean(tckd, rows) * scale, masked_mean(nckd, rows) * scale


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Decoupled Knowledge Distillation (Zhao et al. 2022, "Decoupled Knowledge Distillation").

    ``DKD = T²·(α·KL(b_t‖b_s) + β·KL(p̂_t‖p̂_s))``: ``b = [p_target, 1 − p_target]`` is the binary
    target-vs-rest distribution (TCKD), ``p̂`` the softmax over the non-target classes only (NCKD), all
    at temperature ``T``. Unlike classic KD, NCKD is not scaled down by ``1 − p_target`` of the teacher.

    Args:
        student_logits: ``[..., C]``.
        teacher_logits: ``[..., C]``, same shape.
        target: ``[...]`` ground-truth class ids.
        alpha: weight of the target-class term (TCKD).
        beta: weight of the non-target-class term (NCKD); the paper uses 8 on CIFAR-100.
        temperature: softening temperature ``T > 0``.
        mask: optional boolean ``[...]``; False rows (padding) are skipped.

    Example:
        >>> s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 3, 9, 1])
        >>> dkd(s, t, y).shape
        torch.Size([])
    """
    check_nonnegative("alpha", alpha)
    check_nonnegative("beta", beta)
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature, mask)
    return alpha * tckd + beta * nckd


def _pearson_distance(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """``1 − ρ(a, b)`` along ``dim``; the eps guards constant vectors (ρ taken as 0 there)."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    denom = ((a * a).sum(dim) * (b * b).sum(dim)).clamp_min(eps * eps).sqrt()
    return 1.0 - (a * b).sum(dim) / denom


def dist_terms(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Unweighted ``(T²·inter, T²·intra)`` relation terms of DIST; see :func:`dist`.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> inter, intra = dist_terms(s, t)
        >>> torch.allclose(dist(s, t, beta=1.0, gamma=2.0), inter + 2.0 * intra)
        True"""
    check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, mask)
    dtype = _compute_dtype(student_logits, teacher_logits)
    num_classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, num_classes).to(dtype)
    t = teacher_logits.reshape(-1, num_classes).to(dtype)
    if mask is not None:
        keep = mask.reshape(-1).to(torch.bool)
        s, t = s[keep], t[keep]
    y_s, y_t = F.softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1)
    inter = _mean_or_zero(_pearson_distance(y_s, y_t, dim=1), y_s)  # per sample, across classes
    intra = _mean_or_zero(_pearson_distance(y_s, y_t, dim=0), y_s) if len(y_s) else inter  # per class, across batch
    return inter * temperature**2, intra * temperature**2


def dist(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """DIST: relations matched by Pearson correlation.

    Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher".

    With ``Y = softmax(Z/T)`` as a ``[B, C]`` matrix and ``d(u, v) = 1 − pearson(u, v)``:
    ``DIST = T²·(β·mean_i d(Y_s[i,:], Y_t[i,:]) + γ·mean_j d(Y_s[:,j], Y_t[:,j]))`` (inter-class
    relation per sample, then intra-class relation per class across the batch).

    Args:
        student_logits: ``[..., C]``; leading dims are flattened into the batch of rows.
        teacher_logits: ``[..., C]``, same shape.
        beta: weight of the inter-class term.
        gamma: weight of the intra-class term.
        temperature: softening temperature ``T > 0``.
        mask: optional boolean ``[...]``; only True rows take part.

    Example:
        >>> s = torch.randn(8, 10)
        >>> float(dist(s, s)) < 1e-6
        True
    """
    check_nonnegative("beta", beta)
    check_nonnegative("gamma", gamma)
    inter, intra = dist_terms(student_logits, teacher_logits, temperature, mask)
    return beta * inter + gamma * intra
