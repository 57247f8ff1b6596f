"""How a batch is split into model inputs and targets.

Two batch shapes are understood:

* a tuple/list ``(inputs, targets, ...)`` (classification, e.g. :class:`~lit_distill.data.DigitsDataModule`);
* a dict with ``input_ids`` (``[B, T]``) and optionally ``labels`` (``[B, T]``, aligned with
  ``input_ids``, ``-100`` where no loss is taken) and ``attention_mask`` (language models).

Other shapes: override :meth:`DistillationModule.model_inputs` in a subclass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from lit_distill.outputs import ModelOutput

#: Key under which a batch may carry precomputed teacher outputs (see :mod:`lit_distill.cache`).
TEACHER_OUTPUTS_KEY = "teacher_outputs"


def split_batch(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any], Tensor | None]:
    """Return ``(args, kwargs, targets)`` so that the model is called as ``model(*args, **kwargs)``."""
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise KeyError(
                f"dict batch has keys {sorted(batch)}; expected 'input_ids' (and optionally 'labels', "
                "'attention_mask'). Override DistillationModule.model_inputs for other layouts."
            )
        kwargs = {"attention_mask": batch["attention_mask"]} if batch.get("attention_mask") is not None else {}
        return (batch["input_ids"],), kwargs, batch.get("labels")
    if isinstance(batch, Tensor):
        return (batch,), {}, None
    if isinstance(batch, Sequence) and len(batch) >= 1:
        targets = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return (batch[0],), {}, targets
    raise TypeError(
        f"cannot split a batch of type {type(batch).__name__}; use (inputs, targets) or a dict with "
        "'input_ids', or override DistillationModule.model_inputs."
    )


def batch_size_of(batch: Any) -> int:
    args, _, _ = split_batch(batch)
    first = args[0]
    return int(first.shape[0]) if isinstance(first, Tensor) else len(first)


def cached_teacher_output(batch: Any) -> ModelOutput | None:
    """Teacher outputs carried by the batch itself (an offline teacher cache), else None.

    A dict batch carries them under ``TEACHER_OUTPUTS_KEY``; a tuple batch as a trailing
    :class:`ModelOutput`. When present, the module does not run the teacher.
    """
    if isinstance(batch, Mapping):
        found = batch.get(TEACHER_OUTPUTS_KEY)
    elif isinstance(batch, Sequence) and not isinstance(batch, Tensor) and len(batch) > 0:
        found = batch[-1]
    else:
        found = None
    return found if isinstance(found, ModelOutput) else None
