"""Pure loss functions: the single source of every distillation formula in lit-distill.

Conventions shared by every function here:

* the last dimension holds the logits of one distribution ("a row");
* ``mask`` is optional, boolean, shaped like the logits without their last dimension, ``True`` = counted;
* the result is a scalar, the mean over counted rows, computed in float32 (or float64 if the inputs are);
* ``student`` always comes first, ``teacher`` second.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kl_divergence",
    "jensen_shannon",
    "total_variation",
    "masked_mean",
    "check_temperature",
    "check_beta",
]


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    # Half-precision softmax/log differences lose several digits; accumulate in at least fp32.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}. Typical values: 1.0-8.0.")


def check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}: 0 = forward KL(teacher||student), 1 = reverse KL.")


def _check_pair(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape; both models must predict over the same classes/vocabulary."
        )
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits shape without the last dim "
            f"{tuple(student_logits.shape[:-1])}."
        )


def masked_mean(per_row: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``per_row`` over the rows where ``mask`` is True (all rows when ``mask`` is None).

    A mask with no True entry gives 0 (not NaN), so an all-padding batch contributes nothing.
    """
    if mask is None:
        return per_row.mean()
    mask = mask.to(torch.bool)
    return (per_row * mask).sum() / mask.sum().clamp_min(1)


def _log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    dtype = _compute_dtype(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    return log_p_s, log_p_t


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p||q) per row from log-probabilities; 0·log0 terms are taken as 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


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
        >>> float(jensen_shannon(s, s.clone())) == 0.0
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


DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")


def divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: Tensor | None = None,
) -> Tensor:
    """Dispatch by divergence name: ``forward_kl``, ``reverse_kl``, ``jsd`` (uses ``beta``), ``tvd``."""
    if name == "forward_kl":
        return kl_divergence(student_logits, teacher_logits, temperature, reverse=False, mask=mask)
    if name == "reverse_kl":
        return kl_divergence(student_logits, teacher_logits, temperature, reverse=True, mask=mask)
    if name == "jsd":
        return jensen_shannon(student_logits, teacher_logits, beta=beta, temperature=temperature, mask=mask)
    if name == "tvd":
        return total_variation(student_logits, teacher_logits, temperature=temperature, mask=mask)
    raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}.")


def check_divergence(name: str) -> None:
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}.")
