"""On-policy distillation (GKD, Agarwal et al. 2024; MiniLLM, Gu et al. 2024): the student writes, teacher grades."""

from __future__ import annotations

import random
import time
from typing import Any, Literal

from torch import Tensor, nn

from lit_distill.generation.fast_mode import FastMode, check_fast
from lit_distill.generation.sampling import (
    IGNORE_INDEX,
    check_sampling,
    completion_batch,
    generate,
    prompts_from_batch,
    sequence_nll,
)
from lit_distill.losses.base import DistillationLoss
from lit_distill.losses.sequence import TokenKD
from lit_distill.module import DistillationModule


class OnPolicyDistillationModule(DistillationModule):
    """Distill a causal LM on its own samples: with probability ``lmbda`` per batch, the prompts are continued
    by the student (``mode="on_policy"``) or the teacher (``mode="seq_kd"``) and the losses run on those samples.

    Per training batch (an instruction batch: prompt + reference response, ``labels`` -100 on the prompt):

    * with probability ``1 - lmbda``: the losses on the dataset's responses, exactly as :class:`DistillationModule`
      (``lmbda=0`` is plain supervised KD);
    * with probability ``lmbda``: the prompts are cut out, continued by the sampling model under ``no_grad`` and in
      eval mode (no gradient flows through sampling), and the batch is replaced by prompt + sample with labels on the
      sampled tokens only (up to and including eos). The teacher then scores every sampled token and the student
      matches it there: ``mean_t D(p_T(·|y_<t) ‖ p_S(·|y_<t))`` over sampled ``t`` with ``y ~ student`` (GKD).

    With ``TokenKD(divergence="reverse_kl")`` this is MiniLLM's reverse-KL objective on student samples (without its
    policy-gradient terms); ``divergence="jsd"`` with ``beta`` is GKD's generalized JSD. The draw is a pure function
    of ``(seed, epoch, batch_idx)``, so a resumed run makes the same choices. Logged per epoch: ``train/sampled``
    (share of batches sampled) and, averaged over sampled batches, ``train/gen_time_s``, ``train/gen_tokens_per_s``
    and ``train/gen_tokens``; with
    ``val_sample_nll``, ``val/teacher_nll_of_samples`` (the teacher's mean NLL of the student's own samples).

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
        fast: sampling engine: ``"auto"`` = static KV cache + compiled decode step (CUDA graphs) on CUDA, the plain
            path elsewhere; ``true`` = always the static path; ``false`` = the plain path (see ``generate``).
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
        super().__init__(
            student=student, teacher=teacher, losses=losses or [TokenKD(divergence="jsd", beta=0.5)], **kwargs
        )
        self.lmbda, self.mode, self.seed = float(lmbda), mode, seed
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.val_sample_nll, self.fast = val_sample_nll, fast

    def setup(self, stage: str) -> None:
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None) if self._trainer else None
        if self.eos_token_id is None and tokenizer is not None:
            self.eos_token_id = tokenizer.eos_id
        if self.pad_token_id is None and tokenizer is not None:
            self.pad_token_id = tokenizer.pad_id
        if self.eos_token_id is None or self.pad_token_id is None:
            raise ValueError(
                "OnPolicyDistillationModule needs eos_token_id and pad_token_id to sample; set them, or use a "
                "datamodule with a `tokenizer` (PromptDataModule, TextDataModule)."
            )
        super().setup(stage)

    # ---------------------------------------------------------------- sampling
    def draw(self, batch_idx: int, epoch: int | None = None) -> bool:
        """Whether this batch is replaced by samples: ``U < lmbda``, ``U`` a pure function of seed, epoch, batch."""
        epoch = self.current_epoch if epoch is None else epoch
        return random.Random(f"{self.seed}:{epoch}:{batch_idx}").random() < self.lmbda

    def sample_batch(self, batch: dict[str, Tensor], seed: int | None = None) -> dict[str, Tensor]:
        """Prompts of ``batch`` continued by the sampling model; labels on the sampled tokens only, no gradient."""
        model = self.student if self.mode == "on_policy" else self.teacher
        prompt_ids, prompt_mask = prompts_from_batch(batch, self.pad_token_id)
        max_new = self.max_new_tokens
        limit = getattr(model, "block_size", None)
        if isinstance(limit, int):
            max_new = min(max_new, limit - prompt_ids.shape[1])  # long prompts get shorter samples, not a crash
            if max_new < 1:
                raise ValueError(
                    f"a prompt of {prompt_ids.shape[1]} tokens fills the model's block_size={limit}, leaving no room "
                    "to sample; shorten the prompts (seq_len / prompt_chars of the datamodule) or raise block_size."
                )
        start = time.perf_counter()
        sequences = generate(
            model,
            prompt_ids,
            prompt_mask,
            max_new_tokens=max_new,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            seed=seed,
            fast=self.fast,
        )
        seconds = time.perf_counter() - start
        sampled = completion_batch(prompt_ids, prompt_mask, sequences.detach(), self.eos_token_id, self.pad_token_id)
        if self._trainer is not None and self.training:
            tokens = float((sampled["labels"] != IGNORE_INDEX).sum())
            # Per epoch, averaged over the sampled batches only: a per-step curve would repeat stale values
            # on the batches that were not sampled.
            stats = {"gen_time_s": seconds, "gen_tokens": tokens, "gen_tokens_per_s": tokens / max(seconds, 1e-9)}
            for name, value in stats.items():
                self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=int(prompt_ids.shape[0]))
        return sampled

    def _sample_seed(self, batch_idx: int, stage: str) -> int:
        rank = self.global_rank if self._trainer is not None else 0
        return random.Random(f"{self.seed}:{stage}:{self.current_epoch}:{batch_idx}:{rank}").getrandbits(62)

    # ------------------------------------------------------------------- steps
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
            mode, self.mode = self.mode, "on_policy"
            try:
                samples = self.sample_batch(batch, seed=self._sample_seed(batch_idx, "val"))
            finally:
                self.mode = mode
            nll = sequence_nll(self.teacher, samples)
            self.log("val/teacher_nll_of_samples", nll, batch_size=int(batch["labels"].shape[0]), sync_dist=True)
