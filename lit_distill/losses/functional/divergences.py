"""Divergences between teacher and student distributions: KL (forward/reverse), generalized JSD, TVD, skew KL
(forward/reverse) and adaptive KL.

Temperature: every one compares ``softmax(logits / T)``; KL, skew KL and adaptive KL are multiplied by ``T²``
(:func:`~lit_distill.losses.arguments.temperature_factor`), JSD and TVD are not. The fused LM-head path and the
top-k cache use the same per-row formulas (:mod:`lit_distill.losses.divergence_rows`) and the same factor.
"""

from __future__ import annotations

import torch  # noqa: F401 - the examples below run in this module's namespace
from torch import Tensor

from lit_distill.losses.arguments import (
    DIVERGENCES,
    check_alpha,
    check_beta,
    check_divergence,
    check_head_mass,
    check_temperature,
    temperature_factor,
)
from lit_distill.losses.divergence_rows import divergence_rows
from lit_distill.losses.functional._common import _check_pair, _log_probs, masked_mean


def divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    head_mass: float = 0.5,
    mask: Tensor | None = None,
) -> Tensor:
    """Divergence ``name`` (one of :data:`~lit_distill.losses.arguments.DIVERGENCES`) averaged over counted rows.

    ``beta`` is read by ``jsd``, ``alpha`` by the skew divergences and ``head_mass`` by ``adaptive_kl``.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> divergence("skew_forward_kl", s, t, alpha=0.1).shape
        torch.Size([])
    """
    check_divergence(name)
    check_temperature(temperature)
    if name == "jsd":
        check_beta(beta)
    if name.startswith("skew_"):
        check_alpha(alpha)
    if name == "adaptive_kl":
        check_head_mass(head_mass)
    _check_pair(student_logits, teacher_logits, mask)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    rows = divergence_rows(name, log_q, log_p, beta=beta, alpha=alpha, head_mass=head_mass)
    return masked_mean(rows, mask) * temperature_factor(name, temperature)


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
    name = "reverse_kl" if reverse else "forward_kl"
    return divergence(name, student_logits, teacher_logits, temperature=temperature, mask=mask)


def jensen_shannon(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Generalized Jensen-Shannon divergence JSD(β) of GKD (Agarwal et al. 2024), normalised to reach both KLs.

    With teacher ``P``, student ``Q`` and mixture ``M = β·P + (1-β)·Q``:
    ``JSD(β) = [β·KL(P‖M) + (1-β)·KL(Q‖M)] / (β(1-β))``. GKD's JSD(β) tends to 0 at both ends; divided by
    ``β(1-β)`` it tends to forward ``KL(P‖Q)`` as ``β → 0`` and reverse ``KL(Q‖P)`` as ``β → 1`` (Huszár 2015),
    which are its values at ``β = 0`` and ``β = 1``: value and gradient are continuous in β. At ``β = 0.5`` it is
    4 × GKD's value (same gradient direction). No T² factor.

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
    return divergence("jsd", student_logits, teacher_logits, temperature=temperature, beta=beta, mask=mask)


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
    return divergence("tvd", student_logits, teacher_logits, temperature=temperature, mask=mask)


def skew_kl_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alpha: float = 0.1,
    temperature: float = 1.0,
    reverse: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    """α-skew KL divergence of DistiLLM (Ko et al. 2024), ``T²``-scaled like KL.

    With teacher ``P`` and student ``Q`` (both at temperature ``T``): skew forward KL
    ``T² · KL(P ‖ α·P + (1−α)·Q)``; ``reverse``: skew reverse KL ``T² · KL(Q ‖ α·Q + (1−α)·P)``. Mixing a share
    ``α`` of the first distribution into the second keeps the log-ratio bounded (by ``−log α``) where the
    student puts little mass, so the gradient stays stable. ``α = 0`` is plain KL. DistiLLM's released code
    drops the teacher-entropy constant of the forward form; this is the divergence itself (0 when ``P = Q``).

    Args:
        student_logits: ``[..., C]``.
        teacher_logits: ``[..., C]``.
        alpha: skew in ``[0, 1)``; DistiLLM uses 0.1.
        temperature: softening temperature ``T > 0``.
        reverse: the skew reverse KL.
        mask: optional boolean ``[...]``.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> bool(skew_kl_divergence(s, t, alpha=0.1) <= kl_divergence(s, t))
        True
    """
    name = "skew_reverse_kl" if reverse else "skew_forward_kl"
    return divergence(name, student_logits, teacher_logits, temperature=temperature, alpha=alpha, mask=mask)


def adaptive_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    head_mass: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Adaptive KL (AKL, Wu et al. 2024): forward and reverse KL weighted per row by where the gap is.

    ``T² · [w_head · KL(P‖Q) + w_tail · KL(Q‖P)]`` with ``w = g / (g_head + g_tail)``; ``g_head = Σ_head |P − Q|``
    over the teacher's most probable entries up to cumulative probability ``head_mass`` (μ; the first always
    counts), ``g_tail`` the same sum over the rest. Forward KL fits the head first and reverse KL the tail, so each
    row leans on the one its larger gap needs. The weights are constants for the gradient (the paper's code
    detaches the student there).

    Args:
        student_logits: ``[..., C]``.
        teacher_logits: ``[..., C]``.
        head_mass: μ in ``[0, 1]``; the paper uses 0.5.
        temperature: softening temperature ``T > 0``.
        mask: optional boolean ``[...]``.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> adaptive_kl(s, t).shape
        torch.Size([])
    """
    return divergence(
        "adaptive_kl", student_logits, teacher_logits, temperature=temperature, head_mass=head_mass, mask=mask
    )


__all__ = [
    "DIVERGENCES",
    "divergence",
    "kl_divergence",
    "jensen_shannon",
    "total_variation",
    "skew_kl_divergence",
    "adaptive_kl",
]
