"""Reading and writing model weights, for any model: checkpoint files, the key-prefix rule, lazy sources.

Formats read: Lightning ``.ckpt`` and torch ``.pt``/``.pth`` files (``weights_only``: nothing but tensors and plain
containers is unpickled), ``.safetensors`` files, folders of them (Hugging Face ``save_pretrained``), and sharded
checkpoint folders written by ``torch.distributed.checkpoint`` (``--trainer.strategy fsdp2``).

One key-prefix rule serves every reader (:func:`resolve_prefix`): keys are taken as they are when they fit the model;
otherwise the one prefix among ``student.``, ``teacher.`` and ``model.`` under which they fit; two that fit is an
error that asks for the prefix, never a guess.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

_DTYPE_NAMES = {torch.float32: "float32 fp32 32", torch.bfloat16: "bfloat16 bf16", torch.float16: "float16 fp16 16"}
DTYPES: dict[str, torch.dtype] = {
    n: d for d, names in {**_DTYPE_NAMES, torch.float64: "float64 64"}.items() for n in names.split()
}

#: Prefixes a checkpoint may keep a model under: lit-distill's own (student, saved teacher), and common wrappers.
KNOWN_PREFIXES = ("student.", "teacher.", "model.")

FORMATS = (
    "a Lightning .ckpt, a torch .pt/.pth state dict, a .safetensors file or folder, or a sharded checkpoint folder"
)


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` -> ``torch.bfloat16``; None stays None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(set(DTYPES))}.")
    return DTYPES[key]


# ---------------------------------------------------------------------------------------------------------- files
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
    """Read a state dict from any format lit-distill reads (see the module docstring), on the CPU.

    Nothing is unpickled beyond tensors and plain containers, so an untrusted file cannot run code.
    ``mmap``: map a torch file instead of reading it, so that only the tensors touched are read.
    """
    path = Path(path)
    if is_distributed_checkpoint(path):
        return read_distributed_weights(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.")
    _refuse_non_checkpoint(path)
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


def _refuse_non_checkpoint(path: Path) -> None:
    """A file that is no checkpoint of any kind (a YAML, a log, a CSV) is named as such, not as a damaged one."""
    with open(path, "rb") as f:
        head = f.read(64)
    torch_file = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # zip (torch.save) or a legacy pickle
    safetensors_file = len(head) > 8 and head[8:9] == b"{"  # an 8-byte header length, then the JSON header
    if torch_file or safetensors_file or not head:
        return
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return  # binary, but of no known kind: let the readers say what they can
    first = (text.strip().splitlines() or [""])[0][:40]
    raise ValueError(f"{str(path)!r} is not a checkpoint but a text file (it starts with {first!r}); give {FORMATS}.")


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
    )


# --------------------------------------------------------------------------------------------------------- prefix
def resolve_prefix(
    stored: Mapping[str, tuple[int, ...]], wanted: Mapping[str, tuple[int, ...]], prefix: str | None, path: Any
) -> str:
    """The key prefix under which ``stored`` (name -> shape) holds ``wanted`` (the model's names -> shapes).

    ``prefix`` given: that one. None: ``""`` when the keys fit as they are, else the single one of
    :data:`KNOWN_PREFIXES` under which every wanted key is stored with its shape. When none fits, the one that
    covers the most keys is returned, so the caller's error lists what is missing; when several fit (a checkpoint
    that saved a student and a teacher of the same shape) it is an error: guessing could load the wrong model.

    Example:
        >>> resolve_prefix({"student.w": (2,), "teacher.w": (3,)}, {"w": (3,)}, None, "x.ckpt")
        'teacher.'
    """
    if prefix is not None:
        return prefix

    def fits(candidate: str) -> bool:
        return all(stored.get(candidate + k) == tuple(shape) for k, shape in wanted.items())

    if fits(""):
        return ""
    fitting = [c for c in KNOWN_PREFIXES if fits(c)]
    if len(fitting) > 1:
        raise ValueError(
            f"checkpoint {str(path)!r} holds weights that fit this model under {fitting}; say which with the "
            "checkpoint prefix (teacher_checkpoint_prefix: 'teacher.' for a teacher saved with save_teacher, "
            "'student.' for a model trained by lit-distill)."
        )
    if fitting:
        return fitting[0]
    return max(("", *KNOWN_PREFIXES), key=lambda c: sum(c + k in stored for k in wanted))


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def load_weights(model: nn.Module, path: str | Path, prefix: str | None = None, strict: bool = True) -> None:
    """Load ``path`` into ``model``; a missing file or a key/shape mismatch is a clear error.

    Args:
        model: the module to fill (built from config beforehand).
        path: any format lit-distill reads (module docstring).
        prefix: key prefix to strip (e.g. ``"student."``); None applies :func:`resolve_prefix`.
        strict: refuse missing or unexpected keys.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    chosen = resolve_prefix(_shapes(state), _shapes(own), prefix, path)
    if chosen:
        state = {k[len(chosen) :]: v for k, v in state.items() if k.startswith(chosen)}
    check_fits(state, own, f"checkpoint {str(path)!r}", type(model).__name__, strict)
    model.load_state_dict(state, strict=strict)
    mark_weights(model, path)


def check_fits(
    state: Mapping[str, Tensor], own: Mapping[str, Tensor], source: str, model: str, strict: bool = True
) -> None:
    """Raise, listing missing/unexpected keys and shape mismatches, when ``state`` does not fit ``own``."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(own.keys() & state.keys())
        if state[k].shape != own[k].shape
    ]
    if not shapes and not (strict and (missing or unexpected)):
        return
    lines = [f"{source} does not fit {model}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if shapes:
        lines.append(f"  shape mismatches: {shapes[:8]}")
    lines.append("  It belongs to a different model: check that the model config matches the one it was saved from.")
    raise ValueError("\n".join(lines))


# ------------------------------------------------------------------------------------------------ where from
def mark_weights(model: nn.Module, source: str | Path) -> None:
    """Record that ``model`` holds weights from ``source`` (a file, a folder, a description), for
    :func:`weights_source`."""
    model.weights_source = str(source)


def weights_source(model: nn.Module | None) -> str | None:
    """Where ``model``'s weights came from, or None when nothing lit-distill knows of loaded them.

    Known sources: :func:`load_weights`, ``load_state_dict`` on a model lit-distill watches (see
    :func:`lit_distill.teacher.watch_loads`), models that load themselves (``HFCausalLM(path=...)``,
    ``SentenceEncoder(path=...)``, ``GPT.from_pretrained``), any ``transformers`` model made by ``from_pretrained``,
    and a teacher-cache stand-in (its outputs come from the cache).

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


def has_meta_parameters(model: nn.Module | None) -> bool:
    """Whether any parameter of ``model`` still lives on the meta device (built without memory)."""
    return model is not None and any(p.is_meta for p in model.parameters())
