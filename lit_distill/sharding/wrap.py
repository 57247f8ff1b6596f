"""How ``DistillationModule.configure_model`` prepares the models for training: FSDP2 ``fully_shard`` block by block
(the blocks found here), activation checkpointing, empty models filled on their device, and the speed settings that
leave results and checkpoints unchanged (channels-last, ``torch.compile`` in place).

Each model is sharded block by block and then at its root, so one block's full weights exist only while it runs.
The student computes in the trainer's mixed-precision dtype (weights gathered in bf16, gradients reduced in fp32);
the teacher keeps its own dtype and has no gradient machinery at all.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lit_distill.sharding.fill import WeightSource, fill_empty
from lit_distill.sharding.strategy import ShardingPlan, sharding_plan

_MIXED = {"bf16-mixed": torch.bfloat16}  # the one mixed precision Lightning's ModelParallelStrategy accepts


def find_block_classes(model: nn.Module, names: Sequence[str] | None = None) -> tuple[type[nn.Module], ...]:
    """The classes of ``model``'s transformer blocks: the units FSDP shards one at a time.

    In order: the class ``names`` given (e.g. ``["LlamaDecoderLayer"]``); the ``_no_split_modules`` that Hugging
    Face models (and lit-distill's ``GPT``) declare; else the class of the longest ``nn.ModuleList`` whose
    entries all share one class.

    Args:
        model: the student or teacher.
        names: class names to use instead of discovering them.

    Raises:
        ValueError: a name matches no submodule class (the closest ones are listed), or nothing repeats.

    Example:
        >>> from lit_distill.models import GPT
        >>> [c.__name__ for c in find_block_classes(GPT(n_layer=2, n_head=2, n_embd=16))]
        ['Block']
    """
    by_name: dict[str, type[nn.Module]] = {type(m).__name__: type(m) for m in model.modules()}
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            hints = {n: difflib.get_close_matches(n, by_name, n=3) for n in unknown}
            raise ValueError(
                f"block class(es) {unknown} do not occur in {type(model).__name__}; closest: {hints}. "
                f"Its submodule classes are: {sorted(by_name)}."
            )
        return tuple(by_name[n] for n in names)
    declared = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or ())}
    found = tuple(cls for name, cls in by_name.items() if name in declared)
    if found:
        return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) and len({type(c) for c in m}) == 1]
    if not lists:
        raise ValueError(
            f"found no repeated blocks in {type(model).__name__} to shard; name their class, e.g. "
            "FSDP2Strategy(block_classes=[MyBlock])."
        )
    return (type(max(lists, key=len)[0]),)


def blocks_of(model: nn.Module, classes: tuple[type[nn.Module], ...]) -> list[nn.Module]:
    """The block instances of ``model``, outermost first (a block nested in a block is not listed again)."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, classes):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


def student_mixed_precision(precision: str) -> object:
    """The FSDP2 mixed-precision policy for the trainer's ``precision`` (None for full-precision runs)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = _MIXED.get(str(precision))
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype is not None else None


def shard_model(
    model: nn.Module,
    mesh: object,
    plan: ShardingPlan,
    *,
    mp_policy: object = None,
    reshard_after_forward: bool = True,
    checkpointing: bool = False,
) -> None:
    """``fully_shard`` each block of ``model`` (outermost first), then its root, over ``mesh``; with
    ``checkpointing`` each block's activations are recomputed in backward instead of kept."""
    from torch.distributed.fsdp import fully_shard

    classes = find_block_classes(model, plan.block_classes)
    if checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, classes))
    kwargs: dict = {"mesh": mesh}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for block in blocks_of(model, classes):
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)


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
    """Shard each trainable loss part (adapters created by the first batch) as one unit, so its gradients are
    reduced across ranks too."""
    from torch.distributed.fsdp import fully_shard

    policy = student_mixed_precision(precision)
    for loss in losses.children():
        if any(p.requires_grad for p in loss.parameters()):
            fully_shard(loss, mesh=mesh, **({"mp_policy": policy} if policy is not None else {}))


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
