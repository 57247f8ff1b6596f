"""Chunked fused LM-head + distillation loss: the ``[tokens, vocab]`` logits are never materialised.

For large vocabularies the logits, not the weights, exhaust GPU memory. :func:`fused_linear_kd` walks
the tokens in chunks; per chunk it computes both LM-head matmuls, the divergence and its gradient
with respect to the student logits, then immediately folds that gradient into the student's hidden
state, weight and bias gradients. The backward pass only scales these stored gradients.

The value and gradient equal the direct formula of :mod:`lit_distill.losses.functional` on full
logits (same divergence definitions, same masking), e.g. for ``divergence="jsd"``::

    jensen_shannon(h_s @ W_s.T, h_t @ W_t.T, beta, temperature, mask=labels != ignore_index)

On CUDA (with Triton) the per-chunk elementwise work runs in one Triton kernel that reads the
bf16/fp16/fp32 logits and writes the gradient in place; elsewhere it runs in PyTorch. This module
imports nothing from ``functional`` at load time, because ``functional`` re-exports
:func:`fused_linear_kd`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_distill.losses.fused_triton import TRITON_CONFIG, _pick_triton, _rows_triton, _triton_available  # noqa: F401

__all__ = ["fused_linear_kd", "FusedKDParts", "auto_chunk_size"]

_DIV_CODES = {"fkl": 0, "rkl": 1, "jsd": 2, "tvd": 3}
# Working set of the per-chunk logit buffers when chunk_size is not given (see auto_chunk_size).
_GPU_CHUNK_BYTES = 448 << 20
_CPU_CHUNK_BYTES = 256 << 20


class FusedKDParts(NamedTuple):
    """``loss`` (differentiable) = ``kd + ce_weight * ce``; ``kd`` and ``ce`` are detached, for logging."""

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
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    ce_weight: float = 0.0,
    fp32_accumulation: bool | None = None,
    fp32_logits: bool = False,
    impl: str = "auto",
    return_parts: bool = False,
) -> Tensor | FusedKDParts:
    """Distillation loss of two LM heads, computed chunk by chunk without full ``[N, V]`` logits.

    ``loss = mean_{rows with labels != ignore_index} D(h_s W_sᵀ + b_s, h_t W_tᵀ + b_t) + ce_weight · CE``
    where ``D`` is the row divergence of :func:`lit_distill.losses.functional.divergence` (forward/reverse
    KL with the T² factor, generalized JSD(β), TVD) and ``CE`` the mean hard-label cross-entropy of the
    student logits at temperature 1. With no counted row the loss is 0 (not NaN) and all gradients are 0.
    Gradients flow to ``student_hidden``, ``student_weight`` and ``student_bias``; the teacher side gets
    none. Shifting tokens against labels is the caller's job.

    Args:
        student_hidden: ``[N, H_s]`` or ``[B, T, H_s]`` final hidden states of the student.
        student_weight: ``[V, H_s]`` student LM-head weight (``nn.Linear.weight`` layout).
        teacher_hidden: ``[N, H_t]`` or ``[B, T, H_t]``, same leading shape as ``student_hidden``.
        teacher_weight: ``[V, H_t]``; the vocabulary ``V`` must equal the student's.
        divergence: ``"forward_kl"``, ``"reverse_kl"``, ``"jsd"`` or ``"tvd"``.
        beta: JSD interpolation weight in ``[0, 1]`` (0 = forward KL, 1 = reverse KL, no T²).
        temperature: softening temperature ``T > 0`` applied to both sides' logits.
        labels: optional integer labels with the hidden states' leading shape; rows equal to
            ``ignore_index`` are left out of the mean. Required when ``ce_weight > 0``.
        ignore_index: label value of rows to leave out.
        chunk_size: tokens per chunk; ``None`` picks one from ``N``, ``V`` and free memory
            (:func:`auto_chunk_size`). Any value ``>= 1`` gives the same result.
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
    from lit_distill.losses.functional import DIVERGENCES, check_beta, check_temperature

    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}.")
    check_beta(beta)
    check_temperature(temperature)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an int >= 1 or None (automatic), got {chunk_size!r}.")
    if not (isinstance(ce_weight, (int, float)) and math.isfinite(ce_weight) and ce_weight >= 0):
        raise ValueError(f"ce_weight must be a finite number >= 0, got {ce_weight!r}; 0 switches the CE term off.")
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}.")
    hs, ht, lab = _check_and_flatten(
        student_hidden, student_weight, teacher_hidden, teacher_weight, student_bias, teacher_bias, labels
    )
    if ce_weight > 0 and lab is None:
        raise ValueError("ce_weight > 0 needs `labels` (the hard targets); pass labels or set ce_weight=0.")

    # Leave ignored rows out before any matmul: prompt/padding tokens cost nothing.
    if lab is not None:
        keep = lab != ignore_index
        if ce_weight > 0:
            _check_label_range(lab[keep], student_weight.shape[0], ignore_index)
        if not bool(keep.all()):
            idx = keep.nonzero().squeeze(1)
            hs, ht, lab = hs.index_select(0, idx), ht.index_select(0, idx), lab.index_select(0, idx)

    grad_on = torch.is_grad_enabled()
    cfg = _Config(
        divergence=divergence,
        beta=float(beta),
        temperature=float(temperature),
        ce_weight=float(ce_weight),
        chunk_size=chunk_size,
        fp32_accumulation=fp32_logits if fp32_accumulation is None else bool(fp32_accumulation),
        fp32_logits=fp32_logits,
        impl=impl,
        need=(
            grad_on and hs.requires_grad,
            grad_on and student_weight.requires_grad,
            grad_on and student_bias is not None and student_bias.requires_grad,
        ),
    )
    teacher = (ht.detach(), teacher_weight.detach(), None if teacher_bias is None else teacher_bias.detach())
    if any(cfg.need):
        loss, kd, ce = _FusedLinearKD.apply(hs, student_weight, student_bias, *teacher, lab, cfg)
    else:
        with torch.no_grad():
            loss, kd, ce, _ = _compute(hs, student_weight, student_bias, *teacher, lab, cfg)
    return FusedKDParts(loss, kd, ce) if return_parts else loss


