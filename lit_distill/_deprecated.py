"""One-release aliases for modules that moved: the old import path still works, with a ``DeprecationWarning``.

The aliases are built on import by a finder at the front of ``sys.meta_path`` (it answers only for the old
names, ahead of any other installed copy of lit-distill) rather than kept as files at the old paths, so that
git sees each move as a rename. Each alias is a small module holding the public names of
the old module, taken from the new one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# old module -> (new module, the public names the old one had)
MOVED: dict[str, tuple[str, tuple[str, ...]]] = {
    "lit_distill.callbacks_embedding": (
        "lit_distill.callbacks.embedding",
        ("EmbeddingEval", "compare_encoders", "count_parameters", "encode_rates", "format_table", "mean_cosine")
        + ("nearest_neighbours", "neighbour_agreement", "quantize_int8", "size_bytes"),
    ),
    "lit_distill.callbacks_generation": ("lit_distill.callbacks.generation", ("JsonlPredictionWriter",)),
    "lit_distill.generation_module": ("lit_distill.generation.predict", ("GenerationModule",)),
    "lit_distill.onpolicy": ("lit_distill.generation.onpolicy", ("OnPolicyDistillationModule",)),
    "lit_distill.losses.fused_triton": ("lit_distill.losses.fused.triton_kernel", ("TRITON_CONFIG",)),
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a plain new module

    def exec_module(self, module: ModuleType) -> None:
        new, names = MOVED[module.__name__]
        warnings.warn(
            f"{module.__name__} is deprecated and will be removed in the next release; import from {new} instead.",
            DeprecationWarning,
            stacklevel=2,  # importlib's own frames are skipped: this points at the import statement
        )
        target = importlib.import_module(new)
        module.__doc__ = f"Deprecated alias of :mod:`{new}` (moved there); removed in the next release."
        module.__dict__.update({name: getattr(target, name) for name in names})
        module.__all__ = list(names)


def install() -> None:
    """Make the old module paths of :data:`MOVED` importable (idempotent; ``import lit_distill`` calls it)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
