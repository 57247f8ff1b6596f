"""Token-level KD vs. training from scratch: the same small GPT student, the same steps, several seeds.

The tiny GPT teacher is first trained on CPython's pydoc topics (byte-level); then, for each seed, one
student learns from the hard next-token labels only and an identically initialised student (same seed,
same batches) learns with TokenKD from the teacher. Reported: validation perplexity per byte token of the
teacher, the no-KD student and the KD student, per seed and as mean ± std. Nothing is downloaded. The
settings are those of configs/text/{teacher,no_kd,token_kd}.yaml. The corpus is the running Python's
pydoc_data, so numbers differ a little between Python versions.

    python -m benchmarks.quality.text_kd_vs_scratch --seeds 3
    python -m benchmarks.quality.text_kd_vs_scratch --seeds 3 --accelerator gpu   # KD runs take the fused Triton path
    python -m benchmarks.quality.text_kd_vs_scratch --smoke      # 1 seed, a few batches per epoch: seconds
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Trainer, seed_everything

from benchmarks._lib.timing import mean_std_text
from benchmarks._lib.trainers import adamw, parse, parser, print_json, quiet, quiet_trainer
from lit_distill import CrossEntropy, DistillationModule
from lit_distill.data import TextDataModule
from lit_distill.losses import TokenKD
from lit_distill.models import GPT

TEACHER = {"n_layer": 3, "n_embd": 96, "n_head": 4, "tokenizer_id": "bytes"}
STUDENT = {"n_layer": 1, "n_embd": 48, "n_head": 2}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, default=3, help="student seeds (each: one no-KD and one KD run)")
    p.add_argument("--teacher-epochs", type=int, default=6, help="as configs/text/teacher.yaml")
    p.add_argument("--student-epochs", type=int, default=2, help="as configs/text/token_kd.yaml and no_kd.yaml")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3, help="student learning rate (AdamW)")
    p.add_argument("--teacher-lr", type=float, default=3e-3)
    p.add_argument("--divergence", default="forward_kl", choices=["forward_kl", "reverse_kl", "jsd", "tvd"])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lm-weight", type=float, default=0.0, help="hard-label LM term added to the KD run")
    p.add_argument("--student-layers", type=int, default=STUDENT["n_layer"])
    p.add_argument("--student-width", type=int, default=STUDENT["n_embd"])
    # One thread: on a shared, busy machine two BLAS threads spin against other processes and ran 6x slower here.
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--teacher-dir", default=None, help="reuse the teacher saved here (trained and saved if absent)")
    p.add_argument("--limit-batches", type=int, default=None, help="batches per epoch and validation (all)")
    return parse(p, argv, seeds=1, teacher_epochs=1, student_epochs=1, limit_batches=2)


def trainer(args: argparse.Namespace, **kwargs) -> Trainer:
    limit = {"limit_train_batches": args.limit_batches} if args.limit_batches else {}
    if args.limit_batches and kwargs.get("limit_val_batches") != 0:
        limit["limit_val_batches"] = args.limit_batches
    return quiet_trainer(accelerator=args.accelerator, **limit, **kwargs)


def train(module: DistillationModule, data: TextDataModule, epochs: int, seed: int, args: argparse.Namespace) -> dict:
    """``epochs`` passes over the training blocks, then one over the validation split; returns its metrics."""
    seed_everything(seed, verbose=False)  # the same batch order for every run of this seed
    trainer(args, max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0).fit(module, data)
    (metrics,) = trainer(args).validate(module, data, verbose=False)
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet(args.threads)
    data = TextDataModule(seq_len=args.seq_len, batch_size=args.batch_size, seed=0)
    student_cfg = {"n_layer": args.student_layers, "n_embd": args.student_width, "n_head": 2, "tokenizer_id": "bytes"}
    start = time.time()

    seed_everything(0, verbose=False)
    if args.teacher_dir and Path(args.teacher_dir, "config.json").is_file():
        teacher = GPT.from_pretrained(args.teacher_dir)
        teacher_run = DistillationModule(student=teacher, losses=[CrossEntropy()])
        (metrics,) = trainer(args).validate(teacher_run, data, verbose=False)
        teacher_ppl = metrics["val/student_ppl"]
    else:
        teacher = GPT(block_size=args.seq_len, **TEACHER)
        teacher_run = DistillationModule(student=teacher, losses=[CrossEntropy()], optimizer=adamw(args.teacher_lr))
        teacher_ppl = train(teacher_run, data, args.teacher_epochs, 0, args)["val/student_ppl"]
        if args.teacher_dir:
            teacher.save_pretrained(args.teacher_dir, overwrite=True)
    print(f"teacher {TEACHER}: val ppl {teacher_ppl:.3f} ({args.teacher_epochs} epochs)", flush=True)

    rows = []
    for seed in range(1, args.seeds + 1):
        result = {"seed": seed}
        for name in ("no_kd", "kd"):
            seed_everything(seed, verbose=False)
            student = GPT(block_size=args.seq_len, **student_cfg)  # identical initial weights for both runs
            if name == "no_kd":
                module = DistillationModule(student=student, losses=[CrossEntropy()], optimizer=adamw(args.lr))
            else:
                kd = TokenKD(args.divergence, temperature=args.temperature, lm_weight=args.lm_weight)
                module = DistillationModule(student=student, teacher=teacher, losses=[kd], optimizer=adamw(args.lr))
            result[name] = train(module, data, args.student_epochs, seed, args)["val/student_ppl"]
        rows.append(result)
        print(f"seed {seed}: no-KD ppl {result['no_kd']:.3f}  KD ppl {result['kd']:.3f}", flush=True)

    def stat(key: str) -> str:
        return mean_std_text([r[key] for r in rows])

    print(
        f"\nstudent {student_cfg}, teacher {TEACHER}; {args.student_epochs} student epochs of "
        f"{len(data.train_dataloader())} steps of {args.batch_size}x{args.seq_len} byte tokens; {args.divergence} "
        f"T={args.temperature} lm_weight={args.lm_weight} lr={args.lr}; {args.accelerator}, {args.threads} threads; "
        f"{time.time() - start:.0f} s in all"
    )
    print("\n| seed | teacher val ppl | no-KD student val ppl | KD student val ppl |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {teacher_ppl:.3f} | {r['no_kd']:.3f} | {r['kd']:.3f} |")
    print(f"| mean ± std | {teacher_ppl:.3f} | {stat('no_kd')} | {stat('kd')} |")
    wins = sum(r["kd"] < r["no_kd"] for r in rows)
    print(f"\nKD lowered the student's val perplexity in {wins}/{len(rows)} seeds.")
    result = {"args": vars(args), "teacher_ppl": teacher_ppl, "runs": rows}
    print_json(result, to=args.json)


if __name__ == "__main__":
    main()
