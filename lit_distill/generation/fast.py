"""Fast sampling: a static KV cache and one compiled decode step (replayed as a CUDA graph on GPU), and the ``fast``
option that picks it.

One function is the whole decode step: forward on the static cache, the step's random draws (a hash of a key and the
step counter, both device tensors), :func:`~lit_distill.models.next_token.next_token` and ``finish`` of the sampling
spec, and the write of the new token, all on fixed-shape buffers; ``torch.compile(mode="reduce-overhead")`` fuses it
and replays it as one CUDA graph per ``(batch, length)`` bucket. The host only launches it, and reads one device
value every ``check_every`` steps (have all rows ended?). Prompts (left-padded) fill slots ``0..P-1`` of a ``[B, L]``
grid, the ``i``-th new token slot ``P + i``; attention reads all ``L`` slots through a mask and positions count real
tokens only, so a padded row computes what the unpadded row would. lit-distill's ``GPT`` runs on buffers of its own
(:class:`~lit_distill.models.kv_cache.GPTCache`), ``transformers`` models on ``transformers.StaticCache``.

``fast``: ``False`` = the plain path; ``True`` = this sampler on any device (an unsupported model raises); ``"auto"`` =
this sampler unless a known reason rules it out before compiling (not CUDA, no compiler, a model it cannot run, a
sharded model), said once. A failure of the fast path is raised, never turned into a switch of sampler mid-run.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lit_distill.models.gpt import GPT
from lit_distill.models.kv_cache import GPTCache, mark_static
from lit_distill.models.next_token import SamplingSpec, draw_noise, finish, hf_model, next_token, trim, unwrap
from lit_distill.sharding.fill import is_sharded

# true / false / "auto": YAML reads `on` and `off` as booleans, so the choices are booleans plus "auto".
FastMode = bool | Literal["auto"]
# How samplers are built; tests swap in "aot_eager" (tracing without code generation) or no compile.
DEFAULT_COMPILE: dict[str, Any] = {"compile": True, "backend": "inductor", "mode": "reduce-overhead"}
_RECOMPILE_LIMIT = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


def check_fast(fast: object) -> None:
    """Refuse an unknown ``fast`` mode, naming the choices."""
    if not (isinstance(fast, bool) or fast == "auto"):
        raise ValueError(
            f"fast must be 'auto' (static cache + compiled step on CUDA, plain path elsewhere), true (always) or "
            f"false (plain path), got {fast!r}."
        )


class HFCache:
    """A ``transformers`` causal LM on ``transformers.StaticCache`` (the 5.x forward: explicit ``position_ids``;
    the cache keyword is ``cache`` on newer releases, ``past_key_values`` on older ones)."""

    def __init__(self, hf: Any, batch: int, length: int) -> None:
        from transformers import StaticCache

        params = inspect.signature(_base(hf).forward).parameters
        self.cache = StaticCache(config=hf.config, max_cache_len=length)
        self.args = {"use_cache": True, ("cache" if "cache" in params else "past_key_values"): self.cache}
        # the prefill needs the last position's logits only: [B, P, V] would be 4 GB at B=64, P=256, V=128k in bf16
        self.last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def prefill(self, hf: Any, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        self.cache.reset()  # zeroes the buffers and the write position in place: the addresses stay
        out = hf(input_ids=ids, attention_mask=mask, position_ids=positions, **self.last_only, **self.args)
        return out.logits[:, -1]

    def decode(self, hf: Any, token: Tensor, position: Tensor, slot: Tensor, mask: Tensor) -> Tensor:
        # `slot` is implicit here: StaticCache writes at its own counter, which equals `slot` after the prefill.
        return hf(input_ids=token, attention_mask=mask, position_ids=position, **self.args).logits[:, -1]


def _base(hf: Any) -> Any:
    # A peft wrapper forwards keyword arguments to the model it wraps; read that model's signature.
    return hf.get_base_model() if hasattr(hf, "get_base_model") else hf


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot use the static-cache sampler, or None when it can."""
    inner = unwrap(model)
    hf = None if isinstance(inner, GPT) else hf_model(model)
    if hf is None and not isinstance(inner, GPT):
        return f"{type(model).__name__} is neither a lit-distill GPT nor a transformers causal LM"
    if is_sharded(model):
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
    from transformers import GenerationConfig, StaticCache
    from transformers.cache_utils import StaticLayer

    if any(type(layer) is not StaticLayer for layer in StaticCache(config=hf.config, max_cache_len=8).layers):
        return "its cache has sliding-window or non-attention layers"
    default, config = GenerationConfig(), hf.generation_config
    changed = [name for name in _EXTRA_PROCESSING if getattr(config, name, None) != getattr(default, name, None)]
    return f"its generation_config sets {changed}, which only transformers' generate applies" if changed else None


