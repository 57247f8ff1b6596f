"""Static KV caches for fast sampling: fixed-shape key/value buffers that one decode step updates in place.

A batch of left-padded prompts lives on a ``[B, L]`` grid of *slots* (columns): the prompt fills slots ``0..P-1``,
the ``i``-th new token slot ``P + i``. Keys and values are written at their slot, attention reads all ``L`` slots
through a mask (padding and not-yet-written slots masked), and positions come from the real tokens only
(``cumsum(mask) - 1``), so a padded row computes what the unpadded row would. Every tensor a decode step touches
keeps its shape and address for the whole generation, which is what ``torch.compile`` (no recompiles) and CUDA
graphs (replayed on the same memory) need.

:class:`GPTDecoder` drives lit-distill's :class:`~lit_distill.models.GPT` through its own blocks with preallocated
buffers; :class:`HFDecoder` drives a ``transformers`` causal LM with ``transformers.StaticCache``. Both offer
``new_cache(batch, length)``, ``prefill(model, cache, ids, mask, positions)`` and ``decode(model, cache, token,
position, slot, mask)``, each returning the next-token logits ``[B, V]``; the model is an argument, never kept.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from lit_distill.models.gpt import GPT


def hf_model(model: nn.Module) -> Any:
    """The ``transformers`` model behind ``model`` (``model`` itself, or the HF wrapper's ``.model``), else None."""
    # `model` first: a bare LlamaForCausalLM also has a `.model` (its headless LlamaModel, which cannot generate).
    for inner in (model, getattr(model, "model", None)):
        if hasattr(inner, "generation_config") and hasattr(inner, "generate"):
            return inner
    return None


def hf_vocab_limit(wrapper: nn.Module, hf: Any, eos: int | None, pad: int | None) -> int | None:
    """Number of real tokens when the HF head has extra padded rows that must never be sampled, else None.

    The wrapper's ``vocab_size`` (its tokenizer's length) is the real vocabulary. A "vocabulary" that lacks the
    special ids is not the real one (an empty placeholder tokenizer), so nothing is cut then.
    """
    head = hf.get_output_embeddings()
    width = head.weight.shape[0] if head is not None else None
    real = getattr(wrapper, "vocab_size", None) if wrapper is not hf else None
    specials = [i for i in (eos, pad) if i is not None]
    if width is not None and isinstance(real, int) and max(specials, default=-1) < real < width:
        return real
    return None


def _base(hf: Any) -> Any:
    # A peft wrapper forwards keyword arguments to the model it wraps; read that model's signature.
    return hf.get_base_model() if hasattr(hf, "get_base_model") else hf


def mark_static(*tensors: Tensor) -> None:
    """Tell ``torch.compile`` these buffers keep their address: CUDA graphs read them in place, no copy per replay."""
    for t in tensors:
        torch._dynamo.mark_static_address(t, guard=False)  # a moved buffer re-records, not recompiles


class _SlotKV:
    """One GPT layer's view of the static buffers, duck-typing ``LayerCache.append`` for the model's attention."""

    def __init__(self, cache: GPTStaticCache, layer: int, slots: Tensor) -> None:
        self.cache, self.layer, self.slots = cache, layer, slots

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        keys, values = self.cache.buffers(self.layer, k)
        keys.index_copy_(2, self.slots, k)
        values.index_copy_(2, self.slots, v)
        return keys, values


class GPTStaticCache:
    """Keys and values of every GPT layer, ``[B, heads, L, head_dim]``; allocated at the first write in the dtype
    the attention computes in (so autocast and bf16 models get bf16 buffers)."""

    def __init__(self, layers: int, heads: int, head_dim: int, batch: int, length: int) -> None:
        self.shape = (batch, heads, length, head_dim)
        self.keys: list[Tensor | None] = [None] * layers
        self.values: list[Tensor | None] = [None] * layers

    def buffers(self, layer: int, like: Tensor) -> tuple[Tensor, Tensor]:
        if self.keys[layer] is None:  # only in the (eager) prefill: decode steps always find the buffers
            self.keys[layer], self.values[layer] = like.new_zeros(self.shape), like.new_zeros(self.shape)
            mark_static(self.keys[layer], self.values[layer])
        return self.keys[layer], self.values[layer]


class GPTDecoder:
    """Prefill and single-token decode of a lit-distill :class:`GPT` on a static cache, through its own blocks.

    Holds only the model's sizes; the model is passed to every call (a sampler never keeps a model alive).
    """

    def __init__(self, model: GPT) -> None:
        self.layers, self.heads = len(model.blocks), model.blocks[0].attn.heads
        self.head_dim = model.wte.embedding_dim // self.heads
        self.width, self.vocab_size, self.block_size = model.padded_vocab_size, model.vocab_size, model.block_size

    def new_cache(self, batch: int, length: int) -> GPTStaticCache:
        return GPTStaticCache(self.layers, self.heads, self.head_dim, batch, length)

    def check(self, prompt_len: int, max_new_tokens: int) -> None:
        if prompt_len + max_new_tokens > self.block_size:
            raise ValueError(
                f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) exceed block_size={self.block_size}."
            )

    @staticmethod
    def _run(gpt: GPT, cache: GPTStaticCache, ids: Tensor, positions: Tensor, attn: Tensor, slots: Tensor) -> Tensor:
        x = gpt.drop(gpt.wte(ids) + gpt.wpe(positions))
        for i, block in enumerate(gpt.blocks):
            x = block(x, attn, _SlotKV(cache, i, slots))
        return gpt.head(gpt.norm(x[:, -1]))

    def prefill(self, gpt: GPT, cache: GPTStaticCache, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        prompt_len, device = ids.shape[1], ids.device
        query = torch.arange(prompt_len, device=device)[:, None]
        key = torch.arange(mask.shape[1], device=device)[None, :]
        # As GPT.forward_hidden: a padding query sees only itself, so no attention row is empty.
        attn = ((key <= query) & mask.bool()[:, None, None, :]) | (key == query)
        return self._run(gpt, cache, ids, positions, attn, torch.arange(prompt_len, device=device))

    def decode(
        self, gpt: GPT, cache: GPTStaticCache, token: Tensor, position: Tensor, slot: Tensor, mask: Tensor
    ) -> Tensor:
        key = torch.arange(mask.shape[1], device=mask.device)
        attn = (mask.bool() & (key <= slot))[:, None, None, :]
        return self._run(gpt, cache, token, position, attn, slot)


class HFDecoder:
    """Prefill and single-token decode of a ``transformers`` causal LM on ``transformers.StaticCache``.

    Works with the ``transformers`` 5.x forward (``position_ids`` explicit, the cache keeps its own write
    position); the cache keyword is ``cache`` on newer releases and ``past_key_values`` on older ones.
    """

    def __init__(self, model: Any) -> None:
        self.config = model.config
        self.width = int(model.get_output_embeddings().weight.shape[0])
        self.vocab_size = self.width
        params = inspect.signature(_base(model).forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        # the prefill needs the last position's logits only: [B, P, V] would be 4 GB at B=64, P=256, V=128k in bf16
        self.last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def new_cache(self, batch: int, length: int) -> Any:
        from transformers import StaticCache

        return StaticCache(config=self.config, max_cache_len=length)

    def check(self, prompt_len: int, max_new_tokens: int) -> None:
        """Nothing to check: positions past the model's trained length are the user's choice, as in ``generate``."""

    def prefill(self, model: Any, cache: Any, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        cache.reset()  # zeroes the buffers and the write position in place: the addresses stay
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **self.last_only,
            **{self.cache_arg: cache},
        )  # fmt: skip
        return out.logits[:, -1]

    def decode(self, model: Any, cache: Any, token: Tensor, position: Tensor, slot: Tensor, mask: Tensor) -> Tensor:
        # `slot` is implicit here: StaticCache writes at its own counter, which equals `slot` after the prefill.
        out = model(
            input_ids=token, attention_mask=mask, position_ids=position, use_cache=True, **{self.cache_arg: cache}
        )
        return out.logits[:, -1]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot use the static-cache sampler, or None when it can."""
    inner = getattr(model, "_orig_mod", model)
    hf = None if isinstance(inner, GPT) else hf_model(model)
    if hf is None and not isinstance(inner, GPT):
        return f"{type(model).__name__} is neither a lit-distill GPT nor a transformers causal LM"
    sharded = (type(m).__name__.startswith(("FSDP", "FullyShardedDataParallel")) for m in inner.modules())
    if any(sharded) or any(type(p).__name__ in ("DTensor", "FlatParameter") for p in inner.parameters()):
        return "the model is sharded (FSDP), so its weights are not whole on this device"
    if hf is None:
        return None
    if getattr(hf.config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    if not getattr(hf, "_can_compile_fullgraph", False):
        return f"{type(hf).__name__} does not declare torch.compile support (_can_compile_fullgraph)"
    if hf.get_output_embeddings() is None:
        return "the model has no LM head"
    if "position_ids" not in inspect.signature(_base(hf).forward).parameters:
        return f"{type(hf).__name__}.forward takes no position_ids"
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    layers = StaticCache(config=hf.config, max_cache_len=8).layers
    if any(type(layer) is not StaticLayer for layer in layers):
        return "its cache has sliding-window or non-attention layers"
    changed = _generation_config_extras(hf)
    if changed:
        return f"its generation_config sets {changed}, which only transformers' generate applies"
    return None


# Settings of a model's generation_config that change what `generate` samples and that the fast path does not
# implement; temperature/top_k/top_p/eos/pad are lit-distill's own arguments and are not in this list.
_EXTRA_PROCESSING = (
    "num_beams", "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
    "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
    "begin_suppress_tokens", "sequence_bias", "typical_p", "epsilon_cutoff", "eta_cutoff", "min_p", "top_h",
    "exponential_decay_length_penalty", "guidance_scale", "watermarking_config", "penalty_alpha",
    "prompt_lookup_num_tokens", "assistant_model",
)  # fmt: skip


def _generation_config_extras(hf: Any) -> list[str]:
    from transformers import GenerationConfig

    default, config = GenerationConfig(), hf.generation_config
    return [name for name in _EXTRA_PROCESSING if getattr(config, name, None) != getattr(default, name, None)]
