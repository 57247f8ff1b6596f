"""What one ``lit-distill predict`` run of the cache writer does to its folder: the cache already there checked
against the wanted settings, the folder made ready (rank 0 alone), and which samples each split still needs."""

from __future__ import annotations

import copy
import datetime
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

import lit_distill
from lit_distill.cache.manifest import (
    FORMAT,
    MANIFEST,
    DamagedManifestError,
    differences,
    read_manifest,
    shard_dirs,
)
from lit_distill.cache.shards import shard_problem

__all__ = ["check_existing", "prepare", "covered"]


def check_existing(cache_dir: Path, wanted: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The manifest already in ``cache_dir`` if this run may continue it; None when it starts afresh."""
    try:
        existing = read_manifest(cache_dir)
    except DamagedManifestError:
        if overwrite:
            return None  # rewritten from scratch, which is what its error message asks for
        raise
    if existing is not None and overwrite:
        return None
    if existing is None and cache_dir.exists() and any(cache_dir.iterdir()):
        raise FileExistsError(
            f"cache_dir {str(cache_dir)!r} is not empty and holds no lit-distill teacher cache ({MANIFEST}); "
            "choose an empty or new folder."
        )
    if existing is None:
        return None
    found = copy.deepcopy({k: existing.get(k) for k in wanted})
    for info in (found.get("splits") or {}).values():
        info.pop("complete", None)
    # A cache written before the tail bucket existed has no tail_temperature: it was written without one.
    found.setdefault("settings", {}).setdefault("tail_temperature", None)
    diffs = differences(found, wanted)
    if diffs:
        state = "finished" if all(s["complete"] for s in existing["splits"].values()) else "unfinished"
        raise ValueError(
            f"the {state} teacher cache in {str(cache_dir)!r} was written with other settings:\n  - "
            + "\n  - ".join(diffs)
            + "\nSet overwrite: true on TeacherCacheWriter to rewrite it, or choose another cache_dir."
        )
    return existing


def prepare(
    cache_dir: Path, existing: dict[str, Any] | None, wanted: dict[str, Any], tokenizer: str | None, dry: bool
) -> dict[str, Any]:
    """Rank 0: drop damaged shards of a cache being continued, or clear the folder of one being rewritten; returns
    the manifest to write (with the first batch's fields: a run failing before leaves no cache behind). A ``dry``
    run (``fast_dev_run``) checks everything and deletes nothing."""
    if existing is not None:
        for split in existing["splits"]:
            for shard in shard_dirs(cache_dir / split):
                problem = shard_problem(shard, existing["fields"])
                if problem is not None:
                    rank_zero_warn(f"teacher cache: {problem}; writing the samples of {shard.name} again.")
                    if not dry:
                        shutil.rmtree(shard)
        return existing
    if (cache_dir / MANIFEST).is_file() and not dry:  # overwrite: true
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
    return manifest


def covered(split_dir: Path, fields: dict[str, Any]) -> set[int]:
    """Sample ids in the sound finished shards of one split (a damaged shard covers nothing)."""
    shards = [shard for shard in shard_dirs(split_dir) if shard_problem(shard, fields) is None]
    ids = [np.load(shard / "ids.npy") for shard in shards]
    return set(np.concatenate(ids).tolist()) if ids else set()
