"""lit-distill: PyTorch Lightning components for knowledge distillation."""

from lit_distill.features import FeatureTaps
from lit_distill.losses import CrossEntropy, DistillationLoss, LogitKD
from lit_distill.module import DistillationModule
from lit_distill.outputs import ModelOutput

__version__ = "0.1.0"

__all__ = ["DistillationModule", "DistillationLoss", "LogitKD", "CrossEntropy", "FeatureTaps", "ModelOutput"]
