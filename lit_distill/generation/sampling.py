"""Sampling from causal LMs in batches (:func:`generate`), and turning samples into training batches.

:func:`generate` builds one :class:`~lit_distill.models.next_token.SamplingSpec` for the model and runs it on the fast
path (:mod:`lit_distill.generation.fast`) or the plain one: lit-distill's ``GPT`` through its KV cache, Hugging Face
models through their ``generate``. Ranks of a sharded model (FSDP2) decode in step: every forward there is a
collective, so they agree on the number of new tokens and stop together. Prompts are **left**-padded for generation;
training batches built from the samples are **right**-padded, the layout every model reads without position ids,
with ``labels = -100`` everywhere except the generated tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lit_distill.data.tokenizers import BYTES_ID, ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer
from lit_distill.generation.fast import FastMode, check_fast, fast_sampler
from lit_distill.models.gpt import GPT
from lit_distill.models.next_token import SamplingSpec, hf_model, race_key, spec_for, trim, unwrap
from lit_distill.sharding.fill import is_sharded

IGNORE_INDEX = -100


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling settings that cannot work, naming the value and the fix (the checks of ``SamplingSpec``)."""
    SamplingSpec(max_new_tokens, temperature, top_k, top_p)


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
        max_new_tokens, temperature, top_k, top_p: see :class:`~lit_distill.models.next_token.SamplingSpec`.
        eos_token_id: token that ends a row (a ``transformers`` model given None uses its generation_config's).
        pad_token_id: filler after eos (default: the eos id).
        seed: seeds the sampling (same seed, prompts and device: same output); None = the global RNG.
        fast: ``"auto"``, ``True`` or ``False``: see :mod:`lit_distill.generation.fast`. For a ``GPT`` both paths
            draw the same tokens from one seed (float32; bf16 rounding can flip near-ties).

    Example:
        >>> gpt = GPT(block_size=32, n_layer=1, n_head=2, n_embd=16)
        >>> generate(gpt, torch.tensor([[104, 105]]), max_new_tokens=4, seed=0).shape
        torch.Size([1, 6])
    """
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    spec = spec_for(model, eos_token_id, pad_token_id, **settings)
    check_fast(fast)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}.")
    gpt, hf = (unwrap(model), None) if isinstance(unwrap(model), GPT) else (None, hf_model(model))
    if gpt is None and hf is None:
        raise TypeError(
            f"cannot generate with {type(model).__name__}: expected lit_distill.models.GPT, "
            "lit_distill.models.hf.HFCausalLM or a transformers model with .generate()."
        )
    in_step = dist.is_available() and dist.is_initialized() and is_sharded(model)
    if in_step:
        spec = agree(spec, input_ids, getattr(gpt, "block_size", None))
    key = race_key(seed, input_ids.device) if spec.temperature > 0 else None
    with eval_mode(model):
        sampler = fast_sampler(model, fast, input_ids.device)
        if sampler is not None:
            try:
                return sampler.generate(model, input_ids, attention_mask, spec, key)
            except Exception as err:  # said, then raised as it is: a seeded run never switches sampler mid-way
                getattr(err, "add_note", lambda _: None)("(raised by fast sampling; fast: false takes the plain path)")
                raise
        if gpt is not None:
            out = gpt.sample(input_ids, attention_mask, spec, key, all_done=all_ranks_done if in_step else None)
            return trim(out, input_ids.shape[1], spec)  # stepping on with other ranks added only padding
        return _hf_generate(model, hf, input_ids, attention_mask, spec, seed, in_step)


def agree(spec: SamplingSpec, input_ids: Tensor, block_size: int | None) -> SamplingSpec:
    """``spec`` with the smallest ``max_new_tokens`` of every rank (ranks of a sharded model decode the same number
    of steps); a prompt that leaves any rank less room than that under ``block_size`` fails on every rank alike."""
    width = input_ids.shape[1]
    room = spec.max_new_tokens if block_size is None else block_size - width
    agreed = torch.tensor([spec.max_new_tokens, room], device=input_ids.device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    steps, room = agreed.tolist()
    if room < steps:
        raise ValueError(
            f"a prompt on one of the ranks leaves room for {room} new tokens under block_size={block_size}, fewer "
            f"than max_new_tokens={steps}; shorten the prompts or max_new_tokens, or raise block_size."
        )
    return replace(spec, max_new_tokens=steps)


def all_ranks_done(done: Tensor) -> bool:
    """Whether every row of every rank has finished (one small all-reduce): ranks of a sharded model stop together."""
    left = (~done).sum().reshape(1)
    dist.all_reduce(left)
    return int(left) == 0


def _hf_generate(
    model: nn.Module, hf: Any, ids: Tensor, mask: Tensor | None, spec: SamplingSpec, seed: int | None, in_step: bool
) -> Tensor:
    """``spec`` as ``transformers``' ``generate`` arguments; ``synced_gpus`` keeps sharded ranks in step."""
    kwargs: dict[str, Any] = {"max_new_tokens": spec.max_new_tokens, "do_sample": spec.temperature > 0}
    if spec.temperature > 0:
        # The model's own generation_config may switch on top_k=50 etc.; our spec is the whole recipe.
        kwargs.update(temperature=spec.temperature, top_k=spec.top_k or 0, top_p=spec.top_p or 1.0)
    if spec.eos:
        kwargs["eos_token_id"] = list(spec.eos)
    if spec.pad is not None:
        kwargs["pad_token_id"] = spec.pad
    width = hf.get_output_embeddings().weight.shape[0]
    if spec.vocab is not None and spec.vocab < width:  # padded head rows are not tokens
        kwargs["suppress_tokens"] = list(range(spec.vocab, width))
    mask = torch.ones_like(ids) if mask is None else mask
    devices = [ids.device] if ids.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return _root_generate(model, hf)(input_ids=ids, attention_mask=mask, synced_gpus=in_step, **kwargs)


def _root_generate(model: nn.Module, hf: Any) -> Any:
    """``hf.generate``, run as a forward of ``model`` when ``model`` is a sharded wrapper around ``hf`` (FSDP2): its
    hooks then gather the weights the wrapper's root holds (embeddings, LM head) around the whole generation."""
    if hf is model or not hasattr(model, "_get_fsdp_state"):
        return hf.generate
    if "_lit_distill_generate" not in model.__dict__:
        from torch.distributed.fsdp import register_fsdp_forward_method

        model._lit_distill_generate = hf.generate
        register_fsdp_forward_method(model, "_lit_distill_generate")
    return model._lit_distill_generate


def tokenizer_for(model: nn.Module, spec: str | None) -> Tokenizer:
    """The tokenizer ``spec`` names (``"bytes"`` or a folder), else the model's own; refused if the model speaks
    another (its ``tokenizer_id``), since prompts would be encoded into ids it does not know."""
    declared = getattr(model, "tokenizer_id", None)
    if spec is not None:
        tokenizer = load_tokenizer(spec)
    elif getattr(model, "tokenizer", None) is not None:
        tokenizer = HFTokenizer.wrap(model.tokenizer)
    elif declared == BYTES_ID:
        tokenizer = ByteTokenizer()
    else:
        raise ValueError(
            f"{type(model).__name__} declares tokenizer_id={declared!r} and carries no tokenizer; set "
            "GenerationModule(tokenizer=...) to 'bytes' or a Hugging Face tokenizer folder."
        )
    if declared is not None and declared != tokenizer.tokenizer_id:
        raise ValueError(
            f"the model speaks tokenizer {declared!r} but the tokenizer given is {tokenizer.tokenizer_id!r}; "
            "prompts would be encoded into ids the model does not know. Give the model's own tokenizer."
        )
    return tokenizer


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
