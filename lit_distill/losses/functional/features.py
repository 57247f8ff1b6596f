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


AT_REDUCTIONS = ("mean", "batchmean")
RELATION_REDUCTIONS = ("mean", "pairs")


def check_reduction(what: str, reduction: str, allowed: tuple[str, ...]) -> None:
    """Refuse an unknown ``reduction`` early, naming the valid ones."""
    if reduction not in allowed:
        raise ValueError(
            f"{what}: reduction must be one of {', '.join(map(repr, allowed))}, got {reduction!r}; "
            "'mean' (the default) reduces like the authors' released code, so published weights carry over."
        )


def attention_transfer(
    student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0, reduction: str = "mean"
) -> Tensor:
    """Activation-based attention transfer (AT) for one layer pair.

    Zagoruyko & Komodakis 2017, "Paying More Attention to Attention".

    ``AT = mean_{b,n} (q_s[b,n] − q_t[b,n])²`` with ``q = vec(Σ_c |A_c|^p) / ‖vec(Σ_c |A_c|^p)‖₂``
    (``n`` runs over the ``H·W`` positions). Channel counts may differ; spatial sizes must match.

    Reductions:

    * ``"mean"`` (default): the mean over batch and positions, as the authors' released ``at_loss``
      (szagoruyko/attention-transfer) and torchdistill's ``ATLoss(mode="code")``. Their β = 1000 multiplies
      the sum of this over layer pairs, so ``weight: 1000`` reproduces it (the paper's "β/2" with β = 10³
      divided by the map size and batch size is this same mean).
    * ``"batchmean"``: ``mean_b ‖q_s − q_t‖₂²``, summed over positions (``H·W`` times ``"mean"``); its scale
      does not depend on the map size (lit-distill's earlier default).

    Args:
        student_feature: ``[B, C_s, H, W]`` (any number of spatial dims).
        teacher_feature: ``[B, C_t, H, W]``.
        p: exponent of the channel-wise aggregation ``|A_c|^p``.
        reduction: ``"mean"`` or ``"batchmean"`` (see above).

    Example:
        >>> a = torch.randn(2, 8, 4, 4)
        >>> float(attention_transfer(a, torch.cat([a, a], 1))) < 1e-9  # doubling channels keeps the map
        True
    """
    check_reduction("attention transfer", reduction, AT_REDUCTIONS)
    _check_batches(student_feature, teacher_feature, "attention transfer")
    if student_feature.shape[2:] != teacher_feature.shape[2:]:
        raise ValueError(
            f"attention transfer: student spatial size {tuple(student_feature.shape[2:])} differs from the "
            f"teacher's {tuple(teacher_feature.shape[2:])}; pair layers of the same resolution."
        )
    diff = attention_map(student_feature, p) - attention_map(teacher_feature, p).to(_compute_dtype(student_feature))
    squared = diff.pow(2)
    return squared.mean() if reduction == "mean" else squared.sum(1).mean()


