"""Byte-span alignment of two tokenizations of one text (cross-tokenizer distillation).

Each token carries its byte span ``(start, end)`` in the UTF-8 bytes of the text both sides tokenized; special
tokens that are not text (a BOS, an appended EOS) are zero-width, ``start == end``. Two positions, one per side,
are **aligned** when both models have read exactly the same text there: their tokens end at the same byte and
the same number of zero-width tokens were read at that byte. Their next-token distributions then predict the same
continuation, so they can be compared. The tokens between two consecutive aligned positions form a **group**: a
byte span each side covers with its own tokens, ending where both sides cut the text.

A token is never aligned when the next token ends at the same byte with a non-zero width (two tokenizer pieces of
one character, as some tokenizers report them): only the last of such pieces has read the whole span. Positions
outside ``valid`` (padding, left or right) are never aligned.

Everything is vectorised over the batch (``searchsorted`` on sorted keys): it runs on the GPU with the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["alignment_keys", "aligned_pairs", "alignment_groups"]


def _check_offsets(offsets: Tensor, valid: Tensor | None, side: str) -> Tensor:
    if offsets.ndim != 3 or offsets.shape[-1] != 2:
        raise ValueError(
            f"{side} offsets must be [batch, tokens, 2] byte spans (start, end), got {tuple(offsets.shape)}."
        )
    if valid is None:
        return torch.ones(offsets.shape[:2], dtype=torch.bool, device=offsets.device)
    if valid.shape != offsets.shape[:2]:
        raise ValueError(
            f"{side} valid mask {tuple(valid.shape)} must be [batch, tokens] = {tuple(offsets.shape[:2])}."
        )
    return valid.to(torch.bool)


def alignment_keys(offsets: Tensor, valid: Tensor | None = None, stride: int | None = None) -> tuple[Tensor, Tensor]:
    """``(keys [B, T] int64, alignable [B, T] bool)``: the text read up to and including each token, as a number.

    ``key = end · stride + z``, where ``z`` counts the zero-width tokens read at byte ``end`` so far (a text token
    ending at byte 5 is ``(5, 0)``, an EOS right after it ``(5, 1)``, a BOS at the start ``(0, 1)``). Equal keys on
    the two sides mean the same text was read. ``stride`` must exceed the tokens per row (default ``T + 1``).

    Example:
        >>> keys, ok = alignment_keys(torch.tensor([[[0, 0], [0, 2], [2, 2]]]), stride=10)
        >>> keys.tolist(), ok.tolist()
        ([[1, 20, 21]], [[True, True, True]])
    """
    valid = _check_offsets(offsets, valid, "token")
    b, t = valid.shape
    stride = t + 1 if stride is None else stride
    start, end = offsets[..., 0].long(), offsets[..., 1].long()
    zero = (start == end) & valid
    idx = torch.arange(t, device=offsets.device).expand(b, t)
    new_run = torch.ones_like(valid)
    new_run[:, 1:] = end[:, 1:] != end[:, :-1]
    run_start = torch.cummax(torch.where(new_run, idx, torch.zeros_like(idx)), dim=1).values
    seen = torch.cumsum(zero.long(), dim=1)
    before = torch.where(run_start > 0, seen.gather(1, (run_start - 1).clamp_min(0)), torch.zeros_like(seen))
    keys = end * stride + (seen - before)
    # Only the last of several pieces ending at one byte has read that byte; a token ending before an earlier
    # one (offsets out of order) has not read what the earlier one did.
    shares_end = torch.zeros_like(valid)
    shares_end[:, :-1] = (end[:, 1:] == end[:, :-1]) & ~zero[:, 1:] & valid[:, 1:]
    latest = torch.cummax(torch.where(valid, end, torch.full_like(end, -1)), dim=1).values
    alignable = valid & ~shares_end & (end >= latest)
    return keys, alignable


def aligned_pairs(
    student_offsets: Tensor,
    teacher_offsets: Tensor,
    student_valid: Tensor | None = None,
    teacher_valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(row, student_position, teacher_position)``: every aligned pair of the batch, in order, as 1-D tensors.

    Args:
        student_offsets: ``[B, T_s, 2]`` byte spans of the student's tokens.
        teacher_offsets: ``[B, T_t, 2]`` byte spans of the teacher's tokens (same text per row).
        student_valid: ``[B, T_s]`` True on real tokens (``attention_mask``); None = all.
        teacher_valid: ``[B, T_t]`` likewise for the teacher.

    Example:
        >>> s = torch.tensor([[[0, 2], [2, 3]]])             # "ab" "c"
        >>> t = torch.tensor([[[0, 1], [1, 2], [2, 3]]])     # "a" "b" "c"
        >>> [x.tolist() for x in aligned_pairs(s, t)]
        [[0, 0], [0, 1], [1, 2]]
    """
    s_valid = _check_offsets(student_offsets, student_valid, "student")
    t_valid = _check_offsets(teacher_offsets, teacher_valid, "teacher")
    if student_offsets.shape[0] != teacher_offsets.shape[0]:
        raise ValueError(
            f"student offsets have {student_offsets.shape[0]} rows and teacher offsets {teacher_offsets.shape[0]}; "
            "both sides must tokenize the same examples."
        )
    stride = max(s_valid.shape[1], t_valid.shape[1]) + 1
    s_keys, s_ok = alignment_keys(student_offsets, s_valid, stride)
    t_keys, t_ok = alignment_keys(teacher_offsets, t_valid, stride)
    if t_keys.shape[1] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=student_offsets.device)
        return empty, empty, empty
    # A sorted copy for searchsorted: positions that cannot align repeat the key before them (-1 at the start),
    # so the leftmost position holding a key is the alignable token that owns it.
    t_sorted = torch.cummax(torch.where(t_ok, t_keys, torch.full_like(t_keys, -1)), dim=1).values
    found = torch.searchsorted(t_sorted, s_keys.contiguous()).clamp_max(t_keys.shape[1] - 1)
    hit = s_ok & t_ok.gather(1, found) & (t_keys.gather(1, found) == s_keys)
    rows, s_pos = hit.nonzero(as_tuple=True)
    return rows, s_pos, found[rows, s_pos]


