"""Shared pieces of the LLM-at-scale benchmarks: Llama-shaped model pairs, exact sizes, FLOPs, MFU, synthetic tokens.

Run as ``python benchmarks/<script>.py`` (this imports as ``llm_common``). Models are random-init
``transformers`` Llama models built from configs (no download):

=====  ============================================  ==============  =========================================
pair   teacher                                       params          student (params)
=====  ============================================  ==============  =========================================
a      hidden 2048, 16 layers, GQA 32/8, MLP 8192    1,498,482,688   hidden 1024, 8 layers, GQA 16/4, MLP 4096
                                                                     (384,320,512)
b      Llama-3-70B dims: 8192, 80 layers, 64/8,      70,553,706,496  Llama-3.2-1B dims: 2048, 16 layers, 32/8,
       MLP 28672                                                     MLP 8192, tied head (1,235,814,400)
=====  ============================================  ==============  =========================================

All use the Llama-3 vocabulary size 128256; heads are 64 (pair b teacher: 128) wide; only the pair (b)
student ties its LM head to the embedding, as Llama-3.2-1B does. Pair (b)'s teacher holds 141.1 GB
(131.4 GiB) of bf16 weights: under the 140.4 GiB an H200 reports, but not with the student's fp32
weights, gradients and AdamW state (1.24e9 x 16 B = 18.4 GiB) and the activations beside it, so it
needs sharding over >= 2 GPUs. ``--teacher-layers 86`` (75.7B, 141.0 GiB) makes the weights alone exceed it.

FLOPs per token (the model FLOPs of MFU; PaLM, Chowdhery et al. 2022, appendix B)::

    student (forward + backward) = 6 * N_s + 12 * L_s * d_s * T
    teacher (forward only)       = 2 * N_t +  4 * L_t * d_t * T

``N`` counts the parameters that enter a matmul once per token: the attention projections, the MLP and
the LM head (tied or not, the head is a ``[V, hidden]`` matmul). The input embedding is left out: its
lookup is a gather, not a matmul, and its backward a scatter-add; norms are elementwise. ``L`` is the
number of layers, ``d = heads * head_dim`` the attention width and ``T`` the sequence length: per layer
and token, ``Q K^T`` and ``attention @ V`` take ``2 * T * d`` FLOPs each in the forward pass, and the
backward pass twice that. The attention term is counted in full as in PaLM (and torchtitan); causal
masking lets fused kernels skip about half of it, which ``causal=True`` applies. These formulas equal
``torch.utils.flop_counter`` counts of the models exactly (tests/test_llm_benchmarks.py).

MFU = tokens/s x FLOPs/token / (GPUs x peak), against the H200 datasheet's dense bf16 peak of
989.5 TFLOP/s per GPU; an 8192^3 bf16 matmul reaches about 790 TFLOP/s there (device notes), so
0.80 MFU is about the ceiling.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

H200_BF16_DENSE_TFLOPS = 989.5  # NVIDIA H200 SXM datasheet, dense (no sparsity) bf16 tensor-core peak
H200_MATMUL_MEASURED_TFLOPS = 790.0  # 8192^3 bf16 torch.matmul on the lent H200 (device notes, KINDS.md)
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

    def config(self, attn_implementation: str = "sdpa", **overrides: Any):
        """A ``transformers.LlamaConfig`` with these dimensions (bias-free, RMSNorm, RoPE, SwiGLU)."""
        from transformers import LlamaConfig

        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"{self}: hidden must divide into heads and heads into kv_heads groups.")
        config = LlamaConfig(
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            intermediate_size=self.intermediate,
            vocab_size=self.vocab,
            tie_word_embeddings=self.tied,
            max_position_embeddings=8192,
            **overrides,
        )
        config._attn_implementation = attn_implementation
        return config


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


def add_model_args(parser) -> None:
    """The pair-choosing flags every LLM benchmark script takes."""
    parser.add_argument("--pair", choices=["a", "b"], default="a", help="model pair (see llm_common)")
    parser.add_argument("--smoke", action="store_true", help="toy models and batch for a CPU check")
    parser.add_argument("--teacher-layers", type=int, default=None, help="replace the teacher's layer count")
    parser.add_argument("--student-layers", type=int, default=None, help="replace the student's layer count")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per device (default 8; smoke 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 1024; smoke 32)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; smoke 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the result row as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def resolve_args(args) -> tuple[LlamaShape, LlamaShape]:
    """Fill the size defaults (smoke or full), refuse an existing ``--out``; returns ``(teacher, student)``."""
    defaults = {"batch_size": 2, "seq_len": 32, "steps": 2, "warmup": 1} if args.smoke else {
        "batch_size": 8, "seq_len": 1024, "steps": 20, "warmup": 5}  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("batch_size", "seq_len", "steps"):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}.")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}.")
    if args.out is not None and args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists; pass --overwrite or choose another --out.")
    return pair_shapes("smoke" if args.smoke else args.pair, args.teacher_layers, args.student_layers)


# ------------------------------------------------------------------------------------------- sizes and FLOPs


def count_params(config) -> dict[str, int]:
    """Exact parameter counts of ``LlamaForCausalLM(config)`` by part, from the config alone.

    Keys: ``embedding``, ``attention`` (q/k/v/o with GQA, all layers), ``mlp`` (gate/up/down), ``norms``
    (two RMSNorms per layer and the final one), ``lm_head`` (0 when tied to the embedding), ``total``, and
    ``matmul``: the weights multiplied once per token (attention, MLP, LM head even when tied).

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


