"""Speed settings of :class:`~lit_distill.DistillationModule` that leave results and checkpoints unchanged:
channels-last memory format for conv models and their 4-D inputs, ``torch.compile`` in place, the hidden-state
path that spares fused LM-head losses the ``[tokens, vocab]`` logits, and logging only when Lightning writes."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def to_channels_last(*models: nn.Module | None) -> None:
    """Store each model's 4-D parameters in channels-last format (faster convolutions with tensor cores)."""
    for model in models:
        if model is not None:
            model.to(memory_format=torch.channels_last)


def prepare_input(value: Any, cast: torch.dtype | None, channels_last: bool) -> Any:
    """A floating-point tensor input cast to ``cast`` (if given) and, when 4-D, made channels-last (if asked).

    Example:
        >>> prepare_input(torch.zeros(1, 3, 4, 4), torch.float16, True).is_contiguous(memory_format=torch.channels_last)
        True
    """
    if not isinstance(value, Tensor) or not value.is_floating_point():
        return value
    if cast is not None:
        value = value.to(cast)
    if channels_last and value.ndim == 4:
        value = value.contiguous(memory_format=torch.channels_last)
    return value


def compile_in_place(models: tuple[nn.Module | None, ...], compile: bool | dict[str, Any]) -> bool:
    """``nn.Module.compile`` each model; a dict ``compile`` is passed as options (e.g. ``{"mode": "max-autotune"}``).

    It works in place, so parameter names (and checkpoints) do not change. Returns :func:`uses_cuda_graphs`.
    """
    options = compile if isinstance(compile, dict) else {}
    for model in models:
        if model is not None:
            model.compile(**options)
    return uses_cuda_graphs(compile)


def uses_cuda_graphs(compile: bool | dict[str, Any]) -> bool:
    """Whether ``compile`` options make ``torch.compile`` record CUDA graphs (``mode`` ``reduce-overhead`` or
    ``max-autotune``): replaying one graph per model instead of launching every kernel from Python is what small,
    launch-bound steps need. The module then marks each training step's start for the graph trees.

    Example:
        >>> uses_cuda_graphs({"mode": "reduce-overhead"}), uses_cuda_graphs(True)
        (True, False)
    """
    return isinstance(compile, dict) and compile.get("mode") in ("reduce-overhead", "max-autotune")


def hidden_path(losses: Iterable[nn.Module], student: nn.Module, teacher: nn.Module | None) -> bool:
    """Whether strategies can get hidden states + LM head instead of logits (fused LM-head losses).

    Only when every strategy can work from hidden states, and only when both models (so not a cached teacher)
    expose ``forward_hidden`` and ``get_output_embeddings`` (lit-distill's GPT, HF causal LMs): then the
    ``[tokens, vocab]`` logits are never materialised.
    """
    return all(getattr(loss, "accepts_hidden", False) for loss in losses) and all(
        hasattr(model, "forward_hidden") and hasattr(model, "get_output_embeddings") for model in (student, teacher)
    )


def hidden_states(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The model's final hidden states, called through ``model(..., return_hidden=True)`` when its forward takes
    that flag, so the module's hooks run: under FSDP they gather its sharded embedding and LM head. Models that
    only define ``forward_hidden`` are called directly (fine unsharded)."""
    if _takes_return_hidden(type(model)):
        return model(*args, return_hidden=True, **kwargs)
    return model.forward_hidden(*args, **kwargs)


@functools.cache
def _takes_return_hidden(cls: type) -> bool:
    # Read once per class, not on every step: inspect.signature costs host time on the training hot path.
    return "return_hidden" in inspect.signature(cls.forward).parameters


def logging_step(trainer: Any) -> bool:
    """Whether this step's training terms should be logged: only on the steps Lightning writes logs, because
    ``self.log`` costs host time per call, and on small GPU steps that time is not hidden behind the GPU."""
    connector = getattr(trainer, "_logger_connector", None) if trainer is not None else None
    return bool(getattr(connector, "should_update_logs", True))
