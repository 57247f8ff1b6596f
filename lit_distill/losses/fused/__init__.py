"""Fused LM-head + distillation loss without the ``[tokens, vocab]`` logits.

:mod:`~lit_distill.losses.fused.linear_kd` holds the public function, its autograd op and the chunk loop, which
dispatches each chunk's elementwise work to :mod:`~lit_distill.losses.fused.triton_kernel` (CUDA) or
:mod:`~lit_distill.losses.fused.torch_path`; :mod:`~lit_distill.losses.fused.matmul` does the LM-head matmuls.
"""

from lit_distill.losses.fused.cross_tokenizer import SpanKDParts, fused_span_kd
from lit_distill.losses.fused.linear_kd import FusedKDParts, fused_linear_kd
from lit_distill.losses.fused.matmul import auto_chunk_size
from lit_distill.losses.fused.triton_kernel import TRITON_CONFIG  # noqa: F401 - the launch table benchmarks tune

__all__ = ["fused_linear_kd", "FusedKDParts", "auto_chunk_size", "fused_span_kd", "SpanKDParts"]
