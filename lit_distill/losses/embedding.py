"""A teacher-free sentence-embedding objective: in-batch contrastive learning between dropout views.

The distillation recipe needs nothing new: the pooled sentence embedding is a feature tap (``pooling`` on
:class:`~lit_distill.models.encoder.SentenceEncoder`), so :class:`~lit_distill.losses.HiddenCosine` and
:class:`~lit_distill.losses.HiddenMSE` on that tap are the embedding cosine/MSE losses. What lives here is the
baseline that learns *without* the teacher's signal (unsupervised SimCSE, Gao et al. 2021): each sentence is
encoded twice with different dropout masks and must pick its own second view out of the batch.

.. code-block:: yaml

    - class_path: lit_distill.losses.embedding.InBatchContrastive
      init_args: {layer: pooling, temperature: 0.05}   # data: SentencesDataModule(views: 2)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.losses.base import DistillationLoss
from lit_distill.outputs import ModelOutput


def info_nce(anchor: Tensor, positive: Tensor, temperature: float = 0.05) -> Tensor:
    """InfoNCE with in-batch negatives over cosine similarity (van den Oord et al. 2018; SimCSE).

    ``L = mean_i −log( exp(cos(a_i, p_i)/τ) / Σ_j exp(cos(a_i, p_j)/τ) )``.

    Args:
        anchor: ``[N, D]`` embeddings.
        positive: ``[N, D]``; row ``i`` is the positive of anchor ``i``, every other row a negative.
        temperature: τ > 0 (SimCSE: 0.05).

    Example:
        >>> a = torch.eye(4)
        >>> float(info_nce(a, a, temperature=0.01)) < 1e-6
        True
    """
    if anchor.shape != positive.shape or anchor.ndim != 2:
        raise ValueError(f"anchor {tuple(anchor.shape)} and positive {tuple(positive.shape)} must both be [N, D].")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r} (SimCSE uses 0.05).")
    dtype = torch.float64 if anchor.dtype == torch.float64 else torch.float32
    a, p = F.normalize(anchor.to(dtype), dim=-1), F.normalize(positive.to(dtype), dim=-1)
    logits = a @ p.T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


class InBatchContrastive(DistillationLoss):
    """Teacher-free in-batch contrastive loss between ``views`` consecutive copies of each sentence.

    Needs batches where rows ``k·views … k·views + views − 1`` hold the same sentence
    (:class:`~lit_distill.data.sentences.SentencesDataModule` with ``views: 2``) and a student in train mode,
    so dropout makes the copies differ. Each first copy is the anchor of the second one (``views = 2``; more
    views: every later copy is a positive of the first, averaged).

    Args:
        layer: student feature tap holding ``[B, D]`` sentence embeddings (``pooling``).
        views: copies per sentence in the batch (>= 2).
        temperature: InfoNCE temperature τ.
        weight: multiplier in the total loss.
        name: log name (default ``contrastive``).

    Example:
        >>> pairs = torch.randn(4, 8).repeat_interleave(2, dim=0)  # 4 sentences, 2 copies each
        >>> InBatchContrastive()(ModelOutput(features={"pooling": pairs}), None, {}).shape
        torch.Size([])
    """

    requires_teacher = False

    def __init__(
        self,
        layer: str = "pooling",
        views: int = 2,
        temperature: float = 0.05,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(weight=weight, name=name or "contrastive")
        if views < 2:
            raise ValueError(f"views must be >= 2 (copies of each sentence in a batch), got {views}.")
        info_nce(torch.zeros(1, 1), torch.zeros(1, 1), temperature)  # validates the temperature now
        self.layer, self.views, self.temperature = layer, int(views), float(temperature)
        self.student_taps = [layer]

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Any) -> Tensor:
        if self.layer not in student.features:
            raise ValueError(
                f"loss {self.name!r}: the student feature {self.layer!r} was not captured; run it inside "
                "DistillationModule, which hooks `student_taps`."
            )
        emb = student.features[self.layer]
        rows = emb.shape[0]
        if emb.ndim != 2 or rows % self.views or rows == 0:
            raise ValueError(
                f"loss {self.name!r}: got embeddings {tuple(emb.shape)}; need [B, D] with B a multiple of "
                f"views={self.views}. Use SentencesDataModule(views: {self.views})."
            )
        grouped = emb.view(rows // self.views, self.views, -1)
        terms = [info_nce(grouped[:, 0], grouped[:, v], self.temperature) for v in range(1, self.views)]
        return torch.stack(terms).mean()
