"""The PyTorch elementwise path of :func:`~lit_distill.losses.fused.fused_linear_kd`: one chunk's divergence and CE
rows and their gradient with respect to the student logits (the reference the Triton kernel is tested against).

Forward KL, reverse KL and TVD use their closed-form gradients. The others (JSD, skew KL, adaptive KL) evaluate the
per-row formula of :mod:`lit_distill.losses.divergence_rows`, the very one the full-logit functions use, and take
its gradient with autograd on the chunk: the fused value and gradient are the unfused ones by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.losses.divergence_rows import divergence_rows, kl_terms
from lit_distill.losses.fused.spec import _Spec


def _rows_torch(zs: Tensor, zt: Tensor, labels: Tensor | None, spec: _Spec, need_grad: bool):
    """Scaled sums of one chunk's divergence and CE rows, and ``d(loss)/d zs`` (None without grad)."""
    cd = torch.float64 if zs.dtype == torch.float64 else torch.float32
    zs_c = zs.to(cd)
    log_p = torch.log_softmax(zt.to(cd) / spec.temperature, dim=-1)
    g = None
    if spec.code in (0, 1, 3):
        log_q = torch.log_softmax(zs_c / spec.temperature, dim=-1)
        q, p = log_q.exp(), log_p.exp()
        if spec.code == 0:  # forward KL(p||q): d/da = q - p
            rows = kl_terms(p, log_p - log_q)
            g = q - p if need_grad else None
        elif spec.code == 1:  # reverse KL(q||p): d/da = q * (log q/p - KL)
            rows = kl_terms(q, log_q - log_p)
            g = q * ((log_q - log_p) - rows[:, None]) if need_grad else None
        else:  # TVD (summed without its 1/2, which loss_scale holds): d/da = q (s - sum q s), s = sign(q - p)
            rows = (p - q).abs().sum(-1)
            s = torch.sign(q - p)
            g = q * (s - (q * s).sum(-1, keepdim=True)) if need_grad else None
    else:
        with torch.enable_grad():
            a = (zs_c / spec.temperature).detach().requires_grad_(need_grad)
            log_q = torch.log_softmax(a, dim=-1)
            rows = divergence_rows(spec.name, log_q, log_p, beta=spec.beta, alpha=spec.alpha, head_mass=spec.head_mass)
            if need_grad:
                (g,) = torch.autograd.grad(rows.sum(), a)
            rows = rows.detach()
    kd = rows.sum() * spec.loss_scale
    ce = torch.zeros((), dtype=cd, device=zs.device)
    if spec.ce_grad_scale > 0:
        log_q1 = log_q.detach() if spec.temperature == 1.0 else torch.log_softmax(zs_c, dim=-1)
        ce = -log_q1.gather(1, labels[:, None]).sum() * spec.inv_n
    if g is not None:
        g = g * spec.grad_scale
        if spec.ce_grad_scale > 0:
            g = g + spec.ce_grad_scale * (log_q1.exp() - F.one_hot(labels, zs.shape[1]).to(cd))
    return kd, ce, g
