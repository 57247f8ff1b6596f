"""Divergences against a teacher that kept only its top-k logits (an offline teacher cache): exact over ``k+1``
outcomes.

The outcomes are the teacher's ``k`` stored ids and one **tail bucket**, everything else. The student's
distribution ``q = softmax(s / T)`` over its whole vocabulary gives ``q`` at the ``k`` ids and its mass outside
them. The teacher's side comes in one of two forms:

* **tail** (the default of caches that store it): the teacher's own mass outside its top-k, ``p_tail`` (one number
  per position, stored at the cache's ``tail_temperature``), and ``(1 − p_tail)·softmax(v / T)`` over the k. The
  loss is the divergence of the two ``k+1``-outcome distributions: no bias towards putting zero mass outside the k.
* **renormalised**: ``p̃ = softmax(v / T)`` over the k and zero in the tail, i.e. the teacher as if its k ids were
  all it knew. Needs only the raw top-k logits, so one cache serves every temperature; it pulls the student's
  tail mass to zero, and divergences with a reverse-KL part (``reverse_kl``, ``jsd`` at β = 1, ``skew_reverse_kl``
  at α = 0, ``adaptive_kl``) are infinite against it and refused.

Each divergence is the one of :mod:`lit_distill.losses.functional` (same per-row formula, same ``T²`` convention),
computed on the ``k+1`` outcomes without building a ``[rows, vocab]`` teacher tensor; with ``k`` equal to the
vocabulary both forms equal their full-logit counterparts.

A :class:`~lit_distill.outputs.ModelOutput` carries top-k teacher outputs with ``logits=None`` and ``extra`` keys
:data:`TOPK_VALUES` (``[..., k]`` logits, sorted or not), :data:`TOPK_INDICES` (``[..., k]`` class ids) and, when the
cache stores it, :data:`TOPK_TAIL` (``[...]`` log of the teacher's mass outside the k) with
:data:`TOPK_TAIL_TEMPERATURE`; :func:`topk_teacher` reads them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.losses import functional as LF
from lit_distill.losses.divergence_rows import divergence_rows
from lit_distill.outputs import ModelOutput

__all__ = [
    "TOPK_VALUES",
    "TOPK_INDICES",
    "TOPK_TAIL",
    "TOPK_TAIL_TEMPERATURE",
    "TopKTeacher",
    "topk_teacher",
    "wanted_tail",
    "topk_divergence",
]

TOPK_VALUES = "topk_values"
TOPK_INDICES = "topk_indices"
TOPK_TAIL = "topk_tail"
TOPK_TAIL_TEMPERATURE = "topk_tail_temperature"

#: Vocabulary sizes whose index range a CUDA batch has passed (see ``_student_log_probs``).
_CHECKED_CUDA_VOCABS: set[int] = set()
#: Stands in for log 0 where a logsumexp over nothing would give -inf (and a NaN gradient).
_LOG_ZERO = -1e30


class TopKTeacher(NamedTuple):
    """A top-k teacher: ``values``/``indices`` ``[..., k]``; ``tail`` ``[...]`` = log of the mass outside the k at
    ``tail_temperature`` (None: not stored)."""

    values: Tensor
    indices: Tensor
    tail: Tensor | None = None
    tail_temperature: float | None = None


def topk_teacher(out: ModelOutput | None) -> TopKTeacher | None:
    """The top-k teacher ``out`` holds, or None when it holds full logits (they win) or no top-k."""
    if out is None or out.logits is not None:
        return None
    values, indices = out.extra.get(TOPK_VALUES), out.extra.get(TOPK_INDICES)
    if values is None or indices is None:
        return None
    return TopKTeacher(values, indices, out.extra.get(TOPK_TAIL), out.extra.get(TOPK_TAIL_TEMPERATURE))


def wanted_tail(
    teacher: TopKTeacher, use_tail: bool, loss_name: str, positions: slice = slice(None)
) -> tuple[Tensor | None, float | None]:
    """``(tail, tail_temperature)`` for :func:`topk_divergence`: the stored tail (at ``positions`` of its second
    dimension) when ``use_tail``, ``(None, None)`` to renormalise; a cache without a tail is refused with the fix."""
    if not use_tail:
        return None, None
    if teacher.tail is None:
        raise ValueError(
            f"{loss_name}: the teacher cache holds the top-k logits but not the teacher's mass outside them (a cache "
            "written before the tail bucket, or with tail_temperature: null). Rewrite it with `lit-distill predict` "
            "and TeacherCacheWriter (it stores the tail by default; overwrite: true replaces the old one), or set "
            "topk_tail: false to renormalise the teacher over the k."
        )
    return teacher.tail[:, positions], teacher.tail_temperature


def _out_of_range(indices: Tensor, vocab: int) -> bool:
    bad = int(indices.min()) < 0 or int(indices.max()) >= vocab
    if not bad and indices.is_cuda:
        _CHECKED_CUDA_VOCABS.add(vocab)
    return bad


def _student_log_probs(student_logits: Tensor, indices: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """``log q`` over the k+1 outcomes ``[..., k+1]``: the student at the teacher's k ids, then its mass elsewhere."""
    vocab = student_logits.shape[-1]
    # Reading the range back from a GPU waits for it every step (the CPU can no longer queue work ahead):
    # check once per vocabulary size there; on the CPU every call. A later out-of-range index on the GPU
    # still stops the run (gather's device-side bounds check), only with CUDA's message.
    checked = indices.is_cuda and vocab in _CHECKED_CUDA_VOCABS
    if indices.numel() and not checked and _out_of_range(indices, vocab):
        raise ValueError(
            f"top-k teacher indices span [{int(indices.min())}, {int(indices.max())}] but the student has {vocab} "
            "classes; the cache was written for another vocabulary."
        )
    log_q_all = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    # The tail as a logsumexp over the other ids, not log(1 - Σ_k q): no cancellation when it is small.
    log_q_tail = log_q_all.scatter(-1, indices, _LOG_ZERO).logsumexp(-1, keepdim=True)
    return torch.cat([log_q_all.gather(-1, indices), log_q_tail], dim=-1)


