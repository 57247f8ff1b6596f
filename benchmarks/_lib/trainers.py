"""What every benchmark script sets up the same way: quiet Trainers, quiet logs, AdamW, and the ``--smoke`` flag."""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer

# Lightning's advice for interactive runs, repeated on every fit; none of it concerns a measurement.
NOISE = ".*does not have many workers.*|.*LeafSpec.*|.*modules in eval mode.*|.*TypedStorage.*|.*GPU available but.*"


def quiet_trainer(**kwargs: Any) -> Trainer:
    """A Trainer that prints and writes nothing: no logger, checkpoints, progress bar or model summary (one device
    unless ``devices`` says otherwise)."""
    defaults = dict(
        devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    return Trainer(**{**defaults, **kwargs})


def quiet(threads: int | None = None) -> None:
    """Silence Lightning's per-fit advice and info lines; ``threads``: torch CPU threads (one is fastest for tiny
    models on a shared CPU, where more threads spin against other jobs)."""
    warnings.filterwarnings("ignore", NOISE)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if threads:
        torch.set_num_threads(threads)


def adamw(lr: float, weight_decay: float = 0.01) -> Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]:
    """An optimizer factory for ``DistillationModule(optimizer=...)``."""
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser showing the script's docstring, with ``--smoke``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, in seconds: checks the script runs")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None, **smoke: Any) -> argparse.Namespace:
    """Parse ``argv``; with ``--smoke`` the defaults become ``smoke`` (flags given explicitly still win)."""
    args = p.parse_args(argv)
    if args.smoke and smoke:
        p.set_defaults(**smoke)
        args = p.parse_args(argv)
    return args


def print_json(result: dict[str, Any], to: str | None = None) -> None:
    """The script's result as its last line of output (the smoke test and drivers read it); also into ``to``."""
    if to:
        Path(to).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, default=str), flush=True)