def alignment_groups(
    student_offsets: Tensor,
    teacher_offsets: Tensor,
    student_valid: Tensor | None = None,
    teacher_valid: Tensor | None = None,
) -> list[tuple[list[int], list[int]]]:
    """The groups of one example, ``[(student positions, teacher positions), ...]``: the real tokens after the
    previous aligned pair up to and including the next one. Tokens after the last aligned pair form no group.

    Args:
        student_offsets: ``[T_s, 2]`` byte spans of one example's student tokens.
        teacher_offsets: ``[T_t, 2]`` byte spans of its teacher tokens.
        student_valid: ``[T_s]`` True on real tokens; None = all.
        teacher_valid: ``[T_t]`` likewise.

    Example:
        >>> alignment_groups(torch.tensor([[0, 2], [2, 3]]), torch.tensor([[0, 1], [1, 2], [2, 3]]))
        [([0], [0, 1]), ([1], [2])]
    """
    s_valid = None if student_valid is None else student_valid[None]
    t_valid = None if teacher_valid is None else teacher_valid[None]
    _, s_pos, t_pos = aligned_pairs(student_offsets[None], teacher_offsets[None], s_valid, t_valid)
    s_real = _real(student_offsets, student_valid)
    t_real = _real(teacher_offsets, teacher_valid)
    groups, s_prev, t_prev = [], -1, -1
    for s, t in zip(s_pos.tolist(), t_pos.tolist()):
        groups.append(([i for i in s_real if s_prev < i <= s], [j for j in t_real if t_prev < j <= t]))
        s_prev, t_prev = s, t
    return groups


def _real(offsets: Tensor, valid: Tensor | None) -> list[int]:
    return list(range(offsets.shape[0])) if valid is None else valid.nonzero().flatten().tolist()