def _teacher_log_probs(teacher: TopKTeacher, temperature: float, dtype: torch.dtype) -> Tensor:
    """``log p`` over the k+1 outcomes: with the stored tail, or renormalised over the k (tail -inf)."""
    log_p_k = F.log_softmax(teacher.values.to(dtype) / temperature, dim=-1)
    if teacher.tail is None:
        tail = torch.full_like(log_p_k[..., :1], -math.inf)
    else:
        tail = teacher.tail.to(dtype).unsqueeze(-1)
        log_p_k = log_p_k + torch.log1p(-tail.exp())
    return torch.cat([log_p_k, tail], dim=-1)


def _check(name: str, student_logits: Tensor, teacher: TopKTeacher, options: dict, mask: Tensor | None) -> None:
    values, indices, tail, tail_t = teacher
    if values.shape != indices.shape:
        raise ValueError(f"top-k values {tuple(values.shape)} and indices {tuple(indices.shape)} differ in shape.")
    if values.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"top-k teacher rows {tuple(values.shape[:-1])} do not match the student logits "
            f"{tuple(student_logits.shape)} without their last dim; both must cover the same positions."
        )
    if values.shape[-1] > student_logits.shape[-1]:
        raise ValueError(
            f"top-k teacher has k={values.shape[-1]} entries but the student only {student_logits.shape[-1]} classes."
        )
    if tail is not None and tail.shape != values.shape[:-1]:
        raise ValueError(f"top-k tail {tuple(tail.shape)} must have the values' shape without k {values.shape[:-1]}.")
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits shape without the last dim "
            f"{tuple(student_logits.shape[:-1])}."
        )
    temperature = options["temperature"]
    if tail is not None and tail_t is not None and not math.isclose(tail_t, temperature, rel_tol=1e-6):
        raise ValueError(
            f"the teacher cache stores its mass outside the top-k at temperature {tail_t}, but this loss uses "
            f"temperature {temperature}: the tail depends on it. Rewrite the cache with TeacherCacheWriter("
            f"tail_temperature={temperature}), or renormalise over the k (TokenKD(topk_tail=False), or a cache written "
            "with tail_temperature: null)."
        )
    infinite = {
        "reverse_kl": True,
        "jsd": options["beta"] == 1.0,
        "skew_reverse_kl": options["alpha"] == 0.0,
        "adaptive_kl": True,
    }
    if tail is None and infinite.get(name, False):
        raise ValueError(
            f"{name} (with these settings) has a reverse-KL part, which is infinite against a top-k teacher "
            "renormalised over its k (the student has mass where that teacher has none). Use a cache that stores "
            "the teacher's tail mass (TeacherCacheWriter stores it by default; TokenKD(topk_tail=True)), another "
            "divergence, or cache full logits (top_k: null)."
        )


