"""Quantized students on disk: one safetensors file (torchao's flattened tensor subclasses, int4 packed two values a
byte) plus the architecture, and the one call that rebuilds them.

Layout of a quantized folder::

    model.safetensors    weights; quantized layers as torchao tensors (qdata/scale/zero_point), metadata says which
    quantization.json    scheme, group size, quantized layers, torchao version (the same record as in the metadata)
    config.json          the architecture, for lit-distill's GPT and Hugging Face students (others: pass model=)

Reload (CPU or GPU)::

    from lit_distill.quantization import load_quantized
    model = load_quantized("lightning_logs/version_0/student_int4_weight_only")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_distill.export import current_umask
from lit_distill.quantization.schemes import require_torchao

__all__ = ["load_quantized", "save_quantized", "RECORD_KEY"]

RECORD_KEY = "lit_distill.quantization"


def _pack_int4(values: torch.Tensor) -> torch.Tensor:
    """``[..., 2k]`` int8 values in [-8, 7] -> ``[..., k]`` uint8, the even column in the low nibble."""
    if values.shape[-1] % 2:
        raise ValueError(f"cannot pack int4 values along an odd last dimension ({values.shape[-1]}).")
    nibbles = (values.to(torch.int16) & 0xF).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_pack_int4`: sign-extended int8 values."""
    low, high = (packed & 0xF).to(torch.int16), (packed >> 4).to(torch.int16)
    values = torch.stack((low, high), dim=-1).flatten(-2)
    return torch.where(values > 7, values - 16, values).to(torch.int8)


def _int4_keys(state: dict[str, Any]) -> list[str]:
    """Flattened names of the int4 value tensors (torchao keeps int4 in int8: one value a byte)."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    keys = []
    for name, value in state.items():
        if isinstance(value, IntxUnpackedToInt8Tensor) and value.target_dtype == torch.int4:
            module, _, attr = name.rpartition(".")
            keys.append(f"{module}._{attr}_qdata" if module else f"_{attr}_qdata")
    return keys


def _tied_keys(state: dict[str, Any]) -> dict[str, str]:
    """``{key: key it repeats}`` for plain tensors that are the same tensor (a tied LM head): stored once."""
    first: dict[tuple[int, torch.Size], str] = {}
    tied = {}
    for key, value in state.items():
        if type(value) is not torch.Tensor:
            continue
        ident = (value.data_ptr(), value.shape)
        if ident in first:
            tied[key] = first[ident]
        else:
            first[ident] = key
    return tied


def architecture(model: nn.Module) -> dict[str, Any] | None:
    """The ``config.json`` that rebuilds ``model`` (lit-distill GPT or Hugging Face), or None for other models."""
    from lit_distill.models.gpt import GPT
    from lit_distill.models.hf import HFCausalLM

    if isinstance(model, GPT):
        return {"model_type": "lit_distill.GPT", **model.config}
    if isinstance(model, HFCausalLM):
        return {**model.model.config.to_dict(), "tokenizer_id": model.tokenizer_id, "lit_distill_class": "HFCausalLM"}
    return None


def build(config: dict[str, Any]) -> nn.Module:
    """A model with random weights from :func:`architecture`'s record."""
    from lit_distill.models.gpt import GPT
    from lit_distill.models.hf import HFCausalLM

    settings = dict(config)
    if settings.get("model_type") == "lit_distill.GPT":
        settings.pop("model_type")
        return GPT(**settings)
    settings.pop("lit_distill_class", None)
    tokenizer_id = settings.pop("tokenizer_id", None)
    return HFCausalLM(config=settings, tokenizer_id=tokenizer_id)


