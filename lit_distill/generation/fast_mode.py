"""The ``fast`` option of ``generate``, ``OnPolicyDistillationModule`` and ``GenerationModule``: which sampler runs.

``False``: the plain path. ``"auto"``: the static-cache sampler (:mod:`lit_distill.generation.fast`) compiled with CUDA
graphs on CUDA when the model supports it, the plain path elsewhere (the reason said once); a failure of the fast
path is raised, never turned into a silent switch. ``True``: the static-cache sampler on any device; an unsupported
model raises.
"""

from __future__ import annotations

import weakref
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lit_distill.generation.fast import FastSampler
from lit_distill.generation.static_cache import unsupported_reason

# true / false / "auto": YAML reads `on` and `off` as booleans, so the choices are booleans plus "auto".
FastMode = bool | Literal["auto"]


def check_fast(fast: object) -> None:
    """Refuse an unknown ``fast`` mode, naming the choices."""
    if not (isinstance(fast, bool) or fast == "auto"):
        raise ValueError(
            f"fast must be 'auto' (static cache + compiled step on CUDA, plain path elsewhere), true (always) or "
            f"false (plain path), got {fast!r}."
        )


# How `fast_sampler` builds samplers; tests swap in "aot_eager" (tracing without code generation) or no compile.
DEFAULT_COMPILE: dict[str, Any] = {"compile": True, "backend": "inductor", "mode": "reduce-overhead"}
_SAMPLERS: weakref.WeakKeyDictionary[nn.Module, FastSampler | None] = weakref.WeakKeyDictionary()


def fast_sampler(model: nn.Module, fast: FastMode, device: torch.device) -> FastSampler | None:
    """The fast sampler of ``model`` for this call, or None for the plain path.

    ``False``: None. ``"auto"``: a compiled sampler when nothing rules it out (CUDA, a supported unsharded model,
    a working compiler), else None, the reason said once per model. ``True``: a compiled sampler on any device;
    an unsupported model raises. Only these known reasons choose the plain path: a failure while compiling or
    sampling is raised, so a seeded run never switches samplers mid-way.
    """
    check_fast(fast)
    if fast is False:
        return None
    if model in _SAMPLERS and (_SAMPLERS[model] is not None or fast == "auto"):
        return _SAMPLERS[model]
    reason = unsupported_reason(model)
    if reason is None and fast == "auto":
        reason = auto_reason(device)
    if reason is not None and fast is True:
        raise ValueError(f"fast=True cannot sample from {type(model).__name__}: {reason}. Use fast: auto or false.")
    if reason is not None:
        rank_zero_info(f"[lit-distill] fast sampling off for {type(model).__name__}: {reason}; using the plain path.")
    _SAMPLERS[model] = None if reason else FastSampler(model, **DEFAULT_COMPILE)
    return _SAMPLERS[model]


def auto_reason(device: torch.device) -> str | None:
    """Why ``fast: auto`` takes the plain path on ``device`` whatever the model, or None."""
    if device.type != "cuda":
        return f"the model is on {device.type}, and the compiled step (CUDA graphs) is for CUDA"
    if not _compile_available():
        return "torch.compile is not available here (no dynamo support or no Triton)"
    return None


def seeded_generator(seed: int | None, temperature: float, device: torch.device) -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``; None when greedy or unseeded (global RNG)."""
    if seed is None or temperature == 0:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def fast_generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    fast: FastMode,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_token_id: int | None,
    pad_token_id: int | None,
    seed: int | None,
) -> Tensor | None:
    """``generate``'s fast path (arguments as there, already checked): the samples, or None for the plain path."""
    sampler = fast_sampler(model, fast, input_ids.device)
    if sampler is None:
        return None
    sampler.decoder.check(input_ids.shape[1], max_new_tokens)  # a user error, not a reason to fall back
    generator = seeded_generator(seed, temperature, input_ids.device)
    sampling = sampler.sampling(model, temperature, top_k, top_p, eos_token_id, pad_token_id)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    try:
        return sampler.generate(model, input_ids, mask, max_new_tokens, sampling, generator)
    except Exception as err:
        err.add_note("(in fast sampling; fast: false samples on the plain path)")
        raise


def _compile_available() -> bool:
    try:
        from torch.utils._triton import has_triton

        return bool(torch._dynamo.is_dynamo_supported() and has_triton())
    except Exception:  # a broken install is not a reason to crash sampling
        return False
