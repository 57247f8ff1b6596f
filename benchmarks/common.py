"""Pieces shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this imports as ``common``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer


def quiet_trainer(**kwargs: Any) -> Trainer:
    """A one-device Trainer that prints and writes nothing: no logger, checkpoints, progress bar or summary."""
    defaults = dict(
        devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    return Trainer(**{**defaults, **kwargs})
