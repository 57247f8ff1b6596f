"""The chunk loop of :func:`~lit_distill.losses.fused.fused_linear_kd`: logits chunk by chunk, the elementwise
divergence and its gradient, and the backward matmuls (``dL/dh``, ``dL/dW``, ``dL/db``) per block of rows.

Two row counts, because the two halves of the work want different ones. The logits chunk is bounded by memory
(two ``[rows, V]`` buffers, four bytes per element each with ``fp32_logits``). The backward matmuls want many rows:
each ``dL/dW += Gᵀ h`` reads and writes the whole ``[V, H]`` accumulator, so fewer, larger blocks move less memory,
and a bf16 accumulator is rounded once per block. By default a block is one chunk and the gradient ``G`` is written
over the student logits (no extra buffer); with ``grad_chunk_size`` larger than the chunk, ``G`` gets its own
``[block, V]`` buffer in the matmul dtype (two bytes per element for bf16), filled by several logits chunks.
"""

from __future__ import annotations

import contextlib

import torch

from lit_distill.losses.fused.matmul import _accumulate_weight_grad, _esize, _linear, auto_chunk_size
from lit_distill.losses.fused.spec import _Config, _Spec
from lit_distill.losses.fused.torch_path import _rows_torch
from lit_distill.losses.fused.triton_kernel import _pick_triton, _rows_triton

_HALF = (torch.float16, torch.bfloat16)


def _chunk_loop(hs_m, ws_m, bs_m, ht_m, wt_m, bt_m, labels, cfg: _Config, hs, ws, bs, n, vocab, h_s, device):
    need_h, need_w, need_b = cfg.need
    need_grad = any(cfg.need)
    use_triton = _pick_triton(cfg.impl, device, hs_m.dtype, ht_m.dtype, divergence=cfg.divergence)
    acc_dtype = torch.float64 if hs_m.dtype == torch.float64 else torch.float32
    ld_s = torch.float32 if cfg.fp32_logits and hs_m.dtype in _HALF else hs_m.dtype
    ld_t = torch.float32 if cfg.fp32_logits and ht_m.dtype in _HALF else ht_m.dtype
    esize = _esize(ld_s) + _esize(ld_t)
    n_buf = 2 if cfg.overlap else 1  # overlap: chunk i+1's logits are computed while chunk i is consumed
    # Triton reads the two logit buffers and writes the gradient into the student one; the PyTorch
    # path also holds about eight fp32 temporaries per element, and about 24 where autograd differentiates
    # the row formula (JSD, skew KL, adaptive KL: see torch_path).
    temps = 8 if cfg.divergence in ("forward_kl", "reverse_kl", "tvd") else 24
    per_row = vocab * (esize * n_buf if use_triton else esize * n_buf + temps * _esize(acc_dtype))
    chunk = cfg.chunk_size or auto_chunk_size(n, vocab, per_row, device)
    chunk = max(1, min(chunk, n))
    block = chunk if cfg.grad_chunk_size is None else max(chunk, min(cfg.grad_chunk_size, n))
    own_g = need_grad and block > chunk  # G in its own buffer, filled by several chunks

    # An fp32 accumulator costs nothing extra when the weight itself is fp32 (autocast, master weights).
    wide = cfg.fp32_accumulation or ws.dtype in (torch.float32, torch.float64) or ws_m.dtype == torch.float64
    w_acc = acc_dtype if wide else ws_m.dtype
    grad_h = torch.empty(n, h_s, dtype=hs_m.dtype, device=device) if need_h else None
    grad_w = torch.empty(vocab, h_s, dtype=w_acc, device=device) if need_w else None
    grad_b = torch.zeros(vocab, dtype=acc_dtype, device=device) if need_b else None
    kd_sum = torch.zeros((), dtype=acc_dtype, device=device)
    ce_sum = torch.zeros((), dtype=acc_dtype, device=device)
    spec = _Spec.of(cfg, 1.0 / max(n, 1))
    bufs = []
    if (use_triton or cfg.overlap) and n:
        bufs = [(torch.empty(chunk, vocab, dtype=ld_s, device=device), torch.empty(chunk, vocab, dtype=ld_t,
                 device=device)) for _ in range(n_buf)]  # fmt: skip
    g_buf = torch.empty(block, vocab, dtype=hs_m.dtype, device=device) if (own_g and n) else None
    plan = [(b0, start, min(start + chunk, b0 + block, n)) for b0 in range(0, n, block)
            for start in range(b0, min(b0 + block, n), chunk)]  # fmt: skip
    pipe = _Pipeline(device, cfg.overlap)
    up_cache: dict = {}

    def logits(i: int):
        _, start, stop = plan[i]
        zs_b, zt_b = bufs[i % n_buf] if bufs else (None, None)
        with pipe.producing(i % n_buf):
            zs = _linear(hs_m[start:stop], ws_m, bs_m, ld_s, None if zs_b is None else zs_b[: stop - start], up_cache)
            zt = _linear(ht_m[start:stop], wt_m, bt_m, ld_t, None if zt_b is None else zt_b[: stop - start], up_cache)
        return zs, zt, pipe.ready()

    ahead = logits(0) if plan else None
    for i, (b0, start, stop) in enumerate(plan):
        zs, zt, ready = ahead
        if n_buf == 2 and i + 1 < len(plan):
            ahead = logits(i + 1)  # into the other buffers, queued before this chunk's kernel: both can run at once
        pipe.consume(ready)
        b1 = min(b0 + block, n)
        lab_c = None if labels is None else labels[start:stop]
        g_into = None if g_buf is None else g_buf[start - b0 : stop - b0]
        if use_triton:
            if g_into is None:
                # dL/dzs over the student logits (in the first half of each fp32 row when the logits are
                # wider than the matmul dtype).
                g_into = zs if ld_s == hs_m.dtype else zs.view(hs_m.dtype)[:, :vocab]
            kd_c, ce_c = _rows_triton(zs, zt, lab_c, spec, need_grad, g=g_into)
            g = g_into
        else:
            kd_c, ce_c, g = _rows_torch(zs, zt, lab_c, spec, need_grad)
            if g_into is not None:
                g = g_into.copy_(g)
        kd_sum += kd_c
        ce_sum += ce_c
        if need_grad and stop == b1:  # the block is complete
            g_block = g if g_buf is None else g_buf[: b1 - b0]
            _backward_block(g_block.to(hs_m.dtype), hs_m[b0:b1], ws_m, grad_h, grad_w, grad_b, b0, acc_dtype)
        pipe.release(i % n_buf)  # this chunk's logits buffers may be overwritten from here on
        if n_buf == 1 and i + 1 < len(plan):
            ahead = logits(i + 1)

    ahead = zs = zt = g = g_block = bufs = g_buf = None  # free the chunk buffers before the final casts allocate
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


