"""The Triton kernel behind :func:`lit_distill.losses.fused.fused_linear_kd` on CUDA.

One program walks whole rows of a chunk of student/teacher logits and writes the divergence per row
and its gradient with respect to the student logits in place. Importing this module never needs
Triton: the kernel is built on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lit_distill.losses.fused.spec import _Spec

# Triton launch configuration by logit element size, from the sweep in benchmarks/fused_kd_loss.py (H100).
TRITON_CONFIG = {
    2: {"BLOCK": 8192, "num_warps": 16, "programs_per_sm": 4},
    4: {"BLOCK": 4096, "num_warps": 8, "programs_per_sm": 2},
}


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _pick_triton(impl: str, device: torch.device, *dtypes: torch.dtype) -> bool:
    ok_dtypes = all(d in (torch.float32, torch.bfloat16, torch.float16) for d in dtypes)
    if impl == "triton":
        if not _triton_available():
            raise RuntimeError("impl='triton' needs the triton package; install it or use impl='auto'/'torch'.")
        if not ok_dtypes:
            raise ValueError(f"impl='triton' supports float32/bfloat16/float16 inputs, got {dtypes}; use impl='torch'.")
        return True
    return impl == "auto" and device.type == "cuda" and ok_dtypes and _triton_available()


def _rows_triton(
    zs: Tensor, zt: Tensor, labels: Tensor | None, spec: _Spec, need_grad: bool, g: Tensor | None = None, **launch
) -> tuple:
    """Triton version of :func:`_rows_torch`; writes ``d(loss)/d zs`` into ``g`` (default: over ``zs``).

    ``g`` may alias ``zs`` only as ``zs`` itself or as the first half of each row of a wider ``zs``; otherwise it
    is a separate ``[rows, V]`` buffer. ``launch`` overrides :data:`TRITON_CONFIG` (``BLOCK``, ``num_warps``,
    ``programs_per_sm``, which may be fractional).
    """
    g = zs if g is None else g
    kernel = _triton_kernel()
    rows, vocab = zs.shape
    has_ce = spec.ce_grad_scale > 0
    loss_rows = torch.empty(rows, dtype=torch.float32, device=zs.device)
    ce_rows = torch.empty(rows, dtype=torch.float32, device=zs.device) if has_ce else loss_rows
    lab = labels if has_ce else loss_rows  # unused pointer when there is no CE term
    conf = {**TRITON_CONFIG[min(4, zs.element_size())], **launch}
    # A gradient narrower than the logits and stored in the same rows must be written front to back.
    narrowing = (
        g.untyped_storage().data_ptr() == zs.untyped_storage().data_ptr() and g.element_size() < zs.element_size()
    )
    if zs.device.type == "cuda":
        n_sm = torch.cuda.get_device_properties(zs.device).multi_processor_count
        # programs_per_sm below 1 leaves SMs idle, but fewer rows in flight stay in L2 between the passes.
        n_prog = max(1, min(rows, round(conf["programs_per_sm"] * n_sm)))
    else:  # interpreter (tests)
        n_prog = max(1, min(rows, 3))
    if rows:
        kernel[(n_prog,)](
            zs, zt, g, lab, loss_rows, ce_rows,
            rows, vocab, zs.stride(0), zt.stride(0), g.stride(0), n_prog,
            1.0 / spec.temperature, spec.beta, spec.loss_scale, spec.grad_scale, spec.ce_grad_scale,
            DIV=spec.code, HAS_CE=has_ce, SAME_T=spec.temperature == 1.0, NEED_GRAD=need_grad,
            REV2=not (need_grad and spec.code < 2 and narrowing),
            BLOCK=conf["BLOCK"], num_warps=conf["num_warps"],
        )  # fmt: skip
    kd = loss_rows.sum()
    ce = ce_rows.sum() * spec.inv_n if has_ce else torch.zeros((), device=zs.device)
    return kd, ce


_KERNEL: list = []


def _triton_kernel():
    """Build the Triton kernel on first use, so importing this module never needs Triton."""
    if _KERNEL:
        return _KERNEL[0]
    import triton
    import triton.language as tl

    @triton.jit
    def kd_rows(
        zs_ptr, zt_ptr, g_ptr, lab_ptr, loss_ptr, ce_ptr,
        n_rows, n_cols, stride_s, stride_t, stride_g, n_prog,
        inv_t, beta, loss_scale, grad_scale, ce_scale,
        DIV: tl.constexpr, HAS_CE: tl.constexpr, SAME_T: tl.constexpr, NEED_GRAD: tl.constexpr,
        REV2: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        # Base-2 logs throughout (exp2/log2 are the hardware ops); one program walks whole rows.
        k2 = inv_t * 1.4426950408889634
        n_blocks = tl.cdiv(n_cols, BLOCK)
        for row in range(tl.program_id(0), n_rows, n_prog):
            s_ptr = zs_ptr + tl.cast(row, tl.int64) * stride_s
            t_ptr = zt_ptr + tl.cast(row, tl.int64) * stride_t
            o_ptr = g_ptr + tl.cast(row, tl.int64) * stride_g
            # Pass 1: online log-sum-exp of both rows (and of the raw student row for CE at T != 1).
            # Scalar running sums: per-lane vectors measured ~10% slower on an H100 (registers).
            m_s = float("-inf")
            l_s = 0.0
            m_t = float("-inf")
            l_t = 0.0
            acc = 0.0
            m_1 = float("-inf")
            l_1 = 0.0
            for blk in range(0, n_blocks):
                cols = blk * BLOCK + tl.arange(0, BLOCK)
                msk = cols < n_cols
                x = tl.load(s_ptr + cols, mask=msk, other=float("-inf"), eviction_policy="evict_last").to(tl.float32)
                a = x * k2
                b = tl.load(t_ptr + cols, mask=msk, other=float("-inf"), eviction_policy="evict_last")
                b = b.to(tl.float32) * k2
                new_s = tl.maximum(m_s, tl.max(a, axis=0))
                rescale = tl.exp2(m_s - new_s)
                e_s = tl.exp2(a - new_s)
                l_s = l_s * rescale + tl.sum(e_s, axis=0)
                if DIV == 1:  # reverse KL needs sum q (a - b) for its gradient: track it online
                    acc = acc * rescale + tl.sum(tl.where(msk, e_s * (a - b), 0.0), axis=0)
                m_s = new_s
                new_t = tl.maximum(m_t, tl.max(b, axis=0))
                l_t = l_t * tl.exp2(m_t - new_t) + tl.sum(tl.exp2(b - new_t), axis=0)
                m_t = new_t
                if HAS_CE and not SAME_T:
                    x2 = x * 1.4426950408889634
                    new_1 = tl.maximum(m_1, tl.max(x2, axis=0))
                    l_1 = l_1 * tl.exp2(m_1 - new_1) + tl.sum(tl.exp2(x2 - new_1), axis=0)
                    m_1 = new_1
            lse_s = m_s + tl.log2(l_s)
            lse_t = m_t + tl.log2(l_t)
            rkl = (acc / l_s - (lse_s - lse_t)) * 0.6931471805599453
            lab = 0
            lse_1 = lse_s
            if HAS_CE:
                lab = tl.load(lab_ptr + row).to(tl.int32)
                if not SAME_T:
                    lse_1 = m_1 + tl.log2(l_1)
                x_lab = tl.load(s_ptr + lab).to(tl.float32) * 1.4426950408889634
                tl.store(ce_ptr + row, (lse_1 - x_lab) * 0.6931471805599453)
            # Pass 2: the value, and the gradient for forward/reverse KL (whose row statistic pass 1
            # gave). It walks back, so its first reads hit what pass 1 left in L2, unless it writes a
            # narrower gradient into the same row, which is only safe front to back.
            row_loss = 0.0
            ssum = 0.0
            for i in range(0, n_blocks):
                if REV2:
                    cols = (n_blocks - 1 - i) * BLOCK + tl.arange(0, BLOCK)
                else:
                    cols = i * BLOCK + tl.arange(0, BLOCK)
                msk = cols < n_cols
                x = tl.load(s_ptr + cols, mask=msk, other=float("-inf")).to(tl.float32)
                la = x * k2 - lse_s
                lb = tl.load(t_ptr + cols, mask=msk, other=float("-inf")).to(tl.float32) * k2 - lse_t
                q = tl.exp2(la)
                p = tl.exp2(lb)
                g = q * 0.0
                if DIV == 0:
                    row_loss += tl.sum(tl.where(msk & (p > 0), p * (lb - la), 0.0), axis=0)
                    g = grad_scale * (q - p)
                elif DIV == 1:
                    row_loss += tl.sum(tl.where(msk & (q > 0), q * (la - lb), 0.0), axis=0)
                    g = grad_scale * q * ((la - lb) * 0.6931471805599453 - rkl)
                elif DIV == 2:
                    lm = tl.log2(tl.maximum(beta * p + (1.0 - beta) * q, 1.1754943508222875e-38))
                    kl_p = tl.where(p > 0, p * (lb - lm), 0.0)
                    kl_q = tl.where(q > 0, q * (la - lm), 0.0)
                    row_loss += tl.sum(tl.where(msk, beta * kl_p + (1.0 - beta) * kl_q, 0.0), axis=0)
                    ssum += tl.sum(tl.where(msk, kl_q, 0.0), axis=0)
                else:
                    row_loss += tl.sum(tl.where(msk, tl.abs(p - q), 0.0), axis=0)
                    sgn = tl.where(q > p, 1.0, tl.where(q < p, -1.0, 0.0))
                    ssum += tl.sum(tl.where(msk, q * sgn, 0.0), axis=0)
                if NEED_GRAD and DIV < 2:
                    if HAS_CE:
                        q1 = q if SAME_T else tl.exp2(x * 1.4426950408889634 - lse_1)
                        g += ce_scale * (q1 - tl.where(cols == lab, 1.0, 0.0))
                    tl.store(o_ptr + cols, g.to(g_ptr.dtype.element_ty), mask=msk)
            if DIV < 3:
                row_loss = row_loss * 0.6931471805599453
            tl.store(loss_ptr + row, row_loss * loss_scale)
            # Pass 3 (JSD, TVD): their gradient needs the row sum that pass 2 produced.
            if NEED_GRAD and DIV >= 2:
                if DIV == 2:
                    ssum = ssum * 0.6931471805599453
                for blk in range(0, n_blocks):
                    cols = blk * BLOCK + tl.arange(0, BLOCK)
                    msk = cols < n_cols
                    x = tl.load(s_ptr + cols, mask=msk, other=float("-inf"), eviction_policy="evict_first")
                    x = x.to(tl.float32)
                    la = x * k2 - lse_s
                    lb = tl.load(t_ptr + cols, mask=msk, other=float("-inf"), eviction_policy="evict_first")
                    lb = lb.to(tl.float32) * k2 - lse_t
                    q = tl.exp2(la)
                    p = tl.exp2(lb)
                    if DIV == 2:
                        lm = tl.log2(tl.maximum(beta * p + (1.0 - beta) * q, 1.1754943508222875e-38))
                        g = grad_scale * q * ((la - lm) * 0.6931471805599453 - ssum)
                    else:
                        g = grad_scale * q * (tl.where(q > p, 1.0, tl.where(q < p, -1.0, 0.0)) - ssum)
                    if HAS_CE:
                        q1 = q if SAME_T else tl.exp2(x * 1.4426950408889634 - lse_1)
                        g += ce_scale * (q1 - tl.where(cols == lab, 1.0, 0.0))
                    tl.store(o_ptr + cols, g.to(g_ptr.dtype.element_ty), mask=msk)

    _KERNEL.append(kd_rows)
    return kd_rows
