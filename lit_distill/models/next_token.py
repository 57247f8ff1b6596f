"""Choosing the next token, written once for every decoder: :class:`SamplingSpec` (what to sample: length,
temperature, top-k, top-p, end-of-sequence, padding, real vocabulary) and the per-step functions that apply it.

``GPT.generate``, the plain path of :func:`lit_distill.generation.generate` and the compiled static-cache step of
:mod:`lit_distill.generation.fast` all pick tokens with :func:`next_token` and close rows with :func:`finish`.
Sampling is the exponential race ``argmax(p / E)`` with ``E ~ Exp(1)`` per step and token (it picks each token with
probability ``p``); the draws are a hash of (key, step, row, token), so the plain loop and the compiled step (inside
its CUDA graph, with no generator and no host work) sample the same tokens from one seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SamplingSpec:
    """What one generation samples; checked on construction, naming the bad value.

    Args:
        max_new_tokens: upper bound on new tokens per row.
        temperature: 0 = greedy; otherwise sample from ``softmax(logits / temperature)``.
        top_k: sample only among the ``k`` most likely tokens (None = off).
        top_p: nucleus sampling: the smallest set with probability mass ``>= top_p`` (None = off).
        eos: token id(s) that end a row (an int, a tuple, or None: rows never end early).
        pad: filler after a row's eos (default: its first eos id).
        vocab: number of real tokens; logits columns from here on (a padded head's extra rows) are never picked.
            None = every column.

    Example:
        >>> SamplingSpec(max_new_tokens=8, temperature=0.0, eos=256).pad
        256
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos: int | tuple[int, ...] | None = ()
    pad: int | None = None
    vocab: int | None = None

    def __post_init__(self) -> None:
        n, t, k, p = self.max_new_tokens, self.temperature, self.top_k, self.top_p
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {n!r}.")
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}.")
        if k is not None and not (isinstance(k, int) and k >= 1):
            raise ValueError(f"top_k must be None (off) or an integer >= 1, got {k!r}.")
        if p is not None and not (isinstance(p, (int, float)) and 0 < p <= 1):
            raise ValueError(f"top_p must be None (off) or in (0, 1], got {p!r}.")
        eos = () if self.eos is None else (self.eos,) if isinstance(self.eos, int) else tuple(self.eos)
        object.__setattr__(self, "eos", tuple(int(e) for e in eos))
        object.__setattr__(self, "temperature", float(t))
        if self.pad is None and eos:
            object.__setattr__(self, "pad", int(eos[0]))


