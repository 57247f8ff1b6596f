"""Feature strategies that need no adapter: attention maps (AT) and relations between samples (RKD, PKT).

Student and teacher widths may differ: AT compares channel-aggregated spatial maps, RKD and PKT compare
how the samples of one batch relate to each other. Layer pairs work as in :mod:`lit_distill.losses.feature`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lit_distill.losses import functional as LF
from lit_distill.losses.feature import FeaturePairLoss, Layers


class AttentionTransfer(FeaturePairLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017): ``Σ_pairs mean_{b,n} (q_s[b,n] − q_t[b,n])²``.

    ``q = vec(Σ_c |A_c|^p) / ‖vec(Σ_c |A_c|^p)‖₂`` is a sample's spatial attention map. Needs
    ``[B, C, H, W]`` features of equal spatial size; channel counts may differ (no adapter). With the default
    ``reduction="mean"`` each pair reduces like the authors' released code and the pairs are summed, so their
    β = 1000 is ``weight: 1000`` here; see :func:`lit_distill.losses.functional.attention_transfer`.

    Args:
        student_layer: student module path(s).
        teacher_layer: teacher module path(s).
        layer_weights: weight of each pair.
        p: exponent of the channel aggregation (paper: 2).
        reduction: ``mean`` (authors' code: over batch and positions) or ``batchmean`` (sum over positions,
            mean over the batch: independent of the map size).
        weight: multiplier in the total loss (published: 1000 with ``mean``).
        name: log name (default ``attention``).

    Example:
        >>> from lit_distill.outputs import ModelOutput
        >>> at = AttentionTransfer(student_layer="layer2", teacher_layer="layer3", weight=1000.0)
        >>> s = ModelOutput(features={"layer2": torch.randn(4, 16, 8, 8)})
        >>> t = ModelOutput(features={"layer3": torch.randn(4, 64, 8, 8)})
        >>> at(s, t, {}).shape
        torch.Size([])
    """

    def __init__(
        self,
        student_layer: str | list[str],
        teacher_layer: str | list[str],
        layer_weights: list[float] | None = None,
        p: float = 2.0,
        reduction: Literal["mean", "batchmean"] = "mean",
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(student_layer, teacher_layer, layer_weights, weight, name or "attention")
        LF.attention_map(torch.zeros(1, 1, 1), p)  # validates p now, not at the first batch
        LF.check_reduction(f"loss {self.name!r}", reduction, LF.AT_REDUCTIONS)
        self.p, self.reduction = float(p), reduction

    def pair_loss(self, i: int, student: Tensor, teacher: Tensor, batch: Any) -> Tensor:
        if student.ndim < 3 or student.shape[2:] != teacher.shape[2:]:
            raise ValueError(
                f"loss {self.name!r} pair {self.pair_label(i)}: AT needs [B, C, H, W] features of equal spatial "
                f"size, got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}."
            )
        return LF.attention_transfer(student, teacher, self.p, self.reduction)


class RKD(FeaturePairLoss):
    """Relational KD (Park et al. 2019): distance + angle relations among the batch's embeddings.

    ``RKD = λ_D·huber(ψ_D^s, ψ_D^t) + λ_A·huber(ψ_A^s, ψ_A^t)``; see :func:`lit_distill.losses.functional.rkd`.
    Layers default to the logits; embeddings of any width (features are flattened). Logs ``distance`` and
    ``angle`` (already times λ). The default ``reduction="mean"`` averages like the authors' released code,
    so their λ_D = 25, λ_A = 50 carry over.

    Args:
        student_layer: student module path(s), or None for logits.
        teacher_layer: teacher module path(s), or None for logits.
        layer_weights: weight of each pair.
        distance_weight: λ_D (authors' classification code: 25).
        angle_weight: λ_A (authors' classification code: 50).
        reduction: ``mean`` (authors' code: all B² pairs / B³ triplets) or ``pairs`` (distinct ones only).
        weight: multiplier in the total loss.
        name: log name (default ``rkd``).

    Example:
        >>> from lit_distill.outputs import ModelOutput
        >>> terms = RKD()(ModelOutput(logits=torch.randn(8, 10)), ModelOutput(logits=torch.randn(8, 10)), {})
        >>> sorted(terms)
        ['angle', 'distance']
    """

    def __init__(
        self,
        student_layer: Layers = None,
        teacher_layer: Layers = None,
        layer_weights: list[float] | None = None,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        reduction: Literal["mean", "pairs"] = "mean",
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(student_layer, teacher_layer, layer_weights, weight, name or "rkd")
        LF.check_nonnegative("distance_weight", distance_weight)
        LF.check_nonnegative("angle_weight", angle_weight)
        LF.check_reduction(f"loss {self.name!r}", reduction, LF.RELATION_REDUCTIONS)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)
        self.reduction = reduction

    def pair_loss(self, i: int, student: Tensor, teacher: Tensor, batch: Any) -> dict[str, Tensor]:
        distance, angle = LF.rkd_terms(student, teacher, self.reduction)
        return {"distance": self.distance_weight * distance, "angle": self.angle_weight * angle}


class PKT(FeaturePairLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018): KL between cosine-kernel neighbour distributions.

    ``PKT = mean_{i,j} p^t_{j|i} log(p^t_{j|i}/p^s_{j|i})``, ``p_{j|i} ∝ (1 + cos(x_i, x_j))/2``.
    Layers default to the logits; embeddings of any width (features are flattened). The default
    ``reduction="mean"`` reduces like the authors' released code, so published weights carry over
    (30000 next to cross-entropy in RepDistiller and torchdistill); see :func:`lit_distill.losses.functional.pkt`.

    Args:
        student_layer: student module path(s), or None for logits.
        teacher_layer: teacher module path(s), or None for logits.
        layer_weights: weight of each pair.
        eps: guards the log and zero vectors.
        reduction: ``mean`` (authors' code: all B² entries, ``j = i`` included) or ``pairs`` (the paper's
            ``j ≠ i`` distributions, summed over ``j``, mean over ``i``).
        weight: multiplier in the total loss.
        name: log name (default ``pkt``).

    Example:
        >>> from lit_distill.outputs import ModelOutput
        >>> PKT()(ModelOutput(logits=torch.randn(8, 10)), ModelOutput(logits=torch.randn(8, 10)), {}).shape
        torch.Size([])
    """

    def __init__(
        self,
        student_layer: Layers = None,
        teacher_layer: Layers = None,
        layer_weights: list[float] | None = None,
        eps: float = 1e-7,
        reduction: Literal["mean", "pairs"] = "mean",
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(student_layer, teacher_layer, layer_weights, weight, name or "pkt")
        LF.check_reduction(f"loss {self.name!r}", reduction, LF.RELATION_REDUCTIONS)
        LF.pkt(torch.zeros(1, 1), torch.zeros(1, 1), eps)  # validates eps now, not at the first batch
        self.eps, self.reduction = float(eps), reduction

    def pair_loss(self, i: int, student: Tensor, teacher: Tensor, batch: Any) -> Tensor:
        return LF.pkt(student, teacher, self.eps, self.reduction)
