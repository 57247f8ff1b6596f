"""Generation KD the way GKD uses it: first a supervised student, then N more steps of each method from there.

Stage 1 (per seed): a 1-layer GPT student learns the reference continuations of the embedded pydoc prompt set
with plain cross-entropy (SFT) for ``--sft-steps``. Stage 2: from that same student, ``--steps`` more steps of

* ``SFT``: more cross-entropy on the references (the baseline every KD variant must beat);
* ``token KD``: supervised token-level KD on the references (``lmbda=0``, ``--kd-divergence``);
* ``token KD (<div>)``: the same with the on-policy divergence, when it differs (isolates on- vs off-policy);
* ``seq-KD``: cross-entropy on teacher-written responses to the train prompts (Kim & Rush 2016; sampled at
  ``--seq-kd-temperature``), instead of the references;
* ``on-policy``: the student continues the prompts itself (T=1) and learns the teacher's distributions on its own
  samples on every batch (``lmbda=1``, ``--divergence``; GKD, Agarwal et al. 2024).

Every variant of a seed starts from the same weights and sees the same prompt batches in the same order.
Reported on the held-out prompts (never trained on): ``teacher NLL``, the teacher's mean per-token NLL of the
student's own samples (T=1, up to 64 tokens; lower = the student writes what the teacher would), ``distinct-4``
(unique byte 4-grams / all 4-grams of those samples: a collapse into repetition would lower the NLL and this
together), and ``val ppl`` on the reference continuations.

    python -m benchmarks.quality.onpolicy_after_sft --teacher /tmp/teacher --json OUT.json
    python -m benchmarks.quality.onpolicy_after_sft --smoke       # 1 seed, a few steps, every variant: seconds
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import seed_everything

from benchmarks._lib.pydoc_gpt import STUDENT, evaluate, prepare, trainer, write_teacher_responses
from benchmarks._lib.timing import mean_std_text
from benchmarks._lib.trainers import adamw, parse, parser, print_json
from lit_distill import CrossEntropy, DistillationModule
from lit_distill.data import PromptDataModule
from lit_distill.generation import OnPolicyDistillationModule
from lit_distill.losses import TokenKD
from lit_distill.models import GPT


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--teacher", default=None, help="teacher folder (GPT.save_pretrained); trained and saved if absent")
    p.add_argument("--teacher-steps", type=int, default=1200, help="when the teacher is trained here")
    p.add_argument("--sft-steps", type=int, default=400, help="stage 1: cross-entropy steps (batches of 16 prompts)")
    p.add_argument("--steps", type=int, default=200, help="stage 2: steps of every variant")
    p.add_argument("--divergence", default="jsd", choices=["forward_kl", "reverse_kl", "jsd"], help="on-policy")
    p.add_argument("--beta", type=float, default=0.5, help="JSD beta")
    p.add_argument("--kd-divergence", default="forward_kl", choices=["forward_kl", "reverse_kl", "jsd"])
    p.add_argument("--seq-kd-temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="stage 1")
    p.add_argument("--stage2-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--json", default=None)
    return parse(p, argv, seeds=1, teacher_steps=2, sft_steps=2, steps=2, max_new_tokens=4, divergence="reverse_kl")


def variants(args: argparse.Namespace) -> list[str]:
    names = ["SFT", "token KD", "seq-KD", "on-policy"]
    if args.divergence != args.kd_divergence:
        names.insert(2, f"token KD ({args.divergence})")
    return names


def sft_student(seed: int, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    seed_everything(seed, verbose=False)
    student = GPT(**STUDENT)
    module = DistillationModule(student=student, losses=[CrossEntropy()], optimizer=adamw(args.lr))
    trainer(args.accelerator, max_steps=args.sft_steps).fit(module, datamodule=PromptDataModule(batch_size=16, seed=0))
    return {k: v.clone() for k, v in student.state_dict().items()}


def stage2(variant: str, start: dict, teacher: GPT, seed: int, args: argparse.Namespace) -> DistillationModule:
    student = GPT(**STUDENT)
    student.load_state_dict(start)
    lr = adamw(args.stage2_lr)
    if variant in ("SFT", "seq-KD"):
        return DistillationModule(student=student, losses=[CrossEntropy()], optimizer=lr)
    on_policy = variant == "on-policy"
    divergence = args.divergence if on_policy or "(" in variant else args.kd_divergence
    return OnPolicyDistillationModule(
        student=student,
        teacher=teacher,
        losses=[TokenKD(divergence=divergence, beta=args.beta)],
        lmbda=1.0 if on_policy else 0.0,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        seed=seed,
        optimizer=lr,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    teacher, val, teacher_ref = prepare(args)
    print(f"teacher: {teacher_ref}", flush=True)
    names = variants(args)
    results: dict[str, list[dict]] = {"stage 1 (SFT)": [], **{v: [] for v in names}}
    with tempfile.TemporaryDirectory() as tmp:
        responses = Path(tmp) / "teacher_responses.jsonl"
        args.seq_kd_temperature = float(args.seq_kd_temperature)
        write_teacher_responses(teacher, responses, args)
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            state = sft_student(seed, args)
            sft = GPT(**STUDENT)
            sft.load_state_dict(state)
            row = evaluate(sft, teacher, val, seed=seed, max_new=args.max_new_tokens)
            row["train_s"] = time.perf_counter() - t0
            results["stage 1 (SFT)"].append(row)
            print(f"seed {seed} stage 1: {row}", flush=True)
            for variant in names:
                module = stage2(variant, state, teacher, seed, args)
                data = PromptDataModule(batch_size=16, seed=0)
                if variant == "seq-KD":
                    data = PromptDataModule(prompts=str(responses), batch_size=16, val_fraction=0.0, test_fraction=0.0)
                seed_everything(1000 + seed, verbose=False)  # the same batch order for every variant of this seed
                t0 = time.perf_counter()
                trainer(args.accelerator, max_steps=args.steps).fit(module, datamodule=data)
                row = evaluate(module.student, teacher, val, seed=seed, max_new=args.max_new_tokens)
                row["train_s"] = time.perf_counter() - t0
                results[variant].append(row)
                print(f"seed {seed} {variant:22s} {row}", flush=True)
    print(
        f"\n{args.seeds} seeds; stage 1 {args.sft_steps} CE steps (lr {args.lr}), stage 2 {args.steps} steps (lr "
        f"{args.stage2_lr}); on-policy {args.divergence} (beta {args.beta}), token KD {args.kd_divergence}, seq-KD "
        f"T={args.seq_kd_temperature}; {args.threads} thread(s); total {time.perf_counter() - start:.0f} s"
    )
    print(f"{'student':24s} {'teacher NLL of samples':>24s} {'distinct-4':>16s} {'val ppl':>16s}")
    print(f"{'teacher':24s} {teacher_ref['teacher_nll']:>24.3f} {teacher_ref['distinct4']:>16.3f}")
    for variant, rows in results.items():
        print(
            f"{variant:24s} {mean_std_text([r['teacher_nll'] for r in rows]):>24s} "
            f"{mean_std_text([r['distinct4'] for r in rows]):>16s} {mean_std_text([r['val_ppl'] for r in rows]):>16s}"
        )
    base = results["SFT"]
    for variant in names[1:]:
        wins = sum(r["teacher_nll"] < b["teacher_nll"] for r, b in zip(results[variant], base))
        print(f"{variant}: lower teacher NLL than same-steps SFT in {wins}/{len(base)} seeds")
    result = {"args": vars(args), "teacher": teacher_ref, "students": results}
    print_json(result, to=args.json)


if __name__ == "__main__":
    main()