def auto_chunk_size(n_rows: int, vocab: int, bytes_per_row: int, device: torch.device) -> int:
    """Tokens per chunk so that the per-chunk buffers (``bytes_per_row`` each) fit a memory budget.

    Budget: on CUDA an eighth of the free memory (driver-free plus the allocator's cached blocks),
    capped at 448 MiB; on CPU a fixed 256 MiB. The rows are then spread evenly over the chunks and
    rounded to a multiple of 64 (tensor-core friendly tiles).

    Example:
        >>> auto_chunk_size(10_000, 32_000, 4 * 32_000, torch.device("cpu"))
        2048
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        budget = min(free // 8, _GPU_CHUNK_BYTES)
    else:
        budget = _CPU_CHUNK_BYTES
    c_max = max(1, budget // max(1, bytes_per_row))
    if c_max >= n_rows:
        return max(1, n_rows)
    n_chunks = -(-n_rows // c_max)
    c = -(-n_rows // n_chunks)
    return min(c_max, -(-c // 64) * 64) if c > 64 else c


# --------------------------------------------------------------------------------------- checks
def _check_and_flatten(
    hs: Tensor, ws: Tensor, ht: Tensor, wt: Tensor, bs: Tensor | None, bt: Tensor | None, labels: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    for name, t in (("student_hidden", hs), ("teacher_hidden", ht), ("student_weight", ws), ("teacher_weight", wt)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            got = f"{type(t).__name__} {getattr(t, 'dtype', '')}"
            raise TypeError(f"{name} must be a floating-point tensor, got {got}.")
    if ws.dim() != 2 or wt.dim() != 2:
        raise ValueError(
            f"weights must be 2-D [vocab, hidden] like nn.Linear.weight; got student {tuple(ws.shape)}, "
            f"teacher {tuple(wt.shape)}."
        )
    if ws.shape[0] != wt.shape[0]:
        raise ValueError(
            f"student vocab {ws.shape[0]} != teacher vocab {wt.shape[0]} (weights {tuple(ws.shape)} vs "
            f"{tuple(wt.shape)}); distillation over logits needs one shared vocabulary/tokenizer."
        )
    if hs.dim() < 2 or hs.shape[-1] != ws.shape[1]:
        raise ValueError(
            f"student_hidden {tuple(hs.shape)} must end in the student weight's hidden size {ws.shape[1]} "
            f"(weight {tuple(ws.shape)} is [vocab, hidden])."
        )
    if ht.dim() < 2 or ht.shape[-1] != wt.shape[1]:
        raise ValueError(
            f"teacher_hidden {tuple(ht.shape)} must end in the teacher weight's hidden size {wt.shape[1]} "
            f"(weight {tuple(wt.shape)} is [vocab, hidden])."
        )
    if hs.shape[:-1] != ht.shape[:-1]:
        raise ValueError(
            f"student_hidden {tuple(hs.shape)} and teacher_hidden {tuple(ht.shape)} must have the same leading "
            "(token) shape; run both models on the same batch."
        )
    for name, b, v in (("student_bias", bs, ws.shape[0]), ("teacher_bias", bt, wt.shape[0])):
        if b is not None and tuple(b.shape) != (v,):
            raise ValueError(f"{name} must have shape ({v},) (one entry per vocab row), got {tuple(b.shape)}.")
    devices = {t.device for t in (hs, ws, ht, wt, bs, bt, labels) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(str(d) for d in devices)}.")
    if labels is not None:
        if labels.shape != hs.shape[:-1]:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} must equal the hidden states' leading shape "
                f"{tuple(hs.shape[:-1])} (shift labels before calling)."
            )
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}.")
        labels = labels.reshape(-1)
    return hs.reshape(-1, hs.shape[-1]), ht.reshape(-1, ht.shape[-1]), labels


def _check_label_range(valid: Tensor, vocab: int, ignore_index: int) -> None:
    if valid.numel() and bool((valid < 0).any() | (valid >= vocab).any()):
        bad = valid[(valid < 0) | (valid >= vocab)][0].item()
        raise ValueError(f"label {bad} is outside [0, {vocab}) and is not ignore_index={ignore_index}.")


# -------------------------------------------------------------------------------- the autograd op
class _Config(NamedTuple):
    divergence: str
    beta: float
    temperature: float
    ce_weight: float
    chunk_size: int | None
    fp32_accumulation: bool
    fp32_logits: bool
    impl: str
    need: tuple[bool, bool, bool]  # gradients wanted for student hidden, weight, bias


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
        # Skip the pass over the [V, H] weight gradient in the common case of an unscaled loss.
        if not bool(grad_loss == 1):
            grads = tuple(None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in grads)
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


def _chunk_loop(hs_m, ws_m, bs_m, ht_m, wt_m, bt_m, labels, cfg, hs, ws, bs, n, vocab, h_s, device):
    need_h, need_w, need_b = cfg.need
    need_grad = any(cfg.need)
    use_triton = _pick_triton(cfg.impl, device, hs_m.dtype, ht_m.dtype)
    acc_dtype = torch.float64 if hs_m.dtype == torch.float64 else torch.float32
    half = (torch.float16, torch.bfloat16)
    ld_s = torch.float32 if cfg.fp32_logits and hs_m.dtype in half else hs_m.dtype
    ld_t = torch.float32 if cfg.fp32_logits and ht_m.dtype in half else ht_m.dtype
    esize = _esize(ld_s) + _esize(ld_t)
    # Triton reads the two logit buffers and writes the gradient into the student one; the PyTorch
    # path also holds about eight fp32 temporaries per element.
    per_row = vocab * (esize if use_triton else esize + 8 * _esize(acc_dtype))
    chunk = cfg.chunk_size or auto_chunk_size(n, vocab, per_row, device)
    chunk = max(1, min(chunk, n))

    # An fp32 accumulator costs nothing extra when the weight itself is fp32 (autocast, master weights).
    wide = cfg.fp32_accumulation or ws.dtype in (torch.float32, torch.float64) or ws_m.dtype == torch.float64
    w_acc = acc_dtype if wide else ws_m.dtype
    grad_h = torch.empty(n, h_s, dtype=hs_m.dtype, device=device) if need_h else None
    grad_w = torch.empty(vocab, h_s, dtype=w_acc, device=device) if need_w else None
    grad_b = torch.zeros(vocab, dtype=acc_dtype, device=device) if need_b else None
    kd_sum = torch.zeros((), dtype=acc_dtype, device=device)
    ce_sum = torch.zeros((), dtype=acc_dtype, device=device)
    inv_n = 1.0 / max(n, 1)
    spec = _Spec.of(cfg, inv_n)
    zs_buf = torch.empty(chunk, vocab, dtype=ld_s, device=device) if (use_triton and n) else None
    zt_buf = torch.empty(chunk, vocab, dtype=ld_t, device=device) if (use_triton and n) else None
    up_cache: dict = {}

    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        h_c, lab_c = hs_m[start:stop], None if labels is None else labels[start:stop]
        zs = _linear(h_c, ws_m, bs_m, ld_s, None if zs_buf is None else zs_buf[: stop - start], up_cache)
        zt = _linear(ht_m[start:stop], wt_m, bt_m, ld_t, None if zt_buf is None else zt_buf[: stop - start], up_cache)
        if use_triton:
            # The kernel writes dL/dzs over the student logits (in the first half of each fp32 row
            # when the logits are wider than the matmul dtype).
            g = zs if ld_s == hs_m.dtype else zs.view(hs_m.dtype)[:, :vocab]
            kd_c, ce_c = _rows_triton(zs, zt, lab_c, spec, need_grad, g=g)
        else:
            kd_c, ce_c, g = _rows_torch(zs, zt, lab_c, spec, need_grad)
        kd_sum += kd_c
        ce_sum += ce_c
        if not need_grad:
            continue
        g = g.to(hs_m.dtype)
        if need_h:
            torch.mm(g, ws_m, out=grad_h[start:stop])
        if need_w:
            _accumulate_weight_grad(grad_w, g, h_c, first=start == 0)
        if need_b:
            grad_b += g.sum(0, dtype=acc_dtype)

    zs = zt = g = zs_buf = zt_buf = None  # free the chunk buffers before the final casts allocate
    kd = kd_sum.to(acc_dtype)
    ce = ce_sum.to(acc_dtype)
    loss = kd + cfg.ce_weight * ce if cfg.ce_weight > 0 else kd.clone()
    if grad_w is not None and n == 0:
        grad_w.zero_()
    grads = (
        None if grad_h is None else grad_h.to(hs.dtype),
        None if grad_w is None else grad_w.to(ws.dtype),
        None if grad_b is None else grad_b.to(bs.dtype),
    )
    return loss, kd, ce, grads


def _esize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _linear(x: Tensor, w: Tensor, b: Tensor | None, dtype: torch.dtype, out: Tensor | None, cache: dict) -> Tensor:
    """``x wᵀ + b`` as ``dtype`` (wider than the operands for fp32 logits), into ``out`` when given."""
    kw = {} if out is None else {"out": out}
    if dtype == x.dtype:
        return torch.mm(x, w.t(), **kw) if b is None else torch.addmm(b, x, w.t(), **kw)
    if x.is_cuda:
        # cuBLAS: half-precision operands, fp32 accumulation and output (torch >= 2.8), best into `out`.
        for how, args in (("mm_out", kw), ("mm", {})):
            if _FP32_OUT_MM.get(how, True):
                try:
                    if b is None:
                        res = torch.mm(x, w.t(), out_dtype=dtype, **args)
                    else:
                        res = torch.addmm(b.to(dtype), x, w.t(), out_dtype=dtype, **args)
                    _FP32_OUT_MM[how] = True
                    return res if (out is None or args) else out.copy_(res)
                except torch.OutOfMemoryError:
                    raise
                except (RuntimeError, TypeError):
                    _FP32_OUT_MM[how] = False
    # Upcast operands once per call (the weight copy is the expensive part).
    key = (id(w), dtype)
    if key not in cache:
        cache[key] = (w.to(dtype), None if b is None else b.to(dtype))
    w_up, b_up = cache[key]
    res = torch.mm(x.to(dtype), w_up.t()) if b_up is None else torch.addmm(b_up, x.to(dtype), w_up.t())
    return res if out is None else out.copy_(res)


_FP32_OUT_MM: dict[str, bool] = {}


def _accumulate_weight_grad(acc: Tensor, g: Tensor, h: Tensor, first: bool) -> None:
    """``acc = gᵀ h`` (first chunk, no zero-fill pass) or ``acc += gᵀ h``, accumulating in ``acc``'s dtype."""
    if acc.dtype == g.dtype:
        torch.mm(g.t(), h, out=acc) if first else acc.addmm_(g.t(), h)
        return
    if acc.is_cuda:
        # cuBLAS with half-precision operands reads and writes an fp32 accumulator in place.
        how = "mm_out" if first else "addmm_"
        if _FP32_OUT_MM.get(how, True):
            try:
                if first:
                    torch.mm(g.t(), h, out_dtype=acc.dtype, out=acc)
                else:
                    torch.addmm(acc, g.t(), h, out_dtype=acc.dtype, out=acc)
                _FP32_OUT_MM[how] = True
                return
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, TypeError):
                _FP32_OUT_MM[how] = False
    if first:
        acc.zero_()
    acc.addmm_(g.t().to(acc.dtype), h.to(acc.dtype))


# ----------------------------------------------------------------------- elementwise, PyTorch
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
