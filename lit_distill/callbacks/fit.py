"""Callbacks of a training run: the teacher's checkpoint that other recipes read, and the summary printed at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


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
    """Print the final validation metrics (student/teacher accuracy, agreement, perplexity) as the run's last line.

    List it after the export callbacks, so their "written to" lines come before the summary.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lit_distill.callbacks.ExportStudent
            - class_path: lit_distill.callbacks.FitSummary
    """

    KEYS = ("val/student_acc", "val/teacher_acc", "val/agreement", "val/student_ppl", "val/teacher_ppl", "val/loss")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k in self.KEYS}
        if shown and trainer.is_global_zero:
            text = "  ".join(f"{k.removeprefix('val/')}={v:.4f}" for k, v in shown.items())
            print(f"[lit-distill] final validation: {text}", flush=True)
