"""Pure loss functions: the single source of every distillation formula in lit-distill.

Conventions shared by every function here:

* the last dimension holds the logits of one distribution ("a row");
* ``mask`` is optional, boolean, shaped like the logits without their last dimension, ``True`` = counted;
* the result is a scalar, the mean over counted rows, computed in float32 (or float64 if the inputs are);
* ``student`` always comes first, ``teacher`` second.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kl_divergence",
    "jensen_shannon",
    "total_variation",
    "masked_mean",
    "check_temperature",
    "check_beta",
]


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    # Half-precision softmax/log differences lose several digits; accumulate in at least fp32.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}. Typical values: 1.0-8.0.")


def check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}: 0 = forward KL(teacher||student), 1 = reverse KL.")


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


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p||q) per row from log-probabilities; 0·log0 terms are taken as 0, NaN propagates."""
    p = log_p.exp()
    return torch.where(p == 0, torch.zeros_like(p), p * (log_p - log_q)).sum(-1)


def kl_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    reverse: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    """Temperature-scaled KL divergence between teacher and student distributions (Hinton et al. 2015).

    Forward: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``; reverse (MiniLLM, Gu et al. 2024):
    ``T² · KL(softmax(s/T) ‖ softmax(t/T))``. The T² factor keeps gradient magnitudes comparable
    across temperatures.

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits, same shape.
        temperature: softening temperature ``T > 0``.
        reverse: compute KL(student‖teacher) instead of KL(teacher‖student).
        mask: optional boolean ``[...]``; True rows are averaged.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> kl_divergence(s, t, temperature=4.0).shape
        torch.Size([])
    """
    check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, mask)
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    rows = _kl_rows(log_p_s, log_p_t) if reverse else _kl_rows(log_p_t, log_p_s)
    return masked_mean(rows, mask) * temperature**2


def jensen_shannon(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Generalized Jensen-Shannon divergence JSD(β) as in GKD (Agarwal et al. 2024).

    With teacher ``P``, student ``Q`` and mixture ``M = β·P + (1-β)·Q``:
    ``JSD(β) = β·KL(P‖M) + (1-β)·KL(Q‖M)``. The end points are defined as the limits GKD uses:
    ``β = 0`` is forward ``KL(P‖Q)`` and ``β = 1`` is reverse ``KL(Q‖P)``. No T² factor is applied.

    Args:
        student_logits: ``[..., C]``.
        teacher_logits: ``[..., C]``.
        beta: interpolation weight in ``[0, 1]``.
        temperature: softening temperature ``T > 0`` applied to both.
        mask: optional boolean ``[...]``.

    Example:
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> float(jensen_shannon(s, s.clone())) < 1e-6
        True
    """
    check_beta(beta)
    check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, mask)
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    if beta == 0.0:
        rows = _kl_rows(log_p_t, log_p_s)
    elif beta == 1.0:
        rows = _kl_rows(log_p_s, log_p_t)
    else:
        log_m = torch.logsumexp(torch.stack([log_p_t + math.log(beta), log_p_s + math.log1p(-beta)]), dim=0)
        rows = beta * _kl_rows(log_p_t, log_m) + (1.0 - beta) * _kl_rows(log_p_s, log_m)
    return masked_mean(rows, mask)


def total_variation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Total variation distance ``½·Σ|softmax(t/T) − softmax(s/T)|`` per row, averaged.

    Example:
        >>> s = torch.randn(3, 5)
        >>> float(total_variation(s, s))
        0.0
    """
    check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, mask)
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    rows = 0.5 * (log_p_t.exp() - log_p_s.exp()).abs().sum(-1)
    return masked_mean(rows, mask)


DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd")


def divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: Tensor | None = None,
) -> Tensor:
    """Dispatch by divergence name: ``forward_kl``, ``reverse_kl``, ``jsd`` (uses ``beta``), ``tvd``."""
    if name == "forward_kl":
        return kl_divergence(student_logits, teacher_logits, temperature, reverse=False, mask=mask)
    if name == "reverse_kl":
        return kl_divergence(student_logits, teacher_logits, temperature, reverse=True, mask=mask)
    if name == "jsd":
        return jensen_shannon(student_logits, teacher_logits, beta=beta, temperature=temperature, mask=mask)
    if name == "tvd":
        return total_variation(student_logits, teacher_logits, temperature=temperature, mask=mask)
    raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}.")


def check_divergence(name: str) -> None:
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}.")


# --------------------------------------------------------------------------------------------------
# Decoupled KD, DIST, and feature/relation losses. Feature tensors are ``[B, ...]`` (batch first);
# relation losses compare samples of one batch with each other, so student and teacher widths may differ.

__all__ += [
    "dkd",
    "dkd_terms",
    "dist",
    "dist_terms",
    "attention_map",
    "attention_transfer",
    "rkd",
    "rkd_terms",
    "pkt",
    "fused_linear_kd",
    "hint_mse",
    "feature_cosine",
    "check_nonnegative",
]


