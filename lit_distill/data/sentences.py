"""Sentence batches for distilling sentence encoders, tokenized with the teacher's tokenizer.

The text (CPython's help topics and docstrings of installed packages, deduplicated, split by a seeded hash of
each sentence) comes from :mod:`lit_distill.data.sentence_corpus`. Training batches group sentences of similar
length (drawn at random from a pool of ``bucket`` batches), so little compute goes to padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from lit_distill.data.sentence_corpus import DEFAULT_PACKAGES, SPLITS, collect_sentences, split_of

__all__ = ["SentencesDataModule", "LengthBucketSampler", "collect_sentences", "split_of"]


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of indices with similar lengths, in random order, different every epoch (seeded).

    Each epoch shuffles all indices, cuts them into pools of ``bucket`` batches, sorts each pool by length and
    cuts it into batches; the batches are then shuffled. ``bucket=1`` is plain random batching.

    Args:
        lengths: length of each item.
        batch_size: items per batch (the last batch may be smaller).
        bucket: batches per sorted pool.
        seed: seed of the first epoch; epoch ``e`` uses ``seed + e``.
    """

    def __init__(self, lengths: list[int], batch_size: int, bucket: int = 50, seed: int = 0) -> None:
        self.lengths, self.batch_size, self.bucket, self.seed, self.epoch = lengths, batch_size, bucket, seed, 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        pool = self.batch_size * self.bucket
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[b]


class SentencesDataModule(LightningDataModule):
    """Batches ``{"input_ids", "attention_mask"}`` of single sentences, tokenized with the teacher's tokenizer.

    Sentences come from :func:`collect_sentences`; each one's split is fixed by :func:`split_of`, so the
    ``heldout`` split (the test loader) never reaches training or validation. Batches are right-padded to
    their longest sentence.

    Args:
        tokenizer: a Hugging Face tokenizer directory, a tokenizer object, or None to use the tokenizer of
            the model's teacher (else its student) when the trainer sets the data up.
        packages: packages whose docstrings are read (default: a set of standard-library packages).
        pydoc: include CPython's help topics.
        min_words: shortest sentence kept.
        max_words: longest sentence kept.
        max_length: tokens per sentence, including ``[CLS]``/``[SEP]`` (longer ones are cut).
        batch_size: sentences per batch.
        val_fraction: share of sentences for validation.
        heldout_fraction: share held out for the final evaluation (``test`` loader).
        seed: split seed.
        max_train: keep only the first N training sentences (quick runs, tests).
        views: copies of each training sentence in a row (2 for teacher-free dropout contrastive training).
        bucket: training batches per length-sorted pool (1: plain shuffling).
        num_workers: DataLoader workers.

    Example:
        >>> dm = SentencesDataModule(tokenizer="path/to/teacher", packages=["json"])  # doctest: +SKIP
        >>> dm.setup("fit")  # doctest: +SKIP
        >>> sorted(next(iter(dm.train_dataloader())))  # doctest: +SKIP
        ['attention_mask', 'input_ids']
    """

    def __init__(
        self,
        tokenizer: Any = None,
        packages: list[str] | None = None,
        pydoc: bool = True,
        min_words: int = 5,
        max_words: int = 40,
        max_length: int = 64,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        heldout_fraction: float = 0.1,
        seed: int = 0,
        max_train: int | None = None,
        views: int = 1,
        bucket: int = 50,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not (0 <= val_fraction < 1 and 0 < heldout_fraction < 1 and val_fraction + heldout_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and heldout_fraction={heldout_fraction} must lie in [0, 1) (held-out "
                "above 0) and sum below 1."
            )
        lows = {"max_length": (max_length, 3), "batch_size": (batch_size, 1), "views": (views, 1)}
        lows.update(bucket=(bucket, 1), min_words=(min_words, 1), max_words=(max_words, min_words))
        for name, (value, low) in lows.items():
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}.")
        self.packages = list(DEFAULT_PACKAGES if packages is None else packages)
        self.pydoc, self.min_words, self.max_words = pydoc, min_words, max_words
        self.max_length, self.batch_size, self.views, self.num_workers = max_length, batch_size, views, num_workers
        self.bucket = bucket
        self.val_fraction, self.heldout_fraction = val_fraction, heldout_fraction
        self.seed, self.max_train = seed, max_train
        self.tokenizer = tokenizer
        self.texts: dict[str, list[str]] = {}
        self._ids: dict[str, list[list[int]]] = {}

    def connect(self, tokenizer: Any) -> None:
        """Bind the tokenizer (a directory or a Hugging Face tokenizer object) before :meth:`setup`."""
        if self._ids:
            raise RuntimeError("SentencesDataModule.connect must be called before setup(); data is already tokenized.")
        self.tokenizer = tokenizer

    def _resolve_tokenizer(self) -> Any:
        if isinstance(self.tokenizer, str):
            from lit_distill.data.tokenizers import encoder_transformers

            if not Path(self.tokenizer).expanduser().is_dir():
                raise FileNotFoundError(f"tokenizer directory {self.tokenizer!r} does not exist; give the teacher's.")
            self.tokenizer = encoder_transformers().AutoTokenizer.from_pretrained(self.tokenizer)
        if self.tokenizer is None:
            module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
            for side in ("teacher", "student"):
                found = getattr(getattr(module, side, None), "tokenizer", None)
                if found is not None:
                    self.tokenizer = found
                    break
        if self.tokenizer is None:
            raise ValueError(
                "SentencesDataModule has no tokenizer: set `tokenizer:` to the teacher's directory, call "
                "connect(tokenizer), or use a teacher with a `.tokenizer` (lit_distill.models.encoder.SentenceEncoder)."
            )
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before training.")
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self._ids:
            return
        tokenizer = self._resolve_tokenizer()
        self.texts = {name: [] for name in SPLITS}
        for sentence in collect_sentences(self.packages, self.pydoc, self.min_words, self.max_words):
            self.texts[split_of(sentence, self.seed, self.val_fraction, self.heldout_fraction)].append(sentence)
        self.texts["train"] = self.texts["train"][: self.max_train]
        for name in ("train", "heldout") + (("val",) if self.val_fraction > 0 else ()):
            if not self.texts[name]:
                raise ValueError(f"the {name} split is empty; add packages, lower min_words or raise the fraction.")
        for name, texts in self.texts.items():
            ids = tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"] if texts else []
            self._ids[name] = ids

    def _collate(self, rows: list[list[int]]) -> dict[str, Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def _collate_views(self, rows: list[list[int]]) -> dict[str, Tensor]:
        # Copies sit next to each other: rows k*views ... k*views + views-1 are dropout views of one sentence.
        return self._collate([row for row in rows for _ in range(self.views)])

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        self.setup()
        rows = self._ids[split]
        if not rows:
            raise ValueError(f"the {split} split is empty; set its fraction above 0.")
        views = self.views if train else 1
        size = max(1, self.batch_size // views)
        collate = self._collate_views if views > 1 else self._collate
        if train:
            sampler = LengthBucketSampler([len(r) for r in rows], size, self.bucket, self.seed)
            return DataLoader(rows, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers)
        return DataLoader(rows, batch_size=size, collate_fn=collate, num_workers=self.num_workers)

    def sentences(self, split: str) -> list[str]:
        """The texts of ``split`` (``train``, ``val`` or ``heldout``), in corpus order."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        self.setup()
        return self.texts[split]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """The held-out sentences: never used for training or validation."""
        return self._loader("heldout")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("heldout")
