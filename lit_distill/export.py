"""Export the trained student alone (no teacher, no adapters unless asked) as safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import Tensor, nn

from lit_distill.teacher import load_weights


class Distilled(Protocol):
    """What export reads of a :class:`~lit_distill.DistillationModule` (typed here so export sits below it)."""

    student: nn.Module
    losses: nn.Module


def student_state(module: Distilled, include_adapters: bool = False) -> dict[str, Tensor]:
    """The student's state dict; with ``include_adapters`` also the loss adapters under ``losses.``."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.student.state_dict().items()}
    if include_adapters:
        state.update({f"losses.{k}": v.detach().cpu().contiguous() for k, v in module.losses.state_dict().items()})
    return state


def save_state(state: dict[str, Tensor], path: str | Path, overwrite: bool = False) -> Path:
    """Write ``state`` to ``path`` (safetensors) atomically; refuse to replace a file unless asked."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"export path {str(path)!r} must end in .safetensors.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True or choose another path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Tied weights share storage; safetensors refuses shared tensors, so store copies.
    save_file({k: v.clone() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    return path


def save_student(module: Distilled, path: str | Path, include_adapters: bool = False, overwrite: bool = False) -> Path:
    """Write the student's weights to ``path``; reload with :func:`load_student`."""
    return save_state(student_state(module, include_adapters), path, overwrite=overwrite)


def load_student(model: nn.Module, path: str | Path) -> nn.Module:
    """Load exported student weights into a freshly built ``model`` (strict) and return it."""
    load_weights(model, path, prefix="")
    return model
