"""The CLI's progress bar: finished before the run's summary is printed, and sane without ``max_epochs``."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar


class SummaryLastProgressBar(RichProgressBar):
    """Lightning's rich bar, with two changes for a command line run.

    The bar is stopped when training ends, so its final frame is drawn before ``on_fit_end``, where the
    recipes print their summary (otherwise rich draws it after, below the summary). And a run limited by
    ``max_steps`` alone (``max_epochs: -1``) reads ``Epoch 1`` instead of ``Epoch 1/-2``.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop_progress()

    def _stop_progress(self) -> None:
        if not self._progress_stopped:  # a second stop would print another (empty) line after the summary
            super()._stop_progress()

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        text = f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs is not None and max_epochs > 0 else "")
        return f"{text:{len(self.validation_description)}}"
