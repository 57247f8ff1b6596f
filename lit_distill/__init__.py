"""lit-distill: PyTorch Lightning components for knowledge distillation."""

from lit_distill import _deprecated
from lit_distill.features import FeatureTaps
from lit_distill.losses import CrossEntropy, DistillationLoss, LogitKD
from lit_distill.module import DistillationModule
from lit_distill.outputs import ModelOutput

__version__ = "0.1.0"

_deprecated.install()  # old module paths of moved modules keep importing for one release

__all__ = ["DistillationModule", "DistillationLoss", "LogitKD", "CrossEntropy", "FeatureTaps", "ModelOutput"]
