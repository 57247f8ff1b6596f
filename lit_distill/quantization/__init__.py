"""Quantization with torchao: schemes, quantization-aware distillation (fake quantization while distilling),
post-training quantization, and quantized exports that reload on CPU or GPU.

Needs the optional ``torchao`` package (``pip install 'lit-distill[quant]'``); importing this package does not.
"""

from lit_distill.quantization.callback import QuantizationAwareDistillation
from lit_distill.quantization.qat import (
    convert_qat,
    fake_quantized_layers,
    layers_to_quantize,
    prepare_qat,
    quantize_model,
    set_fake_quant,
)
from lit_distill.quantization.schemes import SCHEMES, Scheme, get_scheme, require_torchao
from lit_distill.quantization.storage import load_quantized, read_record, save_quantized

__all__ = [
    "QuantizationAwareDistillation",
    "SCHEMES",
    "Scheme",
    "convert_qat",
    "fake_quantized_layers",
    "get_scheme",
    "layers_to_quantize",
    "load_quantized",
    "prepare_qat",
    "quantize_model",
    "read_record",
    "require_torchao",
    "save_quantized",
    "set_fake_quant",
]
