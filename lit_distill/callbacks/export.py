"""The student written out at the end of ``fit``: a safetensors file, or a folder that loads like a pretrained model.

Both callbacks write into the run's folder by default (:func:`~lit_distill.export.export_dir`: the logger's
``version_N``, or the next free ``<default_root_dir>/lightning_logs/version_N``), never into the working directory,
and refuse an occupied target before training rather than after it. Under DDP or FSDP every rank settles the target
(Lightning's ``log_dir`` is a collective) and exports (a sharded student is gathered); rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_distill.export import export_dir, run_together
from lit_distill.models.hf import export_pretrained


class _ExportAtFitEnd(Callback):
    """Writes the student to ``target`` when fit ends (not on ``fast_dev_run``); an occupied target is refused early."""

    default_name = "student"
    occupied = "exists"

    def __init__(self, path: str | None, overwrite: bool) -> None:
        self._path, self.overwrite = path, overwrite
        self._target: Path | None = None

    def target(self, trainer: Trainer) -> Path:
        """Where the student goes; every rank must call it (see :func:`~lit_distill.export.export_dir`)."""
        return Path(self._path) if self._path is not None else export_dir(trainer) / self.default_name

    def is_occupied(self, target: Path) -> bool:
        return target.exists()

    def write(self, pl_module: LightningModule, target: Path) -> Path:
        raise NotImplementedError

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Fail before training, not after an hour of it. A smoke run writes nothing, so only a given path matters.
        target = Path(self._path) if trainer.fast_dev_run and self._path is not None else None
        if not trainer.fast_dev_run:
            target = self._target = self.target(trainer)
        if target is not None and self.is_occupied(target) and not self.overwrite:
            raise FileExistsError(
                f"{type(self).__name__}: {str(target)!r} {self.occupied}; set overwrite: true or choose another path."
            )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            return  # a smoke run leaves no artifacts, like Lightning's own checkpointing
        target = self._target or self.target(trainer)
        written = run_together(lambda: self.write(pl_module, target), "exporting the student")
        rank_zero_info(f"student written to {written}")


class ExportStudent(_ExportAtFitEnd):
    """At the end of ``fit``, write the student's weights (safetensors), without teacher or adapters.

    Reload them into a freshly built model with :func:`lit_distill.export.load_student`.

    Args:
        path: target file; default ``student.safetensors`` in this run's folder. An existing file is refused before
            training unless ``overwrite``.
        include_adapters: also store trainable loss parts (adapters/projectors).
        overwrite: replace an existing file.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lit_distill.callbacks.ExportStudent
            - class_path: lit_distill.callbacks.FitSummary
    """

    default_name = "student.safetensors"

    def __init__(self, path: str | None = None, include_adapters: bool = False, overwrite: bool = False) -> None:
        super().__init__(path, overwrite)
        self.path = path
        self.include_adapters = include_adapters

    def write(self, pl_module: LightningModule, target: Path) -> Path:
        return pl_module.export_student(target, self.include_adapters, self.overwrite)


class ExportPretrained(_ExportAtFitEnd):
    """At the end of ``fit``, save the student as a folder with :func:`~lit_distill.models.export_pretrained`.

    Hugging Face students are written with ``save_pretrained`` (``transformers`` loads the folder as it is), a
    lit-distill ``GPT`` as safetensors plus its config; :func:`~lit_distill.models.load_pretrained` reloads either.

    Args:
        dirpath: target folder; default ``student`` in this run's folder. A non-empty folder is refused before
            training unless ``overwrite``.
        overwrite: replace a non-empty folder.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lit_distill.callbacks.ExportPretrained
            - class_path: lit_distill.callbacks.FitSummary
    """

    occupied = "is not empty"

    def __init__(self, dirpath: str | None = None, overwrite: bool = False) -> None:
        super().__init__(dirpath, overwrite)
        self.dirpath = dirpath

    def is_occupied(self, target: Path) -> bool:
        return target.exists() and any(target.iterdir())

    def write(self, pl_module: LightningModule, target: Path) -> Path:
        return export_pretrained(pl_module, target, overwrite=self.overwrite)