def unwrap(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (``model._orig_mod``), else ``model``."""
    return getattr(model, "_orig_mod", model)


def hf_model(model: nn.Module) -> Any:
    """The ``transformers`` model behind ``model`` (``model`` itself, or the HF wrapper's ``.model``), else None."""
    # `model` first: a bare LlamaForCausalLM also has a `.model` (its headless LlamaModel, which cannot generate).
    for inner in (model, getattr(model, "model", None)):
        if hasattr(inner, "generation_config") and hasattr(inner, "generate"):
            return inner
    return None


def spec_for(model: nn.Module, eos: int | None = None, pad: int | None = None, **settings: Any) -> SamplingSpec:
    """The :class:`SamplingSpec` of ``settings`` for ``model``: its real vocabulary (``vocab_size``, below a padded
    head) and, for a ``transformers`` model given no eos / pad, its ``generation_config``'s, as its ``generate``."""
    hf, vocab = hf_model(model), getattr(unwrap(model), "vocab_size", None)
    if hf is not None:
        head, real = hf.get_output_embeddings(), vocab if model is not hf else None
        width = int(head.weight.shape[0]) if head is not None else None
        # a "vocabulary" lacking the given special ids is a placeholder tokenizer's, not the real one: nothing is cut
        given = max([i for i in ([eos] if isinstance(eos, int) else list(eos or [])) + [pad] if i is not None] or [-1])
        vocab = real if width and isinstance(real, int) and given < real < width else width
        config = hf.generation_config
        eos, pad = config.eos_token_id if eos is None else eos, config.pad_token_id if pad is None else pad
    return SamplingSpec(eos=eos, pad=pad, vocab=vocab, **settings)


def filter_logits(logits: Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """``logits / temperature`` in float32, with ``-inf`` outside the ``top_k`` best and outside the smallest set
    whose probability reaches ``top_p`` (nucleus); ``softmax`` of the result is the distribution to sample from."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        ordered, index = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p; keeps the best one
        logits = logits.scatter(-1, index, ordered.masked_fill(drop, -math.inf))
    return logits


# splitmix64 (Steele et al. 2014) in signed 64-bit arithmetic: torch's int64 multiply wraps like the unsigned one.
_GOLDEN, _MIX1, _MIX2 = -7046029254386353131, -4658895280553007687, -7723592293110705685


def _mix(x: Tensor) -> Tensor:
    """splitmix64's finalizer: every output bit depends on every input bit (logical shifts on int64)."""
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * _MIX1
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * _MIX2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def race_key(seed: int | torch.Generator | None, device: torch.device | str = "cpu") -> Tensor:
    """The ``[1]`` int64 key of one generation's random draws: ``seed`` itself, a draw from a ``torch.Generator``,
    or (None) a draw from torch's global RNG, so ``torch.manual_seed`` makes unseeded runs repeat too."""
    if isinstance(seed, int):
        return torch.tensor([seed], dtype=torch.long, device=device)
    where = seed.device if isinstance(seed, torch.Generator) else "cpu"
    return torch.randint(0, 2**62, (1,), generator=seed, device=where).to(device)


def draw_noise(spec: SamplingSpec, logits: Tensor, key: Tensor | None, index: Tensor | int) -> Tensor | None:
    """The ``Exp(1)`` draws for the ``index``-th new token of ``logits [B, >= vocab]``; None when greedy.

    Counter-based: a hash of ``(key, index, row, column)`` turned into 24-bit uniforms (as ``exponential_`` draws
    float32 ones), so every decoder computes the same draws with no generator state: the plain loop, and the
    compiled step inside its CUDA graph (``index`` a tensor there: no host value per step).
    """
    if spec.temperature == 0:
        return None
    key = race_key(None, logits.device) if key is None else key
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
    cols = torch.arange(spec.vocab or logits.shape[-1], device=logits.device)[None, :]
    counter = ((key * _GOLDEN + index) * _MIX1 + rows) * _MIX2 + cols
    uniform = (((_mix(counter + _GOLDEN) >> 40) & ((1 << 24) - 1)).float() + 0.5) * 2.0**-24
    return -uniform.log()


def next_token(logits: Tensor, spec: SamplingSpec, noise: Tensor | None) -> Tensor:
    """One token per row of ``logits [B, >= vocab]``: argmax when greedy, else the exponential race on ``noise``."""
    logits = logits[:, : spec.vocab]
    if spec.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits, spec.temperature, spec.top_k, spec.top_p).softmax(-1)
    return (probs / noise.clamp_min(1e-30)).argmax(-1)  # exponential_ may return 0 on some builds


def is_eos(tokens: Tensor, eos: tuple[int, ...]) -> Tensor:
    """Boolean mask of ``tokens`` that are one of the ``eos`` ids."""
    hit = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos:
        hit |= tokens == e
    return hit


def finish(token: Tensor, done: Tensor, spec: SamplingSpec) -> Tensor:
    """``token [B]`` with rows already ``done`` replaced by the pad id; marks rows that emit eos in ``done``."""
    if not spec.eos:
        return token
    token = torch.where(done, spec.pad, token)
    done.logical_or_(is_eos(token, spec.eos))
    return token


def trim(sequences: Tensor, prompt_width: int, spec: SamplingSpec) -> Tensor:
    """``sequences`` cut after the step at which their last row emitted eos (where a lone decoder stops); uncut
    when a row never did. Decoders that step on past that point (in step with other ranks, or checking every few
    steps) return what a lone decoder would."""
    if not spec.eos or sequences.shape[1] == prompt_width:
        return sequences
    hit = is_eos(sequences[:, prompt_width:], spec.eos)
    if not bool(hit.any(1).all()):
        return sequences
    return sequences[:, : prompt_width + int(hit.int().argmax(1).max()) + 1]


def decode(
    step: Callable[[Tensor], Tensor],
    logits: Tensor,
    spec: SamplingSpec,
    key: Tensor | None = None,
    all_done: Callable[[Tensor], bool] | None = None,
) -> Tensor:
    """The plain decode loop: ``[B, n]`` new tokens, ``n <= spec.max_new_tokens``, picked from ``logits [B, V]``
    (the prompt's last position) and then from ``step(token)``, the logits after feeding each new token; ``key``
    (:func:`race_key`) keys the draws.

    It stops once every row has emitted eos, as ``all_done(done)`` says: by default every row of this batch;
    ranks that must decode in step (a sharded model) pass a check over every rank's rows.
    """
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    all_done = all_done or (lambda d: bool(spec.eos) and bool(d.all()))
    key = race_key(None, logits.device) if key is None and spec.temperature > 0 else key
    tokens = []
    for i in range(spec.max_new_tokens):
        token = finish(next_token(logits, spec, draw_noise(spec, logits, key, i)), done, spec)
        tokens.append(token)
        if i + 1 == spec.max_new_tokens or all_done(done):  # asked every step, also of rows that never end
            break
        logits = step(token)
    return torch.stack(tokens, 1)


def sample_next(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row of ``logits [B, V]``: greedy when ``temperature == 0``, else sample from
    ``softmax(logits / temperature)`` restricted to ``top_k`` / ``top_p``. ``generator`` lives on ``logits.device``."""
    spec = SamplingSpec(temperature=temperature, top_k=top_k, top_p=top_p)
    key = race_key(generator, logits.device) if temperature > 0 else None
    return next_token(logits, spec, draw_noise(spec, logits, key, 0))
