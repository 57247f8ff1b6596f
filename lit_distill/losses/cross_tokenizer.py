"""Cross-tokenizer KD: a teacher and a student that do not share a tokenizer, compared where they read the same text.

The data module tokenizes every example twice (``teacher_tokenizer`` on any text DataModule,
:mod:`lit_distill.data.cross_tokenizer`); the module runs the teacher on its own tokens. At every pair of positions
where both models have read exactly the same bytes (:mod:`lit_distill.losses.functional.alignment`), whose next
tokens are learned on both sides, the two next-token distributions are compared: by :class:`ULD` (sorted
probabilities, no vocabulary map) or :class:`AlignedSpanKD` (KL on the tokens the vocabulary map matches, ULD on
the rest). On the hidden-state path the comparison runs from hidden states and LM heads in chunks
(:func:`~lit_distill.losses.fused.cross_tokenizer.fused_span_kd`), never holding ``[tokens, vocab]`` logits.
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
from lit_distill.losses.vocab_map import Match, VocabMap, build_vocab_map, vocab_map
from lit_distill.outputs import ModelOutput

__all__ = ["ULD", "AlignedSpanKD"]

NEEDS_DATA = (
    "needs a batch with both tokenizations (`offsets`, `teacher_input_ids`, `teacher_offsets`): set "
    "`teacher_tokenizer:` on the data module (TextDataModule, PromptDataModule, ChatDataModule)"
)


class _AlignedKD(DistillationLoss):
    """What :class:`ULD` and :class:`AlignedSpanKD` share: reading the two-sided batch, aligning it, the LM term."""

    def __init__(
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


class ULD(_AlignedKD):
    """Universal Logit Distillation (Boizard et al. 2024) across tokenizers, at byte-aligned positions.

    ``ULD = mean_aligned Σ_i |sort↓(p_s)_i − sort↓(p_t)_i|``: the Wasserstein-1 distance between the two
    next-token distributions, which needs no vocabulary map (:func:`lit_distill.losses.functional.uld`). Positions
    are compared where both models have read the same bytes and both next tokens are learned. ``lm_weight > 0``
    adds the student's own next-token cross-entropy (ULD alone carries no token identity; the paper adds it).

    Args:
        temperature: softening temperature of both sides.
        uld_top_k: sort only the ``k`` largest probabilities per side, the rest compared as one mass (much faster
            on LLM vocabularies; a lower bound of ULD); None: sort whole vocabularies, as the paper.
        lm_weight: weight of the student's hard-label cross-entropy (logged as ``<name>/lm``).
        ignore_index: label value that is not counted.
        fused: accept hidden states + LM heads and compute in chunks (no ``[tokens, vocab]`` logits).
        chunk_size: aligned positions per chunk on the fused path (None: a memory budget).
        weight: multiplier in the total loss.
        name: log name (default ``uld``).

    Example (YAML)::

        losses:
          - class_path: lit_distill.losses.ULD
            init_args: {lm_weight: 1.0}
    """

    def __init__(
        self,
        temperature: float = 1.0,
        uld_top_k: int | None = None,
        lm_weight: float = 1.0,
        ignore_index: int = -100,
        fused: bool = True,
        chunk_size: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        args = (temperature, 1.0, uld_top_k, lm_weight, ignore_index, fused, chunk_size, weight, name or "uld")
        super().__init__(*args)

    def _terms(self, total: Tensor, uld: Tensor, lm: Tensor | None) -> Tensor | dict[str, Tensor]:
        return total if lm is None else {"uld": total, "lm": self.lm_weight * lm}


class AlignedSpanKD(_AlignedKD):
    """Aligned-span KD across tokenizers: KL where the two vocabularies match, ULD on the rest (GOLD's hybrid).

    At every pair of byte-aligned positions (both models read the same text, both next tokens learned), the
    vocabulary map (:mod:`lit_distill.losses.vocab_map`, built once from the two tokenizers) sums each side's
    probabilities per shared class; ``T²·KL(P‖Q)`` compares them (unmatched tokens pooled into one class) and
    ``uld_weight · ULD`` the unmatched probabilities (:func:`lit_distill.losses.functional.span_kd`). With one
    tokenizer on both sides it equals :class:`~lit_distill.losses.TokenKD` (forward KL).

    ``match: token`` pairs tokens with the same text (``" the"`` and ``" the"``), for vocabularies of similar
    granularity (two BPEs); ``match: byte`` pairs tokens by the byte the text continues with, so it compares the
    next-byte distributions exactly whatever the granularity (a byte-level model and a BPE one).

    Args:
        match: ``"token"`` or ``"byte"`` (see above).
        temperature: softening temperature ``T`` of both sides.
        uld_weight: weight of ULD on the unmatched tokens (0: the class KL alone).
        uld_top_k: sort only the ``k`` largest unmatched probabilities per side; None: all.
        lm_weight: weight of the student's hard-label cross-entropy (logged as ``<name>/lm``).
        ignore_index: label value that is not counted.
        fused: accept hidden states + LM heads and compute in chunks (no ``[tokens, vocab]`` logits).
        chunk_size: aligned positions per chunk on the fused path (None: a memory budget).
        weight: multiplier in the total loss.
        name: log name (default ``span_kd``).

    Example (YAML)::

        losses:
          - class_path: lit_distill.losses.AlignedSpanKD
            init_args: {match: byte, lm_weight: 1.0}
    """

    def __init__(
        self,
        match: Match = "token",
        temperature: float = 1.0,
        uld_weight: float = 1.0,
        uld_top_k: int | None = None,
        lm_weight: float = 0.0,
        ignore_index: int = -100,
        fused: bool = True,
        chunk_size: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        if match not in ("token", "byte"):
            raise ValueError(f"match must be 'token' or 'byte', got {match!r}.")
        args = (temperature, uld_weight, uld_top_k, lm_weight, ignore_index, fused, chunk_size, weight)
        super().__init__(*args, name or "span_kd")
        self.match = match

    def _vocab_map(self) -> VocabMap:
        v = self.vocabularies
        if v is None:
            raise ValueError(
                f"loss {self.name!r} needs the two tokenizers' vocabularies for its vocabulary map: train with a data "
                "module that has `teacher_tokenizer:` (it hands them over at setup), or call "
                "loss.use_vocabularies(datamodule.vocabularies())."
            )
        s, t = v["student"], v["teacher"]
        key = (s["id"], len(s["bytes"]), t["id"], len(t["bytes"]), self.match)
        return vocab_map(key, lambda: build_vocab_map(s["bytes"], t["bytes"], s["roles"], t["roles"], self.match))

    def _terms(self, total: Tensor, uld: Tensor, lm: Tensor | None) -> Tensor | dict[str, Tensor]:
        # The gradient of both terms rides on the KL term; the sum of the logged terms is the loss.
        terms = {"kl": total - uld, "uld": uld}
        if self.uld_weight == 0:
            terms = {"kl": total}
        if lm is not None:
            terms["lm"] = self.lm_weight * lm
        return terms if len(terms) > 1 else next(iter(terms.values()))
