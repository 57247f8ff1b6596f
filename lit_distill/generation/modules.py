"""The two Lightning modules that generate: :class:`GenerationModule` (``lit-distill predict``: a model answers prompts,
the data of sequence-level KD) and :class:`OnPolicyDistillationModule` (GKD: the student writes, the teacher grades)."""

from __future__ import annotations

import random
import time
import zlib
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lit_distill.checks import check_vocabulary
from lit_distill.generation.fast import FastMode, check_fast
from lit_distill.generation.sampling import (
    IGNORE_INDEX,
    check_sampling,
    completion_batch,
    generate,
    left_pad,
    new_tokens,
    prompts_from_batch,
    sequence_nll,
    tokenizer_for,
)
from lit_distill.losses.base import DistillationLoss
from lit_distill.losses.sequence import TokenKD
from lit_distill.module import DistillationModule
from lit_distill.sharding.fill import is_sharded
from lit_distill.sharding.wrap import place_models
from lit_distill.teacher import require_trained
from lit_distill.weights import load_weights


class GenerationModule(LightningModule):
    """Generate a response for every prompt of a ``predict`` batch ``{"prompt": list[str]}`` with ``model``.

    ``predict_step`` returns ``[{"prompt": ..., "response": ...}, ...]``, the rows
    :class:`~lit_distill.callbacks.generation.JsonlPredictionWriter` appends to a JSONL file: the training set of
    sequence-level KD (Kim & Rush 2016). Sampling is seeded per batch from ``seed`` and the batch's prompts, so the
    same pending prompts give the same responses. Under ``fsdp2`` the model is sharded and the ranks decode in step.

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
        fast: ``"auto"``, ``true`` or ``false``: the sampler (see :mod:`lit_distill.generation.fast`).
        allow_untrained: generate with a model that has no trained weights; refused otherwise (noise).

    Example (YAML, ``lit-distill predict``)::

        model:
          class_path: lit_distill.generation.GenerationModule
          init_args: {model: {class_path: lit_distill.models.GPT}, checkpoint: checkpoints/text/teacher.ckpt}
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
        super().__init__()
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        check_fast(fast)
        self.save_hyperparameters(ignore=["model"])
        if checkpoint is not None:
            load_weights(model, checkpoint, prefix=checkpoint_prefix)
        self.model, self.checkpoint, self.tokenizer = model, checkpoint, tokenizer_for(model, tokenizer)
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.seed, self.fast, self.allow_untrained = seed, fast, allow_untrained
        self.generated_tokens, self.generation_seconds, self.prompts_done = 0, 0.0, 0
        self._placed = False

    def setup(self, stage: str) -> None:
        check_vocabulary({"model": self.model}, self.tokenizer.vocab_size, self.tokenizer.tokenizer_id)
        if stage == "predict":
            require_trained(self.model, "model", self.allow_untrained, "allow_untrained", "checkpoint")

    def configure_model(self) -> None:
        """Shard the model under ``fsdp2``; fill a model built empty (``HFCausalLM(empty_init=True)``)."""
        if not self._placed:
            place_models(self.model, None, self._trainer)
            self._placed = True

    def on_predict_start(self) -> None:
        # Lightning gives the ranks unpadded shares of the prompts, so one may get a batch more than another. A sharded
        # model's every forward is a collective: the ranks with fewer batches generate as often with a stand-in prompt.
        self._behind = 0
        if self.trainer.world_size > 1 and is_sharded(self.model):
            mine = int(sum(self.trainer.num_predict_batches))
            most = self.trainer.strategy.reduce(torch.tensor(mine, device=self.device), reduce_op="max")
            self._behind = int(most) - mine

    def generation_settings(self) -> dict[str, Any]:
        """What decides the responses; the JSONL writer refuses to resume a file written with other settings."""
        names = ("checkpoint", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "fast")
        own = {"model": type(self.model).__name__, "tokenizer": self.tokenizer.tokenizer_id}
        return own | {name: getattr(self, name) for name in names}

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
            self.model, ids, mask, max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p, eos_token_id=self.tokenizer.eos_id, pad_token_id=self.tokenizer.pad_id, seed=seed,
            fast=self.fast,
        )  # fmt: skip
        self.generation_seconds += time.perf_counter() - start
        if getattr(self, "_behind", 0) and batch_idx == sum(self.trainer.num_predict_batches) - 1:
            for _ in range(self._behind):  # in step with ranks that have batches left; the stand-in's text is dropped
                generate(self.model, ids[:1, -1:], None, max_new_tokens=self.max_new_tokens, temperature=0.0)
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


class OnPolicyDistillationModule(DistillationModule):
    """Distill a causal LM on its own samples: with probability ``lmbda`` per batch, the prompts are continued
    by the student (``mode="on_policy"``) or the teacher (``mode="seq_kd"``) and the losses run on those samples.

    Otherwise (probability ``1 - lmbda``) the step is :class:`DistillationModule`'s on the dataset's responses. A
    sampled batch is prompt + sample with labels on the sampled tokens only (up to and including eos), drawn without
    gradient in eval mode; the teacher scores every sampled token and the student matches it there (GKD, Agarwal et
    al. 2024; ``TokenKD(divergence="reverse_kl")`` is MiniLLM's objective without its policy-gradient terms). The
    draw is a pure function of ``(seed, epoch, batch_idx)``, so a resumed run makes the same choices. Logged per
    epoch: ``train/sampled`` and, over sampled batches, ``train/gen_time_s``, ``train/gen_tokens_per_s``,
    ``train/gen_tokens``; with ``val_sample_nll``, ``val/teacher_nll_of_samples``.

    Args:
        student: the causal LM to train.
        teacher: the frozen causal LM that grades (needed: it scores, and in ``seq_kd`` mode it writes).
        losses: token-level strategies; default ``[TokenKD(divergence="jsd", beta=0.5)]``.
        lmbda: probability that a batch is replaced by samples (0 = off-policy, 1 = always sampled).
        mode: ``"on_policy"`` samples from the student, ``"seq_kd"`` from the teacher.
        max_new_tokens: longest sample in tokens (less where a long prompt would pass the model's ``block_size``).
        temperature: sampling temperature (0 = greedy).
        top_k: sample among the ``k`` most likely tokens only (None = off).
        top_p: nucleus sampling mass (None = off).
        seed: seeds the per-batch draw and the sampling.
        eos_token_id: ends a sample; None = the datamodule tokenizer's ``eos_id``.
        pad_token_id: padding of the sampled batch; None = the datamodule tokenizer's ``pad_id``.
        val_sample_nll: in validation, also sample from the student and log the teacher's NLL of those samples.
        fast: ``"auto"``, ``true`` or ``false``: the sampler (see :mod:`lit_distill.generation.fast`).
        **kwargs: the remaining :class:`DistillationModule` arguments (``teacher_checkpoint``, ``optimizer``, ...).

    Example:
        >>> from lit_distill.models import GPT
        >>> module = OnPolicyDistillationModule(
        ...     student=GPT(n_layer=1, n_head=2, n_embd=32), teacher=GPT(n_layer=2, n_head=2, n_embd=64),
        ...     lmbda=0.5, eos_token_id=256, pad_token_id=257)
        >>> module.losses[0].divergence
        'jsd'
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        losses: list[DistillationLoss] | None = None,
        lmbda: float = 0.5,
        mode: Literal["on_policy", "seq_kd"] = "on_policy",
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        val_sample_nll: bool = False,
        fast: FastMode = "auto",
        **kwargs: Any,
    ) -> None:
        if teacher is None:
            raise ValueError("OnPolicyDistillationModule needs a teacher: it scores the samples; add `teacher:`.")
        if not (isinstance(lmbda, (int, float)) and 0.0 <= lmbda <= 1.0):
            raise ValueError(f"lmbda is a probability in [0, 1] (0 = dataset responses only), got {lmbda!r}.")
        if mode not in ("on_policy", "seq_kd"):
            raise ValueError(f"mode must be 'on_policy' (student samples) or 'seq_kd' (teacher samples), got {mode!r}.")
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        check_fast(fast)
        losses = losses or [TokenKD(divergence="jsd", beta=0.5)]
        super().__init__(student=student, teacher=teacher, losses=losses, **kwargs)
        self.lmbda, self.mode, self.seed = float(lmbda), mode, seed
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.val_sample_nll, self.fast = val_sample_nll, fast

    def setup(self, stage: str) -> None:
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None) if self._trainer else None
        if tokenizer is not None:  # what the module was not given comes from the data's tokenizer
            self.eos_token_id = tokenizer.eos_id if self.eos_token_id is None else self.eos_token_id
            self.pad_token_id = tokenizer.pad_id if self.pad_token_id is None else self.pad_token_id
        if self.eos_token_id is None or self.pad_token_id is None:
            raise ValueError(
                "OnPolicyDistillationModule needs eos_token_id and pad_token_id to sample; set them, or use a "
                "datamodule with a `tokenizer` (PromptDataModule, TextDataModule)."
            )
        super().setup(stage)

    def draw(self, batch_idx: int, epoch: int | None = None) -> bool:
        """Whether this batch is replaced by samples: ``U < lmbda``, ``U`` a pure function of seed, epoch, batch."""
        epoch = self.current_epoch if epoch is None else epoch
        return random.Random(f"{self.seed}:{epoch}:{batch_idx}").random() < self.lmbda

    def sample_batch(
        self, batch: dict[str, Tensor], seed: int | None = None, model: nn.Module | None = None
    ) -> dict[str, Tensor]:
        """Prompts of ``batch`` continued by ``model`` (default: the ``mode``'s); labels on the sampled tokens only."""
        model = model or (self.student if self.mode == "on_policy" else self.teacher)
        prompt_ids, prompt_mask = prompts_from_batch(batch, self.pad_token_id)
        limit, width = getattr(model, "block_size", None), prompt_ids.shape[1]
        # Long prompts get shorter samples, not a crash; a prompt that fills block_size is refused by `generate`
        # (on every rank alike when the ranks of a sharded model decode in step).
        max_new = max(1, min(self.max_new_tokens, limit - width)) if isinstance(limit, int) else self.max_new_tokens
        start = time.perf_counter()
        sequences = generate(
            model, prompt_ids, prompt_mask, max_new_tokens=max_new, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id, seed=seed, fast=self.fast,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        sampled = completion_batch(prompt_ids, prompt_mask, sequences.detach(), self.eos_token_id, self.pad_token_id)
        if self._trainer is not None and self.training:
            tokens = float((sampled["labels"] != IGNORE_INDEX).sum())
            # Per epoch over the sampled batches only: a per-step curve would repeat stale values between them.
            stats = {"gen_time_s": seconds, "gen_tokens": tokens, "gen_tokens_per_s": tokens / max(seconds, 1e-9)}
            for name, value in stats.items():
                self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=int(prompt_ids.shape[0]))
        return sampled

    def _sample_seed(self, batch_idx: int, stage: str) -> int:
        rank = self.global_rank if self._trainer is not None else 0
        return random.Random(f"{self.seed}:{stage}:{self.current_epoch}:{batch_idx}:{rank}").getrandbits(62)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        sampled = self.draw(batch_idx)
        if sampled:
            batch = self.sample_batch(batch, seed=self._sample_seed(batch_idx, "train"))
        self.log(
            "train/sampled", float(sampled), on_step=False, on_epoch=True, batch_size=int(batch["labels"].shape[0])
        )
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if self.val_sample_nll:
            samples = self.sample_batch(batch, seed=self._sample_seed(batch_idx, "val"), model=self.student)
            nll = sequence_nll(self.teacher, samples)
            self.log("val/teacher_nll_of_samples", nll, batch_size=int(batch["labels"].shape[0]), sync_dist=True)
