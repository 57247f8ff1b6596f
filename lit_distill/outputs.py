"""What a model run hands to the loss strategies."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn


@dataclass
class ModelOutput:
    """One model's outputs for one batch, as seen by loss strategies.

    Attributes:
        logits: class logits ``[B, C]`` or token logits ``[B, T, V]``; None when only hidden
            states were computed (fused LM-head losses).
        features: tensors captured by feature taps, keyed by the tap's name.
        hidden: final hidden states before the output head ``[B, T, H]``, when asked for.
        head: the output head (``nn.Linear``) that maps ``hidden`` to logits, when asked for.
        extra: anything else a model returned (for custom strategies in subclasses).

    Example:
        >>> import torch
        >>> out = ModelOutput(logits=torch.zeros(2, 10), features={"layer3": torch.zeros(2, 64, 4, 4)})
        >>> out.features["layer3"].shape
        torch.Size([2, 64, 4, 4])
    """

    logits: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    hidden: Tensor | None = None
    head: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def pin_memory(self) -> ModelOutput:
        """A copy with every tensor in pinned host memory: ``DataLoader(pin_memory=True)`` calls this on cached
        teacher outputs, so their copy to the GPU runs asynchronously like the rest of the batch.

        Example:
            >>> out = ModelOutput(logits=torch.zeros(2, 3)).pin_memory()  # doctest: +SKIP
            >>> out.logits.is_pinned()  # doctest: +SKIP
            True
        """

        def pin(value: Any) -> Any:
            return value.pin_memory() if isinstance(value, Tensor) else value

        return ModelOutput(
            logits=pin(self.logits),
            features={k: pin(v) for k, v in self.features.items()},
            hidden=pin(self.hidden),
            head=self.head,
            extra={k: pin(v) for k, v in self.extra.items()},
        )


def as_model_output(raw: Any) -> ModelOutput:
    """Normalise what ``model(inputs)`` returned into a :class:`ModelOutput`.

    Accepts a tensor (taken as logits), a :class:`ModelOutput`, a mapping or object with a
    ``logits`` entry/attribute (Hugging Face outputs), or a tuple whose first item is the logits.
    """
    if isinstance(raw, ModelOutput):
        return raw
    if isinstance(raw, Tensor):
        return ModelOutput(logits=raw)
    if isinstance(raw, Mapping) and "logits" in raw:
        return ModelOutput(logits=raw["logits"], extra={k: v for k, v in raw.items() if k != "logits"})
    if hasattr(raw, "logits"):
        return ModelOutput(logits=raw.logits, extra={"raw": raw})
    if isinstance(raw, (tuple, list)) and raw and isinstance(raw[0], Tensor):
        return ModelOutput(logits=raw[0], extra={"rest": raw[1:]})
    raise TypeError(
        f"cannot read logits from a model output of type {type(raw).__name__}; return a Tensor, "
        "a ModelOutput, or an object with a `logits` attribute, or override "
        "DistillationModule.forward_student/forward_teacher."
    )


def hidden_states(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The model's final hidden states, through ``model(..., return_hidden=True)`` when its forward takes that flag
    so the module's hooks run (under FSDP they gather its sharded embedding and LM head); else ``forward_hidden``."""
    if _takes_return_hidden(type(model)):
        return model(*args, return_hidden=True, **kwargs)
    return model.forward_hidden(*args, **kwargs)


@functools.cache
def _takes_return_hidden(cls: type) -> bool:
    # Read once per class, not on every step: inspect.signature costs host time on the training hot path.
    return "return_hidden" in inspect.signature(cls.forward).parameters