# Settings of a model's generation_config that change what `generate` samples and that the fast path does not
# implement; temperature/top_k/top_p/eos/pad are lit-distill's own arguments and are not in this list.
_EXTRA_PROCESSING = (
    "num_beams", "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
    "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
    "begin_suppress_tokens", "sequence_bias", "typical_p", "epsilon_cutoff", "eta_cutoff", "min_p", "top_h",
    "exponential_decay_length_penalty", "guidance_scale", "watermarking_config", "penalty_alpha",
    "prompt_lookup_num_tokens", "assistant_model",
)  # fmt: skip


@dataclass
class _Slots:
    """Fixed buffers of one ``(batch, length)`` bucket; a decode step reads and updates them in place."""

    cache: GPTCache | HFCache
    ids: Tensor  # [B, L] prompt then new tokens, by slot
    mask: Tensor  # [B, L] 1 = real slot (prompt padding 0; every generated slot 1)
    token: Tensor  # [B, 1] the newest token, input of the next step
    position: Tensor  # [B, 1] its position (real tokens before it)
    slot: Tensor  # [1] its slot
    done: Tensor  # [B] row emitted eos
    key: Tensor  # [1] the key of this generation's random draws
    index: Tensor  # [1] the index of the newest token among the new ones (it keys its step's draws)


