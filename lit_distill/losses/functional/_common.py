"""Argument checks and small helpers shared by the loss formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    # Half-precision softmax/log differences lose several digits; accumulate in at least fp32.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_pair(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape; both models must predict over the same classes/vocabulary."
        )
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits shape without the last dim "
            f"{tuple(student_logits.shape[:-1])}."
        )


def masked_mean(per_row: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``per_row`` over the rows where ``mask`` is True (all rows when ``mask`` is None).

    A mask with no True entry gives 0 (not NaN), so an all-padding batch contributes nothing.
    """
    if mask is None:
        return per_row.mean()
    mask = mask.to(torch.bool)
    return (per_row * mask).sum() / mask.sum().clamp_min(1)


def _log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    dtype = _compute_dtype(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    return log_p_s, log_p_t


def _mean_or_zero(values: Tensor, like: Tensor) -> Tensor:
    # An empty selection (a batch too small to form pairs/triplets) contributes 0, not NaN,
    # and stays attached to the graph so backward() still works.
    return values.mean() if values.numel() else like.sum() * 0.0


def _check_batches(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{what}: student batch {student.shape[0]} and teacher batch {teacher.shape[0]} differ; "
            "both must see the same samples."
        )
