"""Training data order that survives a mid-epoch stop: seeded per epoch, split by rank, fast-forwarded on resume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class TrainingDataError(RuntimeError):
    """An error inside the training data path, retold with the sampler, dataset and sample indices it hit."""


class EpochShuffleSampler(DistributedSampler):
    """This rank's share of a permutation drawn from ``seed + epoch``; ``skip(n)`` drops its first ``n`` once.

    The order depends only on the seed, the epoch (Lightning calls :meth:`set_epoch`) and the rank, never on
    global RNG state, so a resumed run sees exactly the samples an uninterrupted one would. It is a
    ``DistributedSampler`` (split like one: ``num_replicas`` equal shares, padded by repeating the first
    samples) so that Lightning uses it as it is: a sampler Lightning wraps for DDP/FSDP is read as a list
    of indices, and skipping part of it would shift every rank's share.

    Example:
        >>> sampler = EpochShuffleSampler(10, seed=0, num_replicas=2, rank=1)
        >>> sampler.skip(2)
        >>> len(list(sampler)), len(sampler)
        (3, 5)
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.size = size
        self.start = 0  # samples of this rank's share skipped by the pass under way
        self._skip, self._skip_epoch = 0, None

    def skip(self, samples: int, epoch: int | None = None) -> None:
        """Drop the first ``samples`` indices of the next pass, if that pass is of ``epoch`` (None: any epoch)."""
        self._skip, self._skip_epoch = samples, epoch

    def order(self) -> list[int]:
        """This rank's whole share of the current epoch, skipped samples included."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[int]:
        # Decided here, not when the loader is built: Lightning builds it before it restores the epoch counter,
        # and a checkpoint written at the end of an epoch resumes into the next epoch, from its start.
        self.start = self._skip if self._skip_epoch in (None, self.epoch) else 0
        self._skip = 0
        return iter(self.order()[self.start :])

    def __repr__(self) -> str:
        resumed = f", resumed after {self.start} samples" if self.start else ""
        return (
            f"EpochShuffleSampler(size={self.size}, seed={self.seed}, epoch={self.epoch}, "
            f"rank {self.rank} of {self.num_replicas}{resumed})"
        )


class ResumableLoader(DataLoader):
    """A DataLoader that resumes mid-epoch and names the sample behind any error of its data path.

    Its position lives in the owning DataModule's checkpoint state, which fast-forwards the sampler; the
    loader itself has nothing more to save (having ``state_dict`` tells Lightning it resumes mid-epoch).
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def __iter__(self) -> Iterator[Any]:
        batch, failure = 0, None
        try:
            iterator = super().__iter__()
        except Exception as exc:
            failure = exc
        while failure is None:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                failure = exc
            else:
                yield item
                batch += 1
        # Raised outside the except clause, with the original frames: the CLI prints the innermost error raised
        # by lit-distill code, and a chained cause from our own dataset would hide the indices named here.
        raise TrainingDataError(self.describe_failure(batch, failure)).with_traceback(failure.__traceback__)

    def describe_failure(self, batch: int, failure: BaseException) -> str:
        """One line naming the batch, its sample indices, the dataset and the sampler; then the original error."""
        where = f"batch {batch} of this pass"
        sampler, size = self.sampler, self.batch_size or 1
        if isinstance(sampler, EpochShuffleSampler):
            first = sampler.start + batch * size
            indices = sampler.order()[first : first + size]
            where = f"batch {first // size} of epoch {sampler.epoch} (sample indices {_short(indices)})"
        dataset = f"{type(self.dataset).__name__} of {_length(self.dataset)} samples"
        return (
            f"reading the training data failed at {where} from the dataset {dataset} with sampler {sampler!r}: "
            f"{type(failure).__name__}: {failure}"
        )


def _short(indices: list[int]) -> str:
    return str(indices) if len(indices) <= 8 else f"[{', '.join(map(str, indices[:8]))}, ... {len(indices)} in all]"


def _length(dataset: Dataset) -> str:
    try:
        return str(len(dataset))  # type: ignore[arg-type]
    except TypeError:
        return "an unknown number of"


class ResumableTrainData:
    """Mixin for LightningDataModules: the train loader resumes mid-epoch from a checkpoint.

    The datamodule's ``state_dict`` (saved in every Lightning checkpoint) records how many batches of
    the current epoch each rank trained; on resume the first epoch's sampler skips them. Under a
    data-parallel strategy (DDP, fsdp2) the loader splits the data by the strategy's data-parallel rank
    itself; resume is exact when the number of data-parallel ranks is the same as when it was saved.
    """

    seed: int = 0
    _resume_batches: int = 0
    _resume_epoch: int | None = None
    _resume_replicas: int | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        replicas = _data_parallel(trainer)[0]
        return {"epoch": trainer.current_epoch, "batches_done": int(done), "replicas": replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_batches = int(state.get("batches_done", 0))
        self._resume_epoch = state.get("epoch")
        self._resume_replicas = state.get("replicas")

    def resumable_train_loader(
        self, dataset: Dataset, batch_size: int, num_workers: int = 0, **kwargs: Any
    ) -> DataLoader:
        """The shuffled training loader, this rank's share; workers persist across epochs when there are any."""
        kwargs.setdefault("persistent_workers", num_workers > 0)
        replicas, rank = _data_parallel(getattr(self, "trainer", None))
        sampler = EpochShuffleSampler(len(dataset), seed=self.seed, num_replicas=replicas, rank=rank)
        if self._resume_batches:
            if self._resume_replicas not in (None, replicas):
                rank_zero_warn(
                    f"resuming on {replicas} data-parallel rank(s) a run saved on {self._resume_replicas}: the rest "
                    f"of epoch {self._resume_epoch} is split differently, so some of its samples are seen twice or "
                    "not at all; resume on the same number of devices for the exact order."
                )
            sampler.skip(self._resume_batches * batch_size, self._resume_epoch)
        return ResumableLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, **kwargs)


def _data_parallel(trainer: Any) -> tuple[int, int]:
    """(number of data-parallel ranks, this rank) of the trainer's strategy; (1, 0) without one."""
    kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
    if not kwargs:
        return 1, 0
    return int(kwargs["num_replicas"]), int(kwargs["rank"])
