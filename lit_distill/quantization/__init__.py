"""Quantization with torchao: quantization-aware distillation (fake quantization while distilling), post-training
quantization, and quantized exports that reload on CPU or GPU.

Schemes (by name): ``int8_dynamic_int4_weight`` (8da4w), ``int4_weight_only``, ``int8_weight_only`` (all three
trainable with :class:`QuantizationAwareDistillation`) and ``int8_dynamic_int8_weight`` (post-training only).
The internals (scheme table, fake-quantization helpers, the export record) live in
:mod:`~lit_distill.quantization.schemes`, :mod:`~lit_distill.quantization.qat` and
:mod:`~lit_distill.quantization.storage`.

Needs the optional ``torchao`` package (``pip install 'lit-distill[quant]'``); importing this package does not.
"""

from lit_distill.quantization.callback import QuantizationAwareDistillation
from lit_distill.quantization.qat import quantize_model
from lit_distill.quantization.storage import load_quantized, save_quantized

__all__ = ["QuantizationAwareDistillation", "quantize_model", "save_quantized", "load_quantized"]
