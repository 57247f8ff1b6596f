"""A DataModule wrapper that attaches cached teacher outputs to every batch (and feeds the cache writer)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Subset

from lit_distill.cache.fingerprint import class_name, fingerprint_dataset, fingerprint_module
from lit_distill.cache.loading import IndexedDataset, cached_loader
from lit_distill.cache.manifest import differences, read_manifest
from lit_distill.cache.reader import CacheReader
from lit_distill.cache.writer import TeacherCacheWriter

Split = Literal["train", "val", "test"]
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


class CachedTeacherDataModule(LightningDataModule):
    """Wraps any DataModule so each batch carries the teacher's outputs read from an offline cache.

    The wrapped module's loaders are rebuilt with the same sampler (shuffling, DDP), workers and collate;
    each sample's index picks its row in the cache, and the outputs ride along as a
    :class:`~lit_distill.outputs.ModelOutput` (last element of a tuple batch, ``"teacher_outputs"`` of a
    dict batch), so :class:`~lit_distill.DistillationModule` does not run the teacher. Splits not listed
    pass through unchanged. ``lit-distill predict`` with :class:`~lit_distill.cache.TeacherCacheWriter`
    writes the cache for the listed splits.

    Before reading, the cache is checked against the data (a fingerprint per split) and, when the model
    holds the real teacher, against the teacher's weights; a stale or unfinished cache is refused.
    Batch-transfer hooks of the wrapped module are not forwarded; other attributes are.

    Args:
        datamodule: the DataModule to wrap (the same one the live-teacher recipe uses).
        cache_dir: folder of the cache (written by TeacherCacheWriter).
        splits: splits that come from the cache (and that the writer caches).
        fingerprint_samples: items hashed per split to recognise the data (0: length only).

    Example:
        >>> from lit_distill.data import DigitsDataModule
        >>> dm = CachedTeacherDataModule(DigitsDataModule(), "artifacts/digits/teacher_cache")
        >>> dm.splits
        ['train', 'val']
    """

    def __init__(
        self,
        datamodule: LightningDataModule,
        cache_dir: str,
        splits: list[Split] | None = None,
        fingerprint_samples: int = 256,
    ) -> None:
        super().__init__()
        splits = list(dict.fromkeys(splits if splits is not None else ["train", "val"]))
        bad = [s for s in splits if s not in ("train", "val", "test")]
        if bad or not splits:
            raise ValueError(f"splits must be a non-empty list of 'train', 'val', 'test', got {splits}.")
        if fingerprint_samples < 0:
            raise ValueError(f"fingerprint_samples must be >= 0, got {fingerprint_samples}.")
        _restore_wrapped_hparams(datamodule)
        self.datamodule = datamodule
        self.cache_dir = str(cache_dir)
        self.splits: list[str] = splits
        self.fingerprint_samples = fingerprint_samples
        self.write_splits: list[str] = []
        self._plan: dict[str, list[int]] | None = None
        self._write_batch_size: int | None = None
        self._readers: dict[str, CacheReader] = {}

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("datamodule")
        if inner is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(inner, name)  # vocab_size, tokenizer, connect(...) of the wrapped module

    # ------------------------------------------------------------------ lifecycle
    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        self.datamodule.trainer = self.trainer
        callbacks = self.trainer.callbacks if self.trainer is not None else []
        if stage == "predict" and any(isinstance(cb, TeacherCacheWriter) for cb in callbacks):
            for inner_stage in ("fit", "test") if "test" in self.splits else ("fit",):
                self.datamodule.setup(inner_stage)
            return
        self.datamodule.setup(stage)
        for split in _STAGE_SPLITS.get(stage, ()):
            if split in self.splits:
                self.reader(split)
        if stage in _STAGE_SPLITS and self.trainer is not None:
            self.verify_model(self.trainer.lightning_module)

    def teardown(self, stage: str) -> None:
        self.datamodule.teardown(stage)

    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.load_state_dict(state_dict)

    # ------------------------------------------------------------------ checks
    def _manifest(self) -> dict[str, Any]:
        manifest = read_manifest(self.cache_dir)
        if manifest is None:
            raise FileNotFoundError(
                f"no teacher cache in {self.cache_dir!r}. Write it first with the `predict` run of a recipe holding "
                "TeacherCacheWriter in trainer.callbacks and this data block."
            )
        return manifest

    def reader(self, split: str) -> CacheReader:
        """The cache of ``split``, after checking that it is finished and written from this data."""
        if split not in self._readers:
            info = self._manifest()["splits"].get(split)
            if info is None:
                raise ValueError(
                    f"the teacher cache in {self.cache_dir!r} has no {split!r} split; list it in the "
                    "writer's data `splits` and write again, or drop it from `splits` here."
                )
            if not info.get("complete"):
                raise ValueError(
                    f"the teacher cache in {self.cache_dir!r} is unfinished ({split}); run the same "
                    f"`lit-distill predict` again to resume it."
                )
            dataset = self._inner_loader(split).dataset
            now = {
                "dataset": class_name(dataset),
                "num_samples": len(dataset),
                "fingerprint_samples": self.fingerprint_samples,
                "fingerprint": fingerprint_dataset(dataset, self.fingerprint_samples),
            }
            diffs = differences({k: info.get(k) for k in now}, now, prefix=f"{split}.")
            if diffs:
                raise ValueError(
                    f"stale teacher cache in {self.cache_dir!r}: the {split} data is not the data it was written "
                    "from:\n  - " + "\n  - ".join(diffs) + "\nRewrite it (TeacherCacheWriter with overwrite: true) "
                    "or restore the data settings (seed, split fractions, files)."
                )
            self._readers[split] = CacheReader(self.cache_dir, split)
        return self._readers[split]

    def verify_model(self, model: LightningModule | Any) -> None:
        """Refuse a cache written by another teacher than ``model.teacher``, or lacking features its losses need."""
        manifest = self._manifest()
        teacher = getattr(model, "teacher", None)
        if callable(getattr(teacher, "describe", None)):
            teacher.describe(manifest)  # a stand-in learns from the manifest what losses ask of a teacher model
        if teacher is not None and not getattr(teacher, "reads_from_batch", False):
            now = {"class": class_name(teacher), "fingerprint": fingerprint_module(teacher)}
            diffs = differences(manifest["teacher"], now, prefix="teacher.")
            if diffs:
                raise ValueError(
                    f"stale teacher cache in {self.cache_dir!r}: it was written by another teacher:\n  - "
                    + "\n  - ".join(diffs)
                    + "\nThe weights, checkpoint or dtype changed. Rewrite the cache (TeacherCacheWriter with "
                    "overwrite: true), configure the teacher it was written with, or use teacher: "
                    "lit_distill.cache.CachedTeacher to skip this check."
                )
        needed = sorted({t for loss in getattr(model, "losses", ()) for t in getattr(loss, "teacher_taps", ())})
        missing = [t for t in needed if t not in manifest["settings"]["features"]]
        if missing:
            raise ValueError(
                f"the losses need teacher features {missing} but the cache in {self.cache_dir!r} stores "
                f"{manifest['settings']['features']}; add them to TeacherCacheWriter.features and rewrite it."
            )

    # ------------------------------------------------------------------ loaders
    def _inner_loader(self, split: str) -> Any:
        loader = getattr(self.datamodule, f"{split}_dataloader")()
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"CachedTeacherDataModule wraps one DataLoader per split; {type(self.datamodule).__name__}."
                f"{split}_dataloader() returned {type(loader).__name__}."
            )
        return loader

    def _loader(self, split: str) -> Any:
        if split != "train" and not is_overridden(f"{split}_dataloader", self.datamodule, LightningDataModule):
            return []
        if split not in self.splits:
            return getattr(self.datamodule, f"{split}_dataloader")()
        return cached_loader(self._inner_loader(split), self.reader(split))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> Any:
        return self._loader("val")

    def test_dataloader(self) -> Any:
        return self._loader("test")

    def predict_dataloader(self) -> Any:
        if self._plan is None:
            return self.datamodule.predict_dataloader()
        return [self._write_loader(split) for split in self.write_splits]

    # ------------------------------------------------------------------ writing
    def split_datasets(self) -> dict[str, Any]:
        """The dataset behind each listed split (what the writer caches)."""
        # IndexedDataset refuses iterable datasets here, before the teacher runs at all.
        return {split: IndexedDataset(self._inner_loader(split).dataset).dataset for split in self.splits}

    def begin_write(self, plan: dict[str, list[int]], batch_size: int | None = None) -> None:
        """Called by TeacherCacheWriter: ``predict_dataloader`` then yields the batches of these samples, in order."""
        self._plan, self.write_splits, self._write_batch_size = plan, list(plan), batch_size

    def _write_loader(self, split: str) -> DataLoader:
        base = self._inner_loader(split)
        batch_size = self._write_batch_size or base.batch_size or getattr(base.batch_sampler, "batch_size", None) or 1
        return DataLoader(
            Subset(base.dataset, self._plan[split]),
            batch_size=batch_size,
            shuffle=False,
            num_workers=base.num_workers,
            collate_fn=base.collate_fn,
            pin_memory=base.pin_memory,
        )


def _restore_wrapped_hparams(inner: Any) -> None:
    """Give the wrapped module back its own hyperparameters.

    LightningCLI hands every LightningDataModule it builds from ``data:`` the top-level ``data`` arguments
    as hparams, so the wrapped module would see ours (and lose e.g. ``as_images``); its own arguments
    sit in our ``datamodule`` entry.
    """
    hp = getattr(inner, "_hparams", None)
    nested = hp.get("datamodule") if isinstance(hp, Mapping) else None
    if (
        not isinstance(nested, Mapping)
        or not str(hp.get("_class_path", "")).endswith("CachedTeacherDataModule")
        or str(nested.get("class_path", "")).rsplit(".", 1)[-1] != type(inner).__name__
    ):
        return
    own = {"_class_path": nested["class_path"], **nested.get("init_args", {})}
    if "_instantiator" in hp:
        own["_instantiator"] = hp["_instantiator"]
    hp.clear()
    hp.update(own)
    inner._hparams_initial = copy.deepcopy(hp)
