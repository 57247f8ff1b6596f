"""What the cross-tokenizer strategies (:mod:`lit_distill.losses.cross_tokenizer`) share: reading a two-sided batch,
aligning it by byte offsets, the vocabulary classes, and the student's own LM term.

The batch holds the student's and the teacher's tokenizations of the same text (``teacher_tokenizer`` on the data
module); pairs of positions where both models have read the same bytes (:mod:`lit_distill.losses.functional.alignment`)
and whose next tokens are learned on both sides are compared. In training with models that expose hidden states the
comparison runs from hidden states and LM heads in chunks (:func:`~lit_distill.losses.fused.fused_span_kd`), never
holding ``[tokens, vocab]`` logits; otherwise from the logits (or a top-k teacher cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lit_distill.batch import teacher_view
from lit_distill.losses import functional as LF
from lit_distill.losses.base import DistillationLoss
from lit_distill.losses.functional.alignment import aligned_pairs
from lit_distill.losses.functional.cross_tokenizer import span_kd_terms
from lit_distill.losses.fused.cross_tokenizer import fused_span_kd
from lit_distill.losses.sequence import (
    _chunked_lm_loss,
    _has_hidden,
    _lm_loss,
    _logits,
    logits_width,
    shifted_targets,
    tokenizer_id,
)
from lit_distill.losses.topk import topk_teacher
from lit_distill.losses.vocab_map import VocabMap
from lit_distill.outputs import ModelOutput

__all__ = ["AlignedKD"]

NEEDS_DATA = (
    "needs a batch with both tokenizations (`offsets`, `teacher_input_ids`, `teacher_offsets`): set "
    "`teacher_tokenizer:` on the data module (TextDataModule, PromptDataModule, ChatDataModule)"
)


class AlignedKD(DistillationLoss):
    """Base of the cross-tokenizer strategies: reading the two-sided batch, aligning it, the LM term; subclasses say
    which vocabulary map they use (:meth:`_vocab_map`) and how they name their terms (:meth:`_terms`)."""

    def __init__(  # fmt: skip
        self,
        temperature: float,
        uld_weight: float,
        uld_top_k: int | None,
        lm_weight: float,
        ignore_index: int,
        fused: bool,
        chunk_size: int | None,
        weight: float,
        name: str,
    ) -> None:
        super().__init__(weight=weight, name=name)
        LF.check_temperature(temperature)
        LF.check_nonnegative("uld_weight", uld_weight)
        LF.check_nonnegative("lm_weight", lm_weight)
        for arg, value in (("uld_top_k", uld_top_k), ("chunk_size", chunk_size)):
            if value is not None and value < 1:
                raise ValueError(f"{arg} must be >= 1 or null, got {value}.")
        self.temperature, self.uld_weight, self.uld_top_k = float(temperature), float(uld_weight), uld_top_k
        self.lm_weight, self.ignore_index, self.chunk_size = float(lm_weight), ignore_index, chunk_size
        self.accepts_hidden = fused
        self.vocabularies: dict[str, Any] | None = None
        self.teacher_width: int | None = None  # logits of a teacher known only from a top-k cache
        self._map: VocabMap | None = None
        self._fitted: dict[tuple, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ set-up
    def connect_data(self, datamodule: Any) -> None:
        """Take the two tokenizers' vocabularies from a data module with ``teacher_tokenizer`` (called at setup)."""
        vocabularies = getattr(datamodule, "vocabularies", None)
        if callable(vocabularies):
            self.use_vocabularies(vocabularies())

    def use_vocabularies(self, vocabularies: dict[str, Any]) -> None:
        """The two sides' ``{"bytes", "roles", "id"}`` (``TextDataModule.vocabularies()``) for the vocabulary map."""
        self.vocabularies = vocabularies
        self._fitted.clear()

    def use_vocab_map(self, vocab_map: VocabMap) -> None:
        """A vocabulary map made elsewhere (:class:`~lit_distill.losses.vocab_map.VocabMap`) instead of the data's."""
        self._map = vocab_map
        self._fitted.clear()

    def check_models(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """The tokenizers the models declare must be the data's; their heads must cover their tokenizers."""
        if teacher is None:
            return
        self.teacher_width = logits_width(teacher)
        if self.vocabularies is None:
            return
        for side, model in (("student", student), ("teacher", teacher)):
            declared, data = tokenizer_id(model), self.vocabularies[side]["id"]
            if declared is not None and data is not None and declared != data:
                raise ValueError(
                    f"{self.name}: the {side} declares tokenizer {declared!r} but the data gives it {data!r}; set the "
                    f"data's {'tokenizer' if side == 'student' else 'teacher_tokenizer'} to the {side}'s tokenizer."
                )
            width, tokens = logits_width(model), len(self.vocabularies[side]["bytes"])
            if width is not None and width < tokens:
                raise ValueError(
                    f"{self.name}: the {side} produces {width} logits but its tokenizer has {tokens} tokens; set the "
                    f"{side}'s vocab_size to at least {tokens}."
                )

    def classes(self, s_width: int, t_width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Class of each student and teacher logit (-1: unmatched) for these widths, built once and kept."""
        key = (s_width, t_width, str(device))
        if key not in self._fitted:
            found = self._vocab_map()
            if found is None:
                s, t = torch.full((s_width,), -1), torch.full((t_width,), -1)
            else:
                s, t, _ = found.fit(s_width, t_width)
            self._fitted[key] = (s.to(device), t.to(device))
        return self._fitted[key]

    def _vocab_map(self) -> VocabMap | None:
        return None

    # ------------------------------------------------------------------ the step
    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Any) -> Tensor | dict[str, Tensor]:
        if teacher is None:
            raise ValueError(f"loss {self.name!r} needs teacher outputs, got none.")
        if not isinstance(batch, Mapping) or not {"offsets", "teacher_input_ids", "teacher_offsets"} <= set(batch):
            raise ValueError(f"loss {self.name!r} {NEEDS_DATA}.")
        t_batch = teacher_view(batch)
        s_targets, s_counted = shifted_targets(batch, self.ignore_index)
        _, t_counted = shifted_targets(t_batch, self.ignore_index)
        rows, s_pos, t_pos = aligned_pairs(
            batch["offsets"], t_batch["offsets"], batch.get("attention_mask"), t_batch.get("attention_mask")
        )
        # A pair is compared when both next tokens exist and are learned (the same text on both sides).
        keep = (s_pos < s_counted.shape[1]) & (t_pos < t_counted.shape[1])
        rows, s_pos, t_pos = rows[keep], s_pos[keep], t_pos[keep]
        keep = s_counted[rows, s_pos] & t_counted[rows, t_pos]
        rows, s_pos, t_pos = rows[keep], s_pos[keep], t_pos[keep]
        if self.accepts_hidden and _has_hidden(student) and _has_hidden(teacher):
            total, uld, lm = self._fused(student, teacher, rows, s_pos, t_pos, s_targets)
        else:
            total, uld, lm = self._on_logits(student, teacher, rows, s_pos, t_pos, s_targets)
        return self._terms(total, uld, lm)

    def _fused(self, student, teacher, rows, s_pos, t_pos, s_targets):
        s_head, t_head = student.head, teacher.head
        s_cls, t_cls = self.classes(s_head.weight.shape[0], t_head.weight.shape[0], s_head.weight.device)
        parts = fused_span_kd(
            student.hidden[rows, s_pos], s_head.weight, teacher.hidden[rows, t_pos], t_head.weight, s_cls, t_cls,
            temperature=self.temperature, uld_weight=self.uld_weight, uld_top_k=self.uld_top_k,
            chunk_size=self.chunk_size, student_bias=getattr(s_head, "bias", None),
            teacher_bias=getattr(t_head, "bias", None),
        )  # fmt: skip
        lm = None
        if self.lm_weight > 0:
            hidden = student.hidden[:, :-1].reshape(-1, student.hidden.shape[-1])
            bias = getattr(s_head, "bias", None)
            lm = _chunked_lm_loss(hidden, s_head.weight, bias, s_targets.reshape(-1), self.ignore_index, 1024)
        return parts.loss, self.uld_weight * parts.uld, lm

    def _on_logits(self, student, teacher, rows, s_pos, t_pos, s_targets):
        s_logits = _logits(student, "student", self)
        t_rows = self._teacher_rows(teacher, rows, t_pos)
        s_cls, t_cls = self.classes(s_logits.shape[-1], t_rows.shape[-1], s_logits.device)
        kl, w1 = span_kd_terms(s_logits[rows, s_pos], t_rows, s_cls, t_cls, self.temperature, self.uld_top_k)
        lm = _lm_loss(s_logits[:, :-1], s_targets, self.ignore_index) if self.lm_weight > 0 else None
        return kl + self.uld_weight * w1, (self.uld_weight * w1).detach(), lm

    def _teacher_rows(self, teacher: ModelOutput, rows: Tensor, t_pos: Tensor) -> Tensor:
        """The teacher's logits at the aligned positions; from a top-k cache, ``-inf`` outside the stored k."""
        topk = topk_teacher(teacher)
        if topk is None:
            return _logits(teacher, "teacher", self)[rows, t_pos]
        values, indices = topk[0][rows, t_pos].float(), topk[1][rows, t_pos].long()
        width = self.teacher_width or (len(self.vocabularies["teacher"]["bytes"]) if self.vocabularies else 0)
        width = max(width, int(indices.max()) + 1 if indices.numel() else 1)
        return values.new_full((values.shape[0], width), float("-inf")).scatter_(1, indices, values)

    def _terms(self, total: Tensor, uld: Tensor, lm: Tensor | None) -> Tensor | dict[str, Tensor]:
        """Named terms from the differentiable ``total`` and its (detached) ULD part."""
        raise NotImplementedError