def bucketed(n: int, bucket: int) -> int:
    """``n`` rounded up to a multiple of ``bucket``, or of a quarter of its power of two when that is larger: at
    most 4 sizes per doubling (compilations grow with the log of the longest length), at most 25 % masked slots."""
    step = max(bucket, (1 << (n.bit_length() - 1)) // 4)
    return -(-n // step) * step


class FastSampler:
    """Samples from one model (lit-distill ``GPT``, ``HFCausalLM`` or ``transformers`` causal LM) on a static cache.

    Buffers are kept per ``(batch, length)`` bucket (``length`` = prompt + ``max_new_tokens`` rounded up by
    :func:`bucketed`), so a run compiles once per bucket, not per batch. Holds no reference to the model: each
    :meth:`generate` call passes it, so its current weights are used. :func:`fast_sampler` keeps one per model.

    Args:
        compile: compile the decode step with ``torch.compile`` (False: the same step, eager).
        backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces without code generation).
        mode: inductor mode; ``"reduce-overhead"`` replays the step as a CUDA graph on GPU.
        fullgraph: fail on a graph break instead of splitting the step (tests use it).
        bucket: smallest rounding of the slots; larger = fewer compilations, more masked attention.
        check_every: decode steps between checks that every row has finished (each check syncs the GPU).
        max_buckets: buffers kept for at most this many buckets (oldest dropped).

    Example:
        >>> gpt = GPT(block_size=32, n_layer=1, n_head=2, n_embd=16).eval()
        >>> spec = SamplingSpec(max_new_tokens=4, temperature=0.0)
        >>> FastSampler(compile=False).generate(gpt, torch.tensor([[104, 105]]), None, spec).shape
        torch.Size([1, 6])
    """

    def __init__(
        self,
        compile: bool = True,
        backend: str = "inductor",
        mode: str | None = "reduce-overhead",
        fullgraph: bool = False,
        bucket: int = 64,
        check_every: int = 8,
        max_buckets: int = 4,
    ) -> None:
        self.bucket, self.check_every, self.max_buckets = bucket, check_every, max_buckets
        self.buckets: dict[tuple, _Slots] = {}
        self.cuda_graphs = compile and backend == "inductor" and mode == "reduce-overhead"
        self.step = self._step
        if compile:
            options: dict[str, Any] = {"backend": backend, "dynamic": False, "fullgraph": fullgraph}
            self.step = torch.compile(self._step, **options, **({"mode": mode} if backend == "inductor" else {}))

    def _slots(self, inner: Any, batch: int, length: int, device: torch.device) -> _Slots:
        dtype = next(inner.parameters()).dtype
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        key = (batch, length, device, dtype, autocast)  # the cache's dtype follows the last two
        if key not in self.buckets:
            if len(self.buckets) >= self.max_buckets:
                self.buckets.pop(next(iter(self.buckets)))
            cache = GPTCache(inner, batch, length) if isinstance(inner, GPT) else HFCache(inner, batch, length)
            shapes = ((batch, length), (batch, length), (batch, 1), (batch, 1), (1,), (batch,), (1,), (1,))
            slots = _Slots(cache, *(torch.zeros(*shape, dtype=torch.long, device=device) for shape in shapes))
            slots.done = slots.done.bool()
            mark_static(*(value for value in vars(slots).values() if isinstance(value, Tensor)))
            self.buckets[key] = slots
        return self.buckets[key]

    def _step(self, model: Any, st: _Slots, spec: SamplingSpec) -> None:
        """One decode step, entirely on ``st``'s buffers (the function that is compiled)."""
        logits = st.cache.decode(model, st.token, st.position, st.slot, st.mask)
        st.index.add_(1)
        token = finish(next_token(logits, spec, draw_noise(spec, logits, st.key, st.index)), st.done, spec)
        st.slot.add_(1)
        st.ids.index_copy_(1, st.slot, token[:, None])
        st.token.copy_(token[:, None])
        st.position.add_(1)

    # Buffers outlive the call: made under Lightning's inference_mode (validation, predict) they would be inference
    # tensors that a later training-time call may not update in place. Every call runs outside inference mode.
    @torch.inference_mode(False)
    @torch.no_grad()
    def generate(
        self, model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, spec: SamplingSpec,
        key: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """Continue left-padded prompts: ``[B, P + n]``, ``n <= spec.max_new_tokens``, as the plain path returns.

        Rows after their eos hold ``spec.pad``; decoding stops within ``check_every`` steps of the last row
        finishing, and the output is cut where the plain path stops. ``key`` (``race_key``) keys the random draws.
        """
        (batch, prompt_len), device, n = input_ids.shape, input_ids.device, spec.max_new_tokens
        inner = unwrap(model) if isinstance(unwrap(model), GPT) else hf_model(model)
        if prompt_len + n > getattr(inner, "block_size", prompt_len + n):
            raise ValueError(f"prompt ({prompt_len}) + max_new_tokens ({n}) exceed block_size={inner.block_size}.")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        st = self._slots(inner, batch, bucketed(prompt_len + n, self.bucket), device)
        st.ids[:, :prompt_len], st.mask[:, :prompt_len], st.mask[:, prompt_len:] = input_ids, mask, 1
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        logits = st.cache.prefill(inner, input_ids, st.mask, positions)
        st.done.zero_()
        st.key.random_(0, 2**62) if key is None else st.key.copy_(key)  # unkeyed: torch's global RNG
        st.index.zero_()
        token = finish(next_token(logits, spec, draw_noise(spec, logits, st.key, st.index)), st.done, spec)
        st.ids[:, prompt_len] = token
        st.token.copy_(token[:, None])
        st.position.copy_(positions[:, -1:] + 1)
        st.slot.fill_(prompt_len)
        steps = 1
        with torch._dynamo.config.patch(**{_RECOMPILE_LIMIT: max(64, getattr(torch._dynamo.config, _RECOMPILE_LIMIT))}):
            # one compiled graph per (batch, length, spec): more than dynamo's default 8 in a long run
            while steps < n and not (spec.eos and steps % self.check_every == 0 and bool(st.done.all())):
                if self.cuda_graphs:  # a new step: the graph may overwrite what the last replay wrote
                    torch.compiler.cudagraph_mark_step_begin()
                self.step(inner, st, spec)
                steps += 1
        return trim(st.ids[:, : prompt_len + steps].clone(), prompt_len, spec)


class _Samplers:
    """A model's fast samplers by ``(fast, device)`` (None: the plain path), kept on the model object; a copy or a
    pickle of the model starts without them (compiled steps and CUDA buffers are not the copy's to share)."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[Any, str], FastSampler | None] = {}

    def __deepcopy__(self, memo: dict) -> _Samplers:
        return _Samplers()

    def __reduce__(self) -> tuple:
        return (_Samplers, ())


def fast_sampler(model: nn.Module, fast: FastMode, device: torch.device) -> FastSampler | None:
    """The fast sampler of ``model`` for this call, or None for the plain path (see the module's docstring)."""
    check_fast(fast)
    if fast is False:
        return None
    inner = unwrap(model)
    held = inner.__dict__.setdefault("_lit_distill_samplers", _Samplers())
    key = (fast, str(device))
    if key not in held.by_key:
        reason = unsupported_reason(model)
        if reason is not None and fast is True:
            raise ValueError(f"fast=True cannot sample from {type(model).__name__}: {reason}. Use fast: auto or false.")
        reason = reason or (auto_reason(device) if fast == "auto" else None)
        if reason is not None:
            rank_zero_info(f"[lit-distill] fast sampling off for {type(model).__name__}: {reason}; the plain path.")
        held.by_key[key] = None if reason else FastSampler(**DEFAULT_COMPILE)
    return held.by_key[key]


def auto_reason(device: torch.device) -> str | None:
    """Why ``fast: auto`` takes the plain path on ``device`` whatever the model, or None."""
    if device.type != "cuda":
        return f"the model is on {device.type}, and the compiled step (CUDA graphs) is for CUDA"
    if not compiler_available():
        return "torch.compile is not available here (no dynamo support or no Triton)"
    return None


def compiler_available() -> bool:
    """Whether ``torch.compile`` can generate GPU code here (dynamo supported and Triton installed)."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return bool(torch._dynamo.is_dynamo_supported() and has_triton())
