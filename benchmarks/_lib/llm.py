"""Llama-shaped model pairs for the LLM benchmarks: shapes, exact sizes, FLOPs, MFU, and random-init models.

Models are built with the library's own constructor, ``HFCausalLM(config=..., empty_init=True)`` (no memory, no
download), and filled on their device by ``materialize_weights`` (random: matrices ~ N(0, 0.02), norm scales 1),
each rank only its shards when FSDP2 has sharded them first.

=====  ============================================  ==============  =========================================
pair   teacher                                       params          student (params)
=====  ============================================  ==============  =========================================
a      hidden 2048, 16 layers, GQA 32/8, MLP 8192    1,498,482,688   hidden 1024, 8 layers, GQA 16/4, MLP 4096
                                                                     (384,320,512)
b      Llama-3-70B dims: 8192, 80 layers, 64/8,      70,553,706,496  Llama-3.2-1B dims: 2048, 16 layers, 32/8,
       MLP 28672                                                     MLP 8192, tied head (1,235,814,400)
=====  ============================================  ==============  =========================================

All use the Llama-3 vocabulary size 128256; heads are 64 (pair b teacher: 128) wide; only the pair (b) student ties
its LM head to the embedding, as Llama-3.2-1B does. Pair (b)'s teacher holds 141.1 GB (131.4 GiB) of bf16 weights:
under the 140.4 GiB an H200 reports, but not with the student's fp32 weights, gradients and AdamW state and the
activations beside it, so it needs sharding over >= 2 GPUs. ``--teacher-layers 86`` (75.7B, 141.0 GiB) makes the
weights alone exceed it.

FLOPs per token (the model FLOPs of MFU; PaLM, Chowdhery et al. 2022, appendix B)::

    student (forward + backward) = 6 * N_s + 12 * L_s * d_s * T
    teacher (forward only)       = 2 * N_t +  4 * L_t * d_t * T

``N`` counts the parameters that enter a matmul once per token: the attention projections, the MLP and the LM head
(tied or not). The input embedding is left out (its lookup is a gather); norms are elementwise. ``L`` is the number
of layers, ``d = heads * head_dim`` the attention width and ``T`` the sequence length; the attention term is counted
in full as in PaLM (``causal=True`` halves it). These formulas equal ``torch.utils.flop_counter`` counts of the
models exactly (tests/test_benchmark_lib.py). MFU = tokens/s x FLOPs/token / (GPUs x peak), against the H200
datasheet's dense bf16 peak of 989.5 TFLOP/s per GPU (an 8192^3 bf16 matmul reaches about 790 there).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

H200_BF16_DENSE_TFLOPS = 989.5  # NVIDIA H200 SXM datasheet, dense (no sparsity) bf16 tensor-core peak
LLAMA3_VOCAB = 128256
TOKENIZER_ID = "llama3-vocab-128256-synthetic"  # both sides of a pair speak it (TokenKD's tokenizer check)


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions of one Llama-style decoder.

    Example:
        >>> LlamaShape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=256).config().head_dim
        16
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int = LLAMA3_VOCAB
    tied: bool = False

    def settings(self, attn_implementation: str = "sdpa", **overrides: Any) -> dict[str, Any]:
        """The ``HFCausalLM(config=...)`` dict of this shape (bias-free, RMSNorm, RoPE, SwiGLU)."""
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"{self}: hidden must divide into heads and heads into kv_heads groups.")
        return {
            "model_type": "llama",
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "intermediate_size": self.intermediate,
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied,
            "max_position_embeddings": 8192,
            "attn_implementation": attn_implementation,
            **overrides,
        }

    def config(self, attn_implementation: str = "sdpa", **overrides: Any):
        """The ``transformers.LlamaConfig`` of :meth:`settings`."""
        from transformers import AutoConfig

        settings = self.settings(attn_implementation, **overrides)
        return AutoConfig.for_model(settings.pop("model_type"), **settings)


PAIRS: dict[str, tuple[LlamaShape, LlamaShape]] = {
    "a": (
        LlamaShape(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192),
        LlamaShape(hidden=1024, layers=8, heads=16, kv_heads=4, intermediate=4096),
    ),
    "b": (
        LlamaShape(hidden=8192, layers=80, heads=64, kv_heads=8, intermediate=28672),
        LlamaShape(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, tied=True),
    ),
    # CPU smoke runs: the same structure (GQA, untied head) at toy width.
    "smoke": (
        LlamaShape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512),
        LlamaShape(hidden=32, layers=1, heads=4, kv_heads=2, intermediate=64, vocab=512),
    ),
}


def pair_shapes(
    pair: str, teacher_layers: int | None = None, student_layers: int | None = None
) -> tuple[LlamaShape, LlamaShape]:
    """``(teacher, student)`` shapes of ``pair``, with the layer counts optionally replaced (quick runs).

    Example:
        >>> pair_shapes("b", teacher_layers=2)[0].layers
        2
    """
    if pair not in PAIRS:
        raise ValueError(f"unknown pair {pair!r}; choose one of {sorted(PAIRS)}.")
    teacher, student = PAIRS[pair]
    for name, value in (("teacher_layers", teacher_layers), ("student_layers", student_layers)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if teacher_layers is not None:
        teacher = dataclasses.replace(teacher, layers=teacher_layers)
    if student_layers is not None:
        student = dataclasses.replace(student, layers=student_layers)
    return teacher, student


def llama(
    shape: LlamaShape,
    device: torch.device | str | None = "cpu",
    dtype: str | None = None,
    attn_implementation: str = "sdpa",
    kernels: str | None = None,
):
    """A random-init :class:`~lit_distill.models.hf.HFCausalLM` of ``shape`` (``dtype`` e.g. ``"bf16"``), filled on
    ``device``; ``device=None`` leaves it empty on the meta device, to be sharded first and then filled with
    ``model.materialize_weights(device)`` (each rank its own shards). ``kernels``: see ``HFCausalLM``."""
    from lit_distill.models.hf import HFCausalLM

    settings = shape.settings(attn_implementation)
    model = HFCausalLM(config=settings, dtype=dtype, tokenizer_id=TOKENIZER_ID, empty_init=True, kernels=kernels)
    if device is not None:
        model.materialize_weights(torch.device(device))
    return model


def count_params(config) -> dict[str, int]:
    """Exact parameter counts of ``LlamaForCausalLM(config)`` by part, from the config alone.

    Keys: ``embedding``, ``attention`` (q/k/v/o with GQA, all layers), ``mlp`` (gate/up/down), ``norms`` (two
    RMSNorms per layer and the final one), ``lm_head`` (0 when tied to the embedding), ``total``, and ``matmul``:
    the weights multiplied once per token (attention, MLP, LM head even when tied).

    Example:
        >>> count_params(PAIRS["a"][0].config())["total"]
        1498482688
    """
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q_width, kv_width = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    attn_weights = h * q_width + 2 * h * kv_width + q_width * h
    attn_bias = (q_width + 2 * kv_width + h) if getattr(config, "attention_bias", False) else 0
    mlp_weights = 3 * h * config.intermediate_size
    mlp_bias = (2 * config.intermediate_size + h) if getattr(config, "mlp_bias", False) else 0
    parts = {
        "embedding": vocab * h,
        "attention": layers * (attn_weights + attn_bias),
        "mlp": layers * (mlp_weights + mlp_bias),
        "norms": (2 * layers + 1) * h,
        "lm_head": 0 if config.tie_word_embeddings else vocab * h,
    }
    parts["total"] = sum(parts.values())
    parts["matmul"] = layers * (attn_weights + mlp_weights) + vocab * h
    return parts


def attention_flops_per_token(config, seq_len: int, causal: bool = False) -> int:
    """Forward FLOPs of ``Q K^T`` and ``attention @ V`` per token, all layers: ``4 * L * d * T`` (halved if causal)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    full = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    return full // 2 if causal else full


