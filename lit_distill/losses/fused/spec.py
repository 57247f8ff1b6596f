"""One call's settings of :func:`~lit_distill.losses.fused.fused_linear_kd`, and the divergence reduced to a kernel
code and scale factors that both elementwise backends (PyTorch, Triton) read."""

from __future__ import annotations

from typing import NamedTuple

from lit_distill.losses.arguments import temperature_factor
from lit_distill.losses.divergence_rows import NEAR_END

#: Kernel codes. JSD at beta 0 / 1 runs as plain forward / reverse KL (its limits, no T²).
_DIV_CODES = {
    "forward_kl": 0, "reverse_kl": 1, "jsd": 2, "tvd": 3, "skew_forward_kl": 4, "skew_reverse_kl": 5, "adaptive_kl": 6
}  # fmt: skip
#: Mixture divergences whose row statistic the kernel's third pass needs for the gradient.
_MIXTURES = (2, 4, 5)


class _Config(NamedTuple):
    divergence: str
    beta: float
    temperature: float
    ce_weight: float
    chunk_size: int | None
    grad_chunk_size: int | None
    fp32_accumulation: bool
    fp32_logits: bool
    overlap: bool
    impl: str
    need: tuple[bool, bool, bool]  # gradients wanted for student hidden, weight, bias
    alpha: float = 0.1  # skew divergences
    head_mass: float = 0.5  # adaptive KL


class _Spec(NamedTuple):
    """One call's divergence reduced to a kernel code and the scale factors of value and gradient."""

    code: int
    beta: float  # the kernel's mixture weight of the teacher: beta (JSD), alpha or 1 - alpha (skew forward/reverse)
    temperature: float
    loss_scale: float  # per-row divergence -> its share of the mean
    grad_scale: float  # d(row)/d(z/T) -> d(mean)/dz
    inv_n: float
    ce_grad_scale: float  # ce_weight / n; 0 = no CE term
    name: str = "forward_kl"
    alpha: float = 0.1
    head_mass: float = 0.5
    stable: bool = False  # JSD within NEAR_END of an end: the kernel takes the log1p forms there

    @staticmethod
    def of(cfg: _Config, inv_n: float) -> _Spec:
        t, name, weight = cfg.temperature, cfg.divergence, cfg.beta
        factor = temperature_factor(name, t)  # the same T² convention as the full-logit formulas
        if name == "jsd" and cfg.beta in (0.0, 1.0):
            name = "forward_kl" if cfg.beta == 0.0 else "reverse_kl"
        elif name == "skew_forward_kl":
            weight = cfg.alpha
        elif name == "skew_reverse_kl":
            weight = 1.0 - cfg.alpha
        # TVD's rows are summed without their 1/2 by both backends.
        loss_scale = factor * (0.5 if name == "tvd" else 1.0)
        stable = name == "jsd" and min(cfg.beta, 1.0 - cfg.beta) < NEAR_END
        return _Spec(
            _DIV_CODES[name], weight, t, loss_scale * inv_n, loss_scale / t * inv_n, inv_n, cfg.ce_weight * inv_n,
            name, cfg.alpha, cfg.head_mass, stable,
        )  # fmt: skip
