"""Key/value caches of lit-distill's :class:`~lit_distill.models.GPT`: :class:`LayerCache` grows left to right
(``GPT.new_cache``, the plain decode loop); :class:`GPTCache` is a static grid of slots that one compiled decode step
updates in place (:mod:`lit_distill.generation.fast`). Both hand attention the keys and values through ``append``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


class LayerCache:
    """Keys and values of one attention layer, ``[B, heads, max_len, head_dim]`` buffers filled left to right;
    allocated at the first write like the keys (a sharded model's weights say nothing of its activations' type)."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int) -> None:
        self.shape, self.length = (batch, heads, max_len, head_dim), 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None:
            self.k, self.v = k.new_zeros(self.shape), v.new_zeros(self.shape)
        end = self.length + k.shape[2]
        self.k[:, :, self.length : end], self.v[:, :, self.length : end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def mark_static(*tensors: Tensor) -> None:
    """Tell ``torch.compile`` these buffers keep their address: CUDA graphs read them in place, no copy per replay."""
    for t in tensors:
        torch._dynamo.mark_static_address(t, guard=False)  # a moved buffer re-records, not recompiles


class GPTCache:
    """Keys and values of every GPT layer, ``[B, heads, L, head_dim]``, allocated at the first write in the dtype
    the attention computes in (autocast and bf16 models get bf16 buffers). ``prefill`` and ``decode`` run the GPT's
    own blocks on them and return the next-token logits ``[B, V]``; each layer writes its keys and values at the
    step's slots and attends over every slot through the mask."""

    def __init__(self, gpt: nn.Module, batch: int, length: int) -> None:
        heads = gpt.blocks[0].attn.heads
        self.shape = (batch, heads, length, gpt.wte.embedding_dim // heads)
        self.kv: list[tuple[Tensor, Tensor] | None] = [None] * len(gpt.blocks)

    def run(self, gpt: nn.Module, ids: Tensor, positions: Tensor, attn: Tensor, slots: Tensor) -> Tensor:
        """Next-token logits ``[B, V]`` of ``ids`` written at ``slots`` (GPT's blocks, on these buffers)."""
        x = gpt.drop(gpt.wte(ids) + gpt.wpe(positions))
        for i, block in enumerate(gpt.blocks):
            x = block(x, attn, _LayerView(self, i, slots))
        return gpt.head(gpt.norm(x[:, -1]))

    def prefill(self, gpt: nn.Module, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        slots = torch.arange(ids.shape[1], device=ids.device)
        query, key = slots[:, None], torch.arange(mask.shape[1], device=ids.device)
        # As GPT.forward_hidden: a padding query sees only itself, so no attention row is empty.
        attn = ((key <= query) & mask.bool()[:, None, None, :]) | (key == query)
        return self.run(gpt, ids, positions, attn, slots)

    def decode(self, gpt: nn.Module, token: Tensor, position: Tensor, slot: Tensor, mask: Tensor) -> Tensor:
        attn = (mask.bool() & (torch.arange(mask.shape[1], device=mask.device) <= slot))[:, None, None, :]
        return self.run(gpt, token, position, attn, slot)


@dataclass
class _LayerView:
    cache: GPTCache
    layer: int
    slots: Tensor

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        kv = self.cache.kv
        if kv[self.layer] is None:  # only in the (eager) prefill: decode steps always find the buffers
            kv[self.layer] = (k.new_zeros(self.cache.shape), k.new_zeros(self.cache.shape))
            mark_static(*kv[self.layer])
        keys, values = kv[self.layer]
        keys.index_copy_(2, self.slots, k)
        values.index_copy_(2, self.slots, v)
        return keys, values
