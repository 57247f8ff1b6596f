"""How big weights are filled and gathered: models built without memory, filled shard by shard on the device that
owns them, and whole weights gathered back out of a sharded model for export.

``empty_parameters()`` builds a model whose parameters live on the meta device (no memory, no init work)
while its buffers (rotary frequencies, position ids) are computed as usual. After FSDP has sharded it,
:func:`materialize` gives every rank memory for its own shards only and fills them from a :class:`WeightSource`
read lazily (safetensors slices, or an mmapped torch checkpoint), so a teacher is never whole on one rank.
:func:`full_state_dict` is the way back: the whole weights of a sharded model, gathered on rank 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_distill.weights import has_meta_parameters, is_distributed_checkpoint, read_state_dict, resolve_prefix

_register_parameter = nn.Module.register_parameter


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Create every parameter registered inside on the meta device; buffers keep their real values.

    Initialisers run on meta tensors and cost nothing, so building a 70B-parameter model takes seconds.

    Example:
        >>> with empty_parameters():
        ...     layer = nn.Linear(4096, 4096)
        >>> layer.weight.device.type
        'meta'
    """

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        _register_parameter(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign]


class WeightSource:
    """Named full-size tensors read lazily, so a rank reads only the rows of its own shard.

    Args:
        path: a ``.safetensors`` file, a folder of them (a Hugging Face ``save_pretrained`` folder, sharded or
            not), or a torch/Lightning checkpoint (opened with ``mmap=True, weights_only=True``).
        prefix: key prefix to strip (e.g. ``"student."`` for a lit-distill checkpoint).
    """

    def __init__(self, path: str | Path, prefix: str = "") -> None:
        self.path, self.prefix = Path(path), prefix
        self._files: dict[str, Path] = {}
        self._open: dict[Path, Any] = {}
        self._tensors: Mapping[str, Tensor] | None = None
        files = sorted(self.path.glob("*.safetensors")) if self.path.is_dir() else [self.path]
        if is_distributed_checkpoint(self.path) or (files and files[0].suffix != ".safetensors"):
            self._tensors = read_state_dict(self.path, mmap=True)
            return
        if not files:
            raise FileNotFoundError(f"{str(self.path)!r} holds no *.safetensors weights.")
        from safetensors import safe_open

        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"weights file {str(file)!r} does not exist.")
            with safe_open(str(file), framework="pt") as f:
                self._files.update({k: file for k in f.keys()})

    @classmethod
    def matching(cls, path: str | Path, model: nn.Module, prefix: str | None = None) -> WeightSource:
        """A source for ``model``, its key prefix chosen by :func:`lit_distill.weights.resolve_prefix`."""
        source = cls(path)
        names = source._tensors if source._tensors is not None else source._files
        stored = {key: source._shape(key) for key in names}
        wanted = {name: tuple(p.shape) for name, p in model.named_parameters()}
        source.prefix = resolve_prefix(stored, wanted, prefix, path)
        return source

    def keys(self) -> set[str]:
        names = self._files if self._tensors is None else self._tensors
        return {k[len(self.prefix) :] for k in names if k.startswith(self.prefix)}

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shape(self.prefix + name)

    def _shape(self, key: str) -> tuple[int, ...]:
        if self._tensors is not None:
            return tuple(self._tensors[key].shape)
        return tuple(self._slice(key).get_shape())

    def read(self, name: str, index: tuple[slice, ...]) -> Tensor:
        """Rows/columns ``index`` of the tensor ``name`` (without the prefix)."""
        key = self.prefix + name
        if self._tensors is not None:
            return self._tensors[key][index]
        return self._slice(key)[index]

    def _slice(self, key: str) -> Any:
        """A lazy view of ``key`` in its safetensors file; each file is opened once, not once per read."""
        from safetensors import safe_open

        file = self._files[key]
        if file not in self._open:
            self._open[file] = safe_open(str(file), framework="pt")
        return self._open[file].get_slice(key)


def _local_view(param: Tensor) -> tuple[Tensor, tuple[slice, ...]]:
    """The tensor this rank holds and which part of the full tensor it is (all of it when not sharded)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return param.data, tuple(slice(0, n) for n in param.shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return param.to_local(), tuple(slice(o, o + n) for o, n in zip(offset, shape))


def _tied_parameters(model: nn.Module) -> list[list[str]]:
    """Groups of names under which one Parameter object is registered (tied embeddings)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


@torch.no_grad()
def materialize(model: nn.Module, device: torch.device, source: WeightSource | None = None, std: float = 0.02) -> None:
    """Give ``model``'s meta parameters memory on ``device`` (only this rank's shards) and fill them.

    With ``source`` every parameter is read from it (strict: missing or extra keys and shape mismatches are
    errors naming them); without, weights are drawn at random (``N(0, std)`` for matrices, 1 for norm scales,
    0 for biases), which is what size and speed measurements need.
    """
    buffers = {name: b.detach().to(device) for name, b in model.named_buffers() if not b.is_meta}
    ties = _tied_parameters(model)
    model.to_empty(device=device)
    for name, value in buffers.items():
        model.get_buffer(name).copy_(value)  # to_empty also emptied the buffers it had
    for first, *others in ties:  # to_empty gives each place its own tensor: tie them again
        shared = model.get_parameter(first)
        for name in others:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, shared)
    params = dict(model.named_parameters())
    if source is None:
        for name, param in params.items():
            local, _ = _local_view(param)
            if local.ndim >= 2:
                local.normal_(0.0, std)
            else:
                local.fill_(0.0 if name.endswith("bias") else 1.0)
        return
    available = source.keys()
    missing = sorted(set(params) - available)
    if missing:
        raise ValueError(
            f"weights {str(source.path)!r} lack {len(missing)} parameter(s) of {type(model).__name__}: {missing[:8]}"
        )
    for name, param in params.items():
        stored = source.shape(name)
        if stored != tuple(param.shape):
            shape = tuple(param.shape)
            raise ValueError(f"{name}: weights {str(source.path)!r} hold shape {stored}, the model {shape}.")
        local, index = _local_view(param)
        local.copy_(source.read(name, index))


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


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (FSDP2 / model-parallel shards)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s whole state dict on the CPU.

    For a sharded model this is a collective: EVERY rank must call it; rank 0 receives the full tensors
    and the other ranks an empty dict. For an ordinary model it is its detached tensors on the CPU, on every rank
    (the model's own tensors when it lives on the CPU: read them, do not modify them).
    """
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
