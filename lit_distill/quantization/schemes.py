"""Quantization schemes by name: the torchao config that quantizes a layer, and the fake quantization that trains it.

Every scheme quantizes ``nn.Linear`` weights (activations too where its name says so). The fake quantization a
scheme trains with reproduces the numerics of its conversion exactly (tested), so what a QAD student learns to live
with is what its export computes.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["SCHEMES", "Scheme", "get_scheme", "require_torchao"]


def require_torchao() -> None:
    """Fail with the install line when torchao is missing (it is an optional extra)."""
    if importlib.util.find_spec("torchao") is None:
        raise ModuleNotFoundError(
            "quantization needs torchao, which is not installed: pip install 'lit-distill[quant]' (or pip install "
            "torchao)."
        )


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme.

    Args:
        name: its name in configs and on the command line.
        weight_bits: bits per stored weight value.
        grouped: weights share a scale per ``group_size`` consecutive input features (else one per output row).
        dynamic_activations: activations are quantized to int8 per token on the fly.
        qat: trainable with fake quantization (torchao has no fake quantizer for every scheme's numerics).
        summary: what it is and where it runs fast, for ``--help`` and errors.
    """

    name: str
    weight_bits: int
    grouped: bool
    dynamic_activations: bool
    qat: bool
    summary: str

    def config(self, group_size: int) -> Any:
        """The torchao config that converts a layer (``quantize_(model, config)``)."""
        require_torchao()
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8DynamicActivationIntxWeightConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
            PerGroup,
        )

        if self.name == "int8_dynamic_int4_weight":
            return Int8DynamicActivationIntxWeightConfig(
                weight_dtype=torch.int4, weight_granularity=PerGroup(group_size)
            )
        if self.name == "int4_weight_only":
            return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
        if self.name == "int8_weight_only":
            return Int8WeightOnlyConfig()
        return Int8DynamicActivationInt8WeightConfig()

    def prepare_config(self, group_size: int) -> Any:
        """The torchao ``QATConfig`` (prepare step) that swaps layers for fake-quantized ones with these numerics."""
        if not self.qat:
            trainable = ", ".join(s.name for s in SCHEMES.values() if s.qat)
            raise ValueError(
                f"scheme {self.name!r} has no fake quantization in torchao (its symmetric per-token activations), so "
                f"it cannot be trained quantization-aware; use it after training (lit-distill quantize) or train "
                f"with one of: {trainable}."
            )
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

        if self.name == "int8_weight_only":  # torchao infers none for Int8WeightOnlyConfig: per-row symmetric int8
            weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
            return QATConfig(weight_config=weight, step="prepare")
        return QATConfig(self.config(group_size), step="prepare")

    def convert_config(self, group_size: int) -> Any:
        """The torchao ``QATConfig`` (convert step): fake-quantized layers back to plain ones, then quantized."""
        from torchao.quantization.qat import QATConfig

        return QATConfig(self.config(group_size), step="convert")


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme(
            "int8_dynamic_int4_weight", 4, True, True, True,
            "int4 weights in groups + int8 per-token dynamic activations (8da4w; the ExecuTorch/mobile scheme)",
        ),
        Scheme("int4_weight_only", 4, True, False, True, "int4 weights in groups, activations as trained"),
        Scheme("int8_weight_only", 8, False, False, True, "int8 weights, one scale per output row"),
        Scheme(
            "int8_dynamic_int8_weight", 8, False, True, False,
            "int8 weights per row + int8 dynamic activations (the classic CPU dynamic int8; not trainable)",
        ),
    )
}  # fmt: skip


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``; an unknown name is refused with the list of known ones."""
    if name not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {name!r}; choose one of: {', '.join(SCHEMES)}.")
    return SCHEMES[name]
