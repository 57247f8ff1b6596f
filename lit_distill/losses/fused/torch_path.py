"""The PyTorch elementwise path of :func:`~lit_distill.losses.fused.fused_linear_kd`: one chunk's divergence and CE
rows and their gradient with respect to the student logits (the reference the Triton kernel is tested against)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.losses.fused.spec import _Spec


def _kl_rows(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    return torch.where(p == 0, torch.zeros_like(p), p * (log_p - log_q)).sum(-1)  # NaN propagates


def _rows_torch(zs: Tensor, zt: Tensor, labels: Tensor | None, spec: _Spec, need_grad: bool):
    """Scaled sums of one chunk's divergence and CE rows, and ``d(loss)/d zs`` (None without grad)."""
    cd = torch.float64 if zs.dtype == torch.float64 else torch.float32
    zs_c = zs.to(cd)
    log_q = torch.log_softmax(zs_c / spec.temperature, dim=-1)
    log_p = torch.log_softmax(zt.to(cd) / spec.temperature, dim=-1)
    q, p = log_q.exp(), log_p.exp()
    if spec.code == 0:  # forward KL(p||q): d/da = q - p
        rows = _kl_rows(p, log_p, log_q)
        g = q - p if need_grad else None
    elif spec.code == 1:  # reverse KL(q||p): d/da = q * (log q/p - KL)
        rows = _kl_rows(q, log_q, log_p)
        g = q * ((log_q - log_p) - rows[:, None]) if need_grad else None
    elif spec.code == 2:  # JSD(beta): d/da = (1-beta) q (r - sum q r), r = log q/m
        b = spec.beta
        log_m = torch.logaddexp(log_p + math.log(b), log_q + math.log1p(-b))
        rows = b * _kl_rows(p, log_p, log_m) + (1.0 - b) * _kl_rows(q, log_q, log_m)
        r = log_q - log_m
        g = q * (r - (q * r).sum(-1, keepdim=True)) if need_grad else None
    else:  # TVD: d/da = 1/2 q (s - sum q s), s = sign(q - p)
        rows = (p - q).abs().sum(-1)
        s = torch.sign(q - p)
        g = q * (s - (q * s).sum(-1, keepdim=True)) if need_grad else None
    kd = rows.sum() * spec.loss_scale
    ce = torch.zeros((), dtype=cd, device=zs.device)
    if spec.ce_grad_scale > 0:
        log_q1 = log_q if spec.temperature == 1.0 else torch.log_softmax(zs_c, dim=-1)
        ce = -log_q1.gather(1, labels[:, None]).sum() * spec.inv_n
    if g is not None:
        g = g * spec.grad_scale
        if spec.ce_grad_scale > 0:
            g = g + spec.ce_grad_scale * (log_q1.exp() - F.one_hot(labels, zs.shape[1]).to(cd))
    return kd, ce, g
