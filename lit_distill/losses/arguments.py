"""Argument checks and the divergence names shared by the formulas (:mod:`lit_distill.losses.functional`) and the
fused path (:mod:`lit_distill.losses.fused`).

They sit below both packages, so the fused path never imports ``functional``, and ``functional`` can re-export
:func:`~lit_distill.losses.fused.fused_linear_kd` without an import circle.
"""

from __future__ import annotations

import math

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")


def check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}. Typical values: 1.0-8.0.")


def check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}: 0 = forward KL(teacher||student), 1 = reverse KL.")


def check_nonnegative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def check_divergence(name: str) -> None:
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}.")
