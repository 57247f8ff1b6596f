"""Feature and relation losses: attention transfer, RKD, PKT, hint MSE and cosine. Tensors are batch first."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.losses.arguments import check_nonnegative
from lit_distill.losses.functional._common import (
    _check_batches,
    _compute_dtype,
    masked_mean,
)


def attention_map(feature: Tensor, p: float = 2.0, eps: float = 1e-12) -> Tensor:
    """Spatial attention ``q = vec(Σ_c |A_c|^p) / ‖vec(Σ_c |A_c|^p)‖₂`` of ``[B, C, *spatial]`` → ``[B, N]``."""
    if feature.ndim < 3:
        raise ValueError(
            f"attention transfer needs [B, C, H, W]-like features, got shape {tuple(feature.shape)}; "
            "tap a convolutional layer (or use HintLoss/RKD/PKT for flat features)."
        )
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p > 0):
        raise ValueError(f"attention transfer exponent p must be a finite number > 0, got {p!r} (the paper uses 2).")
    q = feature.to(_compute_dtype(feature)).abs().pow(p).sum(1).flatten(1)
    return q / q.norm(dim=1, keepdim=True).clamp_min(eps)


def attention_transfer(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0) -> Tensor:
    """Activation-based attention transfer (AT) for one layer pair.

    Zagoruyko & Komodakis 2017, "Paying More Attention to Attention".

    ``AT = mean_b ‖q_s − q_t‖₂²`` with ``q = vec(Σ_c |A_c|^p) / ‖vec(Σ_c |A_c|^p)‖₂``. Channel counts may
    differ; spatial sizes must match. (The authors' code also divides by ``H·W``; fold that into the weight.)

    Args:
        student_feature: ``[B, C_s, H, W]`` (any number of spatial dims).
        teacher_feature: ``[B, C_t, H, W]``.
        p: exponent of the channel-wise aggregation ``|A_c|^p``.

    Example:
        >>> a = torch.randn(2, 8, 4, 4)
        >>> float(attention_transfer(a, torch.cat([a, a], 1))) < 1e-9  # doubling channels keeps the map
        True
    """
    _check_batches(student_feature, teacher_feature, "attention transfer")
    if student_feature.shape[2:] != teacher_feature.shape[2:]:
        raise ValueError(
            f"attention transfer: student spatial size {tuple(student_feature.shape[2:])} differs from the "
            f"teacher's {tuple(teacher_feature.shape[2:])}; pair layers of the same resolution."
        )
    diff = attention_map(student_feature, p) - attention_map(teacher_feature, p).to(_compute_dtype(student_feature))
    return diff.pow(2).sum(1).mean()


def _pairwise(x: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Distances ``d[i, j] = ‖x_i − x_j‖`` and unit vectors ``e[i, j] = (x_i − x_j)/d[i, j]`` (0 on the diagonal)."""
    diff = x[:, None, :] - x[None, :, :]
    dist = (diff * diff).sum(-1).clamp_min(eps).sqrt()  # clamp: no inf gradient for coincident points
    return dist, diff / dist[..., None]


def rkd_terms(student_embedding: Tensor, teacher_embedding: Tensor) -> tuple[Tensor, Tensor]:
    """Unweighted ``(distance, angle)`` terms of relational KD; see :func:`rkd`."""
    _check_batches(student_embedding, teacher_embedding, "RKD")
    dtype = _compute_dtype(student_embedding, teacher_embedding)
    s, t = student_embedding.flatten(1).to(dtype), teacher_embedding.flatten(1).to(dtype)
    n = s.shape[0]
    # Masks as 0/1 weights: boolean indexing of the O(B³) angle tensor costs far more than the math.
    off = 1.0 - torch.eye(n, dtype=dtype, device=s.device)
    pairs, triplets = n * (n - 1), n * (n - 1) * (n - 2)
    d_s, e_s = _pairwise(s)
    d_t, e_t = _pairwise(t)
    psi_s = d_s / ((d_s * off).sum() / max(pairs, 1)).clamp_min(1e-12)
    psi_t = d_t / ((d_t * off).sum() / max(pairs, 1)).clamp_min(1e-12)
    distance = (F.huber_loss(psi_s, psi_t, reduction="none", delta=1.0) * off).sum() / max(pairs, 1)
    # cos[j, i, k] = <e_ij, e_kj>: the angle at vertex j of triangle (i, j, k), counted when all three differ
    cos_s = torch.bmm(e_s.transpose(0, 1), e_s.transpose(0, 1).transpose(1, 2))
    cos_t = torch.bmm(e_t.transpose(0, 1), e_t.transpose(0, 1).transpose(1, 2))
    distinct = off[:, :, None] * off[:, None, :] * off[None, :, :]
    angle = (F.huber_loss(cos_s, cos_t, reduction="none", delta=1.0) * distinct).sum() / max(triplets, 1)
    return distance, angle


def rkd(
    student_embedding: Tensor, teacher_embedding: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> Tensor:
    """Relational KD (Park et al. 2019, "Relational Knowledge Distillation"): distance + angle.

    ``RKD = λ_D·mean_{i≠j} huber(ψ_D^s(i,j), ψ_D^t(i,j)) + λ_A·mean_{i,j,k distinct} huber(ψ_A^s(i,j,k), ψ_A^t(i,j,k))``
    with ``ψ_D(i,j) = ‖x_i − x_j‖ / μ`` (μ the batch's mean pairwise distance) and
    ``ψ_A(i,j,k) = cos∠x_i x_j x_k``; Huber with δ = 1. Embedding widths may differ. Costs O(B³) memory.
    A batch of 1 (2) has no pairs (triplets): that term is 0.

    Args:
        student_embedding: ``[B, D_s]`` (more dims are flattened).
        teacher_embedding: ``[B, D_t]``.
        distance_weight: λ_D (paper: 25).
        angle_weight: λ_A (paper: 50).

    Example:
        >>> e = torch.randn(6, 16)
        >>> float(rkd(e, 3 * e)) < 1e-9  # relations are scale-free
        True
    """
    check_nonnegative("distance_weight", distance_weight)
    check_nonnegative("angle_weight", angle_weight)
    distance, angle = rkd_terms(student_embedding, teacher_embedding)
    return distance_weight * distance + angle_weight * angle


def pkt(student_embedding: Tensor, teacher_embedding: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (PKT).

    Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer".

    With the cosine kernel ``K(a, b) = (1 + cos(a, b))/2`` and ``p_{j|i} = K(x_j, x_i) / Σ_{k≠i} K(x_k, x_i)``:
    ``PKT = mean_i Σ_{j≠i} p^t_{j|i}·log((p^t_{j|i} + ε)/(p^s_{j|i} + ε))``. Embedding widths may differ.

    Args:
        student_embedding: ``[B, D_s]`` (more dims are flattened).
        teacher_embedding: ``[B, D_t]``.
        eps: guards the log and zero-norm vectors.

    Example:
        >>> e = torch.randn(6, 16)
        >>> float(pkt(e, 2 * e)) < 1e-6
        True
    """
    _check_batches(student_embedding, teacher_embedding, "PKT")
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ValueError(f"PKT eps must lie in (0, 1), got {eps!r}; 1e-7 is the usual value.")
    dtype = _compute_dtype(student_embedding, teacher_embedding)

    def conditional(x: Tensor) -> Tensor:
        x = x.flatten(1).to(dtype)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(eps)
        kernel = ((x @ x.T + 1.0) / 2.0).masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0)
        return kernel / kernel.sum(1, keepdim=True).clamp_min(eps)

    p_s, p_t = conditional(student_embedding), conditional(teacher_embedding)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).sum(1).mean()


def hint_mse(student_feature: Tensor, teacher_feature: Tensor, mask: Tensor | None = None) -> Tensor:
    """FitNets hint loss (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"), as a mean over elements.

    ``hint = mean((u − v)²)`` over counted rows and the last dim, where ``u`` is the (adapted) student
    feature and ``v`` the teacher's; the paper's ``½‖u − v‖²`` up to a constant factor.

    Args:
        student_feature: ``[B, ...]`` (already projected to the teacher's shape).
        teacher_feature: same shape.
        mask: optional boolean, the shape without the last dim (e.g. ``[B, T]`` token mask).

    Example:
        >>> hint_mse(torch.ones(2, 3), torch.zeros(2, 3))
        tensor(1.)
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"hint: student feature {tuple(student_feature.shape)} and teacher feature "
            f"{tuple(teacher_feature.shape)} differ; project the student with an adapter first."
        )
    if mask is not None and mask.shape != student_feature.shape[:-1]:
        raise ValueError(f"mask shape {tuple(mask.shape)} must be {tuple(student_feature.shape[:-1])}.")
    dtype = _compute_dtype(student_feature, teacher_feature)
    diff = student_feature.to(dtype) - teacher_feature.to(dtype)
    return masked_mean(diff.pow(2).mean(-1), mask)


def feature_cosine(
    student_feature: Tensor, teacher_feature: Tensor, dim: int = -1, mask: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    """Cosine distance of feature vectors along ``dim`` (as in DistilBERT's hidden-state loss, Sanh et al. 2019).

    ``cos_dist = mean(1 − ⟨u, v⟩ / (‖u‖·‖v‖))`` over every position except ``dim`` (counted ones only).

    Args:
        student_feature: ``[B, ...]`` (already projected to the teacher's shape).
        teacher_feature: same shape.
        dim: the vector dimension (``-1`` for ``[B, T, H]`` hidden states, ``1`` for conv channels).
        mask: optional boolean, the feature shape without ``dim``.
        eps: guards zero vectors.

    Example:
        >>> x = torch.randn(2, 5, 8)
        >>> float(feature_cosine(x, 2 * x)) < 1e-6
        True
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"cosine: student feature {tuple(student_feature.shape)} and teacher feature "
            f"{tuple(teacher_feature.shape)} differ; project the student with an adapter first."
        )
    dtype = _compute_dtype(student_feature, teacher_feature)
    u, v = student_feature.to(dtype), teacher_feature.to(dtype)
    denom = ((u * u).sum(dim) * (v * v).sum(dim)).clamp_min(eps * eps).sqrt()
    per_pos = 1.0 - (u * v).sum(dim) / denom
    if mask is not None and mask.shape != per_pos.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must be {tuple(per_pos.shape)} (the feature without dim).")
    return masked_mean(per_pos.flatten(), None if mask is None else mask.flatten())
