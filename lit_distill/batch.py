"""How a batch is split into model inputs and targets.

Two batch shapes are understood:

* a tuple/list ``(inputs, targets, ...)`` (classification, e.g. :class:`~lit_distill.data.DigitsDataModule`);
* a dict with ``input_ids`` (``[B, T]``) and optionally ``labels`` (``[B, T]``, aligned with
  ``input_ids``, ``-100`` where no loss is taken) and ``attention_mask`` (language models).

Other shapes: override :meth:`DistillationModule.split_batch` in a subclass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from torch import Tensor

from lit_distill.outputs import ModelOutput

#: Key under which a batch may carry precomputed teacher outputs (see :mod:`lit_distill.cache`).
TEACHER_OUTPUTS_KEY = "teacher_outputs"
#: Prefix of the teacher's own tokenization in a cross-tokenizer batch (:mod:`lit_distill.data.cross_tokenizer`).
TEACHER_TOKENS = "teacher_"


class BatchParts(NamedTuple):
    """A batch read for the models: called as ``model(*args, **kwargs)``; ``targets`` may be None."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    targets: Tensor | None

    @property
    def size(self) -> int:
        """The batch size: the length of the first model input."""
        first = self.args[0]
        return int(first.shape[0]) if isinstance(first, Tensor) else len(first)


def split_batch(batch: Any) -> BatchParts:
    """Return ``(args, kwargs, targets)`` so that the model is called as ``model(*args, **kwargs)``.

    Example:
        >>> split_batch({"input_ids": torch.ones(2, 3, dtype=torch.long)}).args[0].shape
        torch.Size([2, 3])
    """
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise KeyError(
                f"dict batch has keys {sorted(batch)}; expected 'input_ids' (and optionally 'labels', "
                "'attention_mask'). Override DistillationModule.split_batch for other layouts."
            )
        kwargs = {"attention_mask": batch["attention_mask"]} if batch.get("attention_mask") is not None else {}
        return BatchParts((batch["input_ids"],), kwargs, batch.get("labels"))
    if isinstance(batch, Tensor):
        return BatchParts((batch,), {}, None)
    if isinstance(batch, Sequence) and len(batch) >= 1:
        targets = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return BatchParts((batch[0],), {}, targets)
    raise TypeError(
        f"cannot split a batch of type {type(batch).__name__}; use (inputs, targets) or a dict with "
        "'input_ids', or override DistillationModule.split_batch."
    )


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


def teacher_view(batch: Any) -> Any:
    """The batch as the teacher reads it: a cross-tokenizer batch's ``teacher_*`` entries under their plain names
    (``teacher_input_ids`` -> ``input_ids``); any other batch as it is.

    Example:
        >>> sorted(teacher_view({"input_ids": 1, "teacher_input_ids": 2, "teacher_offsets": 3}).items())
        [('input_ids', 2), ('offsets', 3)]
    """
    if isinstance(batch, Mapping) and f"{TEACHER_TOKENS}input_ids" in batch:
        return {
            key.removeprefix(TEACHER_TOKENS): value
            for key, value in batch.items()
            if key.startswith(TEACHER_TOKENS) and key != TEACHER_OUTPUTS_KEY
        }
    return batch
