"""Aligned-span KD and ULD from hidden states and LM heads of two vocabularies, chunk by chunk.

:func:`fused_span_kd` is :func:`lit_distill.losses.functional.span_kd` on ``h_s W_sᵀ + b_s`` and ``h_t W_tᵀ + b_t``
(same value and gradient) without ever holding the ``[rows, vocab]`` logits of either side: per chunk of rows it
computes both LM-head matmuls (float32 logits), the class KL and the sorted-L1 (ULD) term with their gradient with
respect to the student logits, and folds that gradient into the hidden-state, weight and bias gradients at once.
Backward only scales them. The rows are aligned positions (gathered by the caller), so both sides have as many.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_distill.losses.arguments import check_nonnegative, check_temperature
from lit_distill.losses.fused.chunks import _backward_block
from lit_distill.losses.fused.linear_kd import _matmul_dtype
from lit_distill.losses.fused.matmul import _linear

__all__ = ["fused_span_kd", "SpanKDParts"]

_BUDGET = {"cuda": 1536 << 20, "cpu": 256 << 20}  # bytes of per-chunk temporaries


class SpanKDParts(NamedTuple):
    """``loss`` (differentiable) ``= kl + uld_weight · uld``; ``kl`` (with ``T²``) and ``uld`` detached, for logging
    (``uld`` is not computed, and 0, when ``uld_weight`` is 0).

    Example:
        >>> hs, ws, ht, wt = torch.randn(4, 8), torch.randn(12, 8), torch.randn(4, 16), torch.randn(10, 16)
        >>> classes = torch.arange(12).where(torch.arange(12) < 8, -1), torch.arange(10).where(torch.arange(10) < 8, -1)
        >>> parts = fused_span_kd(hs, ws, ht, wt, *classes, uld_weight=0.5)
        >>> torch.allclose(parts.loss, parts.kl + 0.5 * parts.uld)
        True"""

    loss: Tensor
    kl: Tensor
    uld: Tensor


class _Classes(NamedTuple):
    student: Tensor  # class per student logit, unmatched -> n (a column of its own, outside the KL)
    teacher: Tensor
    n: int
    s_free: Tensor  # ids of unmatched student logits
    t_free: Tensor


def _classes(student: Tensor, teacher: Tensor, vs: int, vt: int, device: torch.device) -> _Classes:
    for side, cls, width in (("student", student, vs), ("teacher", teacher, vt)):
        if cls.ndim != 1 or cls.shape[0] != width:
            raise ValueError(f"{side} classes {tuple(cls.shape)} must give one class per LM-head row ({width}).")
    s, t = student.to(device, torch.long), teacher.to(device, torch.long)
    n = int(max(int(s.max()) if vs else -1, int(t.max()) if vt else -1)) + 1
    free_s, free_t = (s < 0).nonzero().flatten(), (t < 0).nonzero().flatten()
    return _Classes(torch.where(s < 0, n, s), torch.where(t < 0, n, t), n, free_s, free_t)


def fused_span_kd(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    student_classes: Tensor,
    teacher_classes: Tensor,
    *,
    temperature: float = 1.0,
    uld_weight: float = 1.0,
    uld_top_k: int | None = None,
    chunk_size: int | None = None,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
) -> SpanKDParts:
    """``mean_rows T²·KL(P‖Q) + uld_weight · ULD(unmatched)`` of two LM heads (see
    :func:`lit_distill.losses.functional.span_kd`), chunked: no ``[rows, vocab]`` tensor of either side is kept.

    Classes all -1 (no vocabulary map) give ULD alone (Boizard et al. 2024). Gradients flow to the student's hidden
    states, weight and bias; the teacher gets none.

    Args:
        student_hidden: ``[N, H_s]`` student hidden states at the aligned positions.
        student_weight: ``[V_s, H_s]`` student LM head.
        teacher_hidden: ``[N, H_t]`` teacher hidden states at the same positions.
        teacher_weight: ``[V_t, H_t]`` teacher LM head.
        student_classes: ``[V_s]`` class of each student row, -1 unmatched.
        teacher_classes: ``[V_t]`` class of each teacher row, -1 unmatched.
        temperature: softening temperature of both sides.
        uld_weight: weight of ULD on the unmatched tokens.
        uld_top_k: sort only the ``k`` largest unmatched probabilities per side; None: all.
        chunk_size: rows per chunk; None: as many as fit a memory budget (1.5 GiB on CUDA, 256 MiB on CPU).
        student_bias: ``[V_s]`` optional student LM-head bias (gets a gradient).
        teacher_bias: ``[V_t]`` optional teacher LM-head bias.

    Example:
        >>> hs, ws = torch.randn(4, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
        >>> ht, wt = torch.randn(4, 16), torch.randn(20, 16)
        >>> classes = torch.arange(30).where(torch.arange(30) < 20, -1), torch.arange(20)
        >>> fused_span_kd(hs, ws, ht, wt, *classes).loss.backward()
        >>> ws.grad.shape
        torch.Size([30, 8])
    """
    check_temperature(temperature)
    check_nonnegative("uld_weight", uld_weight)
    if uld_top_k is not None and (isinstance(uld_top_k, bool) or not isinstance(uld_top_k, int) or uld_top_k < 1):
        raise ValueError(f"uld_top_k must be an int >= 1 or None, got {uld_top_k!r}.")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an int >= 1 or None (automatic), got {chunk_size!r}.")
    hs, ws, ht, wt = student_hidden, student_weight, teacher_hidden, teacher_weight
    if hs.ndim != 2 or ht.ndim != 2 or hs.shape[0] != ht.shape[0]:
        raise ValueError(
            f"student_hidden {tuple(hs.shape)} and teacher_hidden {tuple(ht.shape)} must be [rows, hidden] with the "
            "same rows (aligned positions)."
        )
    if ws.ndim != 2 or wt.ndim != 2 or ws.shape[1] != hs.shape[1] or wt.shape[1] != ht.shape[1]:
        raise ValueError(
            f"weights must be [vocab, hidden] matching their hidden states: student {tuple(ws.shape)} for "
            f"{tuple(hs.shape)}, teacher {tuple(wt.shape)} for {tuple(ht.shape)}."
        )
    classes = _classes(student_classes, teacher_classes, ws.shape[0], wt.shape[0], hs.device)
    cfg = (float(temperature), float(uld_weight), uld_top_k, chunk_size, classes)
    teacher = (ht.detach(), wt.detach(), None if teacher_bias is None else teacher_bias.detach())
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (hs, ws, student_bias)):
        loss, kl, w1 = _FusedSpanKD.apply(hs, ws, student_bias, *teacher, cfg)
    else:
        with torch.no_grad():
            loss, kl, w1, _ = _compute(hs, ws, student_bias, *teacher, cfg, need=(False, False, False))
    return SpanKDParts(loss, kl, w1)


class _FusedSpanKD(torch.autograd.Function):
    """Gradients are computed in forward, chunk by chunk; backward only scales them."""

    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, cfg):  # noqa: D102
        need = (hs.requires_grad, ws.requires_grad, bs is not None and bs.requires_grad)
        loss, kl, w1, grads = _compute(hs, ws, bs, ht, wt, bt, cfg, need)
        ctx.grads = grads
        ctx.mark_non_differentiable(kl, w1)
        return loss, kl, w1

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_kl, _grad_w1):  # noqa: D102
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("fused_span_kd computes its gradient once; call backward only once per forward.")
        if not bool(grad_loss == 1):
            grads = tuple(None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in grads)
        return (*grads, None, None, None, None)


def _auto_chunk(n: int, bytes_per_row: int, budget: int) -> int:
    """Rows per chunk: as many as fit ``budget``, spread evenly over the chunks (a multiple of 64 when large)."""
    most = max(1, budget // bytes_per_row)
    chunks = -(-n // most) if n else 1
    even = -(-n // chunks) if n else 1
    return min(most, -(-even // 64) * 64) if even > 64 else max(1, even)


def _compute(hs, ws, bs, ht, wt, bt, cfg, need):
    temperature, uld_weight, top_k, chunk_size, classes = cfg
    n, vs, vt = hs.shape[0], ws.shape[0], wt.shape[0]
    wide = torch.float64 if torch.float64 in (hs.dtype, ht.dtype) else torch.float32
    mm_s, mm_t = _matmul_dtype(hs), _matmul_dtype(ht)
    chunk = chunk_size or _auto_chunk(n, 40 * vs + 24 * vt, _BUDGET["cuda" if hs.is_cuda else "cpu"])
    with torch.autocast(hs.device.type, enabled=False):
        hs_m, ws_m, ht_m, wt_m = hs.detach().to(mm_s), ws.detach().to(mm_s), ht.to(mm_t), wt.to(mm_t)
        bs_m = None if bs is None else bs.detach().to(mm_s)
        bt_m = None if bt is None else bt.to(mm_t)
        grad_h = torch.empty(n, hs.shape[1], dtype=mm_s, device=hs.device) if need[0] else None
        grad_w = torch.zeros(vs, hs.shape[1], dtype=wide, device=hs.device) if need[1] else None
        grad_b = torch.zeros(vs, dtype=wide, device=hs.device) if need[2] else None
        kl_sum = torch.zeros((), dtype=wide, device=hs.device)
        w1_sum = torch.zeros((), dtype=wide, device=hs.device)
        cache: dict = {}
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            zs = _linear(hs_m[start:stop], ws_m, bs_m, wide, None, cache)
            zt = _linear(ht_m[start:stop], wt_m, bt_m, wide, None, cache)
            kl, w1, g = _rows(zs, zt, classes, temperature, uld_weight, top_k, any(need))
            kl_sum += kl
            w1_sum += w1
            if g is not None:
                _backward_block(g.div_(max(n, 1)).to(mm_s), hs_m[start:stop], ws_m, grad_h, grad_w, grad_b, start, wide)
    kl_mean, w1_mean = kl_sum / max(n, 1), w1_sum / max(n, 1)
    grads = (
        None if grad_h is None else grad_h.to(hs.dtype),
        None if grad_w is None else grad_w.to(ws.dtype),
        None if grad_b is None else grad_b.to(bs.dtype),
    )
    return kl_mean + uld_weight * w1_mean, kl_mean, w1_mean, grads


def _rows(zs: Tensor, zt: Tensor, cls: _Classes, temperature: float, uld_weight: float, top_k, need_grad: bool):
    """One chunk: summed class KL (``T²``) and sorted L1 of its rows, and ``d(T²·KL + w·ULD)/dz_s`` (or None)."""
    t = temperature
    p_s = torch.softmax(zs.div_(t), -1)
    del zs
    p_t = torch.softmax(zt.div_(t), -1)
    del zt
    g = torch.zeros_like(p_s) if need_grad else None
    kl = p_s.new_zeros(())
    if cls.n:
        rows = p_s.shape[0]
        q = p_s.new_zeros(rows, cls.n + 1).index_add_(1, cls.student, p_s)  # column n: the unmatched tokens
        p = p_t.new_zeros(rows, cls.n + 1).index_add_(1, cls.teacher, p_t)
        tiny = torch.finfo(q.dtype).tiny
        share = q[:, : cls.n].sum(-1, keepdim=True).clamp_min(tiny)
        p_m = p[:, : cls.n] / p[:, : cls.n].sum(-1, keepdim=True).clamp_min(tiny)
        kl = (torch.xlogy(p_m, p_m) - torch.xlogy(p_m, q[:, : cls.n] / share)).sum() * t * t
        if g is not None:
            # dKL/dq_i = 1/share - P_c/Q_c for a student token i of matched class c, 0 for an unmatched one; through
            # the softmax, d(T²·KL)/dz_i = T · q_i (dKL/dq_i - Σ_j q_j dKL/dq_j).
            coef = torch.zeros_like(q)
            coef[:, : cls.n] = torch.where(q[:, : cls.n] > 0, p_m / q[:, : cls.n], torch.zeros_like(p_m)).neg_()
            coef[:, : cls.n] += 1 / share
            centre = (q * coef).sum(-1, keepdim=True)
            g.copy_(coef.index_select(1, cls.student)).sub_(centre).mul_(p_s).mul_(t)
    w1 = p_s.new_zeros(())
    if uld_weight > 0 and (cls.s_free.numel() or cls.t_free.numel()):
        a = p_s if cls.s_free.numel() == p_s.shape[1] else p_s.index_select(1, cls.s_free)
        b = p_t if cls.t_free.numel() == p_t.shape[1] else p_t.index_select(1, cls.t_free)
        w1_rows, top, top_grad, tail_grad = _sorted_l1_parts(a, b, top_k)
        w1 = w1_rows.sum()
        if g is not None:
            # Through the softmax: dL/dz_i = (w/T) · p_i (dW/dp_i - Σ_j p_j dW/dp_j), dW/dp = ±1 per entry.
            values, index = top
            dot = (values * top_grad).sum(-1, keepdim=True)
            scale = uld_weight / t
            if tail_grad is not None:
                dot += tail_grad * (a.sum(-1, keepdim=True) - values.sum(-1, keepdim=True))
                g.index_add_(1, cls.s_free, a * (tail_grad * scale))
                top_grad = top_grad - tail_grad
            g.sub_(p_s * (dot * scale))
            g.scatter_add_(1, cls.s_free[index], values * top_grad * scale)
    return kl, w1, g


def _sorted_l1_parts(a: Tensor, b: Tensor, top_k: int | None):
    """Per-row sorted L1 (see :func:`lit_distill.losses.functional.sorted_l1`), the student's sorted/top entries
    ``(values, index into a)``, ``dW/d value`` of those entries, and ``dW/d a`` of the rest (top-k only)."""
    width = max(a.shape[1], b.shape[1])
    if top_k is None or top_k >= width:
        va, ia = a.sort(-1, descending=True)
        vb = b.sort(-1, descending=True).values
        diff = torch.nn.functional.pad(va, (0, width - va.shape[1])) - torch.nn.functional.pad(
            vb, (0, width - vb.shape[1])
        )
        return diff.abs().sum(-1), (va, ia), diff[:, : va.shape[1]].sign(), None
    va, ia = a.topk(min(top_k, a.shape[1]), -1)
    vb = b.topk(min(top_k, b.shape[1]), -1).values
    diff = torch.nn.functional.pad(va, (0, top_k - va.shape[1])) - torch.nn.functional.pad(vb, (0, top_k - vb.shape[1]))
    tail = (a.sum(-1, keepdim=True) - va.sum(-1, keepdim=True)) - (b.sum(-1, keepdim=True) - vb.sum(-1, keepdim=True))
    return diff.abs().sum(-1) + tail.abs().squeeze(-1), (va, ia), diff[:, : va.shape[1]].sign(), tail.sign()