def _pairwise(x: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Distances ``d[i, j] = ‖x_i − x_j‖`` and unit vectors ``e[i, j] = (x_i − x_j)/d[i, j]`` (0 on the diagonal)."""
    diff = x[:, None, :] - x[None, :, :]
    dist = (diff * diff).sum(-1).clamp_min(eps).sqrt()  # clamp: no inf gradient for coincident points
    return dist, diff / dist[..., None]


def rkd_terms(student_embedding: Tensor, teacher_embedding: Tensor, reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """Unweighted ``(distance, angle)`` terms of relational KD; see :func:`rkd`.

    Example:
        >>> s, t = torch.randn(6, 16), torch.randn(6, 32)
        >>> distance, angle = rkd_terms(s, t)
        >>> torch.allclose(rkd(s, t, distance_weight=25.0, angle_weight=50.0), 25.0 * distance + 50.0 * angle)
        True"""
    check_reduction("RKD", reduction, RELATION_REDUCTIONS)
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
    distance = (F.huber_loss(psi_s, psi_t, reduction="none", delta=1.0) * off).sum()
    # cos[j, i, k] = <e_ij, e_kj>: the angle at vertex j of triangle (i, j, k). Where i or k equals j the
    # unit vector is 0 on both sides and where i = k both cosines are 1 (barring coincident points), so the
    # degenerate entries add ~0 but, in "mean", still count in the denominator as in the released code.
    cos_s = torch.bmm(e_s.transpose(0, 1), e_s.transpose(0, 1).transpose(1, 2))
    cos_t = torch.bmm(e_t.transpose(0, 1), e_t.transpose(0, 1).transpose(1, 2))
    angle = F.huber_loss(cos_s, cos_t, reduction="none", delta=1.0)
    if reduction == "mean":  # the released code: every one of the B² pairs and B³ triplets in the count
        return distance / n**2, angle.sum() / n**3
    distinct = off[:, :, None] * off[:, None, :] * off[None, :, :]
    return distance / max(pairs, 1), (angle * distinct).sum() / max(triplets, 1)


def rkd(
    student_embedding: Tensor,
    teacher_embedding: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    reduction: str = "mean",
) -> Tensor:
    """Relational KD (Park et al. 2019, "Relational Knowledge Distillation"): distance + angle.

    ``RKD = λ_D·mean_{i,j} huber(ψ_D^s(i,j), ψ_D^t(i,j)) + λ_A·mean_{i,j,k} huber(ψ_A^s(i,j,k), ψ_A^t(i,j,k))``
    with ``ψ_D(i,j) = ‖x_i − x_j‖ / μ`` (μ the batch's mean distance over ``i ≠ j``),
    ``ψ_A(i,j,k) = cos∠x_i x_j x_k`` and Huber with δ = 1. Embedding widths may differ. Costs O(B³) memory.

    Reductions:

    * ``"mean"`` (default): the means run over all ``B²`` pairs and ``B³`` triplets, the degenerate ones
      (``ψ`` equal on both sides, so 0) included, as in the authors' released code (lenscloth/RKD
      ``RkdDistance``/``RKdAngle``), RepDistiller's and torchdistill's ``RKDLoss``. Their λ_D = 25,
      λ_A = 50 (CIFAR classification) or 1 and 2 (metric learning) carry over unchanged.
    * ``"pairs"``: the means run over distinct pairs ``i ≠ j`` and triplets (the paper's χ², χ³), which makes
      the terms ``B/(B−1)`` and ``B²/((B−1)(B−2))`` times ``"mean"`` (lit-distill's earlier default).

    Batches too small to relate anything give 0 and a zero gradient: B = 1 for the distance term (the
    released code returns NaN there), B ≤ 2 for the angle term (all its triangles are degenerate).

    Args:
        student_embedding: ``[B, D_s]`` (more dims are flattened).
        teacher_embedding: ``[B, D_t]``.
        distance_weight: λ_D (25 in the authors' classification code).
        angle_weight: λ_A (50 in the authors' classification code).
        reduction: ``"mean"`` or ``"pairs"`` (see above).

    Example:
        >>> e = torch.randn(6, 16)
        >>> float(rkd(e, 3 * e)) < 1e-9  # relations are scale-free
        True
    """
    check_nonnegative("distance_weight", distance_weight)
    check_nonnegative("angle_weight", angle_weight)
    distance, angle = rkd_terms(student_embedding, teacher_embedding, reduction)
    return distance_weight * distance + angle_weight * angle


def pkt(student_embedding: Tensor, teacher_embedding: Tensor, eps: float = 1e-7, reduction: str = "mean") -> Tensor:
    """Probabilistic knowledge transfer (PKT).

    Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer".

    With the cosine kernel ``K(a, b) = (1 + cos(a, b))/2`` and ``p_{j|i} = K(x_j, x_i) / Σ_k K(x_k, x_i)``:
    ``PKT = mean_{i,j} p^t_{j|i}·log((p^t_{j|i} + ε)/(p^s_{j|i} + ε))``. Embedding widths may differ.

    Reductions:

    * ``"mean"`` (default): vectors scaled by ``1/(‖x‖ + ε)``, every ``j`` including ``j = i`` in the kernel's
      row sums, and the KL terms averaged over all ``B²`` entries, as in the authors' released
      ``cosine_similarity_loss`` (passalis/probabilistic_kt), RepDistiller's and torchdistill's ``PKTLoss``;
      their weights (1 in the authors' unsupervised transfer, 30000 next to cross-entropy in RepDistiller
      and torchdistill) carry over.
    * ``"pairs"``: the paper's neighbour distributions over ``j ≠ i``, summed over ``j`` and averaged over
      ``i`` (lit-distill's earlier default; about ``B`` times ``"mean"``).

    A batch of 1 has no neighbours: the loss is 0 with a zero gradient in both reductions.

    Args:
        student_embedding: ``[B, D_s]`` (more dims are flattened).
        teacher_embedding: ``[B, D_t]``.
        eps: guards the log and zero-norm vectors (1e-7 in the released code).
        reduction: ``"mean"`` or ``"pairs"`` (see above).

    Example:
        >>> e = torch.randn(6, 16)
        >>> float(pkt(e, 2 * e)) < 1e-6
        True
    """
    check_reduction("PKT", reduction, RELATION_REDUCTIONS)
    _check_batches(student_embedding, teacher_embedding, "PKT")
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ValueError(f"PKT eps must lie in (0, 1), got {eps!r}; 1e-7 is the usual value.")
    dtype = _compute_dtype(student_embedding, teacher_embedding)

    def conditional(x: Tensor) -> Tensor:
        x = x.flatten(1).to(dtype)
        length = x.norm(dim=1, keepdim=True)
        if reduction == "mean":
            x = x / (length + eps)
            kernel = (x @ x.T + 1.0) / 2.0
        else:
            x = x / length.clamp_min(eps)
            kernel = ((x @ x.T + 1.0) / 2.0).masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0)
        return kernel / kernel.sum(1, keepdim=True).clamp_min(eps)

    p_s, p_t = conditional(student_embedding), conditional(teacher_embedding)
    kl = p_t * torch.log1p((p_t - p_s) / (p_s + eps))  # log((p_t+ε)/(p_s+ε)), accurate when p_s ≈ p_t
    return kl.mean() if reduction == "mean" else kl.sum(1).mean()


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