def topk_divergence(
    name: str,
    student_logits: Tensor,
    values: Tensor,
    indices: Tensor,
    tail: Tensor | None = None,
    tail_temperature: float | None = None,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    head_mass: float = 0.5,
    mask: Tensor | None = None,
) -> Tensor:
    """Divergence ``name`` of :func:`lit_distill.losses.functional.divergence` against a top-k teacher, exact over
    the k+1 outcomes (the k ids and the tail).

    Args:
        name: a divergence of :data:`~lit_distill.losses.arguments.DIVERGENCES`.
        student_logits: ``[..., V]`` student logits.
        values: ``[..., k]`` the teacher's top-k logits.
        indices: ``[..., k]`` their class ids.
        tail: ``[...]`` log of the teacher's probability mass outside the k at ``tail_temperature``; None
            renormalises the teacher over the k (zero tail).
        tail_temperature: the temperature ``tail`` was computed at; must equal ``temperature`` (None: not checked).
        temperature: softening temperature ``T > 0`` (both sides).
        beta: JSD's β.
        alpha: the skew divergences' α.
        head_mass: adaptive KL's μ.
        mask: optional boolean ``[...]``; True rows are averaged.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> v, i = t.topk(3, dim=-1)
        >>> tail = (t.log_softmax(-1).scatter(-1, i, -float("inf"))).logsumexp(-1)
        >>> topk_divergence("reverse_kl", s, v, i, tail, 1.0, temperature=1.0).shape
        torch.Size([])
    """
    LF.check_divergence(name)
    LF.check_temperature(temperature)
    LF.check_beta(beta)
    LF.check_alpha(alpha)
    LF.check_head_mass(head_mass)
    teacher = TopKTeacher(values, indices, tail, tail_temperature)
    options = {"temperature": temperature, "beta": beta, "alpha": alpha, "head_mass": head_mass}
    _check(name, student_logits, teacher, options, mask)
    if tail is not None and mask is not None:
        # Rows left out may hold anything (a cache pads them with zeros: all teacher mass in the tail, an infinite
        # reverse KL whose NaN gradient would survive the mask); a tail of ½ keeps every divergence finite there.
        teacher = teacher._replace(tail=tail.masked_fill(~mask.to(torch.bool), -math.log(2.0)))
    dtype = torch.float64 if torch.float64 in (student_logits.dtype, values.dtype) else torch.float32
    log_q = _student_log_probs(student_logits, indices.long(), temperature, dtype)
    log_p = _teacher_log_probs(teacher, temperature, dtype)
    rows = divergence_rows(name, log_q, log_p, beta=beta, alpha=alpha, head_mass=head_mass)
    return LF.masked_mean(rows, mask) * LF.temperature_factor(name, temperature)
