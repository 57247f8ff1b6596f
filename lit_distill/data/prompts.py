"""Prompt sets for generation and on-policy distillation: an embedded set cut from the pydoc corpus, or a JSONL file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lit_distill.data.cross_tokenizer import EOS, TeacherTokenizer
from lit_distill.data.text import IGNORE_INDEX, encode_instruction, pad_collate, pydoc_documents
from lit_distill.data.tokenizers import LazyTokenizer, Tokenizer

Split = Literal["train", "val", "test", "all"]


def _cut_at_word(text: str, limit: int) -> str:
    """``text[:limit]`` shortened to the last whitespace, so a prompt never ends inside a word."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ")
    return head[: space + 1] if space > limit // 2 else head


def corpus_prompts(prompt_chars: int = 48, response_chars: int = 64) -> list[tuple[str, str]]:
    """``(prompt, reference continuation)`` pairs cut from CPython's bundled pydoc topics (no download).

    Every paragraph of at least ``prompt_chars + response_chars`` characters gives one pair: its opening
    (about ``prompt_chars``, cut at a space) and the text that follows (about ``response_chars``). Headings,
    underlines and duplicates are skipped. The result is deterministic for a given Python version.

    Args:
        prompt_chars: prompt length in characters (at most).
        response_chars: reference response length in characters (at most).

    Example:
        >>> pairs = corpus_prompts()
        >>> len(pairs) > 1000, all(len(p) <= 48 for p, _ in pairs)
        (True, True)
    """
    if prompt_chars < 1 or response_chars < 1:
        raise ValueError(f"prompt_chars ({prompt_chars}) and response_chars ({response_chars}) must be >= 1.")
    pairs, seen = [], set()
    for doc in pydoc_documents():
        for paragraph in re.split(r"\n\s*\n", doc):
            text = paragraph.strip("\n")
            if len(text) < prompt_chars + response_chars or re.fullmatch(r"[*=\-\s]+", text.splitlines()[-1]):
                continue
            prompt = _cut_at_word(text, prompt_chars)
            response = _cut_at_word(text[len(prompt) :], response_chars)
            if prompt.strip() and response.strip() and prompt not in seen:
                seen.add(prompt)
                pairs.append((prompt, response))
    return pairs


