"""Token-level KD for causal language models: shifted, masked, vocabulary-checked, optionally fused with the LM head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_distill.losses import functional as LF
from lit_distill.losses.arguments import Divergence
from lit_distill.losses.base import DistillationLoss
from lit_distill.losses.topk import topk_divergence, topk_teacher, wanted_tail
from lit_distill.outputs import ModelOutput


def shifted_targets(batch: Any, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """``(targets [B, T-1], counted [B, T-1])``: the token each position predicts, and whether it counts.

    ``labels`` are aligned with ``input_ids`` (-100 on prompt and padding), so position ``t`` predicts
    ``labels[t+1]``. Without ``labels`` the inputs are the targets and ``attention_mask`` marks padding.
    """
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ValueError("token-level KD needs a dict batch with 'input_ids' (and usually 'labels').")
    labels = batch.get("labels")
    if labels is None:
        labels = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(~mask.bool(), ignore_index)
    targets = labels[:, 1:]
    return targets, targets != ignore_index


def tokenizer_id(model: nn.Module | None) -> str | None:
    """The ``tokenizer_id`` a model declares (lit-distill GPT, HF wrapper), else None."""
    return getattr(model, "tokenizer_id", None)


def logits_width(model: nn.Module | None) -> int | None:
    """Number of logits a causal LM produces: its head's rows, else ``config.vocab_size``, else None.

    A model without a head of its own (a teacher-cache stand-in) may declare it as ``num_logits``.
    """
    declared = getattr(model, "num_logits", None)
    if isinstance(declared, int):
        return declared
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(getattr(head, "weight", None), Tensor):
        return int(head.weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) else None


class TokenKD(DistillationLoss):
    """Per-token distillation of a causal LM: ``mean_t D(p_teacher(·|x_<t) ‖ p_student(·|x_<t))`` over counted tokens.

    Position ``t`` is compared where ``labels[t+1] != ignore_index`` (prompt and padding count for nothing).
    ``D`` is forward KL (Hinton et al. 2015), reverse KL (MiniLLM, Gu et al. 2024), generalized JSD(β) (GKD,
    Agarwal et al. 2024; normalised to reach both KLs at its ends), TVD, skew forward/reverse KL (DistiLLM, Ko et
    al. 2024) or adaptive KL (Wu et al. 2024), from :func:`lit_distill.losses.functional.divergence`; the KL
    family is ``T²``-scaled, JSD and TVD are not (the table in docs/losses.md).
    ``lm_weight > 0`` adds the student's hard-label next-token cross-entropy (logged as ``<name>/lm``).

    Vocabularies: both models must speak one tokenizer. :meth:`check_models` compares the ``tokenizer_id``
    the models declare and their logits widths before any compute. Padded widths of one tokenizer (e.g. 258
    real tokens padded to 320) are sliced to the shared size: ``vocab_size`` if given, else the smaller width.

    When the module hands hidden states and LM heads instead of logits (every loss ``accepts_hidden``), the
    divergence runs through :func:`lit_distill.losses.fused.fused_linear_kd` in chunks of ``chunk_size``
    tokens and the ``[tokens, vocab]`` logits are never materialised; the value and gradient are the same.

    A top-k teacher cache (:mod:`lit_distill.losses.topk`) is compared over the k ids plus one tail bucket with
    the teacher's stored mass outside them (``topk_tail``), or renormalised over the k.

    Args:
        divergence: ``forward_kl`` | ``reverse_kl`` | ``jsd`` | ``tvd`` | ``skew_forward_kl`` |
            ``skew_reverse_kl`` | ``adaptive_kl``.
        temperature: softening temperature ``T > 0`` for both models.
        beta: JSD interpolation (0 = forward KL, 1 = reverse KL, continuous in between).
        alpha: skew of ``skew_forward_kl``/``skew_reverse_kl`` in ``[0, 1)`` (0 = plain KL; DistiLLM: 0.1).
        head_mass: ``adaptive_kl``'s μ: the teacher mass of the head tokens (Wu et al. 2024: 0.5).
        topk_tail: against a top-k teacher cache, compare the teacher's stored mass outside the k with the
            student's (exact over k+1 outcomes); False renormalises the teacher over the k (zero tail).
        lm_weight: weight of the hard-label LM cross-entropy added to the KD term (0 = pure KD).
        ignore_index: label value that is not counted.
        vocab_size: number of shared real tokens to compare (slices padded logits); None = infer.
        fused: accept hidden states + head (memory-saving path) instead of logits.
        chunk_size: tokens per chunk on the fused path (None = the fused function's default).
        weight: multiplier in the total loss.
        name: log name (default ``token_kd``).

    Example (YAML)::

        losses:
          - class_path: lit_distill.losses.TokenKD
            init_args: {divergence: forward_kl, temperature: 1.0, lm_weight: 0.5}
    """

    def __init__(
        self,
        divergence: Divergence = "forward_kl",
        temperature: float = 1.0,
        beta: float = 0.5,
        alpha: float = 0.1,
        head_mass: float = 0.5,
        topk_tail: bool = True,
        lm_weight: float = 0.0,
        ignore_index: int = -100,
        vocab_size: int | None = None,
        fused: bool = True,
        chunk_size: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name or "token_kd")
        LF.check_divergence(divergence)
        LF.check_temperature(temperature)
        LF.check_beta(beta)
        LF.check_alpha(alpha)
        LF.check_head_mass(head_mass)
        LF.check_nonnegative("lm_weight", lm_weight)
        if vocab_size is not None and vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive number of shared tokens, got {vocab_size}.")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 token, got {chunk_size}.")
        self.divergence, self.temperature, self.beta = divergence, float(temperature), float(beta)
        self.alpha, self.head_mass, self.topk_tail = float(alpha), float(head_mass), topk_tail
        self.lm_weight, self.ignore_index = float(lm_weight), ignore_index
        self.vocab_size, self.chunk_size = vocab_size, chunk_size
        self.accepts_hidden = fused
        self.shared_vocab: int | None = None  # set by check_models once the models are known to share a tokenizer

    def check_models(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Refuse a teacher/student pair with different tokenizers; settle the shared vocabulary size."""
        s_id, t_id = tokenizer_id(student), tokenizer_id(teacher)
        if s_id is not None and t_id is not None and s_id != t_id:
            raise ValueError(
                f"{self.name}: the student speaks tokenizer {s_id!r} and the teacher {t_id!r}. Token-level KD "
                "compares distributions over the same token ids, so both must use one tokenizer. For two tokenizers "
                "use lit_distill.losses.AlignedSpanKD (or ULD) with `teacher_tokenizer:` on the data module: it "
                "compares the models where they read the same text (docs/cross_tokenizer.md)."
            )
        s_width, t_width = logits_width(student), logits_width(teacher)
        if s_width is None or t_width is None:
            return  # models that do not say; the widths are checked on the first batch instead
        if self.vocab_size is not None:
            self.shared_vocab = self._fits(self.vocab_size, s_width, t_width)
        elif s_width == t_width:
            self.shared_vocab = s_width
        elif s_id is not None and s_id == t_id:
            self.shared_vocab = min(s_width, t_width)  # one tokenizer, one side padded
        else:
            raise ValueError(self._width_error(s_width, t_width))

    def _fits(self, size: int, s_width: int, t_width: int) -> int:
        if size > min(s_width, t_width):
            raise ValueError(
                f"{self.name}: vocab_size={size} exceeds the student's ({s_width}) or teacher's ({t_width}) logits; "
                "set it to the number of real tokens of the shared tokenizer."
            )
        return size

    def _width_error(self, s_width: int, t_width: int) -> str:
        return (
            f"{self.name}: student logits have {s_width} entries and teacher logits {t_width}. If both use one "
            "tokenizer and one vocabulary is only padded, give both models the same `tokenizer_id` or set "
            "TokenKD(vocab_size=<real token count>); if the tokenizers differ, use AlignedSpanKD (or ULD) instead."
        )

    def _vocab(self, s_width: int, t_width: int) -> int:
        if self.vocab_size is not None:
            return self._fits(self.vocab_size, s_width, t_width)
        if self.shared_vocab is not None:
            return self._fits(self.shared_vocab, s_width, t_width)
        if s_width != t_width:
            raise ValueError(self._width_error(s_width, t_width))
        return s_width

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Any) -> Tensor | dict[str, Tensor]:
        if teacher is None:
            raise ValueError(f"loss {self.name!r} needs teacher outputs, got none.")
        targets, counted = shifted_targets(batch, self.ignore_index)
        if self.accepts_hidden and _has_hidden(student) and _has_hidden(teacher):
            return self._fused(student, teacher, targets)
        topk = topk_teacher(teacher)
        if topk is not None:  # an offline cache that kept only the teacher's top-k logits
            s = _logits(student, "student", self)[:, :-1]
            # The teacher's width is not in a top-k cache: the shared size is vocab_size, else what
            # check_models learnt (from the cache manifest), else the student's whole width.
            vocab = self._vocab(s.shape[-1], s.shape[-1])
            kd = topk_divergence(
                self.divergence,
                s[..., :vocab],
                topk.values[:, :-1],
                topk.indices[:, :-1],
                *wanted_tail(topk, self.topk_tail, self.name, positions=slice(None, -1)),
                mask=counted,
                **self._options(),
            )
            if self.lm_weight == 0:
                return kd
            return {"kd": kd, "lm": self.lm_weight * _lm_loss(s, targets, self.ignore_index)}
        s_logits, t_logits = _logits(student, "student", self), _logits(teacher, "teacher", self)
        vocab = self._vocab(s_logits.shape[-1], t_logits.shape[-1])
        s, t = s_logits[:, :-1], t_logits[:, :-1]
        kd = LF.divergence(self.divergence, s[..., :vocab], t[..., :vocab], mask=counted, **self._options())
        if self.lm_weight == 0:
            return kd
        # The LM term uses the student's whole head (padded rows included), like CrossEntropy does.
        return {"kd": kd, "lm": self.lm_weight * _lm_loss(s, targets, self.ignore_index)}

    def _options(self) -> dict[str, float]:
        return {"temperature": self.temperature, "beta": self.beta, "alpha": self.alpha, "head_mass": self.head_mass}

    def _fused(self, student: ModelOutput, teacher: ModelOutput, targets: Tensor) -> Tensor | dict[str, Tensor]:
        from lit_distill.losses.fused import fused_linear_kd

        s_w, t_w = student.head.weight, teacher.head.weight
        s_b, t_b = getattr(student.head, "bias", None), getattr(teacher.head, "bias", None)
        vocab = self._vocab(s_w.shape[0], t_w.shape[0])
        s_h, t_h = student.hidden[:, :-1], teacher.hidden[:, :-1]
        # One pass computes the LM term too when the student has no rows beyond the shared vocabulary.
        ce_weight = self.lm_weight if s_w.shape[0] == vocab else 0.0
        parts = fused_linear_kd(
            s_h,
            s_w[:vocab],
            t_h,
            t_w[:vocab],
            divergence=self.divergence,
            labels=targets,
            ignore_index=self.ignore_index,
            chunk_size=self.chunk_size,
            student_bias=None if s_b is None else s_b[:vocab],
            teacher_bias=None if t_b is None else t_b[:vocab],
            ce_weight=ce_weight,
            return_parts=True,
            **self._options(),
        )
        if self.lm_weight == 0:
            return parts.loss
        if ce_weight > 0:
            lm = ce_weight * parts.ce
            # parts.loss already holds kd + lm with its gradient; split it for logging without changing the sum.
            return {"kd": parts.loss - lm, "lm": lm}
        flat_h, flat_y = s_h.reshape(-1, s_h.shape[-1]), targets.reshape(-1)
        lm = _chunked_lm_loss(flat_h, s_w, s_b, flat_y, self.ignore_index, self.chunk_size or 1024)
        return {"kd": parts.loss, "lm": self.lm_weight * lm}


