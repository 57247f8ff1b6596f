"""Loss strategies on logits: soft-target KD and hard-label cross-entropy."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor

from lit_distill.batch import split_batch
from lit_distill.losses import functional as LF
from lit_distill.losses.base import DistillationLoss
from lit_distill.outputs import ModelOutput

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "tvd"]


def require_logits(out: ModelOutput | None, side: str, loss: DistillationLoss) -> Tensor:
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
