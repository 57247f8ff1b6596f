"""A resumable JSONL prediction writer for generated ``{"prompt", "response"}`` pairs (sequence-level KD data)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from lit_distill.export import run_together


class JsonlPredictionWriter(BasePredictionWriter):
    """Append each predicted batch of ``{"prompt", "response"}`` rows to a JSONL file, resumably.

    * **Resume**: a rerun reads the rows already written, skips those prompts (the
      :class:`~lit_distill.data.PromptDataModule` leaves them out of its ``predict`` loader, and the
      writer never writes a prompt twice) and appends the rest. A last line torn by a crash is dropped.
    * **Finished files are kept**: once a run has written every batch, a sidecar ``<path>.meta.json``
      marks the file finished; a later run refuses to touch it unless ``overwrite=True``, which starts afresh.
    * **Same settings**: the sidecar records the model's ``generation_settings()``; resuming with other
      settings (another temperature, checkpoint, ...) is refused rather than mixing two recipes in one file.
    * **Atomic appends**: each batch is one ``write`` of whole lines on an ``O_APPEND`` descriptor, then ``fsync``.
    * **Several processes** (DDP): every rank answers its own share of the prompts (Lightning's distributed
      sampler) and appends to its own ``<path>.rank<N>.part``; at the end rank 0 merges the parts into ``path`` in
      prompt order, keeping one row per prompt (a sampler that pads by repeating prompts, or a rerun, adds no
      duplicate), and deletes them. Parts left by a crash are merged first on the next run, so it resumes too.

    The file reads back with :class:`~lit_distill.data.TextDataModule` (``instructions: <path>``), which puts
    the loss on the response tokens only: sequence-level KD (Kim & Rush 2016).

    Args:
        path: the JSONL file to write.
        overwrite: replace an existing file (finished or not) instead of resuming or refusing.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lit_distill.callbacks.JsonlPredictionWriter
              init_args: {path: generated/text/teacher_responses.jsonl}
    """

    def __init__(self, path: str, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.path, self.overwrite = Path(path), overwrite
        self.meta_path = Path(f"{path}.meta.json")
        self.done: set[str] = set()
        self.batches, self.ranks, self.rank = 0, 1, 0
        self._started = False

    # ------------------------------------------------------------------ start
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        # Every rank runs the read-only checks (a refusal stops all of them alike); rank 0 alone changes files,
        # once every rank has checked. A failure in either section reaches every rank at once.
        self.ranks, self.rank = trainer.world_size, trainer.global_rank
        run_together(lambda: self._check(_settings(pl_module)), f"checking {str(self.path)!r}")
        run_together(self._prepare, f"preparing {str(self.path)!r}", rank_zero_only=True)
        self.done, self.batches = self._scan(repair=False), 0
        datamodule = trainer.datamodule
        exclude = getattr(datamodule, "exclude_prompts", None) if datamodule is not None else None
        if self.done and exclude is not None:
            exclude(self.done)
        pending = getattr(datamodule, "pending_prompts", None) if datamodule is not None else None
        pending = pending() if callable(pending) else None
        if self.ranks > 1 and pending is not None and 0 < len(pending) < self.ranks:
            raise ValueError(
                f"{len(pending)} prompt(s) are left for {self.ranks} processes; every process needs one. Finish "
                "them with devices: 1 (the file resumes either way)."
            )
        distinct = len(set(pending or ()))
        if pending is not None and distinct < len(pending):  # the file has one row per distinct prompt
            rank_zero_info(
                f"{len(pending) - distinct} of the {len(pending)} prompts repeat an earlier one word for word; "
                f"{self.path} gets one row per distinct prompt ({distinct})."
            )
        if self.done:
            rank_zero_info(f"resuming {self.path}: {len(self.done)} prompt(s) already answered are skipped.")
        # The sidecar is written when prediction starts (or at the end): a run that fails before generating
        # anything (e.g. the model's own setup checks, which come after this) leaves no file behind.
        self._started = False

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module)

    def _check(self, settings: dict[str, Any] | None) -> None:
        """Refuse a finished file or one written with other settings; read every row (a damaged one fails here)."""
        if self.overwrite:
            return
        meta = self._read_meta()
        if self.path.exists() and meta.get("finished"):
            raise FileExistsError(
                f"{str(self.path)!r} is a finished generation ({meta.get('rows', '?')} rows); set "
                "overwrite: true on JsonlPredictionWriter to regenerate it, or choose another path."
            )
        if self.path.exists() and meta.get("settings") not in (None, settings):
            raise ValueError(
                f"{str(self.path)!r} was generated with {meta['settings']}, but this run uses {settings}; "
                "resuming would mix two recipes in one file. Use the same settings, another path, or overwrite: true."
            )
        self._scan(repair=False)
        for part in self._parts():
            _read_part(part)

    def _prepare(self) -> None:
        """Rank 0, before any row: clear the old file when overwriting, repair a torn last line, merge old parts."""
        if self.overwrite:
            for file in (self.path, self.meta_path, *self._parts()):
                file.unlink(missing_ok=True)
        done = self._scan(repair=True)
        self._merge_parts(done)  # rows a crashed multi-process run left in its part files

    def _start(self, pl_module: LightningModule) -> None:
        """Mark the file unfinished (with this run's settings) before its first new row is appended; every rank."""
        if not self._started:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            meta = {"finished": False, "rows": len(self.done), "settings": _settings(pl_module)}
            run_together(lambda: self._write_meta(meta), f"marking {str(self.meta_path)!r}", rank_zero_only=True)
            self._started = True

    def _read_meta(self) -> dict[str, Any]:
        if not self.meta_path.is_file():
            return {}
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{str(self.meta_path)!r} is not valid JSON ({err}); delete it to resume.") from err
        return meta if isinstance(meta, dict) else {}

    def _write_meta(self, meta: dict[str, Any]) -> None:
        # Write-then-rename so a crash never leaves a half-written marker.
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.meta_path)

    def _scan(self, repair: bool) -> set[str]:
        """Prompts already in the file. A torn last line (no newline, not valid JSON) is ignored, and with
        ``repair`` cut off; a complete last row that only lacks its newline gets one."""
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        done = {_row(line, self.path, n)["prompt"] for n, line in enumerate(lines, start=1) if line.strip()}
        if tail.strip():
            try:
                json.loads(tail)
            except json.JSONDecodeError:
                if repair:
                    os.truncate(self.path, len(data) - len(tail))  # the partial row a crash left behind
                return done
            done.add(_row(tail, self.path, len(lines) + 1)["prompt"])
            if repair:
                with self.path.open("ab") as handle:
                    handle.write(b"\n")
        return done

    def _parts(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.name}.rank*.part"))

    def _merge_parts(self, done: set[str]) -> None:
        """Append the rows of every rank's part file that are not in ``path`` yet, in prompt order; delete the parts."""
        parts = self._parts()
        rows = sorted((row for part in parts for row in _read_part(part)), key=lambda r: r.get("_prompt_index", 0))
        fresh = []
        for row in rows:
            if row["prompt"] not in done:
                done.add(row["prompt"])
                fresh.append({k: v for k, v in row.items() if k != "_prompt_index"})
        _append(self.path, fresh)
        for part in parts:
            part.unlink()

    # ------------------------------------------------------------------ rows
    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        rows = _check_rows(prediction)
        indices = list(batch_indices) if batch_indices is not None and len(batch_indices) == len(rows) else None
        fresh = []
        for i, row in enumerate(rows):
            if row["prompt"] not in self.done:
                self.done.add(row["prompt"])
                # Under DDP the part rows keep their prompt's index, so the merge restores the prompt order.
                fresh.append(row if self.ranks == 1 or indices is None else {**row, "_prompt_index": int(indices[i])})
        _append(self.path if self.ranks == 1 else Path(f"{self.path}.rank{self.rank}.part"), fresh)
        self.batches += 1

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning calls teardown only after a run that ended normally (also one with nothing left to do),
        # never after a crash or Ctrl+C: then the sidecar keeps saying "not finished" and a rerun resumes.
        if stage != "predict":
            return
        self._start(pl_module)
        lengths = [_length(loader) for loader in _loaders(trainer.predict_dataloaders)]
        limits = list(trainer.num_predict_batches)
        complete = not trainer.fast_dev_run and limits == lengths and self.batches == sum(lengths)
        if self.ranks > 1:
            complete = trainer.strategy.reduce_boolean_decision(complete, all=True)  # also waits for every rank
        run_together(lambda: self._finish(complete, pl_module), f"merging {str(self.path)!r}", rank_zero_only=True)

    def _finish(self, complete: bool, pl_module: LightningModule) -> None:
        """Rank 0, after every rank's last row: merge the parts and mark the file finished (or partial)."""
        if self.ranks > 1:
            self._merge_parts(self._scan(repair=False))
        rows = len(self._scan(repair=False))
        self._write_meta({"finished": complete, "rows": rows, "settings": _settings(pl_module)})
        state = "finished" if complete else "partial (rerun to resume)"
        rank_zero_info(f"{self.path}: {rows} rows, {state}.")


