"""Loss strategies on logits: soft-target KD and hard-label cross-entropy."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor

from lit_distill.batch import split_batch
from lit_distill.losses import functional as LF
from lit_distill.losses.base import DistillationLoss
from lit_distill.losses.topk import topk_divergence, topk_teacher
from lit_distill.outputs import ModelOutput

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "tvd"]


def require_logits(out: ModelOutput | None, side: str, loss: DistillationLoss) -> Tensor:
    if side == "teacher" and topk_teacher(out) is not None:
        raise ValueError(
            f"loss {loss.name!r} ({type(loss).__name__}) needs the teacher's full logits, but the teacher cache holds "
            "only its top-k; write the cache with `top_k: null`, or use LogitKD/TokenKD."
        )
    if out is None or out.logits is None:
        raise ValueError(f"loss {loss.name!r} needs {side} logits, but the {side} returned none.")
    return out.logits


class LogitKD(DistillationLoss):
    """Soft-target distillation on the logits (Hinton et al. 2015), any divergence.

    ``forward_kl``: ``T²·KL(p_t‖p_s)``; ``reverse_kl``: ``T²·KL(p_s‖p_t)`` (MiniLLM);
    ``jsd``: generalized JSD(β) (GKD); ``tvd``: total variation. See :mod:`lit_distill.losses.functional`.

    Args:
        divergence: ``forward_kl`` | ``reverse_kl`` | ``jsd`` | ``tvd``.
        temperature: softening temperature ``T > 0``.
        beta: JSD interpolation, ``0`` = forward KL, ``1`` = reverse KL.
        weight: multiplier in the total loss.
        name: log name (default ``logit_kd``).

    Example (YAML)::

        losses:
          - class_path: lit_distill.losses.LogitKD
            init_args: {temperature: 4.0, weight: 0.9}
    """

    def __init__(
        self,
        divergence: Divergence = "forward_kl",
        temperature: float = 1.0,
        beta: float = 0.5,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name or "logit_kd")
        LF.check_divergence(divergence)
        LF.check_temperature(temperature)
        LF.check_beta(beta)
        self.divergence = divergence
        self.temperature = float(temperature)
        self.beta = float(beta)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Any) -> Tensor:
        s = require_logits(student, "student", self)
        topk = topk_teacher(teacher)
        if topk is not None:  # an offline cache kept only the teacher's top-k (see lit_distill.losses.topk)
            return topk_divergence(self.divergence, s, *topk, temperature=self.temperature, beta=self.beta)
        t = require_logits(teacher, "teacher", self)
        return LF.divergence(self.divergence, s, t, temperature=self.temperature, beta=self.beta)


class CrossEntropy(DistillationLoss):
    """Hard-label cross-entropy of the student; needs no teacher (the no-KD baseline uses it alone).

    Classification: logits ``[B, C]`` against targets ``[B]``. Language models: logits ``[B, T, V]``
    against ``labels`` ``[B, T]`` aligned with the inputs, shifted by one so position ``t`` predicts
    token ``t+1``; ``ignore_index`` positions (padding, prompt) are skipped.

    Args:
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
        ignore_index: label value that is not counted.
        weight: multiplier in the total loss.
        name: log name (default ``ce``).

    Example:
        >>> import torch
        >>> ce = CrossEntropy(label_smoothing=0.1)
        >>> logits, labels = torch.randn(4, 10), torch.tensor([0, 3, 9, 1])
        >>> ce(ModelOutput(logits=logits), None, (torch.zeros(4, 64), labels)).shape
        torch.Size([])
    """

    requires_teacher = False

    def __init__(
        self, label_smoothing: float = 0.0, ignore_index: int = -100, weight: float = 1.0, name: str | None = None
    ) -> None:
        super().__init__(weight=weight, name=name or "ce")
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Any) -> Tensor:
        logits = require_logits(student, "student", self)
        _, _, targets = split_batch(batch)
        if targets is None:
            raise ValueError(f"loss {self.name!r} needs targets/labels in the batch, found none.")
        if logits.ndim == 3:
            logits, targets = logits[:, :-1], targets[:, 1:]
        if logits.shape[:-1] != targets.shape:
            raise ValueError(
                f"loss {self.name!r}: logits {tuple(logits.shape)} do not fit targets {tuple(targets.shape)}."
            )
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )


def _targets_and_mask(batch: Any, logits: Tensor, ignore_index: int, loss: DistillationLoss):
    """Logits, class ids and a counted-rows mask; token logits ``[B, T, V]`` are shifted like CrossEntropy."""
    _, _, targets = split_batch(batch)
    if targets is None:
        raise ValueError(f"loss {loss.name!r} needs targets/labels in the batch, found none.")
    if logits.ndim == 3:
        logits, targets = logits[:, :-1], targets[:, 1:]
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"loss {loss.name!r}: logits {tuple(logits.shape)} do not fit targets {tuple(targets.shape)}.")
    return logits, targets, targets != ignore_index


class DKD(DistillationLoss):
    """Decoupled Knowledge Distillation (Zhao et al. 2022): target-class and non-target-class terms, weighted apart.

    ``DKD = T²·(α·KL(b_t‖b_s) + β·KL(p̂_t‖p̂_s))``, ``b`` = [target, rest] probabilities, ``p̂`` = softmax over
    the non-target classes; see :func:`lit_distill.losses.functional.dkd`. Needs ground-truth targets in the
    batch. Logs ``<name>/tckd`` and ``<name>/nckd`` (already times α and β).

    Args:
        alpha: weight of TCKD.
        beta: weight of NCKD (paper: 8 on CIFAR-100, 0.5-2 on ImageNet).
        temperature: softening temperature ``T > 0``.
        ignore_index: target value that is skipped (padding tokens of language models).
        weight: multiplier in the total loss.
        name: log name (default ``dkd``).

    Example (YAML)::

        losses:
          - class_path: lit_distill.losses.DKD
            init_args: {alpha: 1.0, beta: 8.0, temperature: 4.0}
          - class_path: lit_distill.losses.CrossEntropy
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        ignore_index: int = -100,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name or "dkd")
        LF.check_temperature(temperature)
        LF.check_nonnegative("alpha", alpha)
        LF.check_nonnegative("beta", beta)
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.ignore_index = ignore_index

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Any) -> dict[str, Tensor]:
        s = require_logits(student, "student", self)
        t = require_logits(teacher, "teacher", self)
        s, targets, counted = _targets_and_mask(batch, s, self.ignore_index, self)
        t = t[:, :-1] if t.ndim == 3 else t
        tckd, nckd = LF.dkd_terms(s, t, targets, self.temperature, mask=counted)
        return {"tckd": self.alpha * tckd, "nckd": self.beta * nckd}