def flops_per_token(student_config, teacher_config, seq_len: int, causal: bool = False) -> dict[str, int]:
    """Model FLOPs per trained token of one distillation step (module docstring has the formula).

    Returns ``student`` (forward + backward), ``teacher`` (forward), ``total``, and ``total_all_params``
    (``6 * N_s + 2 * N_t`` over all parameters, no attention: the convention of earlier tables, for comparison).

    Example:
        >>> t, s = (shape.config() for shape in PAIRS["a"])
        >>> round(flops_per_token(s, t, 1024)["total"] / 1e9, 2)
        4.22
    """
    s_attn = attention_flops_per_token(student_config, seq_len, causal)
    t_attn = attention_flops_per_token(teacher_config, seq_len, causal)
    student = 6 * count_params(student_config)["matmul"] + 3 * s_attn
    teacher = 2 * count_params(teacher_config)["matmul"] + t_attn
    return {
        "student": student,
        "teacher": teacher,
        "total": student + teacher,
        "total_all_params": 6 * count_params(student_config)["total"] + 2 * count_params(teacher_config)["total"],
    }


def mfu(tokens_per_s: float, flops_per_token: float, n_gpus: int = 1, peak_tflops: float = H200_BF16_DENSE_TFLOPS):
    """Model FLOPs utilisation: achieved model FLOP/s over ``n_gpus`` x the per-GPU peak.

    Example:
        >>> round(mfu(100_000, 4.0e9), 3)
        0.404
    """
    if n_gpus < 1 or peak_tflops <= 0:
        raise ValueError(f"need n_gpus >= 1 and a positive peak, got {n_gpus} and {peak_tflops}.")
    return tokens_per_s * flops_per_token / (n_gpus * peak_tflops * 1e12)
