"""Divergences against a teacher that kept only its top-k logits (an offline teacher cache).

Convention: **renormalised over the k**. The teacher's distribution at temperature ``T`` is
``p̃_j = softmax(v / T)_j`` over its ``k`` stored logits ``v`` (indices ``i_j``) and zero on every
other class. The student keeps its full distribution ``q = softmax(s / T)`` over the whole vocabulary,
so student mass outside the teacher's top-k is penalised, and the result is an exact divergence
between ``p̃`` and ``q`` computed without building a ``[rows, vocab]`` teacher tensor.

Renormalising needs only the raw top-k logits, so one cache serves every temperature. The
alternative (the remaining mass as one extra bucket) needs the teacher's full normaliser at the very
temperature of the loss, which a cache written once cannot know. With ``k`` equal to the vocabulary
size every function here equals its full-logit counterpart in :mod:`lit_distill.losses.functional`.

Reverse KL (and JSD with ``beta = 1``) is infinite against ``p̃`` (``q > 0`` where ``p̃ = 0``) and
is refused with a clear error; cache full logits (``top_k: null``) for it.

A :class:`~lit_distill.outputs.ModelOutput` carries top-k teacher outputs with ``logits=None`` and
``extra[TOPK_VALUES]`` (``[..., k]`` logits, sorted or not) plus ``extra[TOPK_INDICES]`` (``[..., k]``
class ids); :func:`topk_teacher` reads them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.losses import functional as LF
from lit_distill.outputs import ModelOutput

__all__ = [
    "TOPK_VALUES",
    "TOPK_INDICES",
    "topk_teacher",
    "topk_kl_divergence",
    "topk_jensen_shannon",
    "topk_total_variation",
    "topk_divergence",
]

TOPK_VALUES = "topk_values"
TOPK_INDICES = "topk_indices"

#: Vocabulary sizes whose index range a CUDA batch has passed (see ``_prepare``).
_CHECKED_CUDA_VOCABS: set[int] = set()


def _out_of_range(indices: Tensor, vocab: int) -> bool:
    bad = int(indices.min()) < 0 or int(indices.max()) >= vocab
    if not bad and indices.is_cuda:
        _CHECKED_CUDA_VOCABS.add(vocab)
    return bad


def topk_teacher(out: ModelOutput | None) -> tuple[Tensor, Tensor] | None:
    """``(values, indices)`` when ``out`` holds only top-k teacher logits, else None (full logits win)."""
    if out is None or out.logits is not None:
        return None
    values, indices = out.extra.get(TOPK_VALUES), out.extra.get(TOPK_INDICES)
    if values is None or indices is None:
        return None
    return values, indices


def _prepare(
    student_logits: Tensor, values: Tensor, indices: Tensor, temperature: float, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(log p̃ [..., k], log q at the k indices [..., k], q's mass outside the k [...])``."""
    LF.check_temperature(temperature)
    if values.shape != indices.shape:
        raise ValueError(f"top-k values {tuple(values.shape)} and indices {tuple(indices.shape)} differ in shape.")
    if values.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"top-k teacher rows {tuple(values.shape[:-1])} do not match the student logits "
            f"{tuple(student_logits.shape)} without their last dim; both must cover the same positions."
        )
    vocab = student_logits.shape[-1]
    if values.shape[-1] > vocab:
        raise ValueError(f"top-k teacher has k={values.shape[-1]} entries but the student only {vocab} classes.")
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits shape without the last dim "
            f"{tuple(student_logits.shape[:-1])}."
        )
    indices = indices.long()
    # Reading the range back from a GPU waits for it every step (the CPU can no longer queue work ahead):
    # check once per vocabulary size there; on the CPU every call. A later out-of-range index on the GPU
    # still stops the run (gather's device-side bounds check), only with CUDA's message.
    checked = indices.is_cuda and vocab in _CHECKED_CUDA_VOCABS
    if indices.numel() and not checked and _out_of_range(indices, vocab):
        raise ValueError(
            f"top-k teacher indices span [{int(indices.min())}, {int(indices.max())}] but the student has {vocab} "
            "classes; the cache was written for another vocabulary."
        )
    dtype = torch.float64 if torch.float64 in (student_logits.dtype, values.dtype) else torch.float32
    log_q_all = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_q = log_q_all.gather(-1, indices)
    log_p = F.log_softmax(values.to(dtype) / temperature, dim=-1)
    # 1 - Σ_k q via expm1 keeps digits when the k hold nearly all the mass; duplicate indices (padding
    # rows) could push Σ past 1. No log here: log(0) would turn the gradient into NaN when k covers all.
    q_rest = (-torch.expm1(torch.logsumexp(log_q, dim=-1))).clamp_min(0.0)
    return log_p, log_q, q_rest


