"""What ``DistillationModule.configure_model`` does with the models: shard them (FSDP2), fill empty ones, and the
speed settings that leave results and checkpoints unchanged (channels-last, ``torch.compile`` in place)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lit_distill.sharding.apply import shard_model, shard_trainable, student_mixed_precision
from lit_distill.sharding.materialize import WeightSource, materialize
from lit_distill.sharding.plan import ShardingPlan
from lit_distill.weights import has_meta_parameters


def sharding_plan(strategy: Any) -> ShardingPlan | None:
    """The plan when ``strategy`` is Lightning's ModelParallelStrategy (``fsdp2`` or plain), else None.

    A plain ModelParallelStrategy with a tensor-parallel size above 1 is refused: lit-distill shards over the
    data-parallel dimension only (FSDP2) and would silently feed every tensor-parallel rank the same data.
    """
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ValueError(
            "lit-distill shards with FSDP2: use --trainer.strategy fsdp2 (lit_distill.sharding.FSDP2Strategy), not "
            "Lightning's FSDP1 strategy 'fsdp'. FSDP1 flattens the teacher and the student into shared units, which "
            "fails for a teacher in its own dtype (bf16 beside an fp32 student) and for checkpoints without it."
        )
    if not isinstance(strategy, ModelParallelStrategy):
        return None
    tp = strategy.device_mesh["tensor_parallel"].size()
    if tp != 1:
        raise ValueError(
            f"ModelParallelStrategy has tensor_parallel_size={tp}; lit-distill shards with FSDP2 over data-parallel "
            "ranks only. Use --trainer.strategy fsdp2 (or ModelParallelStrategy(data_parallel_size=<all devices>, "
            "tensor_parallel_size=1))."
        )
    return getattr(strategy, "plan", None) or ShardingPlan()


def shard_pair(student: nn.Module, teacher: nn.Module | None, mesh: Any, plan: ShardingPlan, precision: str) -> None:
    """Shard the student (mixed precision of the trainer) and, unless replicated, the frozen teacher."""
    shard_model(
        student,
        mesh,
        plan,
        mp_policy=student_mixed_precision(precision),
        reshard_after_forward=plan.reshard_after_forward,
        checkpointing=plan.activation_checkpointing,
    )
    if teacher is not None and plan.teacher == "shard":
        # The teacher stores its own dtype already: no casting policy, and its gathered blocks are freed at once.
        shard_model(teacher, mesh, plan, reshard_after_forward=True)


def shard_adapters(losses: nn.Module, mesh: Any, precision: str) -> None:
    """Shard trainable loss parts (adapters created by the first batch), so their gradients are reduced too."""
    for loss in losses.children():
        shard_trainable(loss, mesh, student_mixed_precision(precision))


def fill_empty(model: nn.Module | None, device: torch.device, source: WeightSource | None, role: str) -> None:
    """Give a model built with empty (meta) parameters its weights on ``device``.

    The model's own ``materialize_weights(device)`` is used when it has one (``HFCausalLM(empty_init=True)``
    reads its folder), else ``source`` (a deferred ``teacher_checkpoint``). A model with meta parameters and no
    way to fill them is an error: random weights here would be a silent wrong result.
    """
    if not has_meta_parameters(model):
        return
    fill = getattr(model, "materialize_weights", None)
    if fill is not None:
        fill(device)
    elif source is not None:
        materialize(model, device, source)
    else:
        raise ValueError(
            f"the {role} ({type(model).__name__}) has parameters on the meta device and nothing to load them from; "
            f"give it weights (e.g. {'teacher_checkpoint' if role == 'teacher' else 'student_checkpoint'}) or build it "
            "normally."
        )
    if has_meta_parameters(model):
        left = [n for n, p in model.named_parameters() if p.is_meta][:5]
        raise ValueError(f"the {role} still has meta parameters after loading: {left}")


def place_models(
    student: nn.Module,
    teacher: nn.Module | None,
    trainer: Any,
    student_source: WeightSource | None = None,
    teacher_source: WeightSource | None = None,
) -> Any:
    """Shard both models when the trainer's strategy is FSDP2, and fill empty ones on the device.

    Returns the data-parallel device mesh when sharded (loss adapters are sharded over it later), else None.
    """
    strategy = getattr(trainer, "strategy", None)  # None: load_from_checkpoint builds the module without a trainer
    plan = sharding_plan(strategy)
    mesh = None
    if plan is not None:
        mesh = strategy.device_mesh["data_parallel"]
        shard_pair(student, teacher, mesh, plan, str(trainer.precision))
    device = strategy.root_device if strategy is not None else torch.device("cpu")
    fill_empty(student, device, student_source, "student")
    fill_empty(teacher, device, teacher_source, "teacher")
    return mesh


def to_channels_last(*models: nn.Module | None) -> None:
    """Store each model's 4-D parameters in channels-last format (faster convolutions with tensor cores)."""
    for model in models:
        if model is not None:
            model.to(memory_format=torch.channels_last)


def prepare_input(value: Any, cast: torch.dtype | None, channels_last: bool) -> Any:
    """A floating-point tensor input cast to ``cast`` (if given) and, when 4-D, made channels-last (if asked).

    Example:
        >>> prepare_input(torch.zeros(1, 3, 4, 4), torch.float16, True).is_contiguous(memory_format=torch.channels_last)
        True
    """
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return value
    if cast is not None:
        value = value.to(cast)
    if channels_last and value.ndim == 4:
        value = value.contiguous(memory_format=torch.channels_last)
    return value


def compile_in_place(models: tuple[nn.Module | None, ...], compile: bool | dict[str, Any]) -> bool:
    """``nn.Module.compile`` each model; a dict ``compile`` is passed as options (e.g. ``{"mode": "max-autotune"}``).

    It works in place, so parameter names (and checkpoints) do not change. Returns :func:`uses_cuda_graphs`.
    """
    options = compile if isinstance(compile, dict) else {}
    for model in models:
        if model is not None:
            model.compile(**options)
    return uses_cuda_graphs(compile)


def uses_cuda_graphs(compile: bool | dict[str, Any]) -> bool:
    """Whether ``compile`` options make ``torch.compile`` record CUDA graphs (``mode`` ``reduce-overhead`` or
    ``max-autotune``): replaying one graph per model instead of launching every kernel from Python is what small,
    launch-bound steps need. The module then marks each training step's start for the graph trees.

    Example:
        >>> uses_cuda_graphs({"mode": "reduce-overhead"}), uses_cuda_graphs(True)
        (True, False)
    """
    return isinstance(compile, dict) and compile.get("mode") in ("reduce-overhead", "max-autotune")
