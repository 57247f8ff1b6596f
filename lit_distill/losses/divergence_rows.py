"""Per-row divergences between a student and a teacher distribution given as log-probabilities.

The one implementation behind every path: full logits (:mod:`lit_distill.losses.functional`), the PyTorch path
of the fused LM-head loss (:mod:`lit_distill.losses.fused`) and a top-k teacher over ``k+1`` outcomes
(:mod:`lit_distill.losses.topk`). The last dimension holds one distribution; the result has one value per row,
unscaled (callers multiply by :func:`~lit_distill.losses.arguments.temperature_factor` and average over the
counted rows). The formulas and their papers are in the docstrings of :mod:`lit_distill.losses.functional`.

Near the ends of β, JSD's mixture ``m = β·p + (1−β)·q`` is evaluated so that ``log q − log m`` (``log p − log m``)
keeps its relative precision while it is tiny, since the normalised JSD divides it by ``β`` (``1−β``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Log-probabilities are floored here (a -inf one, from a masked logit, would turn a gradient into NaN).
_LOG_FLOOR = -1e30
#: Above this log-ratio the expm1 form would overflow float32; the direct form is exact there.
_LOG_CAP = 80.0
#: JSD divides by β and 1 − β: closer to an end than this, the mixture's log-ratio on the small side is taken in
#: its log1p form (exact to rounding, slower) rather than as a difference of two logs.
NEAR_END = 0.05


def kl_terms(p: Tensor, log_ratio: Tensor) -> Tensor:
    """``Σ p·log_ratio`` per row with ``0·anything = 0`` (a zero-probability entry adds nothing; NaN propagates)."""
    return torch.where(p == 0, torch.zeros_like(p), p * log_ratio).sum(-1)


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p‖q)`` per row."""
    return kl_terms(log_p.exp(), log_p - log_q)


def log_ratio_to_mixture(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """``log a − log(w·a + (1−w)·b)`` elementwise, accurate to rounding for every ``w`` in ``[0, 1]``.

    ``−log1p((1−w)·expm1(log b − log a))`` is exact when its argument is small (``w`` near 1 or ``a ≈ b``);
    the direct ``log a − logaddexp(...)`` is exact when it is not. Each element takes the form that is exact.
    """
    log_a, log_b = log_a.clamp_min(_LOG_FLOOR), log_b.clamp_min(_LOG_FLOOR)
    x = (1.0 - w) * torch.expm1((log_b - log_a).clamp_max(_LOG_CAP))
    near = -torch.log1p(x.clamp_min(-0.5))
    log_w = math.log(w) if w > 0 else -math.inf
    log_1w = math.log1p(-w) if w < 1 else -math.inf
    direct = log_a - torch.logaddexp(log_a + log_w, log_b + log_1w)
    return torch.where(x.abs() <= 0.5, near, direct)


def _log_mixture(log_p: Tensor, log_q: Tensor, w: float) -> Tensor:
    """``log(w·p + (1−w)·q)``."""
    log_w = math.log(w) if w > 0 else -math.inf
    log_1w = math.log1p(-w) if w < 1 else -math.inf
    return torch.logaddexp(log_p + log_w, log_q + log_1w)


def jsd_rows(log_p: Tensor, log_q: Tensor, beta: float) -> Tensor:
    """Normalised generalized JSD(β) ``[β·KL(p‖m) + (1−β)·KL(q‖m)] / (β(1−β))``, ``m = β·p + (1−β)·q``;
    forward ``KL(p‖q)`` at ``β = 0`` and reverse ``KL(q‖p)`` at ``β = 1`` (its limits)."""
    if beta == 0.0:
        return kl_rows(log_p, log_q)
    if beta == 1.0:
        return kl_rows(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)
    # Near an end, the side divided by the small weight needs its log-ratio to relative precision.
    to_m_p = log_ratio_to_mixture(log_p, log_q, beta) if 1.0 - beta < NEAR_END else log_p - log_m
    to_m_q = log_ratio_to_mixture(log_q, log_p, 1.0 - beta) if beta < NEAR_END else log_q - log_m
    return kl_terms(log_p.exp(), to_m_p) / (1.0 - beta) + kl_terms(log_q.exp(), to_m_q) / beta


def skew_rows(log_p: Tensor, log_q: Tensor, alpha: float, reverse: bool = False) -> Tensor:
    """Skew KL ``KL(p‖α·p + (1−α)·q)``; ``reverse``: ``KL(q‖α·q + (1−α)·p)`` (DistiLLM)."""
    if reverse:
        log_p, log_q = log_q, log_p
    return kl_terms(log_p.exp(), log_p - _log_mixture(log_p, log_q, alpha))


@torch.no_grad()
def akl_weights(log_p: Tensor, log_q: Tensor, head_mass: float) -> tuple[Tensor, Tensor]:
    """AKL's per-row weights ``(g_head, g_tail) / (g_head + g_tail)``, constants for the gradient.

    The head is the teacher's most probable entries while their cumulative probability is at most
    ``head_mass`` (the first always), ``g = Σ |p − q|`` over the head or over the rest (Wu et al. 2024).
    """
    p_sorted, order = log_p.exp().sort(dim=-1, descending=True, stable=True)
    gap = (p_sorted - log_q.exp().gather(-1, order)).abs()
    tail = p_sorted.cumsum(-1) > head_mass
    tail[..., 0] = False
    g_tail = torch.where(tail, gap, torch.zeros_like(gap)).sum(-1)
    g_head = gap.sum(-1) - g_tail
    total = (g_head + g_tail).clamp_min(torch.finfo(gap.dtype).tiny)  # p == q: both KLs are 0 anyway
    return g_head / total, g_tail / total


def akl_rows(log_p: Tensor, log_q: Tensor, head_mass: float) -> Tensor:
    """Adaptive KL ``w_head·KL(p‖q) + w_tail·KL(q‖p)`` with :func:`akl_weights`."""
    w_head, w_tail = akl_weights(log_p, log_q, head_mass)
    return w_head * kl_rows(log_p, log_q) + w_tail * kl_rows(log_q, log_p)


def divergence_rows(
    name: str, log_q: Tensor, log_p: Tensor, *, beta: float = 0.5, alpha: float = 0.1, head_mass: float = 0.5
) -> Tensor:
    """Per-row divergence ``name`` of student ``log_q`` and teacher ``log_p`` (student first, as everywhere)."""
    if name == "forward_kl":
        return kl_rows(log_p, log_q)
    if name == "reverse_kl":
        return kl_rows(log_q, log_p)
    if name == "jsd":
        return jsd_rows(log_p, log_q, beta)
    if name == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    if name == "skew_forward_kl":
        return skew_rows(log_p, log_q, alpha)
    if name == "skew_reverse_kl":
        return skew_rows(log_p, log_q, alpha, reverse=True)
    if name == "adaptive_kl":
        return akl_rows(log_p, log_q, head_mass)
    raise ValueError(f"unknown divergence {name!r}")