def topk_kl_divergence(
    student_logits: Tensor,
    values: Tensor,
    indices: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Forward ``T²·KL(p̃‖q) = T²·Σ_j p̃_j (log p̃_j − log q_{i_j})`` (Hinton et al. 2015, top-k teacher).

    Args:
        student_logits: ``[..., V]`` student logits.
        values: ``[..., k]`` the teacher's top-k logits.
        indices: ``[..., k]`` their class ids.
        temperature: softening temperature ``T > 0`` (applied to both sides).
        mask: optional boolean ``[...]``; True rows are averaged.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> v, i = t.topk(3, dim=-1)
        >>> topk_kl_divergence(s, v, i, temperature=2.0).shape
        torch.Size([])
    """
    log_p, log_q, _ = _prepare(student_logits, values, indices, temperature, mask)
    rows = (log_p.exp() * (log_p - log_q)).sum(-1)
    return LF.masked_mean(rows, mask) * temperature**2


def topk_jensen_shannon(
    student_logits: Tensor,
    values: Tensor,
    indices: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Generalized JSD(β) of GKD (Agarwal et al. 2024) between ``p̃`` and ``q``; no T² factor.

    ``M = β·p̃ + (1−β)·q``, ``JSD = β·KL(p̃‖M) + (1−β)·KL(q‖M)``. Outside the top-k ``M = (1−β)·q``, so
    that part of ``KL(q‖M)`` is ``−(1 − Σ_j q_{i_j})·log(1−β)``. ``β = 0`` is forward KL; ``β = 1``
    (reverse KL) is infinite here and refused.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> v, i = t.topk(10, dim=-1)
        >>> torch.allclose(topk_jensen_shannon(s, v, i), LF.jensen_shannon(s, t))
        True
    """
    LF.check_beta(beta)
    if beta == 1.0:
        raise ValueError(
            "jsd with beta=1 is reverse KL, which is infinite against a top-k teacher (zero outside its k); "
            "use beta < 1, or cache full logits (top_k: null)."
        )
    log_p, log_q, q_rest = _prepare(student_logits, values, indices, temperature, mask)
    if beta == 0.0:
        rows = (log_p.exp() * (log_p - log_q)).sum(-1)
        return LF.masked_mean(rows, mask)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    kl_p_m = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_q_m = (log_q.exp() * (log_q - log_m)).sum(-1) - q_rest * math.log1p(-beta)
    return LF.masked_mean(beta * kl_p_m + (1.0 - beta) * kl_q_m, mask)


def topk_total_variation(
    student_logits: Tensor,
    values: Tensor,
    indices: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Total variation ``½·(Σ_j |p̃_j − q_{i_j}| + (1 − Σ_j q_{i_j}))`` per row, averaged.

    Example:
        >>> s = torch.randn(3, 5)
        >>> v, i = s.topk(5, dim=-1)
        >>> float(topk_total_variation(s, v, i)) < 1e-6
        True
    """
    log_p, log_q, q_rest = _prepare(student_logits, values, indices, temperature, mask)
    rows = 0.5 * ((log_p.exp() - log_q.exp()).abs().sum(-1) + q_rest)
    return LF.masked_mean(rows, mask)


def topk_divergence(
    name: str,
    student_logits: Tensor,
    values: Tensor,
    indices: Tensor,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: Tensor | None = None,
) -> Tensor:
    """Dispatch by name like :func:`lit_distill.losses.functional.divergence`, for a top-k teacher.

    ``forward_kl`` and ``tvd`` and ``jsd`` (``beta < 1``) work; ``reverse_kl`` is refused (infinite).
    """
    if name == "forward_kl":
        return topk_kl_divergence(student_logits, values, indices, temperature, mask)
    if name == "jsd":
        return topk_jensen_shannon(student_logits, values, indices, beta=beta, temperature=temperature, mask=mask)
    if name == "tvd":
        return topk_total_variation(student_logits, values, indices, temperature=temperature, mask=mask)
    if name == "reverse_kl":
        raise ValueError(
            "reverse_kl is infinite against a top-k teacher (the student has mass where the renormalised "
            "teacher has none); use forward_kl, jsd with beta < 1 or tvd, or cache full logits (top_k: null)."
        )
    LF.check_divergence(name)
    raise AssertionError(name)  # unreachable: check_divergence raised