# --------------------------------------------------------------------------------------------------- data


def synthetic_row(index: int, seq_len: int, vocab: int, seed: int = 0) -> Tensor:
    """Token ids of row ``index``: uniform in ``[0, vocab)``, a pure function of ``(seed, index)``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randint(0, vocab, (seq_len,), generator=generator)


def synthetic_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0, start: int = 0) -> dict[str, Tensor]:
    """Rows ``start .. start + batch_size`` as a token-KD batch: ``input_ids`` and ``labels`` (the same ids)."""
    ids = torch.stack([synthetic_row(start + i, seq_len, vocab, seed) for i in range(batch_size)])
    return {"input_ids": ids, "labels": ids.clone()}


class SyntheticTokens(Dataset):
    """``length`` random token rows, made on demand (a pure function of seed and index, so every rank agrees).

    Items are ``{"input_ids", "labels"}`` (plus an all-ones ``attention_mask`` if asked): the dict layout of
    :class:`lit_distill.losses.TokenKD` batches, labels aligned with inputs (TokenKD shifts them).
    """

    def __init__(self, length: int, seq_len: int, vocab: int, seed: int = 0, attention_mask: bool = False) -> None:
        if length < 1 or seq_len < 2 or vocab < 2:
            raise ValueError(f"need length >= 1, seq_len >= 2, vocab >= 2; got {length}, {seq_len}, {vocab}.")
        self.length, self.seq_len, self.vocab, self.seed = length, seq_len, vocab, seed
        self.attention_mask = attention_mask

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ids = synthetic_row(index, self.seq_len, self.vocab, self.seed)
        item = {"input_ids": ids, "labels": ids.clone()}
        if self.attention_mask:
            item["attention_mask"] = torch.ones_like(ids)
        return item


class SyntheticTokenData(LightningDataModule):
    """A LightningDataModule of :class:`SyntheticTokens` for ``DistillationModule`` + ``TokenKD`` runs.

    Under DDP/FSDP Lightning's distributed sampler gives each rank its own rows; ``length`` is virtual
    (rows are made when read), so make it at least ``steps x batch_size x world_size``.

    Example:
        >>> data = SyntheticTokenData(batch_size=2, seq_len=8, vocab=16)
        >>> batch = next(iter(data.train_dataloader()))
        >>> tuple(batch["input_ids"].shape), bool((batch["labels"] == batch["input_ids"]).all())
        ((2, 8), True)
    """

    def __init__(
        self,
        batch_size: int = 8,
        seq_len: int = 1024,
        vocab: int = LLAMA3_VOCAB,
        length: int = 1 << 20,
        seed: int = 0,
        attention_mask: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.dataset = SyntheticTokens(length, seq_len, vocab, seed, attention_mask)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset, batch_size=self.batch_size, drop_last=True, pin_memory=torch.cuda.is_available()
        )


# ------------------------------------------------------------------------------------------------- models


def causal_lm(config, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """A random-init ``LlamaForCausalLM(config)`` on ``device`` (``"meta"``: no storage; see :func:`materialize`)."""
    from transformers import LlamaForCausalLM

    with torch.device(device or "cpu"):
        model = LlamaForCausalLM(config)
    return model if dtype is None else model.to(dtype)


def lit_lm(config, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """:func:`causal_lm` wrapped as :class:`lit_distill.models.hf.HFCausalLM` (for ``DistillationModule``).

    The wrapper declares :data:`TOKENIZER_ID`, so token KD accepts the pair, and skips HFCausalLM's one-off
    check that logits equal ``lm_head(hidden)``: Llama applies nothing after its head.
    """
    from lit_distill.models.hf import HFCausalLM

    class RandomInitLM(HFCausalLM):
        def __init__(self, model: nn.Module) -> None:
            nn.Module.__init__(self)
            self.model, self.path, self.auto_class = model, None, "causal_lm"
            self.tokenizer, self.tokenizer_id, self.vocab_size = None, TOKENIZER_ID, int(model.config.vocab_size)
            self._hidden_checked = True

    return RandomInitLM(causal_lm(config, device, dtype))


@torch.no_grad()
def materialize(model: nn.Module, device: torch.device | str, std: float = 0.02) -> nn.Module:
    """Give a meta-device (or FSDP2-sharded meta) Llama real storage on ``device`` and a random init.

    Linear and embedding weights ~ N(0, std), RMSNorm weights 1, RoPE buffers recomputed. On sharded
    (DTensor) parameters each rank fills only its own shard, so nothing is ever gathered.
    """
    model.to_empty(device=device)
    rotary = {}
    for module in model.modules():
        if "RotaryEmbedding" in type(module).__name__:
            fresh = rotary.setdefault(id(module.config), type(module)(module.config))  # built on the CPU, tiny
            for name, buf in fresh.named_buffers(recurse=False):
                getattr(module, name).copy_(buf)
    for module in model.modules():
        is_norm = "RMSNorm" in type(module).__name__
        for param in module.parameters(recurse=False):
            local = param.to_local() if hasattr(param, "to_local") else param  # an FSDP2 shard is a DTensor
            if is_norm:
                local.fill_(1.0)
            else:
                local.normal_(0.0, std)
    return model


# --------------------------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Wall time from the start of step ``warmup`` to the end of the last step; syncs only at those two points."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start: float | None = None
        self.end: float | None = None

    def step_start(self, step: int) -> None:
        if step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def stop(self) -> float:
        sync(self.device)
        self.end = time.perf_counter()
        if self.start is None:
            raise RuntimeError("StepTimer stopped before the first timed step started.")
        return self.end - self.start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> dict[str, float] | None:
    """``{"allocated": GiB, "reserved": GiB}`` peaks of the caching allocator on ``device`` (None on CPU)."""
    if device.type != "cuda":
        return None
    return {
        "allocated": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
        "reserved": round(torch.cuda.max_memory_reserved(device) / 2**30, 2),
    }


def end_process_group() -> None:
    """Every rank waits for the others, then the process group is torn down (left to interpreter exit, gloo's
    threads can be destroyed while another rank still talks to them, and the process aborts after its work)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather(value: Any) -> list[Any]:
    """``value`` from every rank (a one-element list without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def result_row(
    name: str,
    teacher,
    student,
    tokens: int,
    seconds: float,
    world_size: int,
    seq_len: int,
    peak_per_rank: list[dict[str, float] | None],
    **extra: Any,
) -> dict[str, Any]:
    """One benchmark result: tokens/s (all ranks), FLOPs/token, MFU on H200's datasheet peak, memory per rank."""
    t_cfg, s_cfg = teacher.config(), student.config()
    flops = flops_per_token(s_cfg, t_cfg, seq_len)
    tokens_per_s = tokens / seconds
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "run": name,
        "device": device,
        "world_size": world_size,
        "teacher": dataclasses.asdict(teacher) | {"params": count_params(t_cfg)["total"]},
        "student": dataclasses.asdict(student) | {"params": count_params(s_cfg)["total"]},
        "tokens": tokens,
        "seconds": round(seconds, 4),
        "tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": flops,
        "mfu": round(mfu(tokens_per_s, flops["total"], world_size), 4),
        "mfu_all_params_no_attention": round(mfu(tokens_per_s, flops["total_all_params"], world_size), 4),
        "peak_gib_per_rank": peak_per_rank,
        "torch": torch.__version__,
        **extra,
    }


def write_result(row: dict[str, Any], out: Path | None) -> None:
    """Print the row as one JSON line and, if ``out`` is set, write it there (callers do this on rank 0 only)."""
    text = json.dumps(row)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def report(args, name: str, teacher, student, seconds: float, device: torch.device, **extra: Any) -> None:
    """Collect every rank's peak memory (call on all ranks); rank 0 prints and writes the result row.

    ``args`` are the parsed :func:`add_model_args` flags: each rank ran ``args.steps`` timed steps of
    ``args.batch_size x args.seq_len`` tokens.
    """
    peaks = gather(peak_memory_gib(device))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    world = len(peaks)
    row = result_row(
        name,
        teacher,
        student,
        tokens=args.steps * args.batch_size * args.seq_len * world,
        seconds=seconds,
        world_size=world,
        seq_len=args.seq_len,
        peak_per_rank=peaks,
        batch_per_device=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        **extra,
    )
    write_result(row, args.out)
