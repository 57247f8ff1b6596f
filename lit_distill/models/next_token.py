"""Choosing the next token from logits: temperature, top-k and top-p filtering, greedy or seeded sampling."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def filter_logits(logits: Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """``logits / temperature`` in float32, with ``-inf`` outside the ``top_k`` best and outside the smallest set
    whose probability reaches ``top_p`` (nucleus); ``softmax`` of the result is the distribution to sample from."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        ordered, index = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p; keeps the best one
        logits = logits.scatter(-1, index, ordered.masked_fill(drop, -math.inf))
    return logits


def sample_next(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row of ``logits [B, V]``: greedy when ``temperature == 0``, else sample from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` best and/or the smallest set whose
    probability reaches ``top_p`` (nucleus). ``generator`` must live on ``logits.device``."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
