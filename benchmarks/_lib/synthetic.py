"""Synthetic token rows for the LLM benchmarks: each a pure function of ``(seed, index)``, so every rank agrees."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from benchmarks._lib.llm import LLAMA3_VOCAB


def synthetic_row(index: int, seq_len: int, vocab: int, seed: int = 0) -> Tensor:
    """Token ids of row ``index``: uniform in ``[0, vocab)``, a pure function of ``(seed, index)``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randint(0, vocab, (seq_len,), generator=generator)


def synthetic_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0, start: int = 0) -> dict[str, Tensor]:
    """Rows ``start .. start + batch_size`` as a token-KD batch: ``input_ids`` and ``labels`` (the same ids)."""
    ids = torch.stack([synthetic_row(start + i, seq_len, vocab, seed) for i in range(batch_size)])
    return {"input_ids": ids, "labels": ids.clone()}


class SyntheticTokens(Dataset):
    """``length`` random token rows, made on demand.

    Items are ``{"input_ids", "labels"}`` (plus an all-ones ``attention_mask`` if asked): the dict layout of
    :class:`lit_distill.losses.TokenKD` batches, labels aligned with inputs (TokenKD shifts them).
    """

    def __init__(self, length: int, seq_len: int, vocab: int, seed: int = 0, attention_mask: bool = False) -> None:
        if length < 1 or seq_len < 2 or vocab < 2:
            raise ValueError(f"need length >= 1, seq_len >= 2, vocab >= 2; got {length}, {seq_len}, {vocab}.")
        self.length, self.seq_len, self.vocab, self.seed = length, seq_len, vocab, seed
        self.attention_mask = attention_mask

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ids = synthetic_row(index, self.seq_len, self.vocab, self.seed)
        item = {"input_ids": ids, "labels": ids.clone()}
        if self.attention_mask:
            item["attention_mask"] = torch.ones_like(ids)
        return item


class SyntheticTokenData(LightningDataModule):
    """A LightningDataModule of :class:`SyntheticTokens` for ``DistillationModule`` + ``TokenKD`` runs.

    Under DDP/FSDP Lightning's distributed sampler gives each rank its own rows; ``length`` is virtual (rows are
    made when read), so make it at least ``steps x batch_size x world_size``.

    Example:
        >>> data = SyntheticTokenData(batch_size=2, seq_len=8, vocab=16)
        >>> batch = next(iter(data.train_dataloader()))
        >>> tuple(batch["input_ids"].shape), bool((batch["labels"] == batch["input_ids"]).all())
        ((2, 8), True)
    """

    def __init__(
        self,
        batch_size: int = 8,
        seq_len: int = 1024,
        vocab: int = LLAMA3_VOCAB,
        length: int = 1 << 20,
        seed: int = 0,
        attention_mask: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.dataset = SyntheticTokens(length, seq_len, vocab, seed, attention_mask)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset, batch_size=self.batch_size, drop_last=True, pin_memory=torch.cuda.is_available()
        )
