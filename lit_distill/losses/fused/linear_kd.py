"""Chunked fused LM-head + distillation loss: the ``[tokens, vocab]`` logits are never materialised.

For large vocabularies the logits, not the weights, exhaust GPU memory. :func:`fused_linear_kd` walks
the tokens in chunks; per chunk it computes both LM-head matmuls, the divergence and its gradient
with respect to the student logits, then immediately folds that gradient into the student's hidden
state, weight and bias gradients. The backward pass only scales these stored gradients.

The value and gradient equal the direct formula of :mod:`lit_distill.losses.functional` on full
logits (same divergence definitions, same masking), e.g. for ``divergence="jsd"``::

    jensen_shannon(h_s @ W_s.T, h_t @ W_t.T, beta, temperature, mask=labels != ignore_index)

On CUDA (with Triton) the per-chunk elementwise work runs in one Triton kernel that reads the
bf16/fp16/fp32 logits and writes the gradient in place; elsewhere it runs in PyTorch. The fused package
imports nothing from ``functional`` (its argument checks come from :mod:`lit_distill.losses.arguments`),
because ``functional`` re-exports :func:`fused_linear_kd`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_distill.losses.arguments import check_alpha, check_beta, check_divergence, check_head_mass, check_temperature
from lit_distill.losses.fused.checks import _check_and_flatten, _check_label_range
from lit_distill.losses.fused.chunks import _chunk_loop
from lit_distill.losses.fused.spec import _Config


class FusedKDParts(NamedTuple):
    """``loss`` (differentiable) = ``kd + ce_weight * ce``; ``kd`` and ``ce`` are detached, for logging.

    Example:
        >>> h, w = torch.randn(6, 8), torch.randn(32, 8)
        >>> parts = fused_linear_kd(h, w, h, w, labels=torch.randint(0, 32, (6,)), ce_weight=0.5, return_parts=True)
        >>> torch.allclose(parts.loss, parts.kd + 0.5 * parts.ce)
        True"""

    loss: Tensor
    kd: Tensor
    ce: Tensor


def fused_linear_kd(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    alpha: float = 0.1,
    head_mass: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    grad_chunk_size: int | None = None,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    ce_weight: float = 0.0,
    fp32_accumulation: bool | None = None,
    fp32_logits: bool = False,
    overlap: bool = False,
    impl: str = "auto",
    return_parts: bool = False,
) -> Tensor | FusedKDParts:
    """Distillation loss of two LM heads, computed chunk by chunk without full ``[N, V]`` logits.

    ``loss = mean_{rows with labels != ignore_index} D(h_s W_sᵀ + b_s, h_t W_tᵀ + b_t) + ce_weight · CE``
    where ``D`` is the row divergence of :func:`lit_distill.losses.functional.divergence` (forward/reverse
    KL, skew KL and adaptive KL with the T² factor; generalized JSD(β) and TVD without) and ``CE`` the mean
    hard-label cross-entropy of the student logits at temperature 1. With no counted row the loss is 0 (not
    NaN) and all gradients are 0. Gradients flow to ``student_hidden``, ``student_weight`` and
    ``student_bias``; the teacher side gets none. Shifting tokens against labels is the caller's job.

    Args:
        student_hidden: ``[N, H_s]`` or ``[B, T, H_s]`` final hidden states of the student.
        student_weight: ``[V, H_s]`` student LM-head weight (``nn.Linear.weight`` layout).
        teacher_hidden: ``[N, H_t]`` or ``[B, T, H_t]``, same leading shape as ``student_hidden``.
        teacher_weight: ``[V, H_t]``; the vocabulary ``V`` must equal the student's.
        divergence: ``"forward_kl"``, ``"reverse_kl"``, ``"jsd"``, ``"tvd"``, ``"skew_forward_kl"``,
            ``"skew_reverse_kl"`` or ``"adaptive_kl"`` (no Triton kernel: it sorts each row, so it runs the
            PyTorch path, also on CUDA).
        beta: JSD interpolation weight in ``[0, 1]`` (0 = forward KL, 1 = reverse KL, no T²).
        alpha: skew of the skew divergences, in ``[0, 1)``.
        head_mass: adaptive KL's head mass μ, in ``[0, 1]``.
        temperature: softening temperature ``T > 0`` applied to both sides' logits.
        labels: optional integer labels with the hidden states' leading shape; rows equal to
            ``ignore_index`` are left out of the mean. Required when ``ce_weight > 0``.
        ignore_index: label value of rows to leave out.
        chunk_size: tokens per chunk; ``None`` picks one from ``N``, ``V`` and free memory
            (:func:`auto_chunk_size`). Any value ``>= 1`` gives the same result.
        grad_chunk_size: tokens per block of the backward matmuls (``dL/dh``, ``dL/dW``); ``None`` = one
            chunk, with the gradient written over the student logits. Larger than ``chunk_size``, the
            gradient gets its own ``[grad_chunk_size, V]`` buffer in the matmul dtype and several logits
            chunks fill it: fewer passes over the ``[V, H]`` weight-gradient accumulator (and fewer roundings
            of a bf16 one) for that memory. Any value gives the same result.
        student_bias: optional ``[V]`` student LM-head bias (gets a gradient).
        teacher_bias: optional ``[V]`` teacher LM-head bias.
        ce_weight: weight of the hard-label cross-entropy added to the divergence (``>= 0``).
        fp32_accumulation: accumulate the weight gradient over chunks in float32 (one rounding at
            the end) rather than in the weight's dtype (one rounding per chunk, half the memory).
            ``None`` follows ``fp32_logits``: with bf16 logits their rounding dominates the error,
            so an fp32 accumulator (2x the weight's size for bf16) buys no accuracy there. A float32
            weight (autocast, master weights) is always accumulated in float32.
        fp32_logits: for half-precision inputs, have the LM-head matmuls write float32 logits
            (half-precision operands, float32 accumulation and output) instead of rounding them to
            the input dtype. More accurate than the direct formula on bf16 logits, twice the logit
            memory and traffic. ``False`` reproduces ``h @ W.T`` in the input dtype exactly.
        overlap: compute the next chunk's logits on a second CUDA stream while this chunk's elementwise
            kernel and backward matmuls run (two logits buffers, so the automatic chunk is half as long).
            Experimental; the same result either way. Off the GPU only the buffer rotation happens.
        impl: elementwise backend: ``"auto"`` (the Triton kernel on CUDA when Triton is importable,
            else PyTorch), ``"triton"`` or ``"torch"``.
        return_parts: return :class:`FusedKDParts` ``(loss, kd, ce)`` instead of the loss alone.

    Returns:
        The scalar loss (float32, float64 for float64 inputs), or :class:`FusedKDParts`.

    Example:
        >>> h_s, w_s = torch.randn(6, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
        >>> h_t, w_t = torch.randn(6, 16), torch.randn(50, 16)
        >>> loss = fused_linear_kd(h_s, w_s, h_t, w_t, divergence="jsd", beta=0.5, chunk_size=4)
        >>> loss.backward()
        >>> w_s.grad.shape
        torch.Size([50, 8])
    """
    check_divergence(divergence)
    check_beta(beta)
    check_alpha(alpha)
    check_head_mass(head_mass)
    check_temperature(temperature)
    for name, rows in (("chunk_size", chunk_size), ("grad_chunk_size", grad_chunk_size)):
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise ValueError(f"{name} must be an int >= 1 or None (automatic), got {rows!r}.")
    if not (isinstance(ce_weight, (int, float)) and math.isfinite(ce_weight) and ce_weight >= 0):
        raise ValueError(f"ce_weight must be a finite number >= 0, got {ce_weight!r}; 0 switches the CE term off.")
    if not isinstance(overlap, bool):
        raise ValueError(f"overlap must be True or False, got {overlap!r}.")
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}.")
    hs, ht, lab = _check_and_flatten(
        student_hidden, student_weight, teacher_hidden, teacher_weight, student_bias, teacher_bias, labels
    )
    if ce_weight > 0 and lab is None:
        raise ValueError("ce_weight > 0 needs `labels` (the hard targets); pass labels or set ce_weight=0.")

    # Leave ignored rows out before any matmul: prompt/padding tokens cost nothing.
    if lab is not None:
        idx = (lab != ignore_index).nonzero().squeeze(1)  # the step's one host sync: the kept rows' count
        if idx.numel() < lab.numel():
            hs, ht, lab = hs.index_select(0, idx), ht.index_select(0, idx), lab.index_select(0, idx)
        if ce_weight > 0:
            _check_label_range(lab, student_weight.shape[0], ignore_index)

    grad_on = torch.is_grad_enabled()
    cfg = _Config(
        divergence=divergence,
        beta=float(beta),
        temperature=float(temperature),
        ce_weight=float(ce_weight),
        chunk_size=chunk_size,
        grad_chunk_size=grad_chunk_size,
        fp32_accumulation=fp32_logits if fp32_accumulation is None else bool(fp32_accumulation),
        fp32_logits=fp32_logits,
        overlap=overlap,
        impl=impl,
        need=(
            grad_on and hs.requires_grad,
            grad_on and student_weight.requires_grad,
            grad_on and student_bias is not None and student_bias.requires_grad,
        ),
        alpha=float(alpha),
        head_mass=float(head_mass),
    )
    teacher = (ht.detach(), teacher_weight.detach(), None if teacher_bias is None else teacher_bias.detach())
    if any(cfg.need):
        loss, kd, ce = _FusedLinearKD.apply(hs, student_weight, student_bias, *teacher, lab, cfg)
    else:
        with torch.no_grad():
            loss, kd, ce, _ = _compute(hs, student_weight, student_bias, *teacher, lab, cfg)
    return FusedKDParts(loss, kd, ce) if return_parts else loss


# -------------------------------------------------------------------------------- the autograd op
class _FusedLinearKD(torch.autograd.Function):
    """Gradients are computed in forward, chunk by chunk; backward only scales them by the upstream grad."""

    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, labels, cfg):  # noqa: D102
        mm_dtypes = (_matmul_dtype(hs), _matmul_dtype(ht))
        loss, kd, ce, grads = _compute(hs, ws, bs, ht, wt, bt, labels, cfg, mm_dtypes)
        ctx.grads, ctx.cfg, ctx.mm_dtypes = grads, cfg, mm_dtypes
        ctx.save_for_backward(hs, ws, bs, ht, wt, bt, labels)  # only for a second backward
        ctx.mark_non_differentiable(kd, ce)
        return loss, kd, ce

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_kd, _grad_ce):  # noqa: D102
        if ctx.grads is not None:
            # Drop our reference so that autograd can adopt the buffers as .grad instead of copying them.
            grads, ctx.grads = ctx.grads, None
        else:  # a second backward through the same graph (retain_graph=True, gradcheck): recompute
            grads = _compute(*ctx.saved_tensors, ctx.cfg, ctx.mm_dtypes)[3]
        # Scaled on the device without asking whether grad_loss is 1: that question is a host sync in the middle of
        # the backward pass, which empties the GPU's queue; one fused multiply over the gradients costs less.
        present = [g for g in grads if g is not None]
        if present:
            torch._foreach_mul_(present, grad_loss)
        return (*grads, None, None, None, None, None)


def _matmul_dtype(x: Tensor) -> torch.dtype:
    # Mirror what nn.Linear would do: under autocast the LM head runs in the autocast dtype.
    dev = x.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev) and x.dtype in (torch.float32, torch.float16):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _compute(hs, ws, bs, ht, wt, bt, labels, cfg: _Config, mm_dtypes: tuple[torch.dtype, torch.dtype] | None = None):
    device, n = hs.device, hs.shape[0]
    vocab, h_s = ws.shape
    mm_s, mm_t = mm_dtypes or (_matmul_dtype(hs), _matmul_dtype(ht))
    with torch.autocast(device.type, enabled=False):
        hs_m, ws_m = hs.detach().to(mm_s), ws.detach().to(mm_s)
        ht_m, wt_m = ht.to(mm_t), wt.to(mm_t)
        bs_m = None if bs is None else bs.detach().to(mm_s)
        bt_m = None if bt is None else bt.to(mm_t)
        return _chunk_loop(hs_m, ws_m, bs_m, ht_m, wt_m, bt_m, labels, cfg, hs, ws, bs, n, vocab, h_s, device)
