"""Turning teacher outputs into stored arrays, and writing them in finished, renamed shards."""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_distill.batch import teacher_view
from lit_distill.cache.manifest import SHARD_PREFIX, STORAGE_DTYPES, TMP_SUFFIX, shard_dirs
from lit_distill.losses.topk import TOPK_INDICES, TOPK_TAIL, TOPK_VALUES
from lit_distill.outputs import ModelOutput

__all__ = [
    "encode_outputs", "tail_log_mass", "ShardWriter", "to_numpy", "file_names", "shard_problem", "FEATURE_PREFIX"
]  # fmt: skip

FEATURE_PREFIX = "features/"


def to_numpy(t: Tensor, storage: str) -> np.ndarray:
    """``t`` cast to ``storage`` (``float32``/``float16``/``bfloat16``/``int32``) as a numpy array for disk."""
    torch_dtype, _ = STORAGE_DTYPES[storage]
    t = t.detach().to("cpu", torch_dtype).contiguous()
    return t.view(torch.int16).numpy() if torch_dtype == torch.bfloat16 else t.numpy()


def _valid_positions(batch: Any, logits: Tensor) -> Tensor | None:
    """``[B, T]`` bool of real tokens for token-level outputs of a dict batch, else None (one row per sample).
    The tokens are the teacher's own (its tokenization of a cross-tokenizer batch)."""
    batch = teacher_view(batch)
    if not isinstance(batch, Mapping) or logits.ndim != 3 or "input_ids" not in batch:
        return None
    ids = batch["input_ids"]
    if tuple(logits.shape[:2]) != tuple(ids.shape):
        return None
    mask = batch.get("attention_mask")
    return torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(torch.bool)


def tail_log_mass(logits: Tensor, indices: Tensor, temperature: float) -> Tensor:
    """``log Σ_{j ∉ indices} softmax(logits / T)_j`` per row, float32: the teacher's mass outside its top-k.

    A logsumexp over the other entries (float32 at least), not ``log(1 − Σ_k p)``: exact also when the tail is tiny.
    """
    log_p = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)
    return log_p.scatter(-1, indices, -math.inf).logsumexp(-1).float()


def encode_outputs(
    out: ModelOutput,
    batch: Any,
    top_k: int | None,
    dtype: str,
    features: list[str],
    tail_temperature: float | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]], np.ndarray | None]:
    """Arrays to store for one batch, their field descriptions, and per-sample lengths (token-level only).

    With ``top_k``, the k largest logits (values in ``dtype``, int32 ids) and, unless ``tail_temperature`` is None,
    the tail bucket (:func:`tail_log_mass`, float32). Token-level outputs ``[B, T, ...]`` of dict batches keep only
    positions where ``attention_mask`` is 1, concatenated over the batch (so left or right padding of any width
    reads back the same).
    """
    if out.logits is None:
        raise ValueError(
            "the teacher returned no logits (hidden states only?); the cache stores logits. Run it in eval mode "
            "or override DistillationModule.forward_teacher."
        )
    logits = out.logits
    tensors: dict[str, tuple[Tensor, str]] = {}
    if top_k is None:
        tensors["logits"] = (logits, dtype)
    else:
        if top_k >= logits.shape[-1]:
            raise ValueError(
                f"top_k={top_k} is not below the teacher's {logits.shape[-1]} classes; store full logits (top_k: null)."
            )
        values, indices = logits.topk(top_k, dim=-1)
        tensors[TOPK_VALUES], tensors[TOPK_INDICES] = (values, dtype), (indices, "int32")
        if tail_temperature is not None:
            tensors[TOPK_TAIL] = (tail_log_mass(logits, indices, tail_temperature), "float32")
    for name in features:
        if name not in out.features:
            raise ValueError(
                f"teacher feature {name!r} was not captured (captured: {sorted(out.features)}); check the names "
                "in TeacherCacheWriter.features (module paths of the teacher, optionally with ':input')."
            )
        tensors[FEATURE_PREFIX + name] = (out.features[name], dtype)
    valid = _valid_positions(batch, logits)
    lengths = None if valid is None else valid.sum(1).cpu().numpy().astype(np.int64)
    arrays, fields = {}, {}
    b = logits.shape[0]
    for name, (t, storage) in tensors.items():
        if t.shape[0] != b:
            raise ValueError(f"teacher output {name!r} has batch size {t.shape[0]}, expected {b}.")
        # per position: [B, T, ...] fields, and the tail's [B, T] (one number per position)
        per_token = valid is not None and tuple(t.shape[:2]) == tuple(valid.shape)
        per_token = per_token and (t.ndim >= 3 or name == TOPK_TAIL)
        arr = to_numpy(t[valid.to(t.device)] if per_token else t, storage)
        if storage == "float16" and not np.isfinite(arr).all() and torch.isfinite(t).all():
            raise ValueError(f"teacher output {name!r} overflows float16 (|x| > 65504); set dtype: bf16 or fp32.")
        arrays[name] = arr
        fields[name] = {"dtype": storage, "shape": list(arr.shape[1:]), "per_token": per_token}
    return arrays, fields, lengths


