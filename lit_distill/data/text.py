"""Causal-LM text data: fixed-length blocks of a corpus, or prompt/response pairs with the prompt masked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from lit_distill.data.cross_tokenizer import EOS, TeacherTokenizer
from lit_distill.data.resumable import ResumableTrainData
from lit_distill.data.tokenizers import LazyTokenizer, Tokenizer

IGNORE_INDEX = -100


def pydoc_documents() -> list[str]:
    """CPython's bundled help topics (``pydoc_data.topics``, ~0.47 MB of English + Python): no download."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def read_documents(paths: list[str], pattern: str = "*.txt") -> list[str]:
    """Each file is one document; a directory contributes its files matching ``pattern`` (recursively, sorted)."""
    files: list[Path] = []
    for spec in paths:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.rglob(pattern) if p.is_file())
            if not found:
                raise FileNotFoundError(f"text directory {spec!r} has no files matching {pattern!r}; change `pattern`.")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"text file or directory {spec!r} does not exist.")
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def read_instructions(path: str) -> list[tuple[str, str]]:
    """``(prompt, response)`` pairs from a JSONL file with one ``{"prompt": ..., "response": ...}`` object per line."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"instruction file {path!r} does not exist (JSONL of prompt/response objects).")
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("prompt"), str)
            or not isinstance(row.get("response"), str)
        ):
            raise ValueError(
                f"{path}:{number}: expected an object with string 'prompt' and 'response', got {line[:80]!r}."
            )
        pairs.append((row["prompt"], row["response"]))
    if not pairs:
        raise ValueError(f"instruction file {path!r} holds no examples.")
    return pairs


def blocks_from_documents(documents: list[str], tokenizer: Tokenizer, seq_len: int) -> Tensor:
    """One token stream (documents joined by eos) cut into ``[N, seq_len]`` blocks; a last partial block is dropped."""
    stream: list[int] = []
    for doc in documents:
        stream += tokenizer.encode(doc)
        stream.append(tokenizer.eos_id)
    count = len(stream) // seq_len
    if count == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one block of seq_len={seq_len}.")
    return torch.tensor(stream[: count * seq_len], dtype=torch.long).view(count, seq_len)


def encode_instruction(prompt: str, response: str, tokenizer: Tokenizer, seq_len: int) -> dict[str, Tensor]:
    """``input_ids = prompt + response + eos`` (cut to ``seq_len``); ``labels`` are -100 on the prompt."""
    p, r = tokenizer.encode(prompt), tokenizer.encode(response) + [tokenizer.eos_id]
    ids = (p + r)[:seq_len]
    labels = ([IGNORE_INDEX] * len(p) + r)[:seq_len]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


def pad_collate(rows: list[dict[str, Tensor]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad a list of examples to the longest: pad tokens get ``labels=-100`` and ``attention_mask=0``."""
    width = max(len(r["input_ids"]) for r in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
    }
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][i, :n] = row["input_ids"]
        batch["labels"][i, :n] = row["labels"]
        batch["attention_mask"][i, :n] = 1
    return batch


def _block_collate(rows: list[Tensor]) -> dict[str, Tensor]:
    ids = torch.stack(rows)
    return {"input_ids": ids, "labels": ids.clone()}  # the loss shifts: position t predicts token t+1


