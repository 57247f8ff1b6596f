"""Quantization-aware distillation (QAD): the student trains under fake quantization and is exported quantized."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_distill.export import export_dir, is_writer, run_together
from lit_distill.quantization.qat import convert_qat, fake_quantized_layers, prepare_qat, set_fake_quant
from lit_distill.quantization.schemes import get_scheme
from lit_distill.quantization.storage import save_quantized
from lit_distill.weights import parse_dtype

__all__ = ["QuantizationAwareDistillation"]


class QuantizationAwareDistillation(Callback):
    """Train the student with torchao fake quantization, then export it quantized (QAD: quantization-aware KD).

    At ``setup`` (before the first-batch probe, the optimizer and any DDP/FSDP wrapping) the student's linear layers
    are swapped for fake-quantized ones: same parameters, same names, so every loss strategy, feature taps,
    checkpoints and resuming work unchanged, and the teacher's signal teaches the student to live with the rounding.
    At the end of ``fit`` a copy of the student is converted (the very rounding it trained with) and written with
    :func:`~lit_distill.quantization.save_quantized`; reload it with :func:`~lit_distill.quantization.load_quantized`.

    The LM head (and an embedding tied to it) stays in full precision unless ``quantize_head``. With a fused LM-head
    loss the head's weight is read directly by the loss, never through its fake quantizer, so ``quantize_head``
    together with a fused loss is refused (set ``fused: false`` on the loss to quantize the head).

    Args:
        scheme: ``int8_dynamic_int4_weight`` (8da4w: int4 weights in groups, int8 dynamic activations),
            ``int4_weight_only`` or ``int8_weight_only`` (one scale per output row). ``int8_dynamic_int8_weight``
            has no fake quantization in torchao and is refused; apply it after training
            (:func:`~lit_distill.quantization.quantize_model`).
        group_size: input features sharing one scale (grouped schemes); must divide every quantized layer's width.
        quantize_head: quantize the LM head too.
        skip: module-name patterns (``fnmatch``) left in full precision.
        start_step: optimizer steps in full precision before fake quantization switches on (a resumed run switches
            by its restored step).
        export: write the quantized student at the end of fit.
        path: export folder; default ``student_<scheme>`` in this run's folder.
        dtype: dtype of the unquantized parts and scales in the export (``bf16`` by default; None keeps the
            student's).
        overwrite: replace a non-empty export folder.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lit_distill.quantization.QuantizationAwareDistillation
              init_args: {scheme: int4_weight_only, group_size: 32}
    """

    def __init__(
        self,
        scheme: str = "int8_dynamic_int4_weight",
        group_size: int = 32,
        quantize_head: bool = False,
        skip: list[str] | None = None,
        start_step: int = 0,
        export: bool = True,
        path: str | None = None,
        dtype: str | None = "bf16",
        overwrite: bool = False,
    ) -> None:
        self.scheme = get_scheme(scheme)
        self.scheme.prepare_config(group_size)  # a scheme that cannot train fails here, not at setup
        if group_size <= 0 or start_step < 0:
            raise ValueError(f"group_size must be > 0 and start_step >= 0, got {group_size} and {start_step}.")
        self.group_size, self.quantize_head, self.skip = group_size, quantize_head, list(skip or [])
        self.start_step, self.export, self.path = start_step, export, path
        self.dtype, self.overwrite = parse_dtype(dtype), overwrite
        self.layers: list[str] = []
        self._enabled: bool | None = None
        self._target: Path | None = None

    def _record(self) -> dict[str, Any]:
        return {"scheme": self.scheme.name, "group_size": self.group_size, "layers": self.layers}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        student = pl_module.student
        fused = all(getattr(loss, "accepts_hidden", False) for loss in pl_module.losses) and all(
            hasattr(student, name) for name in ("forward_hidden", "get_output_embeddings")
        )  # the module's hidden-state path: the loss gets the head module and reads its weight
        if self.quantize_head and fused:
            raise ValueError(
                "QuantizationAwareDistillation(quantize_head=true) with a fused LM-head loss: the fused loss reads the "
                "head's weight directly and would train it without fake quantization. Set fused: false on the loss, "
                "or quantize_head: false."
            )
        prepared = fake_quantized_layers(student)
        if not prepared:
            self.layers = prepare_qat(student, self.scheme, self.group_size, self.quantize_head, self.skip)
            kept = [n for n, m in student.named_modules() if type(m).__name__ == "Linear"]
            rank_zero_info(
                f"QAD: {len(self.layers)} linear layers fake-quantized ({self.scheme.name}, group {self.group_size}); "
                f"kept in full precision: {', '.join(kept) or 'none'}"
            )
        else:
            self.layers = prepared  # a later trainer.fit/validate on the same module
        self._enabled = None
        if stage == "fit" and self.export and not trainer.fast_dev_run:
            target = self._target = self.target(trainer)
            if target.exists() and any(target.iterdir()) and not self.overwrite:
                raise FileExistsError(
                    f"QuantizationAwareDistillation: {str(target)!r} is not empty; set overwrite: true or change path."
                )

    def target(self, trainer: Trainer) -> Path:
        """The export folder; every rank must call it (see :func:`~lit_distill.export.export_dir`)."""
        return Path(self.path) if self.path else export_dir(trainer) / f"student_{self.scheme.name}"

    def _switch(self, pl_module: LightningModule, step: int) -> None:
        enabled = step >= self.start_step
        if enabled != self._enabled:
            set_fake_quant(pl_module.student, enabled)
            self._enabled = enabled

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._switch(pl_module, trainer.global_step)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._switch(pl_module, trainer.global_step)  # the student validated is the one training would export

    def state_dict(self) -> dict[str, Any]:
        return {**self._record(), "start_step": self.start_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {k: state_dict.get(k) for k in ("scheme", "group_size", "layers")}
        if saved != self._record():
            raise ValueError(
                f"the checkpoint was trained with fake quantization {saved['scheme']!r} (group {saved['group_size']}, "
                f"{len(saved['layers'] or [])} layers) but this run asks for {self.scheme.name!r} (group "
                f"{self.group_size}, {len(self.layers)} layers); resume with the checkpoint's settings."
            )
        self.start_step = int(state_dict.get("start_step", self.start_step))
        self._enabled = None  # the first batch after restoring switches by the restored step

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.export or trainer.fast_dev_run:
            return
        target = self._target or self.target(trainer)
        written = run_together(lambda: self.export_student(pl_module, target), "exporting the quantized student")
        rank_zero_info(f"quantized student ({self.scheme.name}) written to {written}")

    def export_student(self, pl_module: LightningModule, folder: Path) -> Path:
        """Convert a copy of the student (on the CPU, in ``dtype``) and write it; rank 0 writes."""
        from lit_distill.sharding.fill import is_sharded

        if is_sharded(pl_module.student):
            raise ValueError(
                "the quantized export needs an unsharded student; under fsdp2 export it with ExportPretrained and "
                f"quantize that folder: lit-distill quantize FOLDER --scheme {self.scheme.name} "
                f"--group_size {self.group_size} (the same rounding)."
            )
        if not is_writer():
            return folder
        student = copy.deepcopy(pl_module.student).to("cpu")
        if self.dtype is not None:
            student.to(self.dtype)
        convert_qat(student, self.scheme, self.group_size)
        return save_quantized(student, folder, self._record(), overwrite=self.overwrite)