def check_nonnegative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def _mean_or_zero(values: Tensor, like: Tensor) -> Tensor:
    # An empty selection (a batch too small to form pairs/triplets) contributes 0, not NaN,
    # and stays attached to the graph so backward() still works.
    return values.mean() if values.numel() else like.sum() * 0.0


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Unweighted ``(T²·TCKD, T²·NCKD)`` of Decoupled KD; see :func:`dkd`."""
    check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, mask)
    num_classes = student_logits.shape[-1]
    if num_classes < 2:
        raise ValueError(f"DKD needs at least 2 classes, got logits with last dim {num_classes}.")
    if target.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal the logits shape without the last dim "
            f"{tuple(student_logits.shape[:-1])}."
        )
    dtype = _compute_dtype(student_logits, teacher_logits)
    s = student_logits.reshape(-1, num_classes).to(dtype) / temperature
    t = teacher_logits.reshape(-1, num_classes).to(dtype) / temperature
    rows = None if mask is None else mask.reshape(-1).to(torch.bool)
    tgt = target.reshape(-1).long()
    if rows is not None:
        tgt = torch.where(rows, tgt, torch.zeros_like(tgt))  # ignored rows may hold -100
    bad = (tgt < 0) | (tgt >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"DKD target {int(tgt[bad][0])} is outside [0, {num_classes}); targets must be class ids "
            "(mask out padding rows with `mask`)."
        )
    is_target = F.one_hot(tgt, num_classes).to(torch.bool)

    def binary(logits: Tensor) -> Tensor:
        # log [p_target, 1 - p_target]; the second via logsumexp over the other classes, exact even when p_target ≈ 1
        log_p = F.log_softmax(logits, dim=-1)
        log_target = log_p.gather(-1, tgt[:, None]).squeeze(-1)
        log_rest = torch.logsumexp(log_p.masked_fill(is_target, -math.inf), dim=-1)
        return torch.stack([log_target, log_rest], dim=-1)

    def others(logits: Tensor) -> Tensor:
        # softmax over the non-target classes only (the target column removed, not just damped)
        return F.log_softmax(logits[~is_target].view(-1, num_classes - 1), dim=-1)

    tckd = _kl_rows(binary(t), binary(s))
    nckd = _kl_rows(others(t), others(s))
    scale = temperature**2
    return masked_mean(tckd, rows) * scale, masked_mean(nckd, rows) * scale


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Decoupled Knowledge Distillation (Zhao et al. 2022, "Decoupled Knowledge Distillation").

    ``DKD = T²·(α·KL(b_t‖b_s) + β·KL(p̂_t‖p̂_s))``: ``b = [p_target, 1 − p_target]`` is the binary
    target-vs-rest distribution (TCKD), ``p̂`` the softmax over the non-target classes only (NCKD), all
    at temperature ``T``. Unlike classic KD, NCKD is not scaled down by ``1 − p_target`` of the teacher.

    Args:
        student_logits: ``[..., C]``.
        teacher_logits: ``[..., C]``, same shape.
        target: ``[...]`` ground-truth class ids.
        alpha: weight of the target-class term (TCKD).
        beta: weight of the non-target-class term (NCKD); the paper uses 8 on CIFAR-100.
        temperature: softening temperature ``T > 0``.
        mask: optional boolean ``[...]``; False rows (padding) are skipped.

    Example:
        >>> s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 3, 9, 1])
        >>> dkd(s, t, y).shape
        torch.Size([])
    """
    check_nonnegative("alpha", alpha)
    check_nonnegative("beta", beta)
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature, mask)
    return alpha * tckd + beta * nckd


def _pearson_distance(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """``1 − ρ(a, b)`` along ``dim``; the eps guards constant vectors (ρ taken as 0 there)."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    denom = ((a * a).sum(dim) * (b * b).sum(dim)).clamp_min(eps * eps).sqrt()
    return 1.0 - (a * b).sum(dim) / denom


def dist_terms(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Unweighted ``(T²·inter, T²·intra)`` relation terms of DIST; see :func:`dist`."""
    check_temperature(temperature)
    _check_pair(student_logits, teacher_logits, mask)
    dtype = _compute_dtype(student_logits, teacher_logits)
    num_classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, num_classes).to(dtype)
    t = teacher_logits.reshape(-1, num_classes).to(dtype)
    if mask is not None:
        keep = mask.reshape(-1).to(torch.bool)
        s, t = s[keep], t[keep]
    y_s, y_t = F.softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1)
    inter = _mean_or_zero(_pearson_distance(y_s, y_t, dim=1), y_s)  # per sample, across classes
    intra = _mean_or_zero(_pearson_distance(y_s, y_t, dim=0), y_s) if len(y_s) else inter  # per class, across batch
    return inter * temperature**2, intra * temperature**2


def dist(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """DIST: relations matched by Pearson correlation.

    Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher".

    With ``Y = softmax(Z/T)`` as a ``[B, C]`` matrix and ``d(u, v) = 1 − pearson(u, v)``:
    ``DIST = T²·(β·mean_i d(Y_s[i,:], Y_t[i,:]) + γ·mean_j d(Y_s[:,j], Y_t[:,j]))`` (inter-class
    relation per sample, then intra-class relation per class across the batch).

    Args:
        student_logits: ``[..., C]``; leading dims are flattened into the batch of rows.
        teacher_logits: ``[..., C]``, same shape.
        beta: weight of the inter-class term.
        gamma: weight of the intra-class term.
        temperature: softening temperature ``T > 0``.
        mask: optional boolean ``[...]``; only True rows take part.

    Example:
        >>> s = torch.randn(8, 10)
        >>> float(dist(s, s)) < 1e-6
        True
    """
    check_nonnegative("beta", beta)
    check_nonnegative("gamma", gamma)
    inter, intra = dist_terms(student_logits, teacher_logits, temperature, mask)
    return beta * inter + gamma * intra


def _check_batches(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{what}: student batch {student.shape[0]} and teacher batch {teacher.shape[0]} differ; "
            "both must see the same samples."
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


from lit_distill.losses.fused import fused_linear_kd  # noqa: E402,F401  (re-exported: one import path for every formula)
