"""Callbacks used by the recipes: export the student, print a summary at the end of fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from lit_distill.export import export_dir, run_together


class ExportStudent(Callback):
    """At the end of ``fit``, write the student's weights (safetensors), without teacher or adapters.

    Args:
        path: target file; default ``student.safetensors`` in this run's folder
            (:func:`~lit_distill.export.export_dir`: the logger's ``version_N``, or the next free
            ``<default_root_dir>/lightning_logs/version_N`` without a TensorBoard/CSV logger). An existing file
            is refused before training unless ``overwrite``.
        include_adapters: also store trainable loss parts (adapters/projectors).
        overwrite: replace an existing file.

    Under DDP every rank settles the path (Lightning's ``log_dir`` is a collective) and exports (a sharded student
    is gathered); rank 0 writes.
    """

    def __init__(self, path: str | None = None, include_adapters: bool = False, overwrite: bool = False) -> None:
        self.path = path
        self.include_adapters = include_adapters
        self.overwrite = overwrite
        self._target: Path | None = None

    def target(self, trainer: Trainer) -> Path:
        """Where the student goes; every rank must call it (see :func:`~lit_distill.export.export_dir`)."""
        return Path(self.path) if self.path is not None else export_dir(trainer) / "student.safetensors"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Fail before training, not after an hour of it. A smoke run writes nothing, so only a given path matters.
        target = Path(self.path) if trainer.fast_dev_run and self.path is not None else None
        if not trainer.fast_dev_run:
            target = self._target = self.target(trainer)
        if target is not None and target.exists() and not self.overwrite:
            raise FileExistsError(f"ExportStudent: {str(target)!r} exists; set overwrite: true or choose another path.")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            return  # a smoke run leaves no artifacts, like Lightning's own checkpointing
        target = self._target or self.target(trainer)
        path = run_together(
            lambda: pl_module.export_student(target, self.include_adapters, self.overwrite), "exporting the student"
        )
        rank_zero_info(f"student weights written to {path}")


class TeacherCheckpoint(ModelCheckpoint):
    """The best checkpoint of a run whose output other recipes read by name (a teacher): replaced only when asked.

    Plain ``ModelCheckpoint(dirpath=D, filename=F)`` writes ``F-v1.ckpt`` when ``F.ckpt`` exists, and the
    recipes reading ``F.ckpt`` keep using the old one without a word. This one refuses before training while
    ``D/F.ckpt`` exists, saying how to proceed; with ``overwrite: true`` it writes over that very file
    (Lightning's ``enable_version_counter: false``). A ``fast_dev_run`` writes no checkpoint, so it is not refused.

    Args:
        dirpath: folder of the checkpoint.
        filename: its name without ``.ckpt``; fixed (no ``{metric}`` templates), since readers use that name.
        overwrite: replace an existing checkpoint of that name.
        **kwargs: other :class:`~lightning.pytorch.callbacks.ModelCheckpoint` arguments (``monitor``, ``mode``, ...).

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lit_distill.callbacks.TeacherCheckpoint
              init_args: {dirpath: checkpoints/digits, filename: teacher, monitor: val/student_acc, mode: max}
    """

    def __init__(self, dirpath: str, filename: str, overwrite: bool = False, **kwargs: Any) -> None:
        if "{" in filename or not filename:
            raise ValueError(
                f"TeacherCheckpoint needs a fixed filename (other recipes read it by name), got {filename!r}; use "
                "lightning.pytorch.callbacks.ModelCheckpoint for templated names."
            )
        kwargs.setdefault("save_top_k", 1)
        if kwargs["save_top_k"] != 1:
            raise ValueError(f"TeacherCheckpoint keeps one checkpoint under one name; save_top_k must be 1, got "
                             f"{kwargs['save_top_k']}.")  # fmt: skip
        super().__init__(dirpath=dirpath, filename=filename, enable_version_counter=False, **kwargs)
        self.overwrite = overwrite

    @property
    def target(self) -> Path:
        """The file other recipes read: ``dirpath/filename.ckpt``."""
        return Path(self.dirpath) / f"{self.filename}{self.FILE_EXTENSION}"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and not trainer.fast_dev_run and not self.overwrite and self.target.exists():
            raise FileExistsError(
                f"{str(self.target)!r} exists and other recipes read it; training again would not replace it. "
                f"To retrain it, set overwrite: true on {type(self).__name__} (on the command line: "
                "--trainer.callbacks.init_args.overwrite=true, which sets it on the last callback of the list), or "
                "move the file away."
            )


class FitSummary(Callback):
    """Print the final validation metrics (student/teacher accuracy, agreement, perplexity)."""

    KEYS = ("val/student_acc", "val/teacher_acc", "val/agreement", "val/student_ppl", "val/teacher_ppl", "val/loss")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k in self.KEYS}
        if shown and trainer.is_global_zero:
            text = "  ".join(f"{k.removeprefix('val/')}={v:.4f}" for k, v in shown.items())
            print(f"[lit-distill] final validation: {text}", flush=True)
