"""``lit-distill predict`` with :class:`TeacherCacheWriter`: run the teacher once and store its outputs."""

from __future__ import annotations

import contextlib
import copy
import datetime
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

import lit_distill
from lit_distill.cache.fingerprint import class_name, fingerprint_dataset, fingerprint_module
from lit_distill.cache.manifest import (
    FORMAT,
    MANIFEST,
    DamagedManifestError,
    differences,
    read_manifest,
    shard_dirs,
    write_manifest,
)
from lit_distill.cache.shards import ShardWriter, encode_outputs, shard_problem
from lit_distill.export import run_together
from lit_distill.features import FeatureTaps
from lit_distill.losses.sequence import tokenizer_id
from lit_distill.weights import parse_dtype

__all__ = ["TeacherCacheWriter"]

_STORAGE = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}


class TeacherCacheWriter(Callback):
    """Runs the model's teacher over the splits of a :class:`~lit_distill.data.CachedTeacherDataModule`
    and writes its outputs to that module's ``cache_dir`` (``lit-distill predict``).

    Stores full logits (small vocabularies) or the top-k logits (values in ``dtype``, int32 indices),
    plus any named teacher features, keyed by sample index, in shards with a JSON manifest. A run that
    stops early resumes where the last finished shard ended; a cache written with another teacher,
    data or settings is refused, and a finished one is never rewritten unless ``overwrite``.
    With ``fast_dev_run`` everything runs on one batch and nothing is written. Under DDP every rank writes
    shards of the samples its sampler gives it (``shard-rank<N>-*``) and rank 0 the manifest; a damaged shard
    found on a rerun is written again.

    Args:
        top_k: keep the k largest logits per row; None keeps all of them.
        dtype: storage dtype of logits/values and features: ``fp32``, ``fp16`` or ``bf16``. Default:
            ``fp32`` for full logits, ``fp16`` for top-k values.
        features: teacher module paths (as in feature losses, e.g. ``"body.1"``) whose outputs to store.
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
        shard_mb: float = 256.0,
        batch_size: int | None = None,
        max_full_vocab: int = 4096,
        overwrite: bool = False,
    ) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or null (full logits), got {top_k}.")
        if not shard_mb > 0:
            raise ValueError(f"shard_mb must be > 0, got {shard_mb}.")
        try:
            storage = parse_dtype(dtype or ("fp32" if top_k is None else "fp16"))
        except ValueError:
            storage = None
        if str(storage) not in _STORAGE:
            raise ValueError(f"dtype must be fp32, fp16 or bf16 (or null for the default), got {dtype!r}.")
        self.top_k, self.storage = top_k, _STORAGE[str(storage)]
        self.features = list(dict.fromkeys(features or []))
        self.shard_bytes = int(shard_mb * 2**20)
        self.batch_size, self.max_full_vocab, self.overwrite = batch_size, max_full_vocab, overwrite
        self.manifest: dict[str, Any] | None = None
        self._writers: dict[str, ShardWriter] = {}
        self._taps: FeatureTaps | None = None
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
        datasets = dm.split_datasets()
        wanted = {
            "teacher": {"class": class_name(teacher), "fingerprint": fingerprint_module(teacher)},
            "settings": {"top_k": self.top_k, "dtype": self.storage, "features": self.features},
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
        # Every rank checks (the same files, the same verdict), then rank 0 alone deletes and writes, then all
        # ranks plan from what is on disk. Each rank writes its own shards of the samples its sampler gives it.
        existing = self._check_existing(cache_dir, wanted)
        trainer.strategy.barrier("teacher_cache_checked")
        manifest = run_together(
            lambda: self._prepare(cache_dir, existing, wanted, tokenizer_id(teacher)),
            "preparing the teacher cache",
            rank_zero_only=True,
        )
        self.manifest = trainer.strategy.broadcast(manifest, src=0)
        self._tag = "" if trainer.world_size == 1 else f"rank{trainer.global_rank}-"
        plan = {}
        for split, ds in datasets.items():
            done = set() if self.overwrite else self._covered(cache_dir / split)
            plan[split] = [i for i in range(len(ds)) if i not in done]
        if not any(plan.values()):
            rank_zero_info(f"[lit-distill] teacher cache {dm.cache_dir} is complete and matches; nothing to write.")
        dm.begin_write({k: v for k, v in plan.items() if v}, self.batch_size)

    def _check_existing(self, cache_dir: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
        """The manifest already in ``cache_dir`` if this run may continue it; None when it starts afresh."""
        try:
            existing = read_manifest(cache_dir)
        except DamagedManifestError:
            if self.overwrite:
                return None  # rewritten from scratch, which is what its error message asks for
            raise
        if existing is not None and self.overwrite:
            return None
        if existing is None and cache_dir.exists() and any(cache_dir.iterdir()):
            raise FileExistsError(
                f"cache_dir {str(cache_dir)!r} is not empty and holds no lit-distill teacher cache ({MANIFEST}); "
                "choose an empty or new folder."
            )
        if existing is None:
            return None
        found = copy.deepcopy({k: existing.get(k) for k in wanted})
        for info in found["splits"].values():
            info.pop("complete", None)
        diffs = differences(found, wanted)
        if diffs:
            state = "finished" if all(s["complete"] for s in existing["splits"].values()) else "unfinished"
            raise ValueError(
                f"the {state} teacher cache in {str(cache_dir)!r} was written with other settings:\n  - "
                + "\n  - ".join(diffs)
                + "\nSet overwrite: true on TeacherCacheWriter to rewrite it, or choose another cache_dir."
            )
        return existing

    def _prepare(
        self, cache_dir: Path, existing: dict[str, Any] | None, wanted: dict[str, Any], tokenizer: str | None
    ) -> dict[str, Any]:
        """Rank 0: clear the folder for ``overwrite``, drop damaged shards, write the manifest (not when dry)."""
        if existing is not None:
            for split in existing["splits"]:
                for shard in shard_dirs(cache_dir / split):
                    problem = shard_problem(shard, existing["fields"])
                    if problem is not None:
                        rank_zero_warn(f"teacher cache: {problem}; writing the samples of {shard.name} again.")
                        if not self._dry:
                            shutil.rmtree(shard)
            return existing
        if self.overwrite and (cache_dir / MANIFEST).is_file() and not self._dry:
            # (a smoke run checks everything but deletes nothing)
            for split in ("train", "val", "test"):  # every split CachedTeacherDataModule can cache
                shutil.rmtree(cache_dir / split, ignore_errors=True)
            (cache_dir / MANIFEST).unlink()
        manifest = {
            "format": FORMAT,
            **wanted,
            "fields": {},
            "teacher_model": {"tokenizer_id": tokenizer, "num_logits": None},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "lit_distill_version": lit_distill.__version__,
        }
        for info in manifest["splits"].values():
            info["complete"] = False
        return manifest  # written with the first batch's fields: a run failing before leaves no cache behind

    # ------------------------------------------------------------------ writing
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        if self.manifest is None or not dm.write_splits:
            return
        if not self._dry:
            self._writers = {
                s: ShardWriter(Path(dm.cache_dir) / s, self.shard_bytes, self._tag) for s in dm.write_splits
            }
        if self.features:
            self._taps = FeatureTaps(pl_module.teacher, self.features, "teacher")
        splits = list(dm.write_splits)

        def teacher_step(batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            ids, inner = batch
            with self._taps.capture() if self._taps is not None else contextlib.nullcontext({}) as feats:
                out = pl_module.forward_teacher(inner)
            out.features.update(feats)
            self._check_vocab(out.logits)
            arrays, fields, lengths = encode_outputs(out, inner, self.top_k, self.storage, self.features)
            self._check_fields(fields, Path(dm.cache_dir), int(out.logits.shape[-1]))
            if not self._dry:
                self._writers[splits[dataloader_idx]].add(ids.cpu().numpy(), arrays, lengths)
            return None  # nothing piles up in the predict loop's results

        # DistillationModule.predict_step runs the student; the cache needs the teacher alone.
        pl_module.predict_step = teacher_step

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

    def _check_fields(self, fields: dict[str, Any], cache_dir: Path, num_logits: int) -> None:
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

    def _finish(self, trainer: Trainer, pl_module: LightningModule, interrupted: bool) -> None:
        pl_module.__dict__.pop("predict_step", None)
        if self._taps is not None:
            self._taps.remove()
            self._taps = None
        if self.manifest is None or self._dry:
            return
        cache_dir = Path(trainer.datamodule.cache_dir)
        for writer in self._writers.values():
            writer.flush()  # whole batches only: a resumed run starts right after them
        self._writers = {}
        if not interrupted:
            trainer.strategy.barrier("teacher_cache_flushed")  # every rank's last shard is on disk
        if not trainer.is_global_zero or not (cache_dir / MANIFEST).is_file():
            return  # not rank 0, or no batch got as far as the cache on any rank: nothing to record
        if not self.manifest["fields"]:  # rank 0 got no batch; another rank recorded the fields
            on_disk = read_manifest(cache_dir) or {}
            self.manifest["fields"] = on_disk.get("fields", {})
            self.manifest["teacher_model"] = on_disk.get("teacher_model", self.manifest.get("teacher_model"))
        lines = []
        for split, info in self.manifest["splits"].items():
            covered = len(self._covered(cache_dir / split))
            info["complete"] = covered == info["num_samples"]
            size = sum(f.stat().st_size for d in shard_dirs(cache_dir / split) for f in d.iterdir())
            lines.append(f"{split} {covered}/{info['num_samples']} samples, {size / max(covered, 1):,.0f} bytes/sample")
        write_manifest(cache_dir, self.manifest)
        state = "stopped early; run the same command again to resume" if interrupted else "written"
        rank_zero_info(f"[lit-distill] teacher cache {cache_dir} {state}: " + "; ".join(lines))

    def _covered(self, split_dir: Path) -> set[int]:
        """Sample ids in the sound finished shards of one split (a damaged shard covers nothing)."""
        fields = self.manifest["fields"] if self.manifest is not None else {}
        shards = [shard for shard in shard_dirs(split_dir) if shard_problem(shard, fields) is None]
        ids = [np.load(shard / "ids.npy") for shard in shards]
        return set(np.concatenate(ids).tolist()) if ids else set()

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, pl_module, interrupted=False)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.state.fn == "predict":
            self._finish(trainer, pl_module, interrupted=True)
