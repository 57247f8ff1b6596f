"""Whole weights out of a sharded model, gathered for export."""

from __future__ import annotations

from torch import Tensor, nn


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (FSDP2 / model-parallel shards)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s whole state dict on the CPU.

    For a sharded model this is a collective: EVERY rank must call it; rank 0 receives the full tensors
    and the other ranks an empty dict. For an ordinary model it is a plain CPU copy on every rank.
    """
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
