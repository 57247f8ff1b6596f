"""lit-distill: PyTorch Lightning components for knowledge distillation.

The front door: :class:`DistillationModule` and the loss strategies most recipes start from. Everything else lives
in its subpackage, each listing its public names in ``__all__``: ``lit_distill.losses`` (strategies) and
``lit_distill.losses.functional`` (formulas), ``models``, ``data``, ``callbacks``, ``cache``, ``generation``,
``sharding`` and ``cli``.

Example:
    >>> from lit_distill import CrossEntropy, DistillationModule, LogitKD
    >>> from lit_distill.models import MLP
    >>> module = DistillationModule(student=MLP(64, [32], 10), teacher=MLP(64, [128], 10),
    ...                             losses=[LogitKD(temperature=4.0), CrossEntropy(weight=0.1)])
"""

import importlib
import typing

__version__ = "0.1.0"

# Imported on first use, so that `lit-distill --help` and other light entry points do not pay for torch and
# Lightning (seconds to import) before they need them.
_EXPORTS = {
    "DistillationModule": "lit_distill.module",
    "DistillationLoss": "lit_distill.losses",
    "LogitKD": "lit_distill.losses",
    "CrossEntropy": "lit_distill.losses",
    "ModelOutput": "lit_distill.outputs",
}

__all__ = ["DistillationModule", "DistillationLoss", "LogitKD", "CrossEntropy", "ModelOutput"]

if typing.TYPE_CHECKING:
    from lit_distill.losses import CrossEntropy, DistillationLoss, LogitKD
    from lit_distill.module import DistillationModule
    from lit_distill.outputs import ModelOutput


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lit_distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
