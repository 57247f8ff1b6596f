"""The byte-level GPT experiments on CPython's pydoc prompts (generation_kd, onpolicy_after_sft,
onpolicy_from_scratch): the teacher, seq-KD responses written through ``lit-distill predict``'s components, and the
held-out scores of a student."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from benchmarks._lib.trainers import adamw, quiet, quiet_trainer
from lit_distill import CrossEntropy, DistillationModule
from lit_distill.callbacks.generation import JsonlPredictionWriter
from lit_distill.data import PromptDataModule, TextDataModule
from lit_distill.generation import GenerationModule, generate
from lit_distill.generation.sampling import IGNORE_INDEX, completion_batch, prompts_from_batch
from lit_distill.models import GPT

TEACHER = {"n_layer": 3, "n_embd": 96, "n_head": 4, "block_size": 128, "tokenizer_id": "bytes"}
STUDENT = {"n_layer": 1, "n_embd": 48, "n_head": 2, "block_size": 128, "tokenizer_id": "bytes"}


def trainer(accelerator: str, **kwargs) -> Trainer:
    """A quiet Trainer without validation (the experiments score students themselves)."""
    return quiet_trainer(accelerator=accelerator, num_sanity_val_steps=0, limit_val_batches=0, **kwargs)


def train_teacher(args: argparse.Namespace) -> GPT:
    """The teacher saved in ``args.teacher`` if there is one; else trained (``args.teacher_steps`` batches of 16 x
    128 bytes of pydoc text, AdamW ``args.lr``) and saved there."""
    if args.teacher and (Path(args.teacher) / "config.json").is_file():
        return GPT.from_pretrained(args.teacher).eval()
    seed_everything(0, verbose=False)
    teacher = GPT(**TEACHER)
    module = DistillationModule(student=teacher, losses=[CrossEntropy()], optimizer=adamw(args.lr))
    corpus = TextDataModule(seq_len=128, batch_size=16, seed=0)
    trainer(args.accelerator, max_steps=args.teacher_steps).fit(module, corpus)
    if args.teacher:
        teacher.save_pretrained(args.teacher)
    return teacher.eval()


def write_teacher_responses(teacher: GPT, path: Path, args: argparse.Namespace) -> float:
    """Teacher responses to the train prompts (``args.seq_kd_temperature``; 0 = greedy), through the
    ``lit-distill predict`` components; returns the seconds it took."""
    module = GenerationModule(model=teacher, max_new_tokens=args.max_new_tokens, temperature=args.seq_kd_temperature)
    data = PromptDataModule(batch_size=64, seed=0, predict_split="train")
    start = time.perf_counter()
    pred = quiet_trainer(accelerator=args.accelerator, callbacks=[JsonlPredictionWriter(str(path))])
    pred.predict(module, datamodule=data, return_predictions=False)
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(student: GPT, teacher: GPT, val: PromptDataModule, seed: int, max_new: int) -> dict[str, float]:
    """Perplexity of the held-out references, and the teacher's NLL of the student's own samples."""
    student.eval()
    ref_nll = ref_count = sample_nll = sample_count = 0.0
    grams: list[tuple[int, ...]] = []
    for i, batch in enumerate(val.val_dataloader()):
        batch = {k: v.to(student.wte.weight.device) for k, v in batch.items()}
        ref_nll, ref_count = _add(student, batch, ref_nll, ref_count)
        ids, mask = prompts_from_batch(batch, val.tokenizer.pad_id)
        out = generate(
            student,
            ids,
            mask,
            max_new_tokens=max_new,
            temperature=1.0,
            seed=seed * 1000 + i,
            eos_token_id=val.tokenizer.eos_id,
            pad_token_id=val.tokenizer.pad_id,
        )
        samples = completion_batch(ids, mask, out, val.tokenizer.eos_id, val.tokenizer.pad_id)
        sample_nll, sample_count = _add(teacher, samples, sample_nll, sample_count)
        for row in samples["labels"].tolist():
            text = [t for t in row if t != IGNORE_INDEX]
            grams += [tuple(text[j : j + 4]) for j in range(len(text) - 3)]
    return {
        "val_ppl": float(torch.tensor(ref_nll / ref_count).exp()),
        "teacher_nll": sample_nll / sample_count,
        "sample_tokens": sample_count,
        # unique byte 4-grams over all 4-grams of the samples: falls when the samples repeat themselves
        "distinct4": len(set(grams)) / max(len(grams), 1),
    }


def _add(model: GPT, batch: dict, total: float, count: float) -> tuple[float, float]:
    logits = model(batch["input_ids"], batch["attention_mask"])[..., : model.vocab_size].float()
    targets = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total + float(nll), count + float((targets != IGNORE_INDEX).sum())


def prepare(args: argparse.Namespace) -> tuple[GPT, PromptDataModule, dict[str, float]]:
    """Quiet run on ``args.threads`` threads; the teacher, the held-out prompt set and the teacher's own scores."""
    quiet(args.threads)
    teacher = train_teacher(args)
    val = PromptDataModule(batch_size=32, seed=0)
    return teacher, val, evaluate(teacher, teacher, val, seed=0, max_new=args.max_new_tokens)
