"""DistillationModule: a frozen teacher, a trainable student and weighted loss strategies."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_distill.batch import BatchParts, cached_teacher_output, split_batch, teacher_view
from lit_distill.checks import (
    check_data_vocabulary,
    check_fit_start,
    check_losses,
    check_models,
    probe_first_batch,
)
from lit_distill.export import save_student
from lit_distill.features import FeatureTaps, taps_for_losses
from lit_distill.guard import NonFiniteGuard, skip_everywhere, zero_loss
from lit_distill.losses.base import DistillationLoss, weighted_sum
from lit_distill.losses.logit import CrossEntropy, LogitKD
from lit_distill.metrics import EvalMetrics, monitors_train_metric, train_logging_step
from lit_distill.outputs import ModelOutput, as_model_output, hidden_states
from lit_distill.sharding.wrap import (
    compile_in_place,
    place_models,
    prepare_input,
    shard_adapters,
    to_channels_last,
)
from lit_distill.teacher import TEACHER_PREFIX, TeacherLifecycle, ddp_ignore_list, load_or_defer, load_teacher
from lit_distill.weights import parse_dtype

__all__ = ["DistillationModule", "TEACHER_PREFIX"]


def _adamw(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    # The fused kernel updates every parameter in one pass (about 12% of a 0.4B student's step on an H100).
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=fused or None)


class DistillationModule(TeacherLifecycle, LightningModule):
    """Train ``student`` to match a frozen ``teacher`` through a weighted sum of loss strategies.

    One step: batch -> teacher (eval, no grad, own dtype) -> outputs; batch -> student -> outputs;
    ``total = Σ weight_i · strategy_i(student_out, teacher_out, batch)``, each term logged as ``train/<name>``,
    the total as ``train/loss``. Without a teacher it is plain supervised training (the baseline; how a teacher is
    trained). The teacher's lifecycle (frozen, out of the optimizer and of checkpoints): :mod:`lit_distill.teacher`.

    Args:
        student: the model to train.
        teacher: the frozen model to learn from; None trains the student alone.
        losses: strategies (``class_path`` in YAML). Default: ``[LogitKD(temperature=4)]`` with a
            teacher, ``[CrossEntropy()]`` without.
        teacher_checkpoint: weights for the teacher (Lightning ``.ckpt`` or ``.safetensors``).
        teacher_checkpoint_prefix: key prefix to strip; None: :func:`lit_distill.weights.resolve_prefix`.
        student_checkpoint: optional weights to start the student from.
        teacher_dtype: run the teacher in this dtype (``"bf16"``, ``"fp16"``, ...); None keeps it.
        save_teacher: also store the teacher's weights in checkpoints.
        optimizer: optimizer factory (``torch.optim.AdamW(lr=1e-3)`` by default).
        lr_scheduler: optional scheduler factory.
        nan_policy: on a NaN/inf loss term, ``"raise"`` stops the run naming the step, the term and its last finite
            value (no per-step sync; always checked before a checkpoint is written); ``"skip"`` skips that batch's
            update on every rank together (one small collective per step).
        compile: ``torch.compile`` student and teacher in place (state-dict keys unchanged); a dict is passed to
            ``nn.Module.compile`` (``{mode: reduce-overhead}``: CUDA graphs, for small steps).
        channels_last: conv models and 4-D inputs in channels-last memory format (faster on tensor cores).
        allow_untrained_teacher: for recipes: accept a teacher built from the recipe's config with no weights loaded
            (refused otherwise, before any compute). A teacher passed in Python is always taken as it is.

    Example:
        >>> from lit_distill.models import MLP
        >>> module = DistillationModule(
        ...     student=MLP(64, [32], 10), teacher=MLP(64, [256], 10),
        ...     losses=[LogitKD(temperature=4.0), CrossEntropy(weight=0.5)])
        >>> any(p.requires_grad for p in module.teacher.parameters())
        False
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        losses: list[DistillationLoss] | None = None,
        teacher_checkpoint: str | None = None,
        teacher_checkpoint_prefix: str | None = None,
        student_checkpoint: str | None = None,
        teacher_dtype: str | None = None,
        save_teacher: bool = False,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        nan_policy: Literal["raise", "skip"] = "raise",
        compile: bool | dict[str, Any] = False,
        channels_last: bool = False,
        allow_untrained_teacher: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher", "losses", "optimizer", "lr_scheduler"])
        self.student = student
        if losses is None:
            losses = [LogitKD(temperature=4.0)] if teacher is not None else [CrossEntropy()]
        self.losses = nn.ModuleList(check_losses(losses, teacher))
        prefix = teacher_checkpoint_prefix
        self._teacher_source = load_teacher(teacher, student, teacher_checkpoint, prefix, teacher_dtype)
        self._student_source = load_or_defer(student, student_checkpoint)
        self.teacher = teacher
        if teacher is not None:
            self._ddp_params_and_buffers_to_ignore = ddp_ignore_list(teacher)
        self.teacher_dtype = parse_dtype(teacher_dtype)
        self.save_teacher = save_teacher
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.val_metrics, self.test_metrics = EvalMetrics(), EvalMetrics()
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"nan_policy must be 'raise' or 'skip', got {nan_policy!r}.")
        self.nan_policy, self._guard = nan_policy, NonFiniteGuard()
        self.compile_models, self.channels_last, self.allow_untrained_teacher = (
            compile,
            channels_last,
            allow_untrained_teacher,
        )
        if channels_last:
            to_channels_last(student, teacher)
        self._configured = self._graph_steps = self.predict_teacher = False
        self._taps: dict[str, FeatureTaps] = {}
        self._probed = self._probing = self._monitored_train_metric = self._skipping = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._guard.check()  # never write weights that a NaN loss has already touched

    def on_train_epoch_end(self) -> None:
        self._guard.check()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skipping:  # no gradient at all: the optimizer leaves every parameter and its state as they were
            optimizer.zero_grad(set_to_none=True)

    def split_batch(self, batch: Any) -> BatchParts:
        """The batch layout, in one place: ``(args, kwargs, targets)``, models called as ``model(*args, **kwargs)``,
        batch size ``len(args[0])``. Model calls, batch sizes, evaluation targets and the first-batch probe read the
        batch through it: override it for other layouts (strategies get the batch as the data module made it)."""
        return split_batch(batch)

    def _run(self, model: nn.Module, side: str, batch: Any, cast: torch.dtype | None = None) -> ModelOutput:
        args, kwargs, _ = self.split_batch(teacher_view(batch) if side == "teacher" else batch)  # its own tokens
        if cast is not None or self.channels_last:
            args = tuple(prepare_input(a, cast, self.channels_last) for a in args)
        taps = self._taps.get(side)
        with taps.capture() if taps is not None else contextlib.nullcontext({}) as features:
            if self._use_hidden():
                out = ModelOutput(hidden=hidden_states(model, args, kwargs), head=model.get_output_embeddings())
            else:
                out = as_model_output(model(*args, **kwargs))
        out.features.update(features)
        return out

    def _use_hidden(self) -> bool:
        """Hand strategies hidden states + LM head instead of logits (fused LM-head losses never make the
        ``[tokens, vocab]`` logits): in training only (evaluation keeps logits), when every strategy accepts hidden
        states and both models (so not a cached teacher) expose ``forward_hidden`` and ``get_output_embeddings``."""
        models = (self.student, self.teacher)
        return (
            (self.training or self._probing)  # the probe runs in eval mode but checks the path training takes
            and all(getattr(loss, "accepts_hidden", False) for loss in self.losses)
            and all(hasattr(m, "forward_hidden") and hasattr(m, "get_output_embeddings") for m in models)
        )

    def forward_student(self, batch: Any) -> ModelOutput:
        """Run the student on ``batch``; override to change how the student is called."""
        return self._run(self.student, "student", batch)

    @torch.no_grad()
    def forward_teacher(self, batch: Any) -> ModelOutput:
        """Run the frozen teacher (no grad, eval, its own dtype); override to change how it is called.

        ``no_grad``, not ``inference_mode``: the losses save teacher probabilities for the student's backward. With
        ``teacher_dtype`` set, autocast is off around the teacher so it computes in exactly that dtype.
        """
        if self.teacher_dtype is None:
            return self._run(self.teacher, "teacher", batch)
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self._run(self.teacher, "teacher", batch, cast=self.teacher_dtype)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The student's forward: a trained module predicts like its student."""
        return self.student(*args, **kwargs)

    def compute_losses(
        self, student_out: ModelOutput, teacher_out: ModelOutput | None, batch: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum of every strategy, ``(total, {term_name: unweighted value})``; override in a subclass to
        combine terms differently (e.g. a schedule over the weights)."""
        return weighted_sum(self.losses, student_out, teacher_out, batch)

    def shared_step(self, batch: Any) -> tuple[Tensor, dict[str, Tensor], ModelOutput, ModelOutput | None]:
        teacher_out = cached_teacher_output(batch)
        if teacher_out is None and self.teacher is not None:
            teacher_out = self.forward_teacher(batch)
        student_out = self.forward_student(batch)
        total, terms = self.compute_losses(student_out, teacher_out, batch)
        return total, terms, student_out, teacher_out

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self._graph_steps:  # CUDA graphs: the last step's graph outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        total, terms, _, _ = self.shared_step(batch)
        bs = self.split_batch(batch).size
        if self.nan_policy == "skip":
            self._skipping = skip_everywhere(self.trainer.strategy, self.global_step, self.global_rank, total, terms)
            if self._skipping:
                self.log("train/skipped_batches", 1.0, reduce_fx="sum", on_step=False, on_epoch=True, batch_size=bs)
                return zero_loss(self.trainable_parameters())
        else:
            self._guard.observe(self.global_step, {**terms, "loss": total})
        if self._monitored_train_metric or train_logging_step(self._trainer, self.global_step):
            for name, value in terms.items():
                self.log(f"train/{name}", value.detach(), batch_size=bs)
            self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        return total

    def _eval_step(self, batch: Any, stage: str, metrics: EvalMetrics) -> None:
        total, terms, student_out, teacher_out = self.shared_step(batch)
        bs = self.split_batch(batch).size
        for name, value in {**terms, "loss": total}.items():
            self.log(f"{stage}/{name}", value, batch_size=bs, sync_dist=True)
        teacher_logits = None if teacher_out is None else teacher_out.logits
        targets, teacher_targets = self.split_batch(batch).targets, self.split_batch(teacher_view(batch)).targets
        metrics.observe(student_out.logits, teacher_logits, targets, teacher_targets)
        metrics.log_to(self, stage, bs)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor | ModelOutput | None:
        """The student's logits (or embedding); the teacher's ModelOutput if ``predict_teacher`` (cache writer)."""
        out = self.forward_teacher(batch) if self.predict_teacher else self.forward_student(batch)
        return out if self.predict_teacher else (out.logits if out.logits is not None else out.extra.get("embedding"))

    def setup(self, stage: str) -> None:
        super().setup(stage)  # the teacher's trained-weights rule
        taps_for_losses(self.losses, {"student": self.student, "teacher": self.teacher}, self._taps)
        if stage in ("fit", "validate", "test"):
            check_data_vocabulary(self._trainer, self.student, self.teacher)
        check_models(self.losses, self.student, self.teacher, getattr(self._trainer, "datamodule", None))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._monitored_train_metric = monitors_train_metric(self.trainer)  # then log train/* on every step
        check_fit_start(self)

    def configure_model(self) -> None:
        """Place the models for the strategy (``fsdp2``: sharded; empty models: filled), then probe one batch.

        The probe runs teacher, student and every loss on the first batch before any optimizer exists, so wrong
        shapes fail before training and lazily sized adapters are seen by the optimizer and gradient sync.
        """
        if self._configured:
            return  # Lightning calls this for every trainer entry point
        trainer = self._trainer
        mesh = place_models(self.student, self.teacher, trainer, self._student_source, self._teacher_source)
        if trainer is not None and trainer.state.fn == "fit" and not self._probed:
            self._probed = probe_first_batch(self)
        if mesh is not None:
            shard_adapters(self.losses, mesh, str(trainer.precision))
        if self.compile_models:
            self._graph_steps = compile_in_place((self.student, self.teacher), self.compile_models)
        self._configured = True

    def teardown(self, stage: str) -> None:
        for taps in self._taps.values():
            taps.remove()
        self._taps.clear()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student parameters plus trainable loss parts (adapters), never the teacher's."""
        return [p for part in (self.student, self.losses) for p in part.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        params = self.trainable_parameters()
        if not params:
            raise ValueError("the student has no trainable parameters (all have requires_grad=False).")
        optimizer, scheduler = self.optimizer_factory(params), self.scheduler_factory
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler(optimizer)}

    def export_student(self, path: str | Path, include_adapters: bool = False, overwrite: bool = False) -> Path:
        """Write the student's weights (and, if asked, the loss adapters) as safetensors.

        Returns the path. Refuses to replace an existing file unless ``overwrite=True``."""
        return save_student(self, path, include_adapters=include_adapters, overwrite=overwrite)
