"""``lit-distill predict`` with one model that writes responses to prompts (the teacher of sequence-level KD)."""

from __future__ import annotations

import inspect
import time
import zlib
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_distill.checks import check_vocabulary
from lit_distill.data.tokenizers import BYTES_ID, ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer
from lit_distill.generation.fast_mode import FastMode, check_fast
from lit_distill.generation.sampling import check_sampling, generate, left_pad, new_tokens
from lit_distill.losses.logit import CrossEntropy
from lit_distill.module import DistillationModule
from lit_distill.teacher import require_trained
from lit_distill.weights import load_weights


class GenerationModule(DistillationModule):
    """Generate a response for every prompt of a ``predict`` batch ``{"prompt": list[str]}`` with ``model``.

    ``predict_step`` returns ``[{"prompt": ..., "response": ...}, ...]``, the rows
    :class:`~lit_distill.callbacks.generation.JsonlPredictionWriter` appends to a JSONL file; that file is
    the training set of sequence-level KD (Kim & Rush 2016: the student learns the teacher's outputs rather
    than the references). Sampling is seeded per batch from ``seed`` and the batch's prompts, so the same
    pending prompts give the same responses. Generation time and tokens/s are printed at the end.

    Args:
        model: the model that writes (usually the teacher): a lit-distill ``GPT`` or an ``HFCausalLM``.
        checkpoint: its weights (Lightning ``.ckpt`` of a lit-distill run, or ``.safetensors``).
        checkpoint_prefix: key prefix to strip; None guesses (``student.``/``model.``/``teacher.``).
        tokenizer: ``"bytes"`` or a Hugging Face tokenizer folder; None = the model's own
            (``HFCausalLM.tokenizer``) or, for a model with ``tokenizer_id: bytes``, the byte tokenizer.
        max_new_tokens: longest response in tokens (eos ends a response earlier).
        temperature: 0 = greedy decoding (closest to the beam search of Kim & Rush); > 0 samples.
        top_k: sample among the ``k`` most likely tokens only (None = off).
        top_p: nucleus sampling mass (None = off).
        seed: base seed of the sampling.
        fast: ``"auto"`` = static KV cache + compiled decode step on CUDA, the plain path elsewhere; ``true`` /
            ``false`` force one (see ``generate``). Recorded in :meth:`generation_settings`: the two paths draw
            different samples from one seed.
        allow_untrained: generate with a model that has no trained weights (no ``checkpoint``, not a
            pretrained model); refused otherwise, since its responses would be noise.

    Example (YAML, ``lit-distill predict``)::

        model:
          class_path: lit_distill.generation.GenerationModule
          init_args:
            model: {class_path: lit_distill.models.GPT, init_args: {n_layer: 3, n_head: 4, n_embd: 96}}
            checkpoint: checkpoints/text/teacher.ckpt
    """

    def __init__(
        self,
        model: nn.Module,
        checkpoint: str | None = None,
        checkpoint_prefix: str | None = None,
        tokenizer: str | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        fast: FastMode = "auto",
        allow_untrained: bool = False,
    ) -> None:
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        check_fast(fast)
        if checkpoint is not None:
            load_weights(model, checkpoint, prefix=checkpoint_prefix)
        super().__init__(student=model, losses=[CrossEntropy()])
        self.checkpoint, self.tokenizer_spec = checkpoint, tokenizer
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.seed, self.fast, self.allow_untrained = seed, fast, allow_untrained
        self.tokenizer = self._resolve_tokenizer(model, tokenizer)
        self.generated_tokens, self.generation_seconds, self.prompts_done = 0, 0.0, 0

    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        # The parent records its caller's arguments; `model` is a module (saved in the state dict, not as an hparam).
        ignore = [*(ignore or []), "model"]
        super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back, logger=logger)

    @staticmethod
    def _resolve_tokenizer(model: nn.Module, spec: str | None) -> Tokenizer:
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

    def setup(self, stage: str) -> None:
        super().setup(stage)
        check_vocabulary({"model": self.student}, self.tokenizer.vocab_size, self.tokenizer.tokenizer_id)
        if stage == "predict":
            require_trained(self.student, "model", self.allow_untrained, "allow_untrained", "checkpoint")

    def generation_settings(self) -> dict[str, Any]:
        """What decides the responses; the JSONL writer refuses to resume a file written with other settings."""
        return {
            "model": type(self.student).__name__,
            "checkpoint": self.checkpoint,
            "tokenizer": self.tokenizer.tokenizer_id,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed,
            "fast": self.fast,
        }

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, str]]:
        prompts = batch["prompt"] if isinstance(batch, dict) else batch
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(
                "GenerationModule.predict_step expects {'prompt': list[str]} batches (PromptDataModule), "
                f"got {type(batch).__name__}."
            )
        if not prompts:
            return []
        ids, mask = left_pad([self.tokenizer.encode(p) for p in prompts], self.tokenizer.pad_id, device=self.device)
        # Seeded by the prompts themselves, so a resumed run samples a batch exactly as a fresh one would.
        seed = (self.seed * 1_000_003 + zlib.crc32("\n".join(prompts).encode("utf-8"))) % 2**63
        start = time.perf_counter()
        out = generate(
            self.student,
            ids,
            mask,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            eos_token_id=self.tokenizer.eos_id,
            pad_token_id=self.tokenizer.pad_id,
            seed=seed,
            fast=self.fast,
        )
        self.generation_seconds += time.perf_counter() - start
        responses = new_tokens(out, ids.shape[1], self.tokenizer.eos_id)
        self.generated_tokens += sum(len(r) for r in responses)
        self.prompts_done += len(prompts)
        return [{"prompt": p, "response": self.tokenizer.decode(r)} for p, r in zip(prompts, responses)]

    def on_predict_end(self) -> None:
        tokens, prompts, seconds = self.generated_tokens, self.prompts_done, self.generation_seconds
        if self.trainer.world_size > 1:  # every rank answered its own share: report the whole run
            counts = torch.tensor([tokens, prompts, seconds], dtype=torch.float64, device=self.device)
            gathered = self.all_gather(counts).reshape(-1, 3)
            tokens, prompts, seconds = int(gathered[:, 0].sum()), int(gathered[:, 1].sum()), float(gathered[:, 2].max())
        rank_zero_info(
            f"[lit-distill] generated {tokens} tokens for {prompts} prompts in {seconds:.1f} s "
            f"({tokens / max(seconds, 1e-9):.0f} tokens/s)"
        )