class ShardWriter:
    """Buffers encoded batches of one split and writes them as shards of about ``shard_bytes``.

    A shard is written into ``shard-<tag>NNNNNN.tmp/`` and renamed when complete, so an interrupted run
    leaves only finished shards behind (and maybe a ``.tmp`` folder, removed on the next start).

    Args:
        split_dir: ``cache_dir/<split>``.
        shard_bytes: flush once the buffer holds this many bytes.
        tag: name part that keeps the shards of one writer apart from those of the others writing the
            same split at the same time (one per DDP rank: ``rank1-``); empty for a single process.
    """

    def __init__(self, split_dir: Path, shard_bytes: int, tag: str = "") -> None:
        self.split_dir = split_dir
        self.shard_bytes = shard_bytes
        self.prefix = f"{SHARD_PREFIX}{tag}"
        for stale in split_dir.glob(f"{self.prefix}[0-9]*{TMP_SUFFIX}"):
            shutil.rmtree(stale)  # our own unfinished shard from an interrupted run
        numbers = [int(p.name.removeprefix(self.prefix)) for p in shard_dirs(split_dir) if _numbered(p, self.prefix)]
        self.next_number = max(numbers) + 1 if numbers else 0
        self._ids: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._arrays: dict[str, list[np.ndarray]] = {}
        self._bytes = 0

    def add(self, ids: np.ndarray, arrays: dict[str, np.ndarray], lengths: np.ndarray | None) -> None:
        self._ids.append(ids.astype(np.int64))
        if lengths is not None:
            self._lengths.append(lengths)
        for name, arr in arrays.items():
            self._arrays.setdefault(name, []).append(arr)
            self._bytes += arr.nbytes
        if self._bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered as one finished shard (nothing when the buffer is empty)."""
        if not self._ids:
            return
        name = f"{self.prefix}{self.next_number:06d}"
        tmp = self.split_dir / (name + TMP_SUFFIX)
        tmp.mkdir(parents=True)  # the split's folder too: nothing is created before there is something to write
        np.save(tmp / "ids.npy", np.concatenate(self._ids))
        if self._lengths:
            np.save(tmp / "lengths.npy", np.concatenate(self._lengths))
        files = file_names(self._arrays)
        for field, parts in self._arrays.items():
            np.save(tmp / f"{files[field]}.npy", np.concatenate(parts))
        tmp.rename(self.split_dir / name)
        self.next_number += 1
        self._ids, self._lengths, self._arrays, self._bytes = [], [], {}, 0


def file_names(fields: Any) -> dict[str, str]:
    """On-disk name of each field: features are numbered in sorted order (module paths may hold any character)."""
    features = sorted(f for f in fields if f.startswith(FEATURE_PREFIX))
    return {f: f"feature-{features.index(f)}" if f in features else f for f in fields}


def _numbered(shard: Path, prefix: str) -> bool:
    return shard.name.startswith(prefix) and shard.name.removeprefix(prefix).isdigit()


def shard_problem(shard: Path, fields: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why the finished ``shard`` cannot be read back with these ``fields``, or None when it is sound.

    Every array is opened the way the reader opens it (header parsed, size checked against the file) and
    its rows counted, so a truncated or half-copied file is named here instead of failing inside a batch.
    """
    files = file_names(fields)
    current = shard / "ids.npy"
    try:
        ids = np.load(current)
        lengths = None
        if (shard / "lengths.npy").is_file():
            current = shard / "lengths.npy"
            lengths = np.load(current)
        for field, spec in fields.items():
            current = shard / f"{files[field]}.npy"
            arr = np.load(current, mmap_mode="r")
            rows = int(lengths.sum()) if spec.get("per_token") and lengths is not None else len(ids)
            if arr.shape != (rows, *spec["shape"]):
                return f"{current} holds an array of shape {arr.shape}, expected {(rows, *spec['shape'])}"
    except (OSError, ValueError, EOFError) as err:  # numpy's errors for missing, truncated or garbled .npy files
        return f"{current} cannot be read ({err})"
    return None
