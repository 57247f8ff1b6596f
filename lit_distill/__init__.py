"""lit-distill: PyTorch Lightning components for knowledge distillation."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Imported on first use, so that `lit-distill --help` and other light entry points do not pay for torch and
# Lightning (seconds to import) before they need them.
_EXPORTS = {
    "DistillationModule": "lit_distill.module",
    "DistillationLoss": "lit_distill.losses",
    "LogitKD": "lit_distill.losses",
    "CrossEntropy": "lit_distill.losses",
    "FeatureTaps": "lit_distill.features",
    "ModelOutput": "lit_distill.outputs",
}

__all__ = ["DistillationModule", "DistillationLoss", "LogitKD", "CrossEntropy", "FeatureTaps", "ModelOutput"]

if TYPE_CHECKING:
    from lit_distill.features import FeatureTaps
    from lit_distill.losses import CrossEntropy, DistillationLoss, LogitKD
    from lit_distill.module import DistillationModule
    from lit_distill.outputs import ModelOutput


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lit_distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
