"""Base class of every loss strategy."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from lit_distill.outputs import ModelOutput


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class DistillationLoss(nn.Module):
    """A weighted, named loss term: ``strategy(student_out, teacher_out, batch) -> Tensor | dict``.

    Subclasses implement :meth:`forward`. Return a scalar, or a dict of named scalar terms (each is
    logged as ``train/<name>/<term>`` and their sum is the strategy's value). The module multiplies
    the value by ``weight`` and sums all strategies. Trainable parts (adapters, projectors) are
    ordinary submodules: they are optimized and checkpointed with the student.

    Args:
        weight: multiplier of this term in the total loss (``>= 0``).
        name: log name; defaults to the class name in snake case.

    Example:
        >>> class L1Logits(DistillationLoss):
        ...     def forward(self, student, teacher, batch):
        ...         return (student.logits - teacher.logits).abs().mean()
        >>> L1Logits(weight=0.5).name
        'l1_logits'
    """

    #: False for terms that need no teacher (hard-label cross-entropy): they also run without one.
    requires_teacher: bool = True

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__()
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(
                f"{type(self).__name__}: weight must be a finite number >= 0, got {weight!r}. "
                "Use 0 to switch a term off."
            )
        self.weight = float(weight)
        self.name = name or _snake(type(self).__name__)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Any) -> Tensor | dict[str, Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.weight}"


def weighted_sum(
    losses: Iterable[DistillationLoss], student_out: ModelOutput, teacher_out: ModelOutput | None, batch: Any
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(Σ weight_i · loss_i, {term name: unweighted value})``; a strategy that returns named terms adds each as
    ``<name>/<term>`` and their sum as ``<name>``.

    Example:
        >>> import torch
        >>> from lit_distill.losses import CrossEntropy
        >>> total, terms = weighted_sum([CrossEntropy(weight=0.5)], ModelOutput(logits=torch.zeros(2, 3)), None,
        ...                             (torch.zeros(2, 4), torch.tensor([0, 1])))
        >>> sorted(terms), round(float(total), 4)
        (['ce'], 0.5493)
    """
    terms: dict[str, Tensor] = {}
    total: Tensor | None = None
    for loss in losses:
        value = loss(student_out, teacher_out, batch)
        if isinstance(value, Mapping):
            for key, term in value.items():
                terms[f"{loss.name}/{key}"] = term
            value = sum(value.values())
        terms[loss.name] = value
        weighted = loss.weight * value
        total = weighted if total is None else total + weighted
    return total, terms
