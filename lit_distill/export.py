"""Export the trained student alone (no teacher, no adapters unless asked) as safetensors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import Tensor, nn

from lit_distill.sharding.fill import full_state_dict
from lit_distill.weights import load_weights


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
    os.chmod(tmp, 0o666 & ~current_umask())  # safetensors creates 0600; give it the mode any new file of the user gets
    tmp.replace(path)
    return path


def current_umask() -> int:
    """The process umask (the permission bits new files do not get)."""
    mask = os.umask(0o022)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def export_dir(trainer: Trainer) -> Path:
    """This run's folder for exported students; call it on every rank (it uses collectives), write on rank 0.

    With a TensorBoard or CSV logger first, it is the logger's ``version_N`` folder (``trainer.log_dir``).
    With no logger or another kind (W&B keeps no per-run folder of its own), it is the next free
    ``<default_root_dir>/lightning_logs/version_N``, picked by rank 0 and shared with the others, so a run never
    writes into the working directory nor next to an earlier run's student. The folder is created by the
    writer, at the end of fit; the choice is remembered per trainer, so several exports share it.

    Example:
        >>> export_dir(trainer) / "student.safetensors"  # doctest: +SKIP
        PosixPath('lightning_logs/version_3/student.safetensors')
    """
    known = getattr(trainer, "_lit_distill_export_dir", None)
    if known is not None:
        return known
    log_dir = trainer.log_dir  # a broadcast inside Lightning: every rank must ask
    if trainer.loggers and isinstance(trainer.loggers[0], (TensorBoardLogger, CSVLogger)) and log_dir:
        folder = Path(log_dir)
    else:
        root = Path(trainer.default_root_dir) / "lightning_logs"
        folder = Path(trainer.strategy.broadcast(str(_next_version(root)) if trainer.is_global_zero else None))
    trainer._lit_distill_export_dir = folder
    return folder


def _next_version(root: Path) -> Path:
    """``root/version_N`` for the first N above every existing one (Lightning's loggers count the same way)."""
    numbers = [int(p.name.removeprefix("version_")) for p in root.glob("version_*") if p.name[8:].isdigit()]
    return root / f"version_{max(numbers, default=-1) + 1}"


def run_together(section: Callable[[], Any], what: str, rank_zero_only: bool = False) -> Any:
    """Run ``section`` (on every rank, or on rank 0 alone) and let every rank learn whether it failed anywhere.

    A rank that raises inside a section the others do not see would leave them waiting at their next collective
    until the process group times out (30 minutes by default). Here every rank passes one all-gather of the
    outcome after the section; if any rank failed, each rank raises: the failing rank its own error, the others a
    ``RuntimeError`` whose first line names the failing rank and its error. Single-process runs just run it. Lightning's
    strategies (DDP, FSDP2) all run over ``torch.distributed``, whose default group is the one used.

    Args:
        section: the work, e.g. writing a file; its return value is returned on the ranks that ran it.
        what: a few words for the error message ("exporting the student").
        rank_zero_only: run ``section`` on rank 0 only (the others return None).

    Example:
        >>> run_together(lambda: 42, "answering")
        42
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    result, error = None, None
    if rank == 0 or not rank_zero_only:
        try:
            result = section()
        except Exception as err:  # noqa: BLE001 - re-raised below, once every rank knows
            error = err
    if not distributed:
        if error is not None:
            raise error
        return result
    mine = None if error is None else f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    outcomes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, mine)
    if error is not None:
        raise error
    failed = [(r, message) for r, message in enumerate(outcomes) if message is not None]
    if failed:
        r, message = failed[0]
        raise RuntimeError(f"rank {r} failed while {what}: {message}")
    return result


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
