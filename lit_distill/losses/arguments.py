"""Argument checks, the divergence names and the temperature convention shared by the formulas
(:mod:`lit_distill.losses.functional`), the top-k cache losses and the fused path (:mod:`lit_distill.losses.fused`).

They sit below all of them, so the fused path never imports ``functional``, and ``functional`` can re-export
:func:`~lit_distill.losses.fused.fused_linear_kd` without an import circle.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

Divergence = Literal[
    "forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl", "adaptive_kl"
]  # fmt: skip
DIVERGENCES: tuple[str, ...] = get_args(Divergence)

#: Divergences multiplied by ``T²`` (Hinton et al. 2015: gradients comparable across temperatures). JSD and TVD
#: follow their papers (GKD; TVD as a distance) and are not scaled.
T_SQUARED = frozenset({"forward_kl", "reverse_kl", "skew_forward_kl", "skew_reverse_kl", "adaptive_kl"})


def temperature_factor(name: str, temperature: float) -> float:
    """What the per-row divergence ``name`` at temperature ``T`` is multiplied by: ``T²`` or 1, on every path."""
    return temperature * temperature if name in T_SQUARED else 1.0


def check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}. Typical values: 1.0-8.0.")


def check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}: 0 = forward KL(teacher||student), 1 = reverse KL.")


def check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha < 1.0):
        raise ValueError(
            f"alpha (the skew of skew_forward_kl/skew_reverse_kl) must lie in [0, 1), got {alpha!r}: 0 is plain KL, "
            "DistiLLM uses 0.1; at 1 the divergence is identically 0."
        )


def check_head_mass(head_mass: float) -> None:
    if not (isinstance(head_mass, (int, float)) and 0.0 <= head_mass <= 1.0):
        raise ValueError(
            f"head_mass (adaptive_kl's mu) must lie in [0, 1], got {head_mass!r}: the teacher probability mass "
            "of the head tokens; Wu et al. 2024 use 0.5."
        )


def check_nonnegative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def check_divergence(name: str) -> None:
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}.")
