"""Loading weights into a model, and keeping a teacher frozen."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "16": torch.float16,
    "float64": torch.float64,
    "64": torch.float64,
}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` -> ``torch.bfloat16``; None stays None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(set(DTYPES))}.")
    return DTYPES[key]


def producer_hint(path: Path, config_dir: str | Path = "configs", again: bool = False) -> str:
    """Name the bundled recipe whose checkpoint callback writes ``path``, if any (" Create it first with: ...").

    ``again``: the file exists but is unusable, so the command also asks to replace it.
    """
    configs = Path(config_dir)
    if not configs.is_dir():
        return ""
    for config in sorted(configs.rglob("*.yaml")):
        text = config.read_text(encoding="utf-8", errors="replace")
        if f"dirpath: {path.parent.as_posix()}" in text and f"filename: {path.stem}" in text:
            command = f"lit-distill fit --config {config.as_posix()}"
            if again:
                return f" Recreate it with: {command} --trainer.callbacks.init_args.overwrite=true"
            return f" Create it first with: {command}"
    return ""


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
    dcp.load(state, storage_reader=reader, no_dist=True)  # each rank reads for itself: no collective
    return {k[len(key_prefix) :]: v for k, v in state.items()}


def read_state_dict(path: str | Path, mmap: bool = False) -> dict[str, Tensor]:
    """Read a state dict from a Lightning ``.ckpt``/torch file (``weights_only=True``), ``.safetensors``, or a
    sharded checkpoint folder (``--trainer.strategy fsdp2``; read whole, without a process group).

    Nothing is unpickled beyond tensors and plain containers, so an untrusted file cannot run code.
    ``mmap``: map a torch file instead of reading it, so that only the tensors touched are read.
    """
    path = Path(path)
    if is_distributed_checkpoint(path):
        return read_distributed_weights(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.{producer_hint(path)}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors' own error type; re-raised with the path
            raise ValueError(_damaged(path, err)) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - re-raised with the path and the reason
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and found:  # whole, but holds more than tensors and containers
            raise ValueError(
                f"could not read {str(path)!r} as a weights-only torch checkpoint: it holds a pickled "
                f"{found.group(1)!r}. lit-distill never unpickles arbitrary objects; re-save the weights with "
                "safetensors or torch.save(state_dict)."
            ) from err
        raise ValueError(_damaged(path, err)) from err  # zip, EOF or opcode errors of a cut or garbled file
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{str(path)!r} holds no state dict of tensors.")
    return dict(obj)


def _first_line(err: BaseException) -> str:
    """The first sentence of an error message (torch's run on for lines), or its type when it has none."""
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))  # torch's own words come after advice
    text = unpickler.group(1) if unpickler else (str(err).strip().splitlines() or [""])[0]
    text = text.split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {text}" if text and text != type(err).__name__ else type(err).__name__


def _damaged(path: Path, err: BaseException) -> str:
    return (
        f"checkpoint {str(path)!r} is damaged or truncated ({path.stat().st_size:,} bytes; {_first_line(err)}): "
        "it cannot be read at all. Copy it again from where it came from, or write it anew."
        + producer_hint(path, again=True)
    )


def _strip_prefix(state: dict[str, Tensor], prefix: str | None, expected: set[str]) -> dict[str, Tensor]:
    if prefix is None:
        # A DistillationModule checkpoint stores its trained model under "student.": that is what
        # a teacher trained with lit-distill's no-teacher baseline looks like.
        if not (state.keys() & expected):
            for candidate in ("student.", "model.", "teacher."):
                stripped = {k[len(candidate) :]: v for k, v in state.items() if k.startswith(candidate)}
                if stripped.keys() & expected:
                    return stripped
        return state
    if not prefix:
        return state
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_weights(model: nn.Module, path: str | Path, prefix: str | None = None, strict: bool = True) -> None:
    """Load ``path`` into ``model``; a missing file or a key/shape mismatch is a clear error.

    Args:
        model: the module to fill (built from config beforehand).
        path: ``.ckpt``/``.pt`` (Lightning or torch) or ``.safetensors``.
        prefix: key prefix to strip (e.g. ``"student."``). None tries ``student.``, ``model.`` and
            ``teacher.`` when the keys do not match as they are.
        strict: refuse missing or unexpected keys.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    state = _strip_prefix(state, prefix, set(own))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(own.keys() & state.keys())
        if state[k].shape != own[k].shape
    ]
    if shapes or (strict and (missing or unexpected)):
        lines = [f"checkpoint {str(path)!r} does not fit {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            lines.append(
                f"  unexpected keys ({len(unexpected)}): {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
            )
        if shapes:
            lines.append(f"  shape mismatches: {shapes[:8]}")
        lines.append("  Check that the model config matches the one the checkpoint was trained with.")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=strict)
    mark_weights(model, path)


def mark_weights(model: nn.Module, source: str | Path) -> None:
    """Record that ``model`` holds weights from ``source`` (a file or folder), for :func:`weights_source`."""
    model.weights_source = str(source)


def weights_source(model: nn.Module | None) -> str | None:
    """Where ``model``'s weights came from, or None when it was built from its config and nothing was loaded.

    Known sources: :func:`load_weights` (``teacher_checkpoint``), models that load themselves
    (``HFCausalLM``, ``SentenceEncoder(path=...)``, ``GPT.from_pretrained``), any ``transformers`` model made by
    ``from_pretrained``, and a teacher-cache stand-in (its outputs come from the cache).

    Example:
        >>> weights_source(nn.Linear(2, 2)) is None
        True
    """
    if model is None:
        return None
    if getattr(model, "reads_from_batch", False):
        return "the teacher cache"
    source = getattr(model, "weights_source", None)
    if source:
        return str(source)
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) if not isinstance(config, Mapping) else None
    return name if isinstance(name, str) and name else None


def freeze(model: nn.Module) -> nn.Module:
    """Switch off gradients and put ``model`` in eval mode; returns it."""
    model.requires_grad_(False)
    model.eval()
    return model
