"""Lightning's start-up lines ("Seed set to 0", "GPU available: ...") held back until the run starts.

Lightning logs them while the run is being built, before lit-distill's set-up checks run, so a configuration error
would come after them and would not be the first line a user reads. While held, those lines are kept; they are
printed when the stage starts (:class:`ReleaseStartupLog`) and dropped when the run fails before it.
"""

from __future__ import annotations

import logging

from lightning.pytorch import Callback, LightningModule, Trainer


class _Hold(logging.Filter):
    """Keeps the info records of Lightning that reach ``handler`` (warnings pass) while start-up lasts."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and record.name.startswith("lightning"):
            _HELD.append((self.handler, record))
            return False
        return True


_HELD: list[tuple[logging.Handler, logging.LogRecord]] = []
_FILTERS: list[_Hold] = []


def hold() -> None:
    """Start holding Lightning's info lines (call it after Lightning is imported: that adds its handlers).

    The handlers are those of Lightning's loggers and the root logger's (Lightning logs through the root's
    when logging was configured before it was imported).
    """
    discard()  # what an earlier run in this process left held belongs to handlers that may be closed by now
    names = ["", *(n for n in logging.Logger.manager.loggerDict if n == "lightning" or n.startswith("lightning."))]
    for handler in {h for name in names for h in logging.getLogger(name).handlers}:
        if not any(isinstance(f, _Hold) for f in handler.filters):
            _FILTERS.append(_Hold(handler))
            handler.addFilter(_FILTERS[-1])


def release() -> None:
    """Stop holding and print the held lines, in order."""
    for hold_filter in _FILTERS:
        hold_filter.handler.removeFilter(hold_filter)
    _FILTERS.clear()
    held = list(_HELD)
    _HELD.clear()
    for handler, record in held:
        handler.handle(record)


def discard() -> None:
    """Stop holding and drop the held lines: the run failed before it started."""
    _HELD.clear()
    release()


class ReleaseStartupLog(Callback):
    """Prints the held start-up lines once the stage starts: the set-up checks have passed by then."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        release()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        release()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        release()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        release()