class _Pipeline:
    """Logits on a side CUDA stream, consumed on the current one, with two buffers in rotation (``overlap``).

    The side stream writes buffer ``b`` only after the current stream released it (an event recorded after its
    last read), and the current stream reads a chunk only after the side stream's event for it. Without CUDA or
    without ``overlap`` every method does nothing and all work stays on the current stream, in order.
    """

    def __init__(self, device: torch.device, overlap: bool) -> None:
        self.on = overlap and device.type == "cuda"
        if self.on:
            self.main = torch.cuda.current_stream(device)
            self.side = torch.cuda.Stream(device)
            self.side.wait_stream(self.main)  # inputs written before this call
            self.freed: dict[int, torch.cuda.Event] = {}

    def producing(self, buffer: int):
        if not self.on:
            return contextlib.nullcontext()
        if buffer in self.freed:
            self.side.wait_event(self.freed.pop(buffer))
        return torch.cuda.stream(self.side)

    def ready(self):
        return self.side.record_event() if self.on else None

    def consume(self, ready) -> None:
        if self.on:
            self.main.wait_event(ready)

    def release(self, buffer: int) -> None:
        if self.on:
            self.freed[buffer] = self.main.record_event()


def _backward_block(g, h_block, ws_m, grad_h, grad_w, grad_b, b0: int, acc_dtype: torch.dtype) -> None:
    """Fold one block's ``G = dL/dz`` into the hidden-state, weight and bias gradients."""
    if grad_h is not None:
        torch.mm(g, ws_m, out=grad_h[b0 : b0 + g.shape[0]])
    if grad_w is not None:
        _accumulate_weight_grad(grad_w, g, h_block, first=b0 == 0)
    if grad_b is not None:
        grad_b += g.sum(0, dtype=acc_dtype)
