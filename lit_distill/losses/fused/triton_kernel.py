"""The Triton kernel behind :func:`lit_distill.losses.fused.fused_linear_kd` on CUDA: when it runs, and its launch.

One program walks whole rows of a chunk of student/teacher logits and writes the divergence per row
and its gradient with respect to the student logits in place. Importing this module never needs
Triton: the kernel's source (:mod:`~lit_distill.losses.fused.triton_source`) is imported on first use.
Every divergence has a kernel except ``adaptive_kl``, whose head is a prefix of each row sorted by the
teacher's probabilities: it runs the PyTorch path.
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


def _pick_triton(impl: str, device: torch.device, *dtypes: torch.dtype, divergence: str = "forward_kl") -> bool:
    ok_dtypes = all(d in (torch.float32, torch.bfloat16, torch.float16) for d in dtypes)
    if divergence == "adaptive_kl":  # its head is a prefix of each row sorted by teacher probability: no kernel
        if impl == "triton":
            raise ValueError("adaptive_kl has no Triton kernel (it sorts every row); use impl='auto' or 'torch'.")
        return False
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
            DIV=spec.code, HAS_CE=has_ce, SAME_T=spec.temperature == 1.0, NEED_GRAD=need_grad, STABLE=spec.stable,
            REV2=not (need_grad and spec.code < 2 and narrowing),
            BLOCK=conf["BLOCK"], num_warps=conf["num_warps"],
        )  # fmt: skip
    kd = loss_rows.sum()
    ce = ce_rows.sum() * spec.inv_n if has_ce else torch.zeros((), device=zs.device)
    return kd, ce


def _triton_kernel():
    """The Triton kernel, imported on first use, so importing this module never needs Triton."""
    from lit_distill.losses.fused.triton_source import kd_rows

    return kd_rows
