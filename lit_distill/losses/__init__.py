"""Loss strategies: thin ``nn.Module`` wrappers around :mod:`lit_distill.losses.functional`."""

from lit_distill.losses.base import DistillationLoss
from lit_distill.losses.logit import CrossEntropy, LogitKD

__all__ = ["DistillationLoss", "LogitKD", "CrossEntropy"]
