"""Divergences between teacher and student distributions: KL (forward/reverse), generalized JSD, TVD."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_distill.losses.arguments import DIVERGENCES, check_beta, check_temperature
from lit_distill.losses.functional._common import (
    _check_pair,
    _kl_rows,
    _log_probs,
    masked_mean,
)


def kl_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    reverse: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    """Temperature-scaled KL divergence between teacher and student distributions (Hinton et al. 2015).

    Forward: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``; reverse (MiniLLM, Gu et al. 2024):
    ``T² · KL(softmax(s/T) ‖ softmax(t/T))``. The T² factor keeps gradient magnitudes comparable
    across temperatures.

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits, same shape.
        temperature: softening temperature ``T > 0``.
        reverse: compute KL(student‖teacher) instead of KL(teacher‖student).
        mask: optional boolean ``[...]``; True rows are averaged.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> kl_divergence(s, t, temperature=4.0).shape
        torch.Size([])
    """
    check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, mask)
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    rows = _kl_rows(log_p_s, log_p_t) if reverse else _kl_rows(log_p_t, log_p_s)
    return masked_mean(rows, mask) * temperature**2


def jensen_shannon(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Generalized Jensen-Shannon divergence JSD(β) as in GKD (Agarwal et al. 2024).

    With teacher ``P``, student ``Q`` and mixture ``M = β·P + (1-β)·Q``:
    ``JSD(β) = β·KL(P‖M) + (1-β)·KL(Q‖M)``. The end points are defined as the limits GKD uses:
    ``β = 0`` is forward ``KL(P‖Q)`` and ``β = 1`` is reverse ``KL(Q‖P)``. No T² factor is applied.

    Args:
        student_logits: ``[..., C]``.
        teacher_logits: ``[..., C]``.
        beta: interpolation weight in ``[0, 1]``.
        temperature: softening temperature ``T > 0`` applied to both.
        mask: optional boolean ``[...]``.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> float(jensen_shannon(s, s.clone())) < 1e-6
        True
    """
    check_beta(beta)
    check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, mask)
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    if beta == 0.0:
        rows = _kl_rows(log_p_t, log_p_s)
    elif beta == 1.0:
        rows = _kl_rows(log_p_s, log_p_t)
    else:
        log_m = torch.logsumexp(torch.stack([log_p_t + math.log(beta), log_p_s + math.log1p(-beta)]), dim=0)
        rows = beta * _kl_rows(log_p_t, log_m) + (1.0 - beta) * _kl_rows(log_p_s, log_m)
    return masked_mean(rows, mask)


def total_variation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Total variation distance ``½·Σ|softmax(t/T) − softmax(s/T)|`` per row, averaged.

    Example:
        >>> s = torch.randn(3, 5)
        >>> float(total_variation(s, s))
        0.0
    """
    check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, mask)
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    rows = 0.5 * (log_p_t.exp() - log_p_s.exp()).abs().sum(-1)
    return masked_mean(rows, mask)


def divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: Tensor | None = None,
) -> Tensor:
    """Dispatch by divergence name: ``forward_kl``, ``reverse_kl``, ``jsd`` (uses ``beta``), ``tvd``.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> torch.equal(divergence("reverse_kl", s, t, temperature=2.0), kl_divergence(s, t, 2.0, reverse=True))
        True"""
    if name == "forward_kl":
        return kl_divergence(student_logits, teacher_logits, temperature, reverse=False, mask=mask)
    if name == "reverse_kl":
        return kl_divergence(student_logits, teacher_logits, temperature, reverse=True, mask=mask)
    if name == "jsd":
        return jensen_shannon(student_logits, teacher_logits, beta=beta, temperature=temperature, mask=mask)
    if name == "tvd":
        return total_variation(student_logits, teacher_logits, temperature=temperature, mask=mask)
    raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}.")