class DIST(DistillationLoss):
    """DIST (Huang et al. 2022): match inter- and intra-class relations by Pearson correlation.

    ``DIST = T²·(β·mean_i (1 − ρ(Y_s[i,:], Y_t[i,:])) + γ·mean_j (1 − ρ(Y_s[:,j], Y_t[:,j])))`` with
    ``Y = softmax(Z/T)``; see :func:`lit_distill.losses.functional.dist`. Logs ``<name>/inter`` and
    ``<name>/intra`` (already times β and γ). Token logits ``[B, T, V]`` count every position where the
    batch's ``attention_mask`` is 1.

    Args:
        beta: weight of the inter-class (per-sample) relation.
        gamma: weight of the intra-class (per-class, across the batch) relation.
        temperature: softening temperature ``T > 0`` (paper: 1 on ImageNet, 4 on CIFAR-100).
        weight: multiplier in the total loss.
        name: log name (default ``dist``).

    Example (YAML)::

        losses:
          - class_path: lit_distill.losses.DIST
            init_args: {beta: 1.0, gamma: 1.0, temperature: 4.0}
    """

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name or "dist")
        LF.check_temperature(temperature)
        LF.check_nonnegative("beta", beta)
        LF.check_nonnegative("gamma", gamma)
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), float(temperature)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Any) -> dict[str, Tensor]:
        s = require_logits(student, "student", self)
        t = require_logits(teacher, "teacher", self)
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is not None and mask.shape != s.shape[:-1]:
            mask = None
        inter, intra = LF.dist_terms(s, t, self.temperature, mask=None if mask is None else mask.bool())
        return {"inter": self.beta * inter, "intra": self.gamma * intra}
