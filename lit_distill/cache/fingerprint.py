"""Fingerprints that tie a teacher cache to the teacher and the dataset it was written from."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["fingerprint_module", "fingerprint_dataset", "class_name"]


def class_name(obj: Any) -> str:
    """``module.QualName`` of ``obj``'s class."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _feed_tensor(h: Any, t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint_module(model: nn.Module) -> str:
    """SHA-256 of the class name and every state-dict entry (name, dtype, shape, bytes).

    Buffers count (BatchNorm statistics change outputs), and so does the dtype the teacher runs in.

    Args:
        model: the teacher.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> fingerprint_module(a) == fingerprint_module(a), fingerprint_module(a) == fingerprint_module(b)
        (True, False)
    """
    h = hashlib.sha256(class_name(model).encode())
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        if isinstance(value, Tensor):
            _feed_tensor(h, value)
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _feed_item(h: Any, item: Any) -> None:
    if isinstance(item, Tensor):
        _feed_tensor(h, item)
    elif isinstance(item, np.ndarray):
        _feed_tensor(h, torch.from_numpy(np.ascontiguousarray(item)))
    elif isinstance(item, Mapping):
        h.update(b"{")
        for key in sorted(item, key=str):
            h.update(str(key).encode())
            _feed_item(h, item[key])
        h.update(b"}")
    elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
        h.update(b"[")
        for value in item:
            _feed_item(h, value)
        h.update(b"]")
    elif isinstance(item, (str, bytes, int, float, bool, type(None))):
        h.update(repr(item).encode())
    elif hasattr(item, "__array__"):
        _feed_item(h, np.asarray(item))
    else:
        raise TypeError(
            f"cannot fingerprint dataset items of type {type(item).__name__}; return tensors, arrays, numbers, "
            "strings or containers of them, or set fingerprint_samples: 0 (then only the length is checked)."
        )


def fingerprint_dataset(dataset: Any, samples: int = 256) -> str:
    """SHA-256 of the dataset's class, length and ``samples`` evenly spaced items (first and last included).

    It notices another split, seed, order or size; an edit to an item between the probed ones goes
    unnoticed unless ``samples >= len(dataset)``. ``samples=0`` checks class and length only.

    Args:
        dataset: a map-style dataset (``__len__`` and ``__getitem__``).
        samples: how many items to hash.

    Example:
        >>> fingerprint_dataset([torch.zeros(2), torch.ones(2)]) != fingerprint_dataset([torch.ones(2), torch.zeros(2)])
        True
    """
    if samples < 0:
        raise ValueError(f"fingerprint samples must be >= 0, got {samples}.")
    n = len(dataset)
    h = hashlib.sha256(f"{class_name(dataset)}:{n}".encode())
    if n and samples:
        count = min(samples, n)
        probes = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})
        for i in probes:
            h.update(str(i).encode())
            _feed_item(h, dataset[i])
    return h.hexdigest()
