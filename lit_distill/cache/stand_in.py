"""A stand-in for the teacher when every batch carries the teacher's outputs from an offline cache."""

from __future__ import annotations

from typing import Any

from torch import nn


class CachedTeacher(nn.Module):
    """Put this in ``teacher:`` to distill from a cache without loading the real teacher at all.

    It has no weights and is never run: :class:`~lit_distill.data.CachedTeacherDataModule` attaches
    the teacher's outputs to every batch, and :class:`~lit_distill.DistillationModule` then skips the
    teacher. Should a batch arrive without them (a split that was not cached), it stops with a clear
    error instead of silently training on nothing.

    Keep the real teacher in ``teacher:`` instead when you want the cache checked against it: the data
    module then refuses a cache whose teacher fingerprint differs (the teacher is still never run).

    Example (YAML)::

        model:
          init_args:
            teacher: {class_path: lit_distill.cache.CachedTeacher}
        data:
          class_path: lit_distill.data.CachedTeacherDataModule
          init_args: {cache_dir: artifacts/digits/teacher_cache, datamodule: {...}}
    """

    #: Read by DistillationModule.setup: the outputs come with the batch, so no feature hooks go here.
    reads_from_batch = True

    def __init__(self) -> None:
        super().__init__()
        #: What the losses would otherwise learn from the teacher model (TokenKD's tokenizer and vocabulary
        #: checks); :meth:`describe` fills them from the cache manifest before the module's own setup.
        self.tokenizer_id: str | None = None
        self.num_logits: int | None = None

    def describe(self, manifest: dict[str, Any]) -> None:
        """Take the teacher's tokenizer id and logits width from a cache manifest (older caches lack them)."""
        info = manifest.get("teacher_model") or {}
        self.tokenizer_id, self.num_logits = info.get("tokenizer_id"), info.get("num_logits")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "the teacher is a CachedTeacher stand-in, but this batch carries no cached teacher outputs. Wrap the "
            "data in lit_distill.data.CachedTeacherDataModule and list this split in its `splits`, or configure "
            "the real teacher model."
        )
