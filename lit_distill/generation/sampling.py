"""Sampling from causal LMs in batches, and turning samples into training batches (sequence-level and on-policy KD).

:func:`generate` runs lit-distill's :class:`~lit_distill.models.GPT` (KV cache, seeded ``torch.Generator``) and Hugging
Face models (``HFCausalLM`` or a bare ``PreTrainedModel``, through their ``generate``) with one set of arguments.
Prompts are **left**-padded for generation; training batches built from the samples are **right**-padded, the layout
every model reads without position ids, with ``labels = -100`` everywhere except the generated tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_distill.generation.fast_mode import FastMode, check_fast, fast_generate, seeded_generator
from lit_distill.generation.static_cache import hf_model, hf_vocab_limit
from lit_distill.models.gpt import GPT

IGNORE_INDEX = -100


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling settings that cannot work, naming the value and the fix."""
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}.")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}.")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be None (off) or an integer >= 1, got {top_k!r}.")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None (off) or in (0, 1], got {top_p!r}.")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (no dropout while sampling) and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    fast: FastMode = False,
) -> Tensor:
    """Continue left-padded prompts; returns ``[B, T + n]`` (``n <= max_new_tokens``), no gradient, eval mode.

    Rows that emit ``eos_token_id`` are filled with ``pad_token_id`` afterwards (use :func:`completion_batch` or
    :func:`new_tokens` to cut them). The model's train/eval mode is restored on return.

    Args:
        model: a lit-distill ``GPT``, an ``HFCausalLM`` or a ``transformers`` causal LM.
        input_ids: ``[B, T]`` prompts, left-padded.
        attention_mask: ``[B, T]``, 0 on the padding; None = no padding.
        max_new_tokens: upper bound on new tokens per row.
        temperature: 0 = greedy; otherwise sample from ``softmax(logits / temperature)``.
        top_k: sample only among the ``k`` most likely tokens (None = off).
        top_p: nucleus sampling mass (None = off).
        eos_token_id: token that ends a row.
        pad_token_id: filler after eos (default: the eos id).
        seed: seeds the sampling (same seed, same prompts, same device: same output); None = global RNG.
        fast: ``"auto"`` samples on a static KV cache with a compiled decode step (CUDA graphs) on CUDA and takes
            the plain path elsewhere or for models it cannot run; ``True`` always takes it (errors name why it
            cannot); ``False`` is the plain path. Greedy output is the same on both paths (in float32; bf16
            rounding can flip near-ties); seeded samples are reproducible on each but differ between them (see
            :mod:`lit_distill.generation.fast`).

    Example:
        >>> gpt = GPT(block_size=32, n_layer=1, n_head=2, n_embd=16)
        >>> generate(gpt, torch.tensor([[104, 105]]), max_new_tokens=4, seed=0).shape
        torch.Size([1, 6])
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    check_fast(fast)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}.")
    pad = eos_token_id if pad_token_id is None else pad_token_id
    with eval_mode(model):
        out = fast_generate(
            model, input_ids, attention_mask, fast, max_new_tokens, temperature, top_k, top_p, eos_token_id, pad, seed
        )
        if out is not None:
            return out
        if isinstance(getattr(model, "_orig_mod", model), GPT):
            gpt = getattr(model, "_orig_mod", model)
            return gpt.generate(
                input_ids,
                attention_mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                eos_token_id=eos_token_id,
                pad_token_id=pad,
                generator=seeded_generator(seed, temperature, input_ids.device),
            )
        hf = hf_model(model)
        if hf is None:
            raise TypeError(
                f"cannot generate with {type(model).__name__}: expected lit_distill.models.GPT, "
                "lit_distill.models.hf.HFCausalLM or a transformers model with .generate()."
            )
        return _hf_generate(
            model, hf, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, eos_token_id, pad, seed
        )


def _hf_generate(
    wrapper: nn.Module,
    hf: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos: int | None,
    pad: int | None,
    seed: int | None,
) -> Tensor:
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        # The model's own generation_config may switch on top_k=50 etc.; our arguments are the whole recipe.
        kwargs.update(temperature=float(temperature), top_k=top_k or 0, top_p=1.0 if top_p is None else float(top_p))
    if eos is not None:
        kwargs["eos_token_id"] = eos
    if pad is not None:
        kwargs["pad_token_id"] = pad
    real = hf_vocab_limit(wrapper, hf, eos, pad)
    if real is not None:  # padded head rows are not tokens
        kwargs["suppress_tokens"] = list(range(real, hf.get_output_embeddings().weight.shape[0]))
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    devices = [input_ids.device] if input_ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return hf.generate(input_ids=input_ids, attention_mask=mask, **kwargs)


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` with each sequence right-aligned (left padding), as generation expects.

    Example:
        >>> left_pad([[5, 6], [7]], pad_id=0)[0].tolist()
        [[5, 6], [0, 7]]
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("every prompt needs at least one token; got an empty prompt (or no prompts).")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(sequences), width, dtype=torch.long, device=device)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long, device=device)
        mask[i, width - len(seq) :] = 1
    return ids, mask


def prompts_from_batch(
    batch: dict[str, Tensor], pad_id: int, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Left-padded prompts of an instruction batch: each row's tokens before its first label (right padding dropped).

    The batch is ``{"input_ids", "labels"[, "attention_mask"]}`` as :class:`~lit_distill.data.TextDataModule` builds
    it in instruction mode: ``labels`` are ``ignore_index`` on the prompt, so the prompt ends where labels begin.
    """
    if not isinstance(batch, dict) or "input_ids" not in batch or "labels" not in batch:
        raise ValueError("prompts are read from a dict batch with 'input_ids' and 'labels' (-100 on prompt tokens).")
    ids, labels = batch["input_ids"], batch["labels"]
    counted = labels != ignore_index
    if not bool(counted.any(-1).all()):
        raise ValueError("a row has no labelled response token, so its prompt end is unknown; drop such rows.")
    starts = counted.int().argmax(-1).tolist()
    if min(starts) == 0:
        raise ValueError("a row has a label on its first token, so it has no prompt; label prompts with -100.")
    rows = [ids[i, :start].tolist() for i, start in enumerate(starts)]
    return left_pad(rows, pad_id, device=ids.device)


