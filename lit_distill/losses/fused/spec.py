"""One call's settings of :func:`~lit_distill.losses.fused.fused_linear_kd`, and the divergence reduced to a kernel
code and scale factors that both elementwise backends (PyTorch, Triton) read."""

from __future__ import annotations

from typing import NamedTuple

_DIV_CODES = {"fkl": 0, "rkl": 1, "jsd": 2, "tvd": 3}


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


class _Spec(NamedTuple):
    """One call's divergence reduced to a kernel code and the scale factors of value and gradient."""

    code: int
    beta: float
    temperature: float
    loss_scale: float  # per-row divergence -> its share of the mean
    grad_scale: float  # d(row)/d(z/T) -> d(mean)/dz
    inv_n: float
    ce_grad_scale: float  # ce_weight / n; 0 = no CE term

    @staticmethod
    def of(cfg: _Config, inv_n: float) -> _Spec:
        t, beta = cfg.temperature, cfg.beta
        if cfg.divergence in ("forward_kl", "reverse_kl"):  # T² · KL: Hinton's gradient-size correction
            code, loss_scale, grad_scale = _DIV_CODES["fkl" if cfg.divergence == "forward_kl" else "rkl"], t * t, t
        elif cfg.divergence == "jsd" and beta in (0.0, 1.0):  # GKD's end points: plain KL, no T²
            code, loss_scale, grad_scale = _DIV_CODES["fkl" if beta == 0.0 else "rkl"], 1.0, 1.0 / t
        elif cfg.divergence == "jsd":
            code, loss_scale, grad_scale = _DIV_CODES["jsd"], 1.0, (1.0 - beta) / t
        else:
            code, loss_scale, grad_scale = _DIV_CODES["tvd"], 0.5, 0.5 / t
        return _Spec(code, beta, t, loss_scale * inv_n, grad_scale * inv_n, inv_n, cfg.ce_weight * inv_n)
