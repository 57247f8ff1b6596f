"""Models for the recipes: small reference students/teachers, Hugging Face wrappers, and their export.

The Hugging Face ones (``HFCausalLM``, ``LoRACausalLM``, ``SentenceEncoder``) and the export functions are imported
on first use: they need the optional ``transformers`` (and ``peft``) packages only when a model is built.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from lit_distill.models.cnn import SmallCNN
from lit_distill.models.gpt import GPT
from lit_distill.models.mlp import MLP

_LAZY = {
    "HFCausalLM": "lit_distill.models.hf",
    "LoRACausalLM": "lit_distill.models.lora",
    "SentenceEncoder": "lit_distill.models.encoder",
    "export_pretrained": "lit_distill.models.hf",
    "load_pretrained": "lit_distill.models.hf",
}

__all__ = ["MLP", "SmallCNN", "GPT", "HFCausalLM", "LoRACausalLM", "SentenceEncoder"]
__all__ += ["export_pretrained", "load_pretrained"]

if TYPE_CHECKING:
    from lit_distill.models.encoder import SentenceEncoder
    from lit_distill.models.hf import HFCausalLM, export_pretrained, load_pretrained
    from lit_distill.models.lora import LoRACausalLM


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_distill.models' has no attribute {name!r}")
