"""Whole weights out of sharded models: gathered for export, or read back from a sharded checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import torch
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


def is_distributed_checkpoint(path: str | Path) -> bool:
    """A folder written by ``torch.distributed.checkpoint`` (``FSDP2Strategy``'s default checkpoint format)."""
    return Path(path).is_dir() and (Path(path) / ".metadata").is_file()


def read_distributed_weights(folder: str | Path, key_prefix: str = "state_dict.") -> dict[str, Tensor]:
    """The model weights of a sharded checkpoint folder, whole, on the CPU, without a process group.

    Only the entries under ``key_prefix`` (Lightning stores the module's state dict there) are read: the
    optimizer states beside them are skipped, so a 7B student needs about 28 GB of host memory, not 84.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    reader = FileSystemReader(str(folder))
    metadata = reader.read_metadata()
    state: dict[str, Tensor] = {}
    for key, meta in metadata.state_dict_metadata.items():
        if key.startswith(key_prefix) and hasattr(meta, "size"):
            state[key] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not state:
        raise ValueError(f"sharded checkpoint {str(folder)!r} holds no weights under {key_prefix!r}.")
    dcp.load(state, storage_reader=reader)
    return {k[len(key_prefix) :]: v for k, v in state.items()}
