"""Argument checks of :func:`~lit_distill.losses.fused.fused_linear_kd` on its tensors: dtypes, shapes, devices,
labels."""

from __future__ import annotations

from torch import Tensor


def _check_and_flatten(
    hs: Tensor, ws: Tensor, ht: Tensor, wt: Tensor, bs: Tensor | None, bt: Tensor | None, labels: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    for name, t in (("student_hidden", hs), ("teacher_hidden", ht), ("student_weight", ws), ("teacher_weight", wt)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            got = f"{type(t).__name__} {getattr(t, 'dtype', '')}"
            raise TypeError(f"{name} must be a floating-point tensor, got {got}.")
    if ws.dim() != 2 or wt.dim() != 2:
        raise ValueError(
            f"weights must be 2-D [vocab, hidden] like nn.Linear.weight; got student {tuple(ws.shape)}, "
            f"teacher {tuple(wt.shape)}."
        )
    if ws.shape[0] != wt.shape[0]:
        raise ValueError(
            f"student vocab {ws.shape[0]} != teacher vocab {wt.shape[0]} (weights {tuple(ws.shape)} vs "
            f"{tuple(wt.shape)}); distillation over logits needs one shared vocabulary/tokenizer."
        )
    if hs.dim() < 2 or hs.shape[-1] != ws.shape[1]:
        raise ValueError(
            f"student_hidden {tuple(hs.shape)} must end in the student weight's hidden size {ws.shape[1]} "
            f"(weight {tuple(ws.shape)} is [vocab, hidden])."
        )
    if ht.dim() < 2 or ht.shape[-1] != wt.shape[1]:
        raise ValueError(
            f"teacher_hidden {tuple(ht.shape)} must end in the teacher weight's hidden size {wt.shape[1]} "
            f"(weight {tuple(wt.shape)} is [vocab, hidden])."
        )
    if hs.shape[:-1] != ht.shape[:-1]:
        raise ValueError(
            f"student_hidden {tuple(hs.shape)} and teacher_hidden {tuple(ht.shape)} must have the same leading "
            "(token) shape; run both models on the same batch."
        )
    for name, b, v in (("student_bias", bs, ws.shape[0]), ("teacher_bias", bt, wt.shape[0])):
        if b is not None and tuple(b.shape) != (v,):
            raise ValueError(f"{name} must have shape ({v},) (one entry per vocab row), got {tuple(b.shape)}.")
    devices = {t.device for t in (hs, ws, ht, wt, bs, bt, labels) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(str(d) for d in devices)}.")
    if labels is not None:
        if labels.shape != hs.shape[:-1]:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} must equal the hidden states' leading shape "
                f"{tuple(hs.shape[:-1])} (shift labels before calling)."
            )
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}.")
        labels = labels.reshape(-1)
    return hs.reshape(-1, hs.shape[-1]), ht.reshape(-1, ht.shape[-1]), labels


def _check_label_range(valid: Tensor, vocab: int, ignore_index: int) -> None:
    if valid.numel() and bool((valid < 0).any() | (valid >= vocab).any()):
        bad = valid[(valid < 0) | (valid >= vocab)][0].item()
        raise ValueError(f"label {bad} is outside [0, {vocab}) and is not ignore_index={ignore_index}.")
