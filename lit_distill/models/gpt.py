"""A small, readable decoder-only GPT with a KV cache and batched sampling (the default LM teacher and student)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_distill.models.kv_cache import LayerCache
from lit_distill.models.next_token import SamplingSpec, decode, race_key, sample_next  # noqa: F401 (sample_next)


class RMSNorm(nn.Module):
    """``x / rms(x) · g`` (Zhang & Sennrich 2019); computed in float32 so bf16 activations keep their scale."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        z = x.to(torch.promote_types(x.dtype, torch.float32))
        y = z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(z.dtype)).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, mask: Tensor | None, cache: LayerCache | None) -> Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).split(d, dim=-1))
        if cache is not None:
            k, v = cache.append(k, v)
        p = self.dropout if self.training else 0.0
        # mask None means a plain causal prefix (no padding, no cache offset): the fused causal kernel applies.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, bias: bool, norm: type[nn.Module]) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2 = norm(dim), Attention(dim, heads, dropout, bias), norm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim, bias=bias), nn.GELU(), nn.Linear(4 * dim, dim, bias=bias))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None, cache: LayerCache | None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask, cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    """Decoder-only transformer: learned positions, pre-norm blocks, causal SDPA attention, tied LM head.

    ``forward(input_ids, attention_mask=None) -> logits [B, T, padded_vocab_size]``;
    ``forward_hidden`` returns the final-norm hidden states ``[B, T, n_embd]`` and ``get_output_embeddings``
    the head, so fused LM-head losses never build the full logits. Positions come from ``attention_mask``
    (``cumsum - 1``), so a left-padded row computes exactly what the unpadded row would.

    Args:
        vocab_size: number of real tokens (258 for the byte tokenizer).
        padded_vocab_size: width of the logits/embeddings if larger (e.g. a multiple of 64); extra
            rows are never targets and never sampled.
        block_size: maximum sequence length (prompt plus generated tokens).
        n_layer: transformer blocks.
        n_head: attention heads (must divide ``n_embd``).
        n_embd: hidden width.
        norm: ``"rmsnorm"`` or ``"layernorm"``.
        dropout: dropout on attention probabilities and residual branches.
        bias: biases in linear layers.
        tie_weights: share the token embedding with the LM head.
        tokenizer_id: the tokenizer this model speaks (``"bytes"`` for the byte tokenizer, or
            ``TextDataModule.tokenizer_id``); token-level KD refuses teacher/student pairs whose ids differ
            and slices padded vocabularies of equal ids. None: unknown.

    Example:
        >>> model = GPT(vocab_size=258, block_size=32, n_layer=2, n_head=2, n_embd=32)
        >>> model(torch.randint(0, 258, (2, 16))).shape
        torch.Size([2, 16, 258])
    """

    _no_split_modules = ["Block"]  # the units FSDP shards one by one (the attribute Hugging Face models use)

    def __init__(
        self,
        vocab_size: int = 258,
        padded_vocab_size: int | None = None,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        norm: Literal["rmsnorm", "layernorm"] = "rmsnorm",
        dropout: float = 0.0,
        bias: bool = False,
        tie_weights: bool = True,
        tokenizer_id: str | None = None,
    ) -> None:
        super().__init__()
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}  # for save_pretrained
        padded = padded_vocab_size or vocab_size
        if padded < vocab_size:
            raise ValueError(f"padded_vocab_size={padded} is below vocab_size={vocab_size}; it may only add rows.")
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}.")
        if norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {norm!r}.")
        self.vocab_size, self.padded_vocab_size, self.block_size = vocab_size, padded, block_size
        self.tokenizer_id = tokenizer_id
        norm_cls = RMSNorm if norm == "rmsnorm" else nn.LayerNorm
        self.wte, self.wpe = nn.Embedding(padded, n_embd), nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias, norm_cls) for _ in range(n_layer))
        self.norm = norm_cls(n_embd)
        self.head = nn.Linear(n_embd, padded, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "mlp.2.weight")):  # residual outputs: keep the stream's variance O(1)
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if tie_weights:
            self.head.weight = self.wte.weight

    def new_cache(self, batch: int, max_len: int) -> list[LayerCache]:
        """Empty KV buffers for ``batch`` rows of up to ``max_len`` tokens (prompt + new tokens)."""
        if max_len > self.block_size:
            raise ValueError(f"{max_len} tokens exceed block_size={self.block_size}; shorten prompt or max_new_tokens.")
        heads, dim = self.blocks[0].attn.heads, self.wte.embedding_dim
        return [LayerCache(batch, heads, max_len, dim // heads) for _ in self.blocks]

    def forward_hidden(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: list[LayerCache] | None = None
    ) -> Tensor:
        """Final-norm hidden states ``[B, T, n_embd]``.

        Args:
            input_ids: ``[B, T]`` token ids (new tokens only when ``cache`` holds earlier ones).
            attention_mask: ``[B, past + T]``, 1 = real token, 0 = padding; None = all real.
            cache: from :meth:`new_cache`; keys/values of these tokens are appended to it.
        """
        (b, t), past = input_ids.shape, cache[0].length if cache else 0
        if past + t > self.block_size:
            raise ValueError(
                f"sequence of {past + t} tokens exceeds block_size={self.block_size}: raise the model's block_size "
                "or shorten the data's sequences (seq_len)."
            )
        if attention_mask is not None and attention_mask.shape != (b, past + t):
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must be [batch, past + new] = {(b, past + t)}."
            )
        mask = None
        if attention_mask is None:
            pos = torch.arange(past, past + t, device=input_ids.device).expand(b, t)
            if past:
                mask = torch.ones(1, 1, t, past + t, dtype=torch.bool, device=input_ids.device).tril(past)
        else:
            valid = attention_mask.bool()
            pos = (valid.long().cumsum(-1) - 1).clamp_min(0)[:, past:]
            query = torch.arange(past, past + t, device=input_ids.device)[:, None]
            key = torch.arange(past + t, device=input_ids.device)[None, :]
            # a padding query sees only itself, so no attention row is empty (SDPA would return NaN)
            mask = ((key <= query) & valid[:, None, None, :]) | (key == query)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache[i] if cache else None)
        return self.norm(x)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: list[LayerCache] | None = None,
        return_hidden: bool = False,
    ) -> Tensor:
        """Logits ``[B, T, padded_vocab_size]`` (``return_hidden``: the hidden states); arguments as in
        :meth:`forward_hidden`. Fused losses ask for hidden states through here so FSDP's hooks gather the head."""
        hidden = self.forward_hidden(input_ids, attention_mask, cache)
        return hidden if return_hidden else self.head(hidden)

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Continue a batch of prompts; returns ``[B, T + n]`` (prompt then ``n <= max_new_tokens`` new tokens).

        Prompts of different lengths are **left**-padded with ``attention_mask`` 0 on the padding. A row that
        emits ``eos_token_id`` is done: its later tokens are ``pad_token_id`` (default: the eos id), and decoding
        stops once every row is done. Padded vocabulary rows are never picked. Call ``model.eval()`` first.

        Args:
            input_ids: ``[B, T]`` prompts, left-padded.
            attention_mask: ``[B, T]``, 0 on the padding; None = no padding.
            max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id: as in
                :class:`~lit_distill.models.next_token.SamplingSpec`.
            generator: seeded ``torch.Generator`` (on the model's device) for reproducible sampling.
            use_cache: reuse keys/values (one new token per step) instead of re-running the whole sequence.

        Example:
            >>> model = GPT(block_size=32, n_layer=1, n_head=2, n_embd=16).eval()
            >>> model.generate(torch.tensor([[104, 105]]), max_new_tokens=5).shape
            torch.Size([1, 7])
        """
        spec = SamplingSpec(max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id, self.vocab_size)
        key = race_key(generator, input_ids.device) if temperature > 0 else None
        return self.sample(input_ids, attention_mask, spec, key, use_cache)

    @torch.no_grad()
    def sample(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        spec: SamplingSpec,
        key: Tensor | None = None,
        use_cache: bool = True,
        all_done: Callable[[Tensor], bool] | None = None,
    ) -> Tensor:
        """:meth:`generate` with one :class:`SamplingSpec`; ``key``, ``all_done``: see :func:`~.next_token.decode`."""
        b, t = input_ids.shape
        n = spec.max_new_tokens
        if t + n > self.block_size:
            raise ValueError(
                f"prompt ({t}) + max_new_tokens ({n}) exceed block_size={self.block_size}: shorten the prompts "
                "(seq_len / prompt_chars of the datamodule) or max_new_tokens, or raise the model's block_size."
            )
        mask = input_ids.new_ones(b, t + n)  # every new token is real
        if attention_mask is not None:
            mask[:, :t] = attention_mask
        ids, width = torch.cat([input_ids, input_ids.new_zeros(b, n)], 1), [t]
        cache = self.new_cache(b, t + n) if use_cache else None

        def step(token: Tensor) -> Tensor:
            ids[:, width[0]] = token
            width[0] += 1
            w = width[0]
            return (self(token[:, None], mask[:, :w], cache) if use_cache else self(ids[:, :w], mask[:, :w]))[:, -1]

        first = self(input_ids, mask[:, :t], cache)[:, -1]
        return torch.cat([input_ids, decode(step, first, spec, key, all_done)], 1)

    def save_pretrained(self, path: str | Path, overwrite: bool = False, state_dict: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (``state_dict`` instead of the module's own weights, if
        given: a gathered sharded model) into the folder ``path``; reload: :meth:`from_pretrained`."""
        from lit_distill.export import save_state

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in (state_dict or self.state_dict()).items()}
        save_state(state, folder / "model.safetensors", overwrite=overwrite)
        (folder / "config.json").write_text(json.dumps({"model_type": "lit_distill.GPT", **self.config}, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, path: str | Path) -> GPT:
        """Rebuild a GPT written by :meth:`save_pretrained` (strict key and shape check)."""
        from lit_distill.weights import load_weights

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{str(folder)!r} has no config.json; expected a folder from GPT.save_pretrained.")
        config = json.loads((folder / "config.json").read_text())
        model = cls(**{k: v for k, v in config.items() if k != "model_type"})
        load_weights(model, folder / "model.safetensors", prefix="")
        return model
