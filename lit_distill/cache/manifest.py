"""The on-disk layout of a teacher cache and its JSON manifest.

::

    cache_dir/
      manifest.json                 format, teacher/dataset fingerprints, k, dtype, tail temperature, field shapes,
                                    completion
      train/shard-000000/           one finished shard (written as shard-000000.tmp/, then renamed)
        ids.npy                     int64 [n] sample indices into the split's dataset
        lengths.npy                 int64 [n] stored positions per sample (only with per-token fields)
        logits.npy | topk_values.npy + topk_indices.npy (+ topk_tail.npy) | feature-0.npy ...
      val/...

Arrays are plain ``.npy`` files read with ``numpy.load(mmap_mode="r")``; bfloat16 is stored as its int16 bits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "DamagedManifestError",
    "MANIFEST",
    "read_manifest",
    "write_manifest",
    "differences",
    "shard_dirs",
    "STORAGE_DTYPES",
]

FORMAT = "lit-distill-teacher-cache/2"
#: Formats this version reads: /1 caches (written before the tail bucket) read as caches without a tail.
READABLE_FORMATS = ("lit-distill-teacher-cache/1", FORMAT)
MANIFEST = "manifest.json"
SHARD_PREFIX = "shard-"
TMP_SUFFIX = ".tmp"

#: storage name -> (torch dtype, numpy dtype on disk)
STORAGE_DTYPES: dict[str, tuple[torch.dtype, Any]] = {
    "float32": (torch.float32, np.float32),
    "float16": (torch.float16, np.float16),
    "bfloat16": (torch.bfloat16, np.int16),
    "int32": (torch.int32, np.int32),
}


class DamagedManifestError(ValueError):
    """``manifest.json`` exists but is not valid JSON (a crash or a partial copy): only a rewrite helps."""


def read_manifest(cache_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of ``cache_dir``, or None when there is none; refuses files of another format."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DamagedManifestError(
            f"teacher cache manifest {str(path)!r} is damaged (not valid JSON: {err}); rewrite the cache with "
            "overwrite: true on TeacherCacheWriter."
        ) from err
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        found = data.get("format") if isinstance(data, dict) else None
        raise ValueError(
            f"{str(path)!r} is not a lit-distill teacher cache manifest of a format this version reads "
            f"({', '.join(READABLE_FORMATS)}; found {found!r}); rewrite the cache into a new folder, or read it with "
            "the lit-distill version that wrote it."
        )
    return data


def write_manifest(cache_dir: str | Path, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a manifest."""
    path = Path(cache_dir) / MANIFEST
    # One temp name per process: under DDP more than one rank may record the fields of the first batch.
    tmp = path.with_name(f"{MANIFEST}.{os.getpid()}{TMP_SUFFIX}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _short(value: Any) -> str:
    text = str(value)
    return text[:16] + "..." if len(text) > 19 and all(c in "0123456789abcdef" for c in text) else text


def differences(cached: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """Readable ``key: cache X, now Y`` lines for every leaf where two settings dicts differ."""
    lines = []
    for key in sorted(set(cached) | set(wanted)):
        a, b = cached.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: cache {_short(a)}, now {_short(b)}")
    return lines


def shard_dirs(split_dir: Path) -> list[Path]:
    """Finished shards of one split, in order (unfinished ``*.tmp`` folders are not listed)."""
    if not split_dir.is_dir():
        return []
    return sorted(
        p for p in split_dir.iterdir() if p.is_dir() and p.name.startswith(SHARD_PREFIX) and p.suffix != TMP_SUFFIX
    )