def _settings(pl_module: LightningModule) -> dict[str, Any] | None:
    get = getattr(pl_module, "generation_settings", None)
    return json.loads(json.dumps(get(), default=str)) if callable(get) else None


def _loaders(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return list(value.values()) if isinstance(value, dict) else [value]


def _length(loader: Any) -> float:
    try:
        return len(loader)
    except TypeError:
        return math.inf


def _row(line: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{number} is not valid JSON ({err}); fix or delete that line to resume.") from err
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
        raise ValueError(f"{path}:{number}: expected an object with a string 'prompt'; fix or delete that line.")
    return row


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append whole lines in one ``write`` on an ``O_APPEND`` descriptor, then ``fsync``: a crash tears one line."""
    if not rows:
        return
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_part(path: Path) -> list[dict[str, Any]]:
    """The complete rows of one rank's part file (a line torn by a crash is dropped)."""
    lines = path.read_bytes().split(b"\n")
    lines.pop()  # b"" after the last newline, or a torn row
    return [_row(line, path, n) for n, line in enumerate(lines, start=1) if line.strip()]


def _check_rows(prediction: Any) -> list[dict[str, str]]:
    if not isinstance(prediction, (list, tuple)) or not all(
        isinstance(r, dict) and isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str)
        for r in prediction
    ):
        raise TypeError(
            "JsonlPredictionWriter expects predict_step to return a list of {'prompt': str, 'response': str} "
            f"dicts, got {type(prediction).__name__}; use lit_distill.generation.GenerationModule."
        )
    return list(prediction)
