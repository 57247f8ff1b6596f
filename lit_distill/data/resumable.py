"""Training data order that survives a mid-epoch stop: seeded per epoch, fast-forwarded on resume."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from ``seed + epoch``; ``skip(n)`` drops the first ``n`` indices once.

    The order depends only on the seed and the epoch (Lightning calls :meth:`set_epoch`), never on
    global RNG state, so a resumed run sees exactly the samples an uninterrupted one would.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._skip, self._skip_epoch = 0, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, samples: int, epoch: int | None = None) -> None:
        """Drop the first ``samples`` indices of the next pass, if that pass is of ``epoch`` (None: any epoch)."""
        self._skip, self._skip_epoch = samples, epoch

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        # Decided here, not when the loader is built: Lightning builds it before it restores the epoch counter,
        # and a checkpoint written at the end of an epoch resumes into the next epoch, from its start.
        start = self._skip if self._skip_epoch in (None, self.epoch) else 0
        self._skip = 0
        return iter(order[start:].tolist())

    def __len__(self) -> int:
        return self.size


class ResumableLoader(DataLoader):
    """A DataLoader that tells Lightning it resumes mid-epoch (so no "not resumable" warning is shown).

    Its position lives in the owning DataModule's checkpoint state, which fast-forwards the sampler;
    the loader itself has nothing more to save.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class ResumableTrainData:
    """Mixin for LightningDataModules: the train loader resumes mid-epoch from a checkpoint.

    The datamodule's ``state_dict`` (saved in every Lightning checkpoint) records how many batches of
    the current epoch were trained; on resume the first epoch's sampler skips them. Exact for
    single-process runs; under DDP Lightning wraps the sampler and resume is exact at epoch boundaries.
    """

    seed: int = 0
    _resume_batches: int = 0
    _resume_epoch: int | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_batches = int(state.get("batches_done", 0))
        self._resume_epoch = state.get("epoch")

    def resumable_train_loader(
        self, dataset: Dataset, batch_size: int, num_workers: int = 0, **kwargs: Any
    ) -> DataLoader:
        """The shuffled training loader; workers persist across epochs when there are any."""
        kwargs.setdefault("persistent_workers", num_workers > 0)
        sampler = EpochShuffleSampler(len(dataset), seed=self.seed)
        if self._resume_batches:
            sampler.skip(self._resume_batches * batch_size, self._resume_epoch)
        return ResumableLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, **kwargs)
