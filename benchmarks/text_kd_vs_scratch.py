"""Token-level KD vs. training from scratch: the same small GPT student, the same steps, several seeds.

The tiny GPT teacher is first trained on CPython's pydoc topics (byte-level); then, for each seed, one
student learns from the hard next-token labels only and an identically initialised student (same seed,
same batches) learns with TokenKD from the teacher. Reported: validation perplexity per byte token of the
teacher, the no-KD student and the KD student, per seed and as mean ± std. Nothing is downloaded. The
settings are those of configs/text/{teacher,no_kd,token_kd}.yaml. The corpus is the running Python's
pydoc_data, so numbers differ a little between Python versions.

    python benchmarks/text_kd_vs_scratch.py --seeds 3
    python benchmarks/text_kd_vs_scratch.py --seeds 3 --accelerator gpu   # the KD runs take the fused Triton path
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from common import quiet_trainer  # noqa: E402 - benchmarks/ is the script's folder
from lightning.pytorch import Trainer, seed_everything

from lit_distill import CrossEntropy, DistillationModule
from lit_distill.data import TextDataModule
from lit_distill.losses import TokenKD
from lit_distill.models import GPT

TEACHER = {"n_layer": 3, "n_embd": 96, "n_head": 4, "tokenizer_id": "bytes"}
STUDENT = {"n_layer": 1, "n_embd": 48, "n_head": 2}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return p.parse_args()


def optimizer(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def trainer(accelerator: str, **kwargs) -> Trainer:
    return quiet_trainer(accelerator=accelerator, **kwargs)


def train(module: DistillationModule, data: TextDataModule, epochs: int, seed: int, accelerator: str) -> dict:
    """``epochs`` passes over the training blocks, then one over the validation split; returns its metrics."""
    seed_everything(seed, verbose=False)  # the same batch order for every run of this seed
    trainer(accelerator, max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0).fit(module, data)
    (metrics,) = trainer(accelerator).validate(module, data, verbose=False)
    return metrics


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")
    data = TextDataModule(seq_len=args.seq_len, batch_size=args.batch_size, seed=0)
    student_cfg = {"n_layer": args.student_layers, "n_embd": args.student_width, "n_head": 2, "tokenizer_id": "bytes"}
    start = time.time()

    seed_everything(0, verbose=False)
    if args.teacher_dir and Path(args.teacher_dir, "config.json").is_file():
        teacher = GPT.from_pretrained(args.teacher_dir)
        teacher_run = DistillationModule(student=teacher, losses=[CrossEntropy()])
        (metrics,) = trainer(args.accelerator).validate(teacher_run, data, verbose=False)
        teacher_ppl = metrics["val/student_ppl"]
    else:
        teacher = GPT(block_size=args.seq_len, **TEACHER)
        teacher_run = DistillationModule(student=teacher, losses=[CrossEntropy()], optimizer=optimizer(args.teacher_lr))
        teacher_ppl = train(teacher_run, data, args.teacher_epochs, 0, args.accelerator)["val/student_ppl"]
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
                module = DistillationModule(student=student, losses=[CrossEntropy()], optimizer=optimizer(args.lr))
            else:
                kd = TokenKD(args.divergence, temperature=args.temperature, lm_weight=args.lm_weight)
                module = DistillationModule(student=student, teacher=teacher, losses=[kd], optimizer=optimizer(args.lr))
            result[name] = train(module, data, args.student_epochs, seed, args.accelerator)["val/student_ppl"]
        rows.append(result)
        print(f"seed {seed}: no-KD ppl {result['no_kd']:.3f}  KD ppl {result['kd']:.3f}", flush=True)

    def stat(key: str) -> str:
        values = [r[key] for r in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {spread:.3f}"

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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "teacher_ppl": teacher_ppl, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
