"""Loaders that carry sample indices: the cached teacher outputs attached to every batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset

from lit_distill.batch import TEACHER_OUTPUTS_KEY
from lit_distill.cache.reader import CacheReader
from lit_distill.outputs import ModelOutput

__all__ = ["IndexedDataset", "attach_teacher_outputs", "cached_loader"]


class IndexedDataset(Dataset):
    """``dataset[i]`` as ``(i, dataset[i])``: the sample index travels with the sample through any sampler."""

    def __init__(self, dataset: Any) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"a teacher cache is keyed by sample index and needs a map-style dataset, got {type(dataset).__name__}."
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


def attach_teacher_outputs(batch: Any, out: ModelOutput) -> Any:
    """``batch`` plus ``out`` where :func:`lit_distill.batch.cached_teacher_output` finds it."""
    if isinstance(batch, Mapping):
        return {**batch, TEACHER_OUTPUTS_KEY: out}
    if isinstance(batch, Tensor):
        return [batch, out]
    if isinstance(batch, (list, tuple)):
        return type(batch)([*batch, out]) if type(batch) in (list, tuple) else [*batch, out]
    raise TypeError(f"cannot attach teacher outputs to a batch of type {type(batch).__name__}; use a tuple or dict.")


class _AttachCached:
    """Collate in the worker, then look the batch's samples up in the cache (workers read in parallel)."""

    def __init__(self, collate: Any, reader: CacheReader) -> None:
        self.collate, self.reader = collate, reader

    def __call__(self, items: list[tuple[int, Any]]) -> Any:
        batch = self.collate([sample for _, sample in items])
        return attach_teacher_outputs(batch, self.reader.gather(np.array([i for i, _ in items]), batch))


def cached_loader(loader: DataLoader, reader: CacheReader) -> DataLoader:
    """``loader`` again (same sampler, batch size, workers, collate), with teacher outputs attached.

    The sampler is reused as is, so shuffling is unchanged, and under DDP Lightning swaps in its
    DistributedSampler exactly as it would for ``loader``: the index comes from the dataset, not the order.
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"CachedTeacherDataModule wraps one DataLoader per split, got {type(loader).__name__}.")
    if len(loader.dataset) != len(reader):
        raise ValueError(f"the {reader.split} data has {len(loader.dataset)} samples, its cache {len(reader)}.")
    kwargs: dict[str, Any] = dict(
        num_workers=loader.num_workers,
        collate_fn=_AttachCached(loader.collate_fn, reader),
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    dataset = IndexedDataset(loader.dataset)
    if type(loader.batch_sampler) is BatchSampler:
        return DataLoader(dataset, loader.batch_size, sampler=loader.sampler, drop_last=loader.drop_last, **kwargs)
    if loader.batch_sampler is None:
        raise ValueError("the DataLoader has batch_size=None (no batching); a teacher cache needs batched loading.")
    return DataLoader(dataset, batch_sampler=loader.batch_sampler, **kwargs)
