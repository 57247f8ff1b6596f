"""The Triton source of the fused KD kernel (:mod:`~lit_distill.losses.fused.triton_kernel` imports it on first
use, so that importing the package never needs Triton)."""

from __future__ import annotations

import triton
import triton.language as tl

_LN2 = 0.6931471805599453
_LOG2E = 1.4426950408889634


@triton.jit
def _log1p(x):
    # Kahan's log1p from log alone (libdevice is not available to the interpreter the tests run).
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * x / (u - 1.0))


@triton.jit
def _expm1(x):
    u = tl.exp(x)
    return tl.where(u == 1.0, x, tl.where(u - 1.0 == -1.0, -1.0, (u - 1.0) * x / tl.log(u)))


@triton.jit
def _mixture(la, lb, p, q, w, DIV: tl.constexpr, STABLE: tl.constexpr):
    """Per element of a mixture divergence (``m = w·p + (1−w)·q``, log2 inputs ``la = log2 q``, ``lb = log2 p``):
    its share of the row value and the statistic ``x`` with ``d(row)/d(z/T) = q·(x − Σ q·x)``.

    JSD (normalised by ``w(1−w)``): value ``p·ln(p/m)/(1−w) + q·ln(q/m)/w``, ``x = ln(q/m)/w``. Skew forward
    (``w = α``): value ``p·ln(p/m)``, ``x = −(1−w)·p/m``. Skew reverse (``w = 1−α``): value ``q·ln(q/m)``,
    ``x = ln(q/m) − (1−w)·q/m``. ``STABLE`` (JSD near an end) takes ``ln(q/m) = −log1p(w·expm1(ln p/q))`` and its
    mirror wherever their argument is small, since the plain difference of logs loses what ``1/w`` amplifies.
    """
    lm = tl.log2(tl.maximum(w * p + (1.0 - w) * q, 1.1754943508222875e-38))
    to_m_p = (lb - lm) * _LN2
    to_m_q = (la - lm) * _LN2
    if STABLE:
        d = tl.minimum(tl.maximum((lb - la) * _LN2, -80.0), 80.0)
        xq = w * _expm1(d)
        xp = (1.0 - w) * _expm1(-d)
        to_m_q = tl.where(tl.abs(xq) <= 0.5, -_log1p(tl.maximum(xq, -0.5)), to_m_q)
        to_m_p = tl.where(tl.abs(xp) <= 0.5, -_log1p(tl.maximum(xp, -0.5)), to_m_p)
    kl_p = tl.where(p > 0, p * to_m_p, 0.0)
    kl_q = tl.where(q > 0, q * to_m_q, 0.0)
    if DIV == 2:
        inv_w = 1.0 / w  # scalars: one division per block, not per element
        value = kl_p * (1.0 / (1.0 - w)) + kl_q * inv_w
        x = to_m_q * inv_w
    elif DIV == 4:
        value = kl_p
        x = -(1.0 - w) * tl.exp2(lb - lm)
    else:
        value = kl_q
        x = to_m_q - (1.0 - w) * tl.exp2(la - lm)
    return value, x


@triton.jit
def kd_rows(
    zs_ptr, zt_ptr, g_ptr, lab_ptr, loss_ptr, ce_ptr,
    n_rows, n_cols, stride_s, stride_t, stride_g, n_prog,
    inv_t, beta, loss_scale, grad_scale, ce_scale,
    DIV: tl.constexpr, HAS_CE: tl.constexpr, SAME_T: tl.constexpr, NEED_GRAD: tl.constexpr,
    STABLE: tl.constexpr, REV2: tl.constexpr, BLOCK: tl.constexpr,
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
            elif DIV == 3:
                row_loss += tl.sum(tl.where(msk, tl.abs(p - q), 0.0), axis=0)
                sgn = tl.where(q > p, 1.0, tl.where(q < p, -1.0, 0.0))
                ssum += tl.sum(tl.where(msk, q * sgn, 0.0), axis=0)
            else:  # JSD, skew forward KL, skew reverse KL: natural-log units
                value, stat = _mixture(la, lb, p, q, beta, DIV, STABLE)
                row_loss += tl.sum(tl.where(msk, value, 0.0), axis=0)
                ssum += tl.sum(tl.where(msk & (q > 0), q * stat, 0.0), axis=0)
            if NEED_GRAD and DIV < 2:
                if HAS_CE:
                    q1 = q if SAME_T else tl.exp2(x * 1.4426950408889634 - lse_1)
                    g += ce_scale * (q1 - tl.where(cols == lab, 1.0, 0.0))
                tl.store(o_ptr + cols, g.to(g_ptr.dtype.element_ty), mask=msk)
        if DIV < 2:
            row_loss = row_loss * 0.6931471805599453
        tl.store(loss_ptr + row, row_loss * loss_scale)
        # Pass 3 (JSD, TVD, skew KL): their gradient needs the row sum that pass 2 produced.
        if NEED_GRAD and DIV >= 2:
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
                if DIV == 3:
                    g = grad_scale * q * (tl.where(q > p, 1.0, tl.where(q < p, -1.0, 0.0)) - ssum)
                else:
                    _, stat = _mixture(la, lb, p, q, beta, DIV, STABLE)
                    g = tl.where(q > 0, grad_scale * q * (stat - ssum), 0.0)
                if HAS_CE:
                    q1 = q if SAME_T else tl.exp2(x * 1.4426950408889634 - lse_1)
                    g += ce_scale * (q1 - tl.where(cols == lab, 1.0, 0.0))
                tl.store(o_ptr + cols, g.to(g_ptr.dtype.element_ty), mask=msk)
