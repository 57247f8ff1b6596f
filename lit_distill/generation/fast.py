"""Fast batched sampling: a static KV cache and one compiled decode step (replayed as a CUDA graph on GPU).

At LLM sizes ``transformers``' default ``generate`` is launch-bound, not memory-bound: a decoding step of a 0.38B
model launches hundreds of small kernels and Python work (cache growth, mask building, logits processors) for
~0.2 ms of weight reads. Here one function is the whole step: forward on the static cache, top-k/top-p/temperature
sampling, eos bookkeeping and the write of the new token, all on fixed-shape buffers. ``torch.compile`` with
``mode="reduce-overhead"`` fuses it and replays it as one CUDA graph per ``(batch, length)`` bucket.

Why not ``generate(cache_implementation="static")``: it compiles only the model's forward; the per-step loop
(``prepare_inputs_for_generation``, the 4D mask built outside the graph, logits processors, ``torch.multinomial``
which CUDA graphs skip, stopping criteria) stays eager Python around it. Counted with a dispatch hook on a 2-layer
Llama (transformers 5.17 and 5.24, T=1 sampling): 54 eager aten ops per decoding step outside the compiled
forward there, against about 2 outside the compiled step here (the noise draw; every 8 steps, the finished check).

Randomness: sampling uses the exponential race (``argmax(p / E)``, ``E ~ Exp(1)`` i.i.d., draws the token with
probability ``p``), with ``E`` drawn outside the graph from a seeded ``torch.Generator`` into a fixed buffer. Same
seed, prompts and device give the same samples; they differ from the plain path's ``torch.multinomial`` stream.
Greedy decoding is the plain path's argmax, token for token in float32; in bf16 the two paths' kernels round
differently, and a near-tie (logits one bf16 step apart, common in random-init models) can pick another token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lit_distill.generation.static_cache import (
    GPTDecoder,
    HFDecoder,
    hf_model,
    hf_vocab_limit,
    mark_static,
)
from lit_distill.models.gpt import GPT
from lit_distill.models.next_token import filter_logits


@dataclass(frozen=True)
class Sampling:
    """What one decode step does with the logits (Python constants: the compiled step specialises on them)."""

    temperature: float
    top_k: int | None
    top_p: float | None
    eos: tuple[int, ...]  # empty: rows never finish
    pad: int | None  # written after a row's eos
    vocab: int  # logits columns >= vocab are padding rows of the head, never picked


def pick(logits: Tensor, noise: Tensor | None, s: Sampling) -> Tensor:
    """One token per row of ``logits [B, >= vocab]``: argmax when greedy, else the exponential race on ``noise``."""
    logits = logits[:, : s.vocab]
    if s.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits, s.temperature, s.top_k, s.top_p).softmax(-1)
    return (probs / noise.clamp_min(1e-30)).argmax(-1)  # exponential_ may return 0 on some builds


def finished(tokens: Tensor, eos: tuple[int, ...]) -> Tensor:
    """Boolean mask of ``tokens`` that are one of the ``eos`` ids."""
    hit = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos:
        hit |= tokens == e
    return hit


@dataclass
class _Slots:
    """Fixed buffers of one ``(batch, length)`` bucket; a decode step reads and updates them in place."""

    cache: Any
    ids: Tensor  # [B, L] prompt then new tokens, by slot
    mask: Tensor  # [B, L] 1 = real slot (prompt padding 0; every generated slot 1)
    token: Tensor  # [B, 1] the newest token, input of the next step
    position: Tensor  # [B, 1] its position (real tokens before it)
    slot: Tensor  # [1] its slot
    done: Tensor  # [B] row emitted eos
    noise: Tensor  # [B, vocab] exponential draws of the next step


def bucketed(n: int, bucket: int) -> int:
    """``n`` rounded up to a multiple of ``bucket``, or of a quarter of its power of two when that is larger: at
    most 4 sizes per doubling (compilations grow with the log of the longest length), at most 25 % masked slots."""
    step = max(bucket, (1 << (n.bit_length() - 1)) // 4)
    return -(-n // step) * step


def _inner(model: nn.Module) -> Any:
    """The module that computes: a GPT (unwrapped from ``torch.compile``) or the ``transformers`` model."""
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, GPT) else hf_model(model)


_RECOMPILE_LIMIT = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


class FastSampler:
    """Samples from one model (lit-distill ``GPT``, ``HFCausalLM`` or ``transformers`` causal LM) on a static cache.

    Buffers are kept per ``(batch, length)`` bucket (``length`` = prompt + ``max_new_tokens`` rounded up by
    :func:`bucketed`), so a run compiles once per bucket, not per batch. Call through
    :func:`lit_distill.generation.generate` with ``fast="auto"`` or ``True`` (:mod:`lit_distill.generation.fast_mode`
    picks it); this class is its engine.

    Holds no reference to the model: each :meth:`generate` call passes it, so its current weights are used.

    Args:
        model: the model whose sizes and kind the sampler is built for.
        compile: compile the decode step with ``torch.compile`` (False: the same step, eager).
        backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces without code generation).
        mode: inductor mode; ``"reduce-overhead"`` replays the step as a CUDA graph on GPU.
        fullgraph: fail on a graph break instead of splitting the step (tests use it).
        bucket: smallest rounding of the slots; larger = fewer compilations, more masked attention.
        check_every: decode steps between checks that every row has finished (each check syncs the GPU).
        max_buckets: buffers kept for at most this many buckets (oldest dropped).

    Example:
        >>> gpt = GPT(block_size=32, n_layer=1, n_head=2, n_embd=16).eval()
        >>> sampler = FastSampler(gpt, compile=False)
        >>> s = sampler.sampling(gpt, temperature=0.0, top_k=None, top_p=None, eos=None, pad=None)
        >>> sampler.generate(gpt, torch.tensor([[104, 105]]), torch.ones(1, 2, dtype=torch.long), 4, s).shape
        torch.Size([1, 6])
    """

    def __init__(
        self,
        model: nn.Module,
        compile: bool = True,
        backend: str = "inductor",
        mode: str | None = "reduce-overhead",
        fullgraph: bool = False,
        bucket: int = 64,
        check_every: int = 8,
        max_buckets: int = 4,
    ) -> None:
        inner = _inner(model)
        if inner is None:
            raise TypeError(f"FastSampler: {type(model).__name__} is neither a GPT nor a transformers causal LM.")
        self.decoder: GPTDecoder | HFDecoder = GPTDecoder(inner) if isinstance(inner, GPT) else HFDecoder(inner)
        self.bucket, self.check_every, self.max_buckets = bucket, check_every, max_buckets
        self.buckets: dict[tuple, _Slots] = {}
        self.cuda_graphs = compile and backend == "inductor" and mode == "reduce-overhead"
        step = self._step
        if compile:
            options: dict[str, Any] = {"backend": backend, "dynamic": False, "fullgraph": fullgraph}
            if backend == "inductor":
                options["mode"] = mode
            step = torch.compile(self._step, **options)
        self.step = step

    def sampling(
        self,
        model: nn.Module,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        eos: int | None,
        pad: int | None,
    ) -> Sampling:
        """The :class:`Sampling` of ``generate``'s arguments; HF models fall back to their generation_config's ids
        when ``eos`` / ``pad`` are None, as ``transformers``' ``generate`` does."""
        eos_ids: tuple[int, ...] = () if eos is None else (int(eos),)
        vocab = self.decoder.vocab_size
        hf = hf_model(model) if isinstance(self.decoder, HFDecoder) else None
        if hf is not None:
            config = hf.generation_config
            if eos is None and config.eos_token_id is not None:
                ids = config.eos_token_id
                eos_ids = tuple(int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids]))
            if pad is None:
                pad = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else None)
            vocab = hf_vocab_limit(model, hf, eos, pad) or self.decoder.width
        return Sampling(float(temperature), top_k, top_p, eos_ids, pad if eos_ids else None, vocab)

    def _slots(self, batch: int, length: int, sampling: Sampling, device: torch.device, dtype: torch.dtype) -> _Slots:
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        key = (batch, length, sampling.vocab, device, dtype, autocast)  # the cache's dtype follows the last two
        if key not in self.buckets:
            if len(self.buckets) >= self.max_buckets:
                self.buckets.pop(next(iter(self.buckets)))
            long = {"dtype": torch.long, "device": device}
            slots = _Slots(
                cache=self.decoder.new_cache(batch, length),
                ids=torch.zeros(batch, length, **long),
                mask=torch.ones(batch, length, **long),
                token=torch.zeros(batch, 1, **long),
                position=torch.zeros(batch, 1, **long),
                slot=torch.zeros(1, **long),
                done=torch.zeros(batch, dtype=torch.bool, device=device),
                noise=torch.ones(batch, sampling.vocab, device=device),
            )
            mark_static(slots.ids, slots.mask, slots.token, slots.position, slots.slot, slots.done, slots.noise)
            self.buckets[key] = slots
        return self.buckets[key]

    def _step(self, model: nn.Module, st: _Slots, s: Sampling) -> None:
        """One decode step, entirely on ``st``'s buffers (the function that is compiled)."""
        logits = self.decoder.decode(model, st.cache, st.token, st.position, st.slot, st.mask)
        token = pick(logits, st.noise, s)
        if s.eos:
            token = torch.where(st.done, s.pad, token)
            st.done.logical_or_(finished(token, s.eos))
        st.slot.add_(1)
        st.ids.index_copy_(1, st.slot, token[:, None])
        st.token.copy_(token[:, None])
        st.position.add_(1)

    # Buffers outlive the call: made under Lightning's inference_mode (validation, predict) they would be inference
    # tensors that a later training-time call may not update in place. Every call runs outside inference mode.
    @torch.inference_mode(False)
    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        max_new_tokens: int,
        sampling: Sampling,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue left-padded prompts: ``[B, P + n]``, ``n <= max_new_tokens``, as the plain path returns.

        Rows after their eos hold ``sampling.pad``; decoding stops within ``check_every`` steps of the last row
        finishing, and the output is cut where the plain path stops (the step at which every row was done).
        """
        (batch, prompt_len), device = input_ids.shape, input_ids.device
        self.decoder.check(prompt_len, max_new_tokens)
        inner = _inner(model)
        dtype = next(inner.parameters()).dtype
        st = self._slots(batch, bucketed(prompt_len + max_new_tokens, self.bucket), sampling, device, dtype)
        st.ids[:, :prompt_len] = input_ids
        st.mask[:, :prompt_len] = attention_mask
        st.mask[:, prompt_len:] = 1
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        logits = self.decoder.prefill(inner, st.cache, input_ids, st.mask, positions)
        sampled = sampling.temperature > 0
        if sampled:
            st.noise.exponential_(generator=generator)
        token = pick(logits, st.noise, sampling)
        st.done.copy_(finished(token, sampling.eos))
        st.ids[:, prompt_len] = token
        st.token.copy_(token[:, None])
        st.position.copy_(positions[:, -1:] + 1)
        st.slot.fill_(prompt_len)
        steps = 1
        with torch._dynamo.config.patch(**{_RECOMPILE_LIMIT: max(64, getattr(torch._dynamo.config, _RECOMPILE_LIMIT))}):
            # one compiled graph per (batch, length, sampling): more than dynamo's default 8 in a long run
            while steps < max_new_tokens:
                if sampling.eos and steps % self.check_every == 0 and bool(st.done.all()):
                    break
                if sampled:
                    st.noise.exponential_(generator=generator)
                if self.cuda_graphs:  # a new step: the graph may overwrite what the last replay wrote
                    torch.compiler.cudagraph_mark_step_begin()
                self.step(inner, st, sampling)
                steps += 1
        out = st.ids[:, : prompt_len + steps].clone()
        if sampling.eos:
            hit = finished(out[:, prompt_len:], sampling.eos)
            if bool(hit.any(1).all()):  # the plain path stops after the step at which the last row finished
                out = out[:, : prompt_len + int(hit.int().argmax(1).max()) + 1]
        return out