class TextDataModule(TeacherTokenizer, LazyTokenizer, ResumableTrainData, LightningDataModule):
    """Causal-LM batches ``{"input_ids", "labels"[, "attention_mask"]}`` with ``labels`` aligned to the inputs.

    Corpus mode (default): the documents — CPython's ``pydoc_data.topics`` unless ``files`` is given — are
    tokenized into one stream and cut into fixed blocks of ``seq_len`` tokens, split train/val/test by a seeded
    permutation of the blocks. Instruction mode (``instructions``): a JSONL of ``{"prompt", "response"}`` pairs,
    right-padded per batch, with ``labels = -100`` on prompt and padding tokens so only the response is learned.

    The tokenizer, batch size and sequence length can be bound late with :meth:`connect` (before ``setup``).

    Args:
        tokenizer: ``"bytes"`` (256 byte tokens + eos + pad, no files needed) or a Hugging Face tokenizer
            directory / hub id.
        files: text files or directories (each file one document); None uses the pydoc corpus.
        pattern: file pattern for directories in ``files``.
        instructions: JSONL path of prompt/response pairs (instead of ``files``).
        seq_len: tokens per block (corpus) or the maximum length of an example (instructions).
        batch_size: sequences per batch.
        val_fraction: share of blocks/examples for validation.
        test_fraction: share for testing.
        seed: split seed; the same seed always gives the same split.
        max_blocks: keep only the first N blocks/examples (quick experiments, tests).
        num_workers: DataLoader workers.
        teacher_tokenizer: the teacher's own tokenizer when it differs from the student's (cross-tokenizer
            distillation): batches then carry both tokenizations with byte offsets
            (:mod:`lit_distill.data.cross_tokenizer`); blocks are cut where both sides read the same text.
        teacher_seq_len: most teacher tokens per block/example (None: ``seq_len``).

    Example:
        >>> dm = TextDataModule(seq_len=64, batch_size=4)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> tuple(batch["input_ids"].shape), dm.vocab_size
        ((4, 64), 258)
    """

    def __init__(
        self,
        tokenizer: str | None = "bytes",
        files: list[str] | None = None,
        pattern: str = "*.txt",
        instructions: str | None = None,
        seq_len: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        test_fraction: float = 0.05,
        seed: int = 0,
        max_blocks: int | None = None,
        num_workers: int = 0,
        teacher_tokenizer: str | None = None,
        teacher_seq_len: int | None = None,
    ) -> None:
        super().__init__()
        if files is not None and instructions is not None:
            raise ValueError("give either `files` (plain text) or `instructions` (prompt/response JSONL), not both.")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1."
            )
        self.save_hyperparameters()
        self.tokenizer_spec = tokenizer
        self._tokenizer: Tokenizer | None = None
        self.files, self.pattern, self.instructions = files, pattern, instructions
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.max_blocks, self.num_workers = max_blocks, num_workers
        self.teacher_tokenizer_spec, self.teacher_seq_len = teacher_tokenizer, teacher_seq_len
        self.seq_len = self.batch_size = 0
        self.splits: dict[str, list[Any]] = {}
        self.connect(seq_len=seq_len, batch_size=batch_size)

    def connect(
        self, tokenizer: str | Tokenizer | None = None, batch_size: int | None = None, seq_len: int | None = None
    ) -> None:
        """Bind the tokenizer, batch size or sequence length after construction (e.g. from the model's config)."""
        if self.splits:
            raise RuntimeError("TextDataModule.connect must be called before setup(); the data is already built.")
        if tokenizer is not None:
            self.tokenizer_spec, self._tokenizer = tokenizer, None
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
            self.batch_size = batch_size
        if seq_len is not None:
            if seq_len < 2:
                raise ValueError(f"seq_len must be >= 2 (one input and one next token), got {seq_len}.")
            self.seq_len = seq_len

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.instructions is not None:
            pairs = read_instructions(self.instructions)
            if self.teacher_tokenizer is not None:
                items: list[Any] = [self.encode_both([(p, False), (r, True), (EOS, True)]) for p, r in pairs]
            else:
                items = [encode_instruction(p, r, self.tokenizer, self.seq_len) for p, r in pairs]
            items = [x for x in items if x is not None and bool((x["labels"] != IGNORE_INDEX).any())]
            if not items:
                raise ValueError(f"every prompt is at least seq_len={self.seq_len} tokens long; raise seq_len.")
        else:
            documents = read_documents(self.files, self.pattern) if self.files is not None else pydoc_documents()
            if self.teacher_tokenizer is not None:
                items = self.blocks_both(documents)
            else:
                items = list(blocks_from_documents(documents, self.tokenizer, self.seq_len))
        items = items[: self.max_blocks]
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_test, n_val = int(len(items) * self.test_fraction), int(len(items) * self.val_fraction)
        #: which blocks/examples (by position in the corpus) each split holds
        self.split_indices = {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
        self.splits = {name: [items[i] for i in idx] for name, idx in self.split_indices.items()}
        for name, wanted in (("train", True), ("val", self.val_fraction > 0)):
            if wanted and not self.splits[name]:
                raise ValueError(
                    f"the {name} split is empty ({len(items)} blocks/examples); lower seq_len or add text."
                )

    def _collate(self, rows: list[Any]) -> dict[str, Tensor]:
        if self.teacher_tokenizer is not None:
            return self.collate_both(rows)
        if self.instructions is not None:
            return pad_collate(rows, self.tokenizer.pad_id)
        return _block_collate(rows)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.splits:
            self.setup()
        if not self.splits[split]:
            raise ValueError(f"the {split} split is empty; set {split}_fraction > 0.")
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=self._collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if not self.splits:
            self.setup()
        return self.resumable_train_loader(
            self.splits["train"], self.batch_size, num_workers=self.num_workers, collate_fn=self._collate
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test" if self.splits.get("test") else "val", shuffle=False)
