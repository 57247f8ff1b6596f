"""Validation/test metrics of a distillation run, built on torchmetrics (DDP-synced)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.text import Perplexity

IGNORE_INDEX = -100


class EvalMetrics(nn.ModuleDict):
    """Student/teacher accuracy and top-1 agreement for classifiers; perplexities for language models.

    Classification (logits ``[B, C]``, targets ``[B]``): ``student_acc``, ``teacher_acc``,
    ``agreement`` (fraction where the student's top-1 equals the teacher's).
    Language models (logits ``[B, T, V]``, labels ``[B, T]`` aligned with the inputs): next-token
    ``student_ppl``, ``teacher_ppl`` and ``agreement`` over non-ignored positions.
    """

    def __init__(self) -> None:
        super().__init__(
            {
                "student_acc": MeanMetric(),
                "teacher_acc": MeanMetric(),
                "agreement": MeanMetric(),
                "student_ppl": Perplexity(ignore_index=IGNORE_INDEX),
                "teacher_ppl": Perplexity(ignore_index=IGNORE_INDEX),
            }
        )

    def named_metrics(self) -> list[tuple[str, Metric]]:
        return [(name, metric) for name, metric in self.items() if isinstance(metric, Metric)]

    def log_to(self, module: Any, stage: str, batch_size: int) -> None:
        """Log every metric that has seen data as ``<stage>/<name>`` through ``module.log`` (epoch-level, synced)."""
        for name, metric in self.named_metrics():
            if metric.update_called:
                module.log(f"{stage}/{name}", metric, batch_size=batch_size, prog_bar=name == "student_acc")

    @torch.no_grad()
    def observe(
        self,
        student: Tensor | None,
        teacher: Tensor | None,
        targets: Tensor | None,
        teacher_targets: Tensor | None = None,
    ) -> None:
        """``teacher_targets``: the teacher's own labels when it reads other tokens (cross-tokenizer); default: the
        student's. Top-1 agreement is only measured over one tokenization."""
        if student is None:
            return
        if student.ndim == 3:
            self._update_lm(student, teacher, targets, targets if teacher_targets is None else teacher_targets)
            return
        student_pred = student.argmax(-1)
        if targets is not None and targets.ndim == 1:
            self["student_acc"].update((student_pred == targets).float())
            if teacher is not None:
                self["teacher_acc"].update((teacher.argmax(-1) == targets).float())
        if teacher is not None:
            self["agreement"].update((student_pred == teacher.argmax(-1)).float())

    def _update_lm(self, student: Tensor, teacher: Tensor | None, labels: Tensor | None, t_labels: Tensor) -> None:
        if labels is None:
            return
        shifted = labels[:, 1:]
        counted = shifted != IGNORE_INDEX
        if counted.any():
            self["student_ppl"].update(student[:, :-1].float(), shifted)
        if teacher is None or not (t_labels[:, 1:] != IGNORE_INDEX).any():
            return
        logits_t = teacher[:, :-1].float()
        self["teacher_ppl"].update(logits_t, t_labels[:, 1:])
        if t_labels is labels:  # one tokenization: the same positions, the same (shared part of the) vocabulary
            vocab = min(student.shape[-1], teacher.shape[-1])
            agree = student[:, :-1, :vocab].float().argmax(-1) == logits_t[..., :vocab].argmax(-1)
            self["agreement"].update(agree[counted].float())


def train_logging_step(trainer: Any, step: int) -> bool:
    """Whether training terms are logged at ``step``: on the steps Lightning writes logs (``log_every_n_steps``),
    since ``self.log`` costs host time that small GPU steps do not hide. Without a trainer: always."""
    if trainer is None:
        return True
    return (step + 1) % max(trainer.log_every_n_steps, 1) == 0 or trainer.should_stop


def monitors_train_metric(trainer: Any) -> bool:
    """Whether a callback (``ModelCheckpoint``, ``EarlyStopping``, ...) monitors a ``train/`` metric: then training
    terms are logged on every step, so that it never acts on a stale value."""
    return any(str(getattr(c, "monitor", None) or "").startswith("train/") for c in trainer.callbacks)
