"""``lit-distill predict`` with :class:`TeacherCacheWriter`: run the teacher once and store its outputs."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_distill.cache.fingerprint import class_name, fingerprint_dataset, fingerprint_module
from lit_distill.cache.manifest import MANIFEST, differences, read_manifest, shard_dirs, write_manifest
from lit_distill.cache.plan import check_existing, covered, prepare
from lit_distill.cache.shards import ShardWriter, encode_outputs
from lit_distill.export import run_together
from lit_distill.features import FeatureTaps
from lit_distill.losses.sequence import tokenizer_id
from lit_distill.weights import parse_dtype

__all__ = ["TeacherCacheWriter"]

_STORAGE = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}


class TeacherCacheWriter(BasePredictionWriter):
    """Writes the teacher's outputs on the splits of a :class:`~lit_distill.data.CachedTeacherDataModule` to that
    module's ``cache_dir`` (``lit-distill predict``): a prediction writer over the module's predictions, which
    are the teacher's outputs while it runs (:attr:`~lit_distill.DistillationModule.predict_teacher`).

    Stores full logits (small vocabularies) or the top-k logits (values in ``dtype``, int32 indices) with the
    teacher's log probability mass outside them (the tail bucket, float32, one number per position), plus any
    named teacher features, keyed by sample index, in shards with a JSON manifest. A run that stops early resumes
    where the last finished shard ended; a cache written with another teacher, data or settings is refused, and a
    finished one is never rewritten unless ``overwrite``. With ``fast_dev_run`` everything runs on one batch and
    nothing is written. Under DDP every rank writes shards of the samples its sampler gives it (``shard-rank<N>-*``)
    and rank 0 the manifest; a damaged shard found on a rerun is written again. The predictions go to disk only:
    ``trainer.predict`` returns None while the writer runs.

    Args:
        top_k: keep the k largest logits per row; None keeps all of them.
        dtype: storage dtype of logits/values and features: ``fp32``, ``fp16`` or ``bf16``. Default:
            ``fp32`` for full logits, ``fp16`` for top-k values.
        features: teacher module paths (as in feature losses, e.g. ``"body.1"``) whose outputs to store.
        tail_temperature: with ``top_k``, also store the teacher's mass outside the k at this temperature, which
            must be the temperature of the losses reading the cache; None stores no tail (losses then renormalise
            the teacher over the k). See docs/cache.md.
        shard_mb: size of one shard; an interrupted run loses at most the shard being filled.
        batch_size: teacher batch size; None uses the data's own.
        max_full_vocab: refuse full logits above this many classes (set ``top_k``), to keep caches sane.
        overwrite: delete an existing cache in ``cache_dir`` (finished or not) and write it anew.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lit_distill.cache.TeacherCacheWriter
              init_args: {top_k: 32, dtype: bf16}
    """

    def __init__(
        self,
        top_k: int | None = None,
        dtype: str | None = None,
        features: list[str] | None = None,
        tail_temperature: float | None = 1.0,
        shard_mb: float = 256.0,
        batch_size: int | None = None,
        max_full_vocab: int = 4096,
        overwrite: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or null (full logits), got {top_k}.")
        if not shard_mb > 0:
            raise ValueError(f"shard_mb must be > 0, got {shard_mb}.")
        if tail_temperature is not None and not (math.isfinite(tail_temperature) and tail_temperature > 0):
            raise ValueError(f"tail_temperature must be a number > 0 or null (no tail), got {tail_temperature!r}.")
        try:
            storage = parse_dtype(dtype or ("fp32" if top_k is None else "fp16"))
        except ValueError:
            storage = None
        if str(storage) not in _STORAGE:
            raise ValueError(f"dtype must be fp32, fp16 or bf16 (or null for the default), got {dtype!r}.")
        self.top_k, self.storage = top_k, _STORAGE[str(storage)]
        self.features = list(dict.fromkeys(features or []))
        self.tail_temperature = None if top_k is None or tail_temperature is None else float(tail_temperature)
        self.shard_bytes = int(shard_mb * 2**20)
        self.batch_size, self.max_full_vocab, self.overwrite = batch_size, max_full_vocab, overwrite
        self.manifest: dict[str, Any] | None = None
        self._plan: dict[str, list[int]] = {}
        self._writers: dict[str, ShardWriter] = {}
        self._taps: FeatureTaps | None = None
        self._capture = contextlib.ExitStack()  # the feature taps' capture, open from batch start to write
        self._features: dict[str, Any] = {}
        self._dry = False

    # ------------------------------------------------------------------ planning
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            rank_zero_warn(f"TeacherCacheWriter does nothing in `{stage}`; write the cache with `lit-distill predict`.")
            return
        dm = trainer.datamodule
        if not hasattr(dm, "begin_write"):
            raise TypeError(
                f"TeacherCacheWriter needs `data: lit_distill.data.CachedTeacherDataModule` (it knows where the cache "
                f"goes and which splits to cache), got {type(dm).__name__}."
            )
        teacher = getattr(pl_module, "teacher", None)
        if teacher is None or getattr(teacher, "reads_from_batch", False):
            raise ValueError("TeacherCacheWriter needs the real teacher model in `model.teacher`: it is what runs.")
        check = getattr(pl_module, "check_teacher_weights", None)
        if check is not None:
            check()  # a cache of a randomly initialised teacher would be silently useless
        if not hasattr(pl_module, "predict_teacher"):
            raise TypeError(
                f"TeacherCacheWriter needs a lit_distill.DistillationModule (its predictions are the teacher's "
                f"outputs with predict_teacher), got {type(pl_module).__name__}."
            )
        datasets = dm.split_datasets()
        settings = {"top_k": self.top_k, "dtype": self.storage, "features": self.features}
        wanted = {
            "teacher": {"class": class_name(teacher), "fingerprint": fingerprint_module(teacher)},
            "settings": {**settings, "tail_temperature": self.tail_temperature},
            "splits": {
                split: {
                    "dataset": class_name(ds),
                    "num_samples": len(ds),
                    "fingerprint_samples": dm.fingerprint_samples,
                    "fingerprint": fingerprint_dataset(ds, dm.fingerprint_samples),
                }
                for split, ds in datasets.items()
            },
        }
        self._dry = bool(trainer.fast_dev_run)
        cache_dir = Path(dm.cache_dir)
        # Every rank checks (the same files, the same verdict), then rank 0 alone deletes and writes, telling every
        # rank if it fails, then all ranks plan from what is on disk, each writing shards of the samples it gets.
        existing = check_existing(cache_dir, wanted, self.overwrite)
        trainer.strategy.barrier("teacher_cache_checked")
        manifest = run_together(
            lambda: self._prepare(cache_dir, existing, wanted, tokenizer_id(teacher)),
            "preparing the teacher cache",
            rank_zero_only=True,
        )
        self.manifest = trainer.strategy.broadcast(manifest, src=0)
        self._tag = "" if trainer.world_size == 1 else f"rank{trainer.global_rank}-"
        for split, ds in datasets.items():
            done = set() if self.overwrite else covered(cache_dir / split, self.manifest["fields"])
            self._plan[split] = [i for i in range(len(ds)) if i not in done]
        self._plan = {split: ids for split, ids in self._plan.items() if ids}
        if not self._plan:
            rank_zero_info(f"[lit-distill] teacher cache {dm.cache_dir} is complete and matches; nothing to write.")
        dm.begin_write(self._plan, self.batch_size)
        pl_module.predict_teacher = True  # predictions are the teacher's outputs while the cache is written
        trainer.predict_loop.return_predictions = False  # they go to disk, not into a list in memory

    def _prepare(self, cache_dir: Path, existing: Any, wanted: dict[str, Any], tokenizer: str | None) -> dict:
        """Rank 0 alone: the folder made ready and the manifest to write (:func:`lit_distill.cache.plan.prepare`)."""
        return prepare(cache_dir, existing, wanted, tokenizer, self._dry)

    # ------------------------------------------------------------------ writing
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.manifest is None or not self._plan:
            return
        if not self._dry:
            cache_dir = Path(trainer.datamodule.cache_dir)
            self._writers = {s: ShardWriter(cache_dir / s, self.shard_bytes, self._tag) for s in self._plan}
        if self.features:
            self._taps = FeatureTaps(pl_module.teacher, self.features, "teacher")

    def on_predict_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._taps is not None:
            self._features = self._capture.enter_context(self._taps.capture())

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Store the teacher's outputs of one batch under the ids of its samples."""
        if self._taps is not None:
            prediction.features.update(self._features)
            self._capture.close()
        split = list(self._plan)[dataloader_idx]
        self._check_vocab(prediction.logits)
        arrays, fields, lengths = encode_outputs(
            prediction, batch, self.top_k, self.storage, self.features, self.tail_temperature
        )
        self._record_fields(fields, Path(trainer.datamodule.cache_dir), int(prediction.logits.shape[-1]))
        if not batch_indices:  # Lightning tracks them for prediction writers on every DataLoader it prepares
            raise RuntimeError(f"Lightning gave no sample indices for predict batch {batch_idx} of the {split} split.")
        # Lightning's indices count within the split's loader, which holds the samples still missing, in plan order.
        ids = np.asarray(self._plan[split])[np.asarray(batch_indices, dtype=np.int64)]
        if not self._dry:
            self._writers[split].add(ids, arrays, lengths)

    def _check_vocab(self, logits: Any) -> None:
        if self.top_k is not None and logits is not None and self.top_k > logits.shape[-1]:
            raise ValueError(
                f"top_k={self.top_k} exceeds the teacher's {logits.shape[-1]} classes; set top_k <= "
                f"{logits.shape[-1]}, or top_k: null to cache the full logits."
            )
        if self.top_k is None and logits is not None and logits.shape[-1] > self.max_full_vocab:
            raise ValueError(
                f"the teacher has {logits.shape[-1]} classes, above max_full_vocab={self.max_full_vocab}: full logits "
                "would make a very large cache. Set top_k (e.g. 64), or raise max_full_vocab."
            )

    def _record_fields(self, fields: dict[str, Any], cache_dir: Path, num_logits: int) -> None:
        if not self.manifest["fields"]:
            self.manifest["fields"] = fields
            # What a cache stand-in tells the losses in place of the teacher model (TokenKD's vocabulary).
            self.manifest.setdefault("teacher_model", {})["num_logits"] = num_logits
            if not self._dry:  # before the first shard: readers need the fields (any rank may get here first)
                cache_dir.mkdir(parents=True, exist_ok=True)
                write_manifest(cache_dir, self.manifest)
        elif fields != self.manifest["fields"]:
            raise ValueError(
                "teacher outputs changed shape or layout within the cache:\n  - "
                + "\n  - ".join(differences(self.manifest["fields"], fields))
                + "\nSet overwrite: true to rewrite the cache."
            )

    # ------------------------------------------------------------------ finishing
    def _finish(self, trainer: Trainer, pl_module: LightningModule, interrupted: bool) -> None:
        pl_module.predict_teacher = False
        self._capture.close()
        if self._taps is not None:
            self._taps.remove()
            self._taps = None
        if self.manifest is None or self._dry:
            return
        cache_dir = Path(trainer.datamodule.cache_dir)
        for writer in self._writers.values():
            writer.flush()  # whole batches only: a resumed run starts right after them
        self._writers = {}
        if interrupted:  # this rank failed: the others may be anywhere, so no collective here
            if trainer.is_global_zero:
                self._record_completion(cache_dir, interrupted)
            return
        trainer.strategy.barrier("teacher_cache_flushed")  # every rank's last shard is on disk
        run_together(
            lambda: self._record_completion(cache_dir, interrupted), "finishing the teacher cache", rank_zero_only=True
        )

    def _record_completion(self, cache_dir: Path, interrupted: bool) -> None:
        """Rank 0: mark each split complete or not in the manifest, and say what was written."""
        if not (cache_dir / MANIFEST).is_file():
            return  # no batch got as far as the cache on any rank: nothing to record
        if not self.manifest["fields"]:  # rank 0 got no batch; another rank recorded the fields
            on_disk = read_manifest(cache_dir) or {}
            self.manifest["fields"] = on_disk.get("fields", {})
            self.manifest["teacher_model"] = on_disk.get("teacher_model", self.manifest.get("teacher_model"))
        lines = []
        for split, info in self.manifest["splits"].items():
            done = len(covered(cache_dir / split, self.manifest["fields"]))
            info["complete"] = done == info["num_samples"]
            size = sum(f.stat().st_size for d in shard_dirs(cache_dir / split) for f in d.iterdir())
            lines.append(f"{split} {done}/{info['num_samples']} samples, {size / max(done, 1):,.0f} bytes/sample")
        write_manifest(cache_dir, self.manifest)
        state = "stopped early; run the same command again to resume" if interrupted else "written"
        rank_zero_info(f"[lit-distill] teacher cache {cache_dir} {state}: " + "; ".join(lines))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, pl_module, interrupted=False)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.state.fn == "predict":
            self._finish(trainer, pl_module, interrupted=True)
