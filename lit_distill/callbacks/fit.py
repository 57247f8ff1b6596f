"""Callbacks used by the recipes: export the student, print a summary at the end of fit."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class ExportStudent(Callback):
    """At the end of ``fit``, write the student's weights (safetensors), without teacher or adapters.

    Args:
        path: target file; default ``<log_dir>/student.safetensors`` (a new folder per run, so
            nothing is overwritten). An existing file is refused unless ``overwrite``.
        include_adapters: also store trainable loss parts (adapters/projectors).
        overwrite: replace an existing file.
    """

    def __init__(self, path: str | None = None, include_adapters: bool = False, overwrite: bool = False) -> None:
        self.path = path
        self.include_adapters = include_adapters
        self.overwrite = overwrite

    def target(self, trainer: Trainer) -> Path:
        if self.path is not None:
            return Path(self.path)
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        path, version = folder / "student.safetensors", 0
        while path.exists():  # without a logger the folder is shared between runs: never replace
            version += 1
            path = folder / f"student-v{version}.safetensors"
        return path

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Fail before training, not after an hour of it.
        if stage == "fit" and self.path is not None and Path(self.path).exists() and not self.overwrite:
            raise FileExistsError(f"ExportStudent: {self.path!r} exists; set overwrite: true or choose another path.")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            return  # a smoke run leaves no artifacts, like Lightning's own checkpointing
        if trainer.is_global_zero:
            path = pl_module.export_student(self.target(trainer), self.include_adapters, self.overwrite)
            rank_zero_info(f"student weights written to {path}")


class FitSummary(Callback):
    """Print the final validation metrics (student/teacher accuracy, agreement, perplexity)."""

    KEYS = ("val/student_acc", "val/teacher_acc", "val/agreement", "val/student_ppl", "val/teacher_ppl", "val/loss")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k in self.KEYS}
        if shown and trainer.is_global_zero:
            text = "  ".join(f"{k.removeprefix('val/')}={v:.4f}" for k, v in shown.items())
            print(f"[lit-distill] final validation: {text}", flush=True)
