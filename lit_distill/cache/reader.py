"""Reading a finished teacher cache back, batch by batch, from memory-mapped shards."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_distill.batch import teacher_view
from lit_distill.cache.manifest import STORAGE_DTYPES, read_manifest, shard_dirs
from lit_distill.cache.shards import FEATURE_PREFIX, file_names, shard_problem
from lit_distill.losses.topk import TOPK_INDICES, TOPK_TAIL, TOPK_TAIL_TEMPERATURE, TOPK_VALUES
from lit_distill.outputs import ModelOutput

__all__ = ["CacheReader"]


class CacheReader:
    """Teacher outputs of one split of a finished cache, looked up by sample index.

    Shards are memory-mapped on first use in each process (DataLoader workers included) and
    dropped when the reader is pickled, so workers never copy the arrays.

    Args:
        cache_dir: the cache folder (holds ``manifest.json``).
        split: ``"train"``, ``"val"`` or ``"test"``.

    Example:
        >>> reader = CacheReader("artifacts/digits/teacher_cache", "train")  # doctest: +SKIP
        >>> out = reader.gather(torch.tensor([0, 5]), batch)  # doctest: +SKIP
        >>> out.logits.shape  # doctest: +SKIP
        torch.Size([2, 10])
    """

    def __init__(self, cache_dir: str | Path, split: str) -> None:
        self.cache_dir, self.split = Path(cache_dir), split
        manifest = read_manifest(self.cache_dir)
        if manifest is None:
            raise FileNotFoundError(f"no teacher cache at {str(self.cache_dir)!r} (manifest.json is missing).")
        info = manifest["splits"].get(split)
        if info is None or not info.get("complete"):
            raise ValueError(f"the {split} split of the teacher cache at {str(self.cache_dir)!r} is not complete.")
        self.fields: dict[str, dict[str, Any]] = manifest["fields"]
        self.tail_temperature: float | None = (manifest.get("settings") or {}).get("tail_temperature")
        self.files = file_names(self.fields)
        self.shards = shard_dirs(self.cache_dir / split)
        n = int(info["num_samples"])
        self.shard_of = np.full(n, -1, dtype=np.int32)
        self.row_of = np.zeros(n, dtype=np.int64)
        self.start_of = np.zeros(n, dtype=np.int64)
        self.length_of = np.zeros(n, dtype=np.int64)
        for number, shard in enumerate(self.shards):
            problem = shard_problem(shard, self.fields)
            if problem is not None:
                raise ValueError(
                    f"the teacher cache in {str(self.cache_dir)!r} is damaged: {problem}. Run the `lit-distill "
                    "predict` command that wrote it again: it rewrites damaged shards and keeps the rest."
                )
            ids = np.load(shard / "ids.npy")
            if ids.size and (ids.min() < 0 or ids.max() >= n or (self.shard_of[ids] >= 0).any()):
                raise ValueError(f"corrupt teacher cache: {shard} holds out-of-range or repeated sample ids.")
            self.shard_of[ids] = number
            self.row_of[ids] = np.arange(len(ids))
            if (shard / "lengths.npy").is_file():
                lengths = np.load(shard / "lengths.npy")
                self.length_of[ids] = lengths
                self.start_of[ids] = np.cumsum(lengths) - lengths
        missing = int((self.shard_of < 0).sum())
        if missing:
            raise ValueError(f"corrupt teacher cache: {missing} of {n} {split} samples are in no shard.")
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.shard_of)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = {}  # memory maps are reopened in the receiving process
        return state

    def _array(self, shard: int, field: str) -> np.ndarray:
        key = (shard, field)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.shards[shard] / f"{self.files[field]}.npy", mmap_mode="r")
        return self._arrays[key]

    def _per_sample(self, ids: np.ndarray, field: str) -> Tensor:
        spec = self.fields[field]
        torch_dtype, np_dtype = STORAGE_DTYPES[spec["dtype"]]
        out = np.empty((len(ids), *spec["shape"]), dtype=np_dtype)
        shards = self.shard_of[ids]
        for shard in np.unique(shards):
            sel = shards == shard
            out[sel] = self._array(int(shard), field)[self.row_of[ids[sel]]]
        return _as_torch(out, torch_dtype)

    def _per_token(self, ids: np.ndarray, field: str, valid: np.ndarray) -> Tensor:
        spec = self.fields[field]
        torch_dtype, np_dtype = STORAGE_DTYPES[spec["dtype"]]
        width = valid.shape[1]
        if valid.all() and (self.length_of[ids] == width).all():
            # Unpadded batch (fixed-length blocks): one fancy-indexed read per shard, no per-sample loop.
            out = np.empty((len(ids), width, *spec["shape"]), dtype=np_dtype)
            shards = self.shard_of[ids]
            for shard in np.unique(shards):
                sel = np.flatnonzero(shards == shard)
                rows = self.start_of[ids[sel]][:, None] + np.arange(width)
                out[sel] = self._array(int(shard), field)[rows]
            return _as_torch(out, torch_dtype)
        out = np.zeros((len(ids), width, *spec["shape"]), dtype=np_dtype)
        # numpy slices, one copy per sample: torch's boolean index_put was ~10x slower here (and multi-threaded)
        for b, sample in enumerate(ids):
            start, length = self.start_of[sample], self.length_of[sample]
            positions = np.flatnonzero(valid[b])
            if len(positions) != length:
                raise ValueError(
                    f"{self.split} sample {int(sample)} has {len(positions)} tokens in this batch but "
                    f"{int(length)} in the teacher cache: the data changed since it was written; rewrite the cache."
                )
            rows = self._array(int(self.shard_of[sample]), field)[start : start + length]
            if length and positions[-1] - positions[0] + 1 == length:  # contiguous: left or right padding
                out[b, positions[0] : positions[0] + length] = rows
            else:
                out[b, positions] = rows
        return _as_torch(out, torch_dtype)

    def gather(self, ids: Tensor | np.ndarray, batch: Any) -> ModelOutput:
        """Teacher outputs for the samples ``ids`` (in that order) laid out like ``batch``.

        Token-level fields fill the positions where the batch's ``attention_mask`` is 1 (all positions
        without one); padding positions hold zeros, which token losses mask out. A stored tail bucket comes with
        the temperature it was computed at (``extra[TOPK_TAIL_TEMPERATURE]``).
        """
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"sample index {int(ids.max())} is outside the {self.split} cache of {len(self)} samples.")
        valid, batch = None, teacher_view(batch)  # a cross-tokenizer batch: the teacher's own tokens
        if any(spec["per_token"] for spec in self.fields.values()):
            if not isinstance(batch, Mapping) or "input_ids" not in batch:
                raise ValueError("the cache holds token-level outputs but the batch is not a dict with 'input_ids'.")
            mask = batch.get("attention_mask")
            shape = tuple(batch["input_ids"].shape)
            valid = np.ones(shape, dtype=bool) if mask is None else mask.detach().cpu().numpy().astype(bool)
        values = {
            field: self._per_token(ids, field, valid) if spec["per_token"] else self._per_sample(ids, field)
            for field, spec in self.fields.items()
        }
        features = {k.removeprefix(FEATURE_PREFIX): v for k, v in values.items() if k.startswith(FEATURE_PREFIX)}
        extra = {k: values[k] for k in (TOPK_VALUES, TOPK_INDICES, TOPK_TAIL) if k in values}
        if TOPK_TAIL in extra:
            extra[TOPK_TAIL_TEMPERATURE] = self.tail_temperature
        return ModelOutput(logits=values.get("logits"), features=features, extra=extra)


def _as_torch(arr: np.ndarray, dtype: torch.dtype) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t