def _has_hidden(out: ModelOutput) -> bool:
    return out.hidden is not None and out.head is not None


def _logits(out: ModelOutput, side: str, loss: DistillationLoss) -> Tensor:
    if out.logits is not None:
        return out.logits
    if _has_hidden(out):
        return out.head(out.hidden)
    raise ValueError(f"loss {loss.name!r} needs {side} logits (or hidden states and head), but the {side} gave none.")


def _lm_loss(logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    """Mean next-token cross-entropy over counted tokens; 0 (not NaN) when none count."""
    flat_targets = targets.reshape(-1)
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least; float64 stays float64
    total = F.cross_entropy(wide.reshape(-1, wide.shape[-1]), flat_targets, ignore_index=ignore_index, reduction="sum")
    return total / (flat_targets != ignore_index).sum().clamp_min(1)


def _chunked_lm_loss(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, ignore_index: int, chunk: int
) -> Tensor:
    """:func:`_lm_loss` of ``F.linear(hidden, weight, bias)`` in token chunks; checkpointing recomputes each
    chunk's logits in backward instead of keeping all of them."""

    def chunk_sum(h: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(F.linear(h, weight, bias).float(), y, ignore_index=ignore_index, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        total = total + checkpoint(chunk_sum, hidden[start:end], targets[start:end], use_reentrant=False)
    return total / (targets != ignore_index).sum().clamp_min(1)