def save_quantized(model: nn.Module, folder: str | Path, record: dict[str, Any], overwrite: bool = False) -> Path:
    """Write a quantized ``model`` (after :func:`~lit_distill.quantization.quantize_model`) to ``folder``.

    ``record`` describes the quantization (scheme, group size, layers); it is stored in the file's metadata and in
    ``quantization.json``. A non-empty folder is refused unless ``overwrite``. Returns the folder.

    Example:
        >>> from lit_distill.quantization import quantize_model
        >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        >>> layers = quantize_model(model, "int8_weight_only")
        >>> folder = save_quantized(model, "student_int8", {"scheme": "int8_weight_only", "layers": layers})
        >>> sorted(p.name for p in folder.iterdir())
        ['model.safetensors', 'quantization.json']
    """
    require_torchao()
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{str(folder)!r} is not empty; pass overwrite=True or choose another folder.")
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    tied = _tied_keys(state)
    state = {k: v for k, v in state.items() if k not in tied}
    packed = _int4_keys(state)
    tensors, metadata = flatten_tensor_state_dict(state)
    tensors = {k: (_pack_int4(v) if k in packed else v).contiguous() for k, v in tensors.items()}
    import torchao

    record = {**record, "torchao": torchao.__version__, "packed_int4": packed, "tied": tied}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={**metadata, RECORD_KEY: json.dumps(record)})
    os.chmod(tmp, 0o666 & ~current_umask())
    tmp.replace(folder / "model.safetensors")
    (folder / "quantization.json").write_text(json.dumps(record, indent=2))
    config = architecture(model)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def read_record(folder: str | Path) -> dict[str, Any]:
    """The quantization record of a folder written by :func:`save_quantized`."""
    from safetensors import safe_open

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no model.safetensors; expected a folder from save_quantized.")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if RECORD_KEY not in metadata:
        raise ValueError(f"{str(path)!r} is not a lit-distill quantized export (no {RECORD_KEY!r} in its metadata).")
    return json.loads(metadata[RECORD_KEY])


def load_quantized(folder: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a quantized student written by :func:`save_quantized`, in eval mode, on ``device``.

    Args:
        folder: the export folder.
        model: the student's architecture (any weights: they are replaced); None builds it from ``config.json``
            (lit-distill GPT and Hugging Face students).
        device: where the weights go (quantized layers run there with torchao's kernels for that device).

    Example:
        >>> from lit_distill.quantization import quantize_model
        >>> def mlp():
        ...     return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        >>> model = mlp()
        >>> layers = quantize_model(model, "int4_weight_only", group_size=32)
        >>> record = {"scheme": "int4_weight_only", "group_size": 32, "layers": layers}
        >>> folder = save_quantized(model, "student_int4", record)
        >>> reloaded = load_quantized(folder, model=mlp())  # a GPT or Hugging Face student needs no model=
        >>> x = torch.randn(2, 64)
        >>> torch.equal(reloaded(x), model(x))
        True
    """
    require_torchao()
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    folder = Path(folder)
    record = read_record(folder)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        metadata = {k: v for k, v in (f.metadata() or {}).items() if k != RECORD_KEY}
    tensors = load_file(str(folder / "model.safetensors"), device=str(device))
    for key in record["packed_int4"]:
        tensors[key] = _unpack_int4(tensors[key])
    state, leftover = unflatten_tensor_state_dict(tensors, metadata)
    state.update({key: state[source] for key, source in record["tied"].items()})  # assigned as one tensor: tied
    if leftover:
        raise ValueError(f"{str(folder)!r}: tensors the metadata does not describe: {sorted(leftover)[:5]}")
    if model is None:
        config = folder / "config.json"
        if not config.is_file():
            raise FileNotFoundError(
                f"{str(folder)!r} has no config.json (the student is not a lit-distill GPT or Hugging Face model); "
                "pass the architecture: load_quantized(folder, model=MyStudent(...))."
            )
        model = build(json.loads(config.read_text()))
    model.load_state_dict(state, strict=True, assign=True)
    for key, source in record["tied"].items():  # assign made two parameters of the one stored tensor: one again
        owner, _, name = key.rpartition(".")
        setattr(model.get_submodule(owner), name, model.get_parameter(source))
    return model.to(device).eval()
