"""Distillation through generation: off-policy KD vs. sequence-level KD vs. on-policy (GKD) students.

A tiny GPT teacher (as configs/text/teacher.yaml) is trained on CPython's pydoc topics (byte-level). The embedded
prompt set (``PromptDataModule``: paragraph openings of the same corpus, with the corpus continuation as the
reference) is split train/val. Then, for each seed, identically initialised 1-layer students are trained for the
same number of steps on the train prompts:

* ``no-KD``: cross-entropy on the reference continuations (no teacher);
* ``off-policy``: token-level KD (``--divergence``, default generalized JSD with beta 0.5) on the reference
  continuations (``lmbda=0``);
* ``seq-KD``: cross-entropy on the teacher's responses (``--seq-kd-temperature``, default 0 = greedy), written
  once through ``lit-distill predict``'s components (GenerationModule + JsonlPredictionWriter; Kim & Rush 2016);
* ``on-policy l=0.5`` / ``l=1``: the same divergence on the student's own samples (temperature 1) on half / all
  of the batches, the rest on the references (GKD, Agarwal et al. 2024; reverse KL is MiniLLM's, Gu et al. 2024).

Reported on the held-out prompts: ``val ppl``, the student's perplexity of the reference continuations (corpus
text, response tokens only), and ``teacher NLL``, the teacher's mean per-token NLL of the student's own samples
(temperature 1, up to 64 tokens, seeded): lower = the student writes more like the teacher. Mean ± std over seeds;
the teacher is trained once (seed 0), the seed varies the students' initialisation, batch order and sampling.

    python -m benchmarks.quality.generation_kd                      # 3 seeds, ~11 min on one busy CPU thread
    python -m benchmarks.quality.generation_kd --divergence reverse_kl --seq-kd-temperature 1.0 --teacher /tmp/teacher
    python -m benchmarks.quality.generation_kd --smoke              # 1 seed, a few steps: seconds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import seed_everything

from benchmarks._lib.pydoc_gpt import STUDENT, evaluate, prepare, trainer, write_teacher_responses
from benchmarks._lib.timing import mean_std_text
from benchmarks._lib.trainers import adamw, parse, parser, print_json
from lit_distill import CrossEntropy, DistillationModule
from lit_distill.data import PromptDataModule
from lit_distill.generation import OnPolicyDistillationModule
from lit_distill.losses import TokenKD
from lit_distill.models import GPT

VARIANTS = ("no-KD", "off-policy", "seq-KD", "on-policy l=0.5", "on-policy l=1")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, default=3, help="student seeds (each trains every variant)")
    p.add_argument("--teacher-steps", type=int, default=1200, help="teacher steps (batches of 16 x 128 bytes)")
    p.add_argument("--student-steps", type=int, default=400, help="steps per student (batches of 16 prompts)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--divergence", default="jsd", choices=["forward_kl", "reverse_kl", "jsd"], help="of the KD runs")
    p.add_argument("--seq-kd-temperature", type=float, default=0.0, help="teacher decoding for seq-KD (0 = greedy)")
    p.add_argument(
        "--teacher", default=None, help="reuse the teacher saved in this folder (trained and saved if absent)"
    )
    p.add_argument("--lr", type=float, default=3e-3)
    # One thread: on a shared, busy machine two BLAS threads fight other processes (10x slower decoding here).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parse(p, argv, seeds=1, teacher_steps=2, student_steps=2, max_new_tokens=4)


def build(variant: str, teacher: GPT, seed: int, args: argparse.Namespace) -> DistillationModule:
    seed_everything(seed, verbose=False)  # the same student initialisation for every variant of this seed
    student = GPT(**STUDENT)
    kd = [TokenKD(divergence=args.divergence, beta=0.5)]
    if variant in ("no-KD", "seq-KD"):
        return DistillationModule(student=student, losses=[CrossEntropy()], optimizer=adamw(args.lr))
    lmbda = {"off-policy": 0.0, "on-policy l=0.5": 0.5, "on-policy l=1": 1.0}[variant]
    return OnPolicyDistillationModule(
        student=student,
        teacher=teacher,
        losses=kd,
        lmbda=lmbda,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        seed=seed,
        optimizer=adamw(args.lr),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    teacher, val, teacher_ref = prepare(args)
    print(
        f"teacher: val ppl {teacher_ref['val_ppl']:.3f}, NLL of its own samples {teacher_ref['teacher_nll']:.3f} "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        responses = Path(tmp) / "teacher_responses.jsonl"
        gen_s = write_teacher_responses(teacher, responses, args)
        print(f"seq-KD data: {sum(1 for _ in responses.open())} teacher responses in {gen_s:.1f} s", flush=True)
        for seed in range(args.seeds):
            for variant in VARIANTS:
                module = build(variant, teacher, seed, args)
                data = PromptDataModule(batch_size=16, seed=0)
                if variant == "seq-KD":
                    data = PromptDataModule(prompts=str(responses), batch_size=16, val_fraction=0.0, test_fraction=0.0)
                t0 = time.perf_counter()
                fit = trainer(args.accelerator, max_steps=args.student_steps)
                fit.fit(module, datamodule=data)
                row = evaluate(module.student, teacher, val, seed=seed, max_new=args.max_new_tokens)
                row["train_s"] = time.perf_counter() - t0
                if "train/gen_tokens_per_s" in fit.callback_metrics:
                    row["gen_tokens_per_s"] = float(fit.callback_metrics["train/gen_tokens_per_s"])
                results[variant].append(row)
                print(
                    f"seed {seed} {variant:16s} val ppl {row['val_ppl']:.3f}  teacher NLL {row['teacher_nll']:.3f}"
                    f"  ({row['train_s']:.0f} s)",
                    flush=True,
                )
    print(
        f"\nstudents: {args.seeds} seeds x {args.student_steps} steps of 16 prompts; KD divergence {args.divergence}; "
        f"seq-KD decoding T={args.seq_kd_temperature}; teacher {args.teacher_steps} steps; {args.threads} CPU "
        f"thread(s); total {time.perf_counter() - start:.0f} s"
    )
    print(f"{'student':18s} {'val ppl (refs)':>18s} {'teacher NLL of samples':>24s} {'train s':>8s}")
    print(f"{'teacher':18s} {teacher_ref['val_ppl']:>18.3f} {teacher_ref['teacher_nll']:>24.3f} {'':>8s}")
    for variant, rows in results.items():
        train_s = statistics.fmean(r["train_s"] for r in rows)
        print(
            f"{variant:18s} {mean_std_text([r['val_ppl'] for r in rows]):>18s} "
            f"{mean_std_text([r['teacher_nll'] for r in rows]):>24s} {train_s:>8.0f}"
        )
    result = {"args": vars(args), "teacher": teacher_ref, "students": results}
    print_json(result, to=args.json)


if __name__ == "__main__":
    main()
