"""The run's resolved config: saved beside its logs once the run starts, and given to every logger."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn

from lit_distill.export import export_dir

#: What a CSV or TensorBoard logger writes into its run folder before the first step.
LOGGER_FILES = ("hparams.yaml", "metrics.csv", "config.yaml", "events.out.tfevents.")


class RunConfig(SaveConfigCallback):
    """Writes ``config.yaml`` and logs the flattened config once training (or evaluation, prediction) starts.

    Lightning's own callback writes the file in ``setup``, so a run that fails in setup (a shape check, a
    missing checkpoint) still leaves a run folder behind. Here the file is written at the start of the
    stage instead, into the run folder of a CSV or TensorBoard logger (``version_N``); a run without such
    a logger writes none (its folder would not be its own). Every logger (W&B, TensorBoard, CSV) also
    receives :func:`flat_config` of the run plus the parameter counts of teacher and student, so runs can
    be compared and swept.

    Args are those of :class:`~lightning.pytorch.cli.SaveConfigCallback`.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pass  # nothing is written before the run starts

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._save(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, pl_module)

    def _save(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a broadcast: every rank must take part
        if trainer.is_global_zero:
            if log_dir is not None and run_folder_logger(trainer) is not None:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                self.parser.save(
                    self.config, str(Path(log_dir) / self.config_filename), skip_none=False, overwrite=True,
                    multifile=self.multifile,
                )  # fmt: skip
            dump = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            values = {**flat_config(dump, loss_names(pl_module)), **parameter_counts(pl_module)}
            recipes = [str(p) for p in self.config.get("config") or []]
            if recipes:
                values["recipe"] = ", ".join(recipes)
            for logger in trainer.loggers:
                logger.log_hyperparams(values)
        self.already_saved = True


class CheckpointsInRunFolder(Callback):
    """Checkpoints without a ``dirpath`` go into the run's own folder, also under W&B or with no logger.

    Lightning puts them in ``<save_dir>/<name>/<version>/checkpoints`` of the first logger: for a CSV or
    TensorBoard logger that is its ``version_N`` folder, but for W&B (``save_dir: .``, ``name`` = the project)
    it is ``./<project>/<run id>/checkpoints`` in the working directory, and with no logger ``./checkpoints``.
    Here those go to ``checkpoints/`` in :func:`~lit_distill.export.export_dir`, the folder the student is
    exported to (the next free ``lightning_logs/version_N``), so each run keeps its files in one folder.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if run_folder_logger(trainer) is not None:
            return  # Lightning already uses the logger's version_N folder
        unset = [c for c in trainer.checkpoint_callbacks if c.dirpath is None]
        if unset:
            folder = str(export_dir(trainer) / "checkpoints")  # a collective: every rank takes part
            for callback in unset:
                callback.dirpath = folder


def batches_done(trainer: Trainer) -> int:
    """Batches the run has completed, in any stage (the sanity check's validation batches do not count)."""
    loops = (trainer.fit_loop.epoch_loop, trainer.validate_loop, trainer.test_loop, trainer.predict_loop)
    return sum(loop.batch_progress.total.completed for loop in loops)


def run_folder_logger(trainer: Trainer) -> CSVLogger | TensorBoardLogger | None:
    """The first logger when it keeps one folder per run (``version_N``), else None."""
    logger = trainer.loggers[0] if trainer.loggers else None
    return logger if isinstance(logger, (CSVLogger, TensorBoardLogger)) else None


def loss_names(module: LightningModule) -> list[str]:
    return [str(getattr(loss, "name", i)) for i, loss in enumerate(getattr(module, "losses", []) or [])]


def parameter_counts(module: LightningModule) -> dict[str, int]:
    """``params.student``, ``params.teacher`` and ``params.trainable`` (student plus loss adapters)."""
    counts = {}
    for side in ("student", "teacher"):
        model = getattr(module, side, None)
        if model is not None:
            counts[f"params.{side}"] = sum(p.numel() for p in model.parameters())
    trainable = getattr(module, "trainable_parameters", None)
    if callable(trainable):
        counts["params.trainable"] = sum(p.numel() for p in trainable())
    return counts


def flat_config(config: dict[str, Any], losses: list[str] | None = None) -> dict[str, Any]:
    """One level of dotted keys, named like the command-line flags that set them.

    ``class_path``/``init_args`` nesting collapses (``model.optimizer.lr``, as ``--model.optimizer.lr``
    sets it), and each entry of ``model.init_args.losses`` becomes ``loss.<name>.<arg>``, the form of
    ``--loss.<name>.<arg>`` (W&B sweeps pass parameters as such flags, so the names line up).

    Example:
        >>> flat_config({"model": {"class_path": "M", "init_args": {"losses": [
        ...     {"class_path": "L", "init_args": {"temperature": 4.0}}]}}}, ["logit_kd"])
        {'model.class_path': 'M', 'loss.logit_kd.class_path': 'L', 'loss.logit_kd.temperature': 4.0}
    """
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and "class_path" in value:
            flat[f"{key}.class_path"] = value["class_path"]
            walk({**(value.get("init_args") or {}), **(value.get("dict_kwargs") or {})}, key)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        else:
            flat[key] = value

    config = dict(config)
    model = dict(config.get("model") or {})
    init_args = dict(model.get("init_args") or {})
    entries = init_args.pop("losses", None) or []
    config["model"] = {**model, "init_args": init_args} if model else model
    walk(config, "")
    for i, entry in enumerate(entries):
        walk(entry, f"loss.{losses[i] if losses and i < len(losses) else i}")
    return flat


def discard_unstarted_run(folder: Path, created: list[Path]) -> bool:
    """Remove a run folder that a failed run created before its first step.

    Only when it holds nothing but what a logger writes up front (``LOGGER_FILES``); then the folders in
    ``created`` (those that did not exist before the run, innermost first) are removed while empty.
    Returns whether the run folder was removed.
    """
    if not folder.is_dir():
        return False
    files = [p for p in folder.rglob("*") if p.is_file()]
    if any(not p.name.startswith(LOGGER_FILES) for p in files):
        return False
    shutil.rmtree(folder)
    for path in created:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return True
