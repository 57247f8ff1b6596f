"""The text recipe (configs/text/{teacher,token_kd}.yaml) as the divergence and teacher-cache benchmarks run it:
the byte-level tiny GPT teacher on CPython's pydoc text (trained once, saved, reused), the student, and a fit that
ends in one pass over the held-out split."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning.pytorch import LightningDataModule, Trainer, seed_everything

from benchmarks._lib.trainers import adamw, quiet_trainer
from lit_distill import CrossEntropy, DistillationModule
from lit_distill.data import TextDataModule
from lit_distill.models import GPT

TEACHER = {"n_layer": 3, "n_embd": 96, "n_head": 4, "tokenizer_id": "bytes"}
STUDENT = {"n_layer": 1, "n_embd": 48, "n_head": 2, "tokenizer_id": "bytes"}


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The recipe's settings as flags (defaults: configs/text/teacher.yaml and token_kd.yaml)."""
    p.add_argument("--teacher-dir", default=None, help="reuse the teacher saved here (trained and saved if absent)")
    p.add_argument("--teacher-epochs", type=int, default=6, help="as configs/text/teacher.yaml")
    p.add_argument("--teacher-lr", type=float, default=3e-3)
    p.add_argument("--student-epochs", type=int, default=2, help="as configs/text/token_kd.yaml")
    p.add_argument("--lr", type=float, default=3e-3, help="student learning rate (AdamW)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-blocks", type=int, default=None, help="blocks of the corpus to use (all)")
    p.add_argument("--limit-batches", type=int, default=None, help="training batches per epoch (all)")
    p.add_argument("--limit-val-batches", type=int, default=None, help="held-out batches (all)")
    # One thread: on a shared, busy machine two BLAS threads spin against other processes and ran 6x slower here.
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--accelerator", default="cpu")


def text_data(args: argparse.Namespace) -> TextDataModule:
    """configs/text's corpus: CPython's pydoc topics, byte-level, in blocks of ``--seq-len``."""
    return TextDataModule(seq_len=args.seq_len, batch_size=args.batch_size, seed=0, max_blocks=args.max_blocks)


def recipe_trainer(args: argparse.Namespace, **kwargs) -> Trainer:
    limit = {"limit_train_batches": args.limit_batches} if args.limit_batches else {}
    if args.limit_val_batches and kwargs.get("limit_val_batches") != 0:
        limit["limit_val_batches"] = args.limit_val_batches
    return quiet_trainer(accelerator=args.accelerator, **{**limit, **kwargs})


def fit_then_validate(
    module: DistillationModule, data: LightningDataModule, epochs: int, seed: int, args: argparse.Namespace
) -> dict:
    """``epochs`` passes over the training split (the batch order fixed by ``seed``), then one over the held-out
    split; returns its metrics (``val/student_ppl``: perplexity per byte token)."""
    seed_everything(seed, verbose=False)
    recipe_trainer(args, max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0).fit(module, data)
    (metrics,) = recipe_trainer(args).validate(module, data, verbose=False)
    return metrics


def text_teacher(args: argparse.Namespace, data: LightningDataModule) -> tuple[GPT, float]:
    """The teacher saved in ``args.teacher_dir``, else trained as configs/text/teacher.yaml does (and saved there);
    with its held-out perplexity."""
    seed_everything(0, verbose=False)
    if args.teacher_dir and Path(args.teacher_dir, "config.json").is_file():
        teacher = GPT.from_pretrained(args.teacher_dir)
        (metrics,) = recipe_trainer(args).validate(DistillationModule(student=teacher), data, verbose=False)
        return teacher.eval(), metrics["val/student_ppl"]
    teacher = GPT(block_size=args.seq_len, **TEACHER)
    run = DistillationModule(student=teacher, losses=[CrossEntropy()], optimizer=adamw(args.teacher_lr))
    ppl = fit_then_validate(run, data, args.teacher_epochs, 0, args)["val/student_ppl"]
    if args.teacher_dir:
        teacher.save_pretrained(args.teacher_dir, overwrite=True)
    return teacher.eval(), ppl


def text_student(seed: int, args: argparse.Namespace) -> GPT:
    """The recipe's student, initialised by ``seed`` (the same weights for every run of that seed)."""
    seed_everything(seed, verbose=False)
    return GPT(block_size=args.seq_len, **STUDENT)
