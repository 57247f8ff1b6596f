"""The LightningCLI behind ``lit-distill``: any LightningModule (DistillationModule and the generation modules),
per-loss overrides, quiet and tidy runs."""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_distill.cli import startup
from lit_distill.cli.overrides import apply_loss_overrides, split_loss_overrides
from lit_distill.cli.run_config import (
    CheckpointsInRunFolder,
    RunConfig,
    batches_done,
    discard_unstarted_run,
    run_folder_logger,
)
from lit_distill.teacher import mark_built_from_config

#: Option names of the parsers built last (for "did you mean" on an unknown option).
VALID_KEYS: list[str] = []


class DistillCLI(LightningCLI):
    """LightningCLI whose model is a LightningModule chosen by ``class_path``: :class:`~lit_distill.DistillationModule`
    (or a subclass), :class:`~lit_distill.generation.GenerationModule` for ``predict``.

    Beyond LightningCLI: ``--loss.NAME.ARG VALUE`` changes one loss of the recipe (see
    :mod:`lit_distill.cli.overrides`); parse errors are raised (``exit_on_error=False``) so ``main`` can
    say them in one line; the config is saved and logged when the run starts (:class:`RunConfig`), and a
    run folder that a failed run created before its first step is removed again.

    Example (a script of your own that runs like ``lit-distill``)::

        from lit_distill.cli.app import build

        cli = build(["fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs", "5"])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", RunConfig)
        quiet_lightning()
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        return super().init_parser(**{**kwargs, "exit_on_error": False})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # RunConfig logs the whole config under the flags' names; Lightning's own logging of the module's and data
        # module's hyperparameters would add most of them a second time, without the prefix.
        if "enable_autolog_hparams" in inspect.signature(Trainer).parameters:  # Lightning >= 2.5
            parser.set_defaults({"trainer.enable_autolog_hparams": False})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if not isinstance(args, list):  # sys.argv or a dict: nothing of ours to take out
            return super().parse_arguments(parser, args)
        args, overrides = split_loss_overrides(list(args))
        VALID_KEYS[:] = _option_names(parser)
        # --print_config prints (and exits) while parsing: keep it for the parse that has the overrides applied.
        self.config = parser.parse_args([a for a in args if not a.startswith("--print_config")] if overrides else args)
        if overrides:
            section = self.config.get(self.config.get("subcommand") or "", self.config)
            model = section.get("model")
            losses = model.init_args.get("losses") if model is not None and "init_args" in model else None
            plain = [item.as_dict() if hasattr(item, "as_dict") else item for item in losses or []]
            changed = apply_loss_overrides(plain, overrides)
            self.config = parser.parse_args([*args, f"--model.init_args.losses={json.dumps(changed)}"])

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # Models the recipe built from its config fall under the trained-weights rule (lit_distill.teacher); models
        # a user builds in Python do not.
        for role in ("teacher", "student", "model"):
            mark_built_from_config(getattr(self.model, role, None))

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would rebuild the model config from the checkpoint's hyperparameters. Ours leave out the
        # modules (student, teacher, losses are objects, not values), so that would drop them from the recipe:
        # the recipe stays the source of truth and the checkpoint supplies weights only.
        return None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        callbacks = [*callbacks, CheckpointsInRunFolder(), startup.ReleaseStartupLog()]
        given = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in given):
            bar = _progress_bar()
            if bar is not None:
                callbacks = [*callbacks, bar]
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        logger = run_folder_logger(self.trainer)
        folder = Path(logger.log_dir) if logger is not None else None
        created = [] if folder is None else [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if created and not batches_done(self.trainer) and self.trainer.is_global_zero:
                discard_unstarted_run(folder, created)
            raise


def _option_names(parser: LightningArgumentParser) -> list[str]:
    names: list[str] = []
    subcommands = getattr(parser, "_subcommands_action", None)
    for sub in [parser, *(subcommands.choices.values() if subcommands is not None else [])]:
        names += [a.dest for a in sub._actions if a.dest not in ("help", "config")]
    return sorted(set(names))


def _progress_bar() -> Callback | None:
    try:
        from lit_distill.cli.progress import SummaryLastProgressBar
    except ImportError:  # rich is missing: Lightning's tqdm bar already ends before the summary
        return None
    return SummaryLastProgressBar()


#: Log lines a recipe cannot act on, by logger: Lightning's product tips; torchao's CPU wheel failing to load the
#: prebuilt kernels it carries for other CUDA and Python builds (transformers imports torchao whenever it is
#: installed, so every Hugging Face run printed them); torch's note on the enums torchao still registers itself.
NOISE: dict[str, str] = {
    "lightning.pytorch.utilities.rank_zero": "💡 Tip",
    "lightning.fabric.utilities.rank_zero": "💡 Tip",
    "torchao": "Failed to load ",
    "torch.utils._pytree": "is an Enum subclass and is now natively supported",
}


def quiet_lightning() -> None:
    """Silence what our recipes cannot act on: Lightning's product tips, install hints and its own deprecations, and
    the import-time lines of :data:`NOISE`."""
    warnings.filterwarnings("ignore", message=r"Starting from v1\.9\.0, `tensorboardX` has been removed")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    for name, text in NOISE.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in log.filters):
            log.addFilter(_Drop(text))


class _Drop(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def build(args: list[str], **kwargs: Any) -> DistillCLI:
    """The CLI as ``lit-distill`` builds it for ``args``; ``kwargs`` go to LightningCLI (e.g. ``run=False``).

    Example:
        >>> cli = build(["--config", "configs/digits/no_kd.yaml"], run=False)  # doctest: +SKIP
        >>> cli.model.losses[0].name  # doctest: +SKIP
        'ce'
    """
    return DistillCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        args=args,
        **kwargs,
    )


def run(args: list[str]) -> None:
    """Run ``lit-distill`` with ``args`` (errors propagate; ``main`` reports them).

    Lightning's start-up lines wait until the run starts (:mod:`lit_distill.cli.startup`): an error in building
    the run is then the first line printed.
    """
    startup.hold()
    try:
        build(args)
    except BaseException:
        startup.discard()
        raise
    finally:
        startup.release()
