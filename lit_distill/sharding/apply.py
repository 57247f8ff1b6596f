"""Apply FSDP2 (``torch.distributed.fsdp.fully_shard``) to the parts of a distillation module.

Each model is sharded block by block and then at its root, so one block's full weights exist only while
it runs. The student computes in the trainer's mixed-precision dtype (weights gathered in bf16, gradients
reduced in fp32); the teacher keeps its own dtype and has no gradient machinery at all.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_distill.sharding.blocks import blocks_of, find_block_classes
from lit_distill.sharding.plan import ShardingPlan

_MIXED = {"bf16-mixed": torch.bfloat16}  # the one mixed precision Lightning's ModelParallelStrategy accepts


def student_mixed_precision(precision: str) -> object:
    """The FSDP2 mixed-precision policy for the trainer's ``precision`` (None for full-precision runs)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = _MIXED.get(str(precision))
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype is not None else None


def checkpoint_blocks(model: nn.Module, classes: tuple[type[nn.Module], ...]) -> None:
    """Wrap every block of ``model`` so that its activations are recomputed in backward."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, classes))


def shard_model(
    model: nn.Module,
    mesh: object,
    plan: ShardingPlan,
    *,
    mp_policy: object = None,
    reshard_after_forward: bool = True,
    checkpointing: bool = False,
) -> None:
    """``fully_shard`` each block of ``model`` (outermost first), then its root, over ``mesh``."""
    from torch.distributed.fsdp import fully_shard

    classes = find_block_classes(model, plan.block_classes)
    if checkpointing:
        checkpoint_blocks(model, classes)
    kwargs: dict = {"mesh": mesh}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for block in blocks_of(model, classes):
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)


def shard_trainable(module: nn.Module, mesh: object, mp_policy: object = None) -> None:
    """Shard a small trainable part (a loss adapter) as one unit, so its gradients are reduced across ranks."""
    from torch.distributed.fsdp import fully_shard

    if any(p.requires_grad for p in module.parameters()):
        fully_shard(module, mesh=mesh, **({"mp_policy": mp_policy} if mp_policy is not None else {}))