def new_tokens(
    sequences: Tensor, prompt_width: int, eos_token_id: int | None, keep_eos: bool = False
) -> list[list[int]]:
    """The generated tokens of each row (after the ``prompt_width`` prompt columns), cut at the first eos."""
    rows = []
    for row in sequences[:, prompt_width:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            end = row.index(eos_token_id)
            row = row[: end + 1] if keep_eos else row[:end]
        rows.append(row)
    return rows


def completion_batch(
    prompt_ids: Tensor, prompt_mask: Tensor, sequences: Tensor, eos_token_id: int | None, pad_token_id: int
) -> dict[str, Tensor]:
    """A right-padded training batch from generated ``sequences``: labels on the generated tokens only.

    Each row is its real prompt tokens, then its generated tokens up to and including the first eos (so the
    student also learns to stop), then padding. ``labels`` are -100 on prompt and padding; ``attention_mask``
    is 0 on padding. The tensors carry no gradient.
    """
    width = prompt_ids.shape[1]
    generated = new_tokens(sequences, width, eos_token_id, keep_eos=True)
    rows = []
    for i, gen in enumerate(generated):
        prompt = prompt_ids[i][prompt_mask[i].bool()].tolist()
        rows.append((prompt, gen))
    total = max(len(p) + len(g) for p, g in rows)
    device = sequences.device
    batch = {
        "input_ids": torch.full((len(rows), total), pad_token_id, dtype=torch.long, device=device),
        "labels": torch.full((len(rows), total), IGNORE_INDEX, dtype=torch.long, device=device),
        "attention_mask": torch.zeros(len(rows), total, dtype=torch.long, device=device),
    }
    for i, (prompt, gen) in enumerate(rows):
        n, m = len(prompt), len(gen)
        batch["input_ids"][i, : n + m] = torch.tensor(prompt + gen, dtype=torch.long, device=device)
        batch["labels"][i, n : n + m] = torch.tensor(gen, dtype=torch.long, device=device)
        batch["attention_mask"][i, : n + m] = 1
    return batch


@torch.no_grad()
def sequence_nll(model: nn.Module, batch: dict[str, Tensor], ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``model``'s mean next-token NLL over the labelled tokens of ``batch`` (e.g. a teacher scoring student samples).

    ``exp`` of it is the model's perplexity of those tokens; lower = the text is more likely under ``model``.
    """
    with eval_mode(model):
        out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    logits = getattr(out, "logits", out)
    targets = batch["labels"][:, 1:]
    flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    total = F.cross_entropy(flat, targets.reshape(-1), ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp_min(1)