def read_prompts(path: str | Path) -> list[tuple[str, str | None]]:
    """``(prompt, response or None)`` rows of a JSONL file of ``{"prompt": ...[, "response": ...]}`` objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'prompt file {str(path)!r} does not exist (JSONL, one {{"prompt": ...}} per line).')
    rows: list[tuple[str, str | None]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise ValueError(
                f"{path}:{number}: expected an object with a non-empty string 'prompt', got {line[:80]!r}."
            )
        response = row.get("response")
        if response is not None and not isinstance(response, str):
            raise ValueError(
                f"{path}:{number}: 'response' must be a string when present, got {type(response).__name__}."
            )
        rows.append((row["prompt"], response))
    if not rows:
        raise ValueError(f"prompt file {str(path)!r} holds no prompts.")
    return rows


class PromptDataModule(TeacherTokenizer, LazyTokenizer, LightningDataModule):
    """Prompts to generate from (``predict``) and prompt/reference pairs to train on (``fit``).

    ``predict`` batches are ``{"prompt": list[str]}`` (the model tokenizes and generates); prompts named by
    :meth:`exclude_prompts` (those a resumed :class:`~lit_distill.callbacks.generation.JsonlPredictionWriter`
    has already written) are left out. ``fit``/``validate``/``test`` batches are instruction batches
    ``{"input_ids", "labels", "attention_mask"}``: prompt + reference response + eos, right-padded, ``labels``
    -100 on the prompt and padding, as :class:`~lit_distill.data.TextDataModule` builds them. The
    on-policy module reads the prompts back from these (its λ=0 case trains on the references).

    Args:
        prompts: JSONL of ``{"prompt"[, "response"]}`` rows; None = the embedded pydoc set (:func:`corpus_prompts`).
        tokenizer: ``"bytes"`` or a Hugging Face tokenizer folder / hub id (for the ``fit`` batches).
        prompt_chars: prompt length of the embedded set (characters).
        response_chars: reference length of the embedded set (characters).
        seq_len: longest training example in tokens (prompt + response + eos, cut beyond).
        batch_size: prompts per batch.
        val_fraction: share of prompts for validation.
        test_fraction: share for testing.
        seed: split seed.
        max_prompts: keep only the first N prompts (quick runs).
        predict_split: which split ``predict`` generates for (``"all"`` = every prompt).
        num_workers: DataLoader workers.
        teacher_tokenizer: the teacher's own tokenizer when it differs from the student's: ``fit`` batches then
            carry both tokenizations with byte offsets (:mod:`lit_distill.data.cross_tokenizer`).
        teacher_seq_len: longest training example in teacher tokens (None: ``seq_len``).

    Example:
        >>> dm = PromptDataModule(batch_size=4)
        >>> dm.setup("predict")
        >>> len(next(iter(dm.predict_dataloader()))["prompt"])
        4
    """

    def __init__(
        self,
        prompts: str | None = None,
        tokenizer: str | None = "bytes",
        prompt_chars: int = 48,
        response_chars: int = 64,
        seq_len: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        test_fraction: float = 0.05,
        seed: int = 0,
        max_prompts: int | None = None,
        predict_split: Split = "train",
        num_workers: int = 0,
        teacher_tokenizer: str | None = None,
        teacher_seq_len: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must sum below 1.")
        if predict_split not in ("train", "val", "test", "all"):
            raise ValueError(f"predict_split must be train, val, test or all, got {predict_split!r}.")
        self.save_hyperparameters()
        self.prompts_path, self.tokenizer_spec = prompts, tokenizer
        self.prompt_chars, self.response_chars, self.seq_len = prompt_chars, response_chars, seq_len
        self.batch_size, self.seed, self.max_prompts = batch_size, seed, max_prompts
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.predict_split, self.num_workers = predict_split, num_workers
        self.teacher_tokenizer_spec, self.teacher_seq_len = teacher_tokenizer, teacher_seq_len
        self.splits: dict[str, list[tuple[str, Any]]] = {}
        self.excluded: set[str] = set()
        self._tokenizer: Tokenizer | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        rows = self.load_rows()[: self.max_prompts]
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_test, n_val = int(len(rows) * self.test_fraction), int(len(rows) * self.val_fraction)
        parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        self.splits = {name: [rows[i] for i in sorted(idx)] for name, idx in parts.items()}
        self.splits["all"] = rows

    def load_rows(self) -> list[tuple[str, Any]]:
        """``(prompt, payload)`` rows: ``predict`` answers the prompts, :meth:`encode_rows` makes training examples."""
        if self.prompts_path is not None:
            return read_prompts(self.prompts_path)
        return list(corpus_prompts(self.prompt_chars, self.response_chars))

    def encode_rows(self, split: str) -> list[dict[str, Any]]:
        """Training examples of ``split``: prompt + reference response + eos, labels on the response only."""
        missing = [p for p, r in self.splits[split] if r is None]
        if missing:
            raise ValueError(
                f"{len(missing)} prompt(s) of the {split} split have no 'response' (e.g. {missing[0][:40]!r}); "
                "training needs prompt/response pairs. Generate responses first (lit-distill predict)."
            )
        if self.teacher_tokenizer is not None:
            return [self.encode_both([(p, False), (r, True), (EOS, True)]) for p, r in self.splits[split]]
        return [encode_instruction(p, r, self.tokenizer, self.seq_len) for p, r in self.splits[split]]

    def exclude_prompts(self, prompts: Iterable[str]) -> None:
        """Leave these prompts out of ``predict`` (already answered); call before the predict loader is built."""
        self.excluded |= set(prompts)

    def pending_prompts(self) -> list[str]:
        """Prompts of ``predict_split`` that are not excluded, in order."""
        self.setup()
        return [p for p, _ in self.splits[self.predict_split] if p not in self.excluded]

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.pending_prompts(), batch_size=self.batch_size, shuffle=False, collate_fn=_prompt_collate)

    def _train_rows(self, split: str) -> list[dict[str, Any]]:
        self.setup()
        rows = [r for r in self.encode_rows(split) if r is not None and bool((r["labels"] != IGNORE_INDEX).any())]
        if not rows:
            raise ValueError(f"the {split} split is empty or every prompt fills seq_len={self.seq_len}; add prompts.")
        return rows

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._train_rows(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=self.collate_both
            if self.teacher_tokenizer
            else partial(pad_collate, pad_id=self.tokenizer.pad_id),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _prompt_collate(prompts: list[str]) -> dict[str, list[str]]:
    return {"prompt": list(prompts)}
