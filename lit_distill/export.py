"""Export the trained student alone (no teacher, no adapters unless asked) as safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import Tensor, nn

from lit_distill.sharding.state import full_state_dict
from lit_distill.teacher import load_weights


class Distilled(Protocol):
    """What export reads of a :class:`~lit_distill.DistillationModule` (typed here so export sits below it)."""

    student: nn.Module
    losses: nn.Module


def student_state(module: Distilled, include_adapters: bool = False) -> dict[str, Tensor]:
    """The student's whole state dict on the CPU; with ``include_adapters`` also the loss adapters under ``losses.``.

    A sharded student (FSDP2) is gathered: then this is a collective that every rank must call, and only rank 0
    receives the tensors (the other ranks get an empty dict).
    """
    state = {k: v.contiguous() for k, v in full_state_dict(module.student).items()}
    if include_adapters:
        state.update({f"losses.{k}": v.contiguous() for k, v in full_state_dict(module.losses).items()})
    return state


def is_writer() -> bool:
    """Whether this process writes shared files: rank 0 of a distributed run, or the only process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


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
    """Write the student's weights to ``path``; reload with :func:`load_student`.

    In a distributed run every rank calls this (a sharded student is gathered) and rank 0 writes the file.
    """
    state = student_state(module, include_adapters)
    if is_writer():
        save_state(state, path, overwrite=overwrite)
    return Path(path)


def load_student(model: nn.Module, path: str | Path) -> nn.Module:
    """Load exported student weights into a freshly built ``model`` (strict) and return it."""
    load_weights(model, path, prefix="")
    return model
