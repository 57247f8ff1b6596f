"""LM-head matmuls of :func:`~lit_distill.losses.fused.fused_linear_kd` (fp32 logits and fp32 weight-gradient
accumulation from half-precision operands) and the tokens per chunk that fit a memory budget."""

from __future__ import annotations

import torch
from torch import Tensor

# Working set of the per-chunk logit buffers when chunk_size is not given (see auto_chunk_size).
_GPU_CHUNK_BYTES = 448 << 20
_CPU_CHUNK_BYTES = 256 << 20


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
